//! `zdeploy`: one binary for every role (CLI verbs, local runtime, gateway, demo).

mod analyze;
mod chaos;
mod demo;
mod gateway;
mod local;
mod render;
mod runbook;
mod signals;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use zdeploy_api::Weight;

use local::{StateArgs, Verb};

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

fn weight(s: &str) -> Result<Weight, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    Weight::new(n).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole job on this machine: a bad build rolls back by itself, a good one is promoted.
    #[command(after_help = "Examples:\n  zdeploy demo\n  zdeploy demo -o json")]
    Demo(demo::Args),
    /// Run a service locally from its manifest (stable, canary, zgate, analysis) in the foreground.
    #[command(
        after_help = "Example:\n  zdeploy up -f manifests/examples/echo-local.yaml\n  # in another terminal:\n  zdeploy rollout echo --canary 10 --image registry.example.com/echo:2.1"
    )]
    Up(Box<local::UpArgs>),
    /// Start releasing a new revision as a canary.
    #[command(
        after_help = "Examples:\n  zdeploy rollout echo --canary 10 --image registry.example.com/echo:2.1\n  zdeploy rollout echo            # the image in the manifest"
    )]
    Rollout {
        /// The ZmqService.
        name: String,
        /// Start at this canary weight (0-100), then follow the manifest's steps.
        #[arg(long, value_parser = weight)]
        canary: Option<Weight>,
        /// The image to release (default: the manifest's).
        #[arg(long)]
        image: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Move past the current pause step (--full: make the canary stable now).
    Promote {
        /// The ZmqService.
        name: String,
        /// Skip every remaining step and analysis.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Send all traffic back to stable now and stop the canary.
    #[command(after_help = "Example:\n  zdeploy rollback echo --reason \"paged: latency\"")]
    Rollback {
        /// The ZmqService.
        name: String,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start the last rolled-back revision again.
    Retry {
        /// The ZmqService.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Hold a rollout at its current weight (a breach still rolls back).
    Pause {
        /// The ZmqService.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Continue a held rollout.
    Resume {
        /// The ZmqService.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show where a service's rollout stands.
    #[command(
        after_help = "Examples:\n  zdeploy status echo\n  zdeploy status echo --watch\n  zdeploy status echo -o json"
    )]
    Status {
        /// The ZmqService.
        name: String,
        /// Refresh every second until interrupted.
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// List a service's past rollouts, newest first.
    History {
        /// The ZmqService.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a service's canary analysis once and show every query, value and verdict.
    #[command(
        after_help = "Exit status: 0 pass, 1 fail, 2 inconclusive (or no answer from the source).\n\nExamples:\n  zdeploy analyze -f manifests/examples/echo.yaml --prometheus http://prometheus:9090 -n trading\n  zdeploy analyze -f manifests/examples/echo.yaml --scrape http://127.0.0.1:9464/metrics -o json"
    )]
    Analyze(analyze::Args),
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
    /// Print the Kubernetes objects a ZmqService becomes (Windows pools, zgate, Services...).
    #[command(
        after_help = "Example:\n  zdeploy render -f manifests/examples/echo.yaml | kubectl apply --dry-run=server -f -"
    )]
    Render(render::Args),
    /// Print the CustomResourceDefinitions generated from zdeploy's types.
    #[command(after_help = "Example:\n  zdeploy crds | kubectl apply -f -")]
    Crds,
    /// Chaos experiments on the local runtime: run one now, list, history, pause, resume.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// On-call runbooks: list, show, lint, run a step.
    #[command(subcommand)]
    Runbook(runbook::RunbookCommand),
    /// The example service and load generator the demo uses.
    #[command(subcommand)]
    Example(Example),
}

#[derive(Subcommand)]
enum Example {
    /// An echo service (REP); its version's `+errors=R` or `+latency=D` make a bad build.
    Echo(demo::echo::Args),
    /// A paced load generator (DEALER); prints replies by kind and requests left unanswered.
    #[command(
        after_help = "Example:\n  zdeploy example load --connect tcp://127.0.0.1:5555 --rate 500 --duration 30s"
    )]
    Load(demo::load::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    zdeploy_controller::tls::install_ring_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Demo(args) => runtime().block_on(demo::run(&args)),
        Command::Up(args) => ok(runtime().block_on(local::up(&args))),
        Command::Rollout {
            name,
            canary,
            image,
            state,
            output,
        } => runtime().block_on(local::run_verb(
            &state,
            &name,
            Verb::Rollout { image, canary },
            output,
        )),
        Command::Promote {
            name,
            full,
            state,
            output,
        } => runtime().block_on(local::run_verb(
            &state,
            &name,
            Verb::Promote { full },
            output,
        )),
        Command::Rollback {
            name,
            reason,
            state,
            output,
        } => runtime().block_on(local::run_verb(
            &state,
            &name,
            Verb::Rollback { reason },
            output,
        )),
        Command::Retry {
            name,
            state,
            output,
        } => runtime().block_on(local::run_verb(&state, &name, Verb::Retry, output)),
        Command::Pause {
            name,
            state,
            output,
        } => runtime().block_on(local::run_verb(&state, &name, Verb::Pause, output)),
        Command::Resume {
            name,
            state,
            output,
        } => runtime().block_on(local::run_verb(&state, &name, Verb::Resume, output)),
        Command::Status {
            name,
            watch,
            state,
            output,
        } => ok(runtime().block_on(local::status(&state, &name, watch, output))),
        Command::History {
            name,
            state,
            output,
        } => ok(runtime().block_on(local::history(&state, &name, output))),
        Command::Gateway(args) => ok(runtime().block_on(gateway::run(&args))),
        Command::Validate(args) => validate::run(&args),
        Command::Analyze(args) => runtime().block_on(analyze::run(&args)),
        Command::Crds => {
            print!("{}", zdeploy_api::crd::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Example(Example::Echo(args)) => ok(demo::echo::run(&args)),
        Command::Example(Example::Load(args)) => demo::load::run(&args),
        Command::Runbook(cmd) => runbook::run(&cmd),
        Command::Chaos(cmd) => runtime().block_on(chaos::run(&cmd)),
        Command::Render(args) => ok(render::run(&args)),
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
