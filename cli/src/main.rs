//! `zdeploy`: one binary for every role (CLI verbs, gateway, controller).

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
    /// Print the CustomResourceDefinitions generated from zdeploy's types.
    #[command(after_help = "Example:\n  zdeploy crds | kubectl apply -f -")]
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
