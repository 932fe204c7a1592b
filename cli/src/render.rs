//! `zdeploy render -f FILE`: the Kubernetes objects a ZmqService becomes, as YAML.

use std::path::PathBuf;

use zdeploy_api::validate::Resource;
use zdeploy_controller::platforms::kubernetes::render::{Templates, render};

/// Arguments of `zdeploy render`.
#[derive(clap::Args)]
pub struct Args {
    /// The ZmqService manifest(s).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Namespace for services whose manifest names none.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

/// Prints every object of every ZmqService in the file.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let text = crate::manifest::read(&args.file)?;
    let docs = zdeploy_api::validate::validate_str(&text)?;
    let mut problems = Vec::new();
    for d in docs {
        problems.extend(
            d.problems
                .iter()
                .map(|p| format!("{}: {p}", args.file.display())),
        );
        if let Some(Resource::ZmqService(mut svc)) = d.resource {
            svc.metadata
                .namespace
                .get_or_insert_with(|| args.namespace.clone());
            print!(
                "{}",
                render(&svc, &Templates::default(), jiff::Timestamp::now()).to_yaml()
            );
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
