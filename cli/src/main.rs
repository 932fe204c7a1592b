//! `zdeploy`: one binary for every role (CLI verbs, gateway, controller).

mod gateway;
mod signals;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Deploy ZeroMQ services to Windows node pools and release them safely by canary.
#[derive(Parser)]
#[command(name = "zdeploy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format, as in kubectl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check ZmqService and ChaosSchedule manifests; exit 0 when valid, 1 when not.
    #[command(
        after_help = "Examples:\n  zdeploy validate -f manifests/examples/echo.yaml\n  zdeploy validate -f manifests/examples/\n  cat echo.yaml | zdeploy validate -f - -o json"
    )]
    Validate(validate::Args),
    /// Run zgate, the ZeroMQ gateway that splits requests between pools by weight.
    #[command(
        after_help = "Example:\n  zdeploy gateway --frontend tcp://127.0.0.1:5555 \\\n    --pool stable=tcp://127.0.0.1:6001,tcp://127.0.0.1:6002 --pool canary=tcp://127.0.0.1:6003 \\\n    --weights stable=90,canary=10 --timeout 2s --metrics 127.0.0.1:9464 --admin 127.0.0.1:9465\n\nChange weights at run time:\n  curl -X PUT -d '{\"stable\":50,\"canary\":50}' http://127.0.0.1:9465/weights"
    )]
    Gateway(Box<gateway::Args>),
    /// Print the CustomResourceDefinitions generated from zdeploy's types.
    #[command(after_help = "Example:\n  zdeploy crds | kubectl apply -f -")]
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    zdeploy_controller::tls::install_ring_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match cli.command {
        Command::Gateway(args) => runtime()
            .block_on(gateway::run(&args))
            .map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => validate::run(&args),
        Command::Crds => {
            print!("{}", zdeploy_api::crd::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}
