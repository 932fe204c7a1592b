//! `zdeploy`: one binary for every role (CLI verbs, local runtime, gateway, demo).

mod analyze;
mod chaos;
mod cluster;
mod controller;
mod demo;
mod gateway;
mod install;
mod listen;
mod local;
mod manifest;
mod render;
mod runbook;
mod signals;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use zdeploy_api::Weight;

use local::StateArgs;
use zdeploy_api::command::CommandRequest;
use zdeploy_controller::platforms::local::state::StateDir;

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

/// The service a verb acts on, where it runs (a local `zdeploy up`, or a cluster when
/// `-n`, `--context` or `--kubeconfig` is given or no local runtime has it), and the
/// output format.
#[derive(clap::Args)]
struct On {
    /// The ZmqService.
    name: String,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// In a cluster, how long to wait for the controller to carry the command out (it
    /// says what it sees meanwhile, every 15 s).
    #[arg(long, default_value = "60s")]
    wait: zdeploy_api::Duration,
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
    /// Start releasing a new revision: canary steps, or a blue-green preview.
    #[command(
        after_help = "Examples:\n  zdeploy rollout echo --canary 10 --image registry.example.com/echo:2.1\n  zdeploy rollout echo            # the image in the manifest"
    )]
    Rollout {
        #[command(flatten)]
        on: On,
        /// Start at this canary weight (0-100), then follow the manifest's steps (not with
        /// blue-green, which switches all at once after its preview).
        #[arg(long, value_parser = weight)]
        canary: Option<Weight>,
        /// The image to release (default: the manifest's, refused while stable runs another
        /// image: that may be a downgrade).
        #[arg(long)]
        image: Option<String>,
        /// Release the manifest's image even though stable runs another one.
        #[arg(long, conflicts_with = "image")]
        manifest_image: bool,
    },
    /// Move past the current pause step; blue-green after the switch: the old pool goes now
    /// (--full: make the new revision stable now).
    Promote {
        #[command(flatten)]
        on: On,
        /// Skip every remaining step and analysis.
        #[arg(long)]
        full: bool,
    },
    /// Send all traffic back to stable now and stop the canary (blue-green: to the old pool).
    #[command(after_help = "Example:\n  zdeploy rollback echo --reason \"paged: latency\"")]
    Rollback {
        #[command(flatten)]
        on: On,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start the last rolled-back revision again.
    Retry {
        #[command(flatten)]
        on: On,
    },
    /// Hold a rollout at its current weight (a breach still rolls back).
    Pause {
        #[command(flatten)]
        on: On,
    },
    /// Continue a held rollout.
    Resume {
        #[command(flatten)]
        on: On,
    },
    /// Show where a service's rollout stands.
    #[command(
        after_help = "Examples:\n  zdeploy status echo\n  zdeploy status echo --watch\n  zdeploy status echo -o json"
    )]
    Status {
        #[command(flatten)]
        on: On,
        /// Refresh every second until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// List a service's past rollouts, newest first.
    History {
        #[command(flatten)]
        on: On,
    },
    /// Run a service's canary analysis once and show every query, value and verdict.
    #[command(
        after_help = "Exit status: 0 pass, 1 fail, 2 inconclusive (or no answer from the source).\n\nExamples:\n  zdeploy analyze -f manifests/examples/echo.yaml --prometheus http://prometheus:9090 -n trading --since 20m\n  zdeploy analyze -f manifests/examples/echo.yaml --scrape http://127.0.0.1:9464/metrics -o json"
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
    /// Validate a manifest and server-side apply its ZmqServices to the cluster.
    #[command(after_help = "Example:\n  zdeploy apply -f manifests/examples/echo.yaml -n trading")]
    Apply(cluster::FileArgs),
    /// Show how a manifest's ZmqService specs differ from the cluster's (exit 1 when they do).
    #[command(
        after_help = "Example:\n  zdeploy diff -f manifests/examples/echo.yaml --context prod"
    )]
    Diff(cluster::FileArgs),
    /// Install zdeploy in a cluster: namespace, CRDs, RBAC, controller (--dry-run prints them).
    #[command(
        after_help = "Examples:\n  zdeploy install --dry-run | kubectl apply --server-side -f -\n  kubectl apply --server-side -k manifests/install   # the same objects, as a kustomize base"
    )]
    Install(install::Args),
    /// Run the Kubernetes controller (in the cluster, or against KUBECONFIG): rollouts and chaos schedules.
    #[command(
        after_help = "Examples:\n  zdeploy controller --prometheus http://prometheus.monitoring.svc:9090\n  zdeploy controller --alertmanager-webhook 0.0.0.0:9443 --webhook-token-file webhook-token\n  zdeploy controller --no-leader-election   # one replica, e.g. against a dev cluster"
    )]
    Controller(controller::Args),
    /// Print the Kubernetes objects a ZmqService becomes (Windows pools, zgate, Services...).
    #[command(
        after_help = "Example:\n  zdeploy render -f manifests/examples/echo.yaml | kubectl apply --dry-run=server -f -"
    )]
    Render(render::Args),
    /// Print the CustomResourceDefinitions generated from zdeploy's types.
    #[command(after_help = "Example:\n  zdeploy crds | kubectl apply --server-side -f -")]
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
            on,
            canary,
            image,
            manifest_image,
        } => verb(
            on,
            CommandRequest::Rollout {
                image,
                canary,
                manifest_over_stable: manifest_image,
            },
        ),
        Command::Promote { on, full } => verb(on, CommandRequest::Promote { full }),
        Command::Rollback { on, reason } => verb(on, CommandRequest::Rollback { reason }),
        Command::Retry { on } => verb(on, CommandRequest::Retry),
        Command::Pause { on } => verb(on, CommandRequest::Pause),
        Command::Resume { on } => verb(on, CommandRequest::Resume),
        Command::Status { on, watch } if on.in_cluster() => {
            let shown = runtime().block_on(cluster::show(
                &on.cluster,
                &on.name,
                false,
                watch,
                on.output,
            ));
            ok(on_cluster(&on, shown))
        }
        Command::Status { on, watch } => {
            ok(runtime().block_on(local::status(&on.state, &on.name, watch, on.output)))
        }
        Command::History { on } if on.in_cluster() => {
            let shown =
                runtime().block_on(cluster::show(&on.cluster, &on.name, true, false, on.output));
            ok(on_cluster(&on, shown))
        }
        Command::History { on } => {
            ok(runtime().block_on(local::history(&on.state, &on.name, on.output)))
        }
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
        Command::Apply(args) => ok(runtime().block_on(cluster::apply(&args))),
        Command::Diff(args) => runtime().block_on(cluster::diff(&args)),
        Command::Install(args) => ok(runtime().block_on(install::run(&args))),
        Command::Controller(args) => ok(runtime().block_on(controller::run(&args))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

/// A cluster verb's result; with no cluster configured, the error also says that no local
/// runtime runs the service (which is why a cluster was tried).
fn on_cluster<T>(on: &On, result: anyhow::Result<T>) -> anyhow::Result<T> {
    result.map_err(|e| match e.downcast_ref::<cluster::NoCluster>() {
        Some(_) if !on.cluster.given() => e.context(format!(
            "no `zdeploy up` runs {} here (no state in {}; --state-dir to look elsewhere)",
            on.name,
            on.state.state_dir.display()
        )),
        _ => e,
    })
}

impl On {
    /// True when the verb goes to a cluster rather than a local `zdeploy up`.
    fn in_cluster(&self) -> bool {
        self.cluster.given() || StateDir::existing(&self.state.state_dir, &self.name).is_none()
    }
}

fn verb(on: On, req: CommandRequest) -> anyhow::Result<ExitCode> {
    if on.in_cluster() {
        let sent = runtime().block_on(cluster::command(
            &on.cluster,
            &on.name,
            req,
            on.output,
            on.wait.get(),
        ));
        return on_cluster(&on, sent);
    }
    runtime().block_on(local::run_verb(&on.state, &on.name, req, on.output))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}
