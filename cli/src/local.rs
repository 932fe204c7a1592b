//! `zdeploy up` and the rollout verbs (`rollout`, `promote`, `pause`, `resume`,
//! `rollback`, `retry`, `status`, `history`) against the local runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use zdeploy_api::ZmqServiceStatus;
use zdeploy_api::command::CommandRequest;
use zdeploy_api::service::{Outcome, Verdict};
use zdeploy_controller::platforms::local::api::{
    ChaosReply, ChaosRequest, CommandReply, StatusView,
};
use zdeploy_controller::platforms::local::state::StateDir;
use zdeploy_controller::platforms::local::{Runtime, RuntimeEvent, UpConfig};

use crate::Output;

/// Where `zdeploy up` keeps its state.
#[derive(clap::Args, Clone)]
pub struct StateArgs {
    /// Directory holding each service's state (status, token, admin address).
    #[arg(
        long,
        env = "ZDEPLOY_STATE_DIR",
        default_value = ".zdeploy",
        global = true
    )]
    pub state_dir: PathBuf,
}

/// Arguments of `zdeploy up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The ZmqService manifest (its `local` section says how to start a revision).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// ZeroMQ endpoint the service's clients connect to (zgate's frontend).
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    frontend: String,
    /// Judge canaries with this Prometheus instead of scraping zgate directly.
    #[arg(long)]
    prometheus: Option<String>,
    /// Address of the admin API the other verbs use (loopback only).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = crate::listen::listen_addr)]
    admin: SocketAddr,
    /// Also receive Alertmanager webhooks here (POST /alertmanager, same bearer token).
    #[arg(long, value_parser = crate::listen::listen_addr)]
    alertmanager_webhook: Option<SocketAddr>,
    #[command(flatten)]
    state: StateArgs,
}

/// What a manifest file holds, read and validated once.
pub struct Manifest {
    /// Its first ZmqService, if any.
    pub service: Option<zdeploy_api::ZmqService>,
    /// Its ChaosSchedules.
    pub chaos: Vec<zdeploy_api::ChaosSchedule>,
}

/// Reads and validates a manifest file, with every problem named.
pub fn load_manifest(file: &std::path::Path) -> anyhow::Result<Manifest> {
    let text = crate::manifest::read(file)?;
    let docs = zdeploy_api::validate::validate_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", file.display()))?;
    let mut loaded = Manifest {
        service: None,
        chaos: Vec::new(),
    };
    let mut problems = Vec::new();
    for d in docs {
        problems.extend(d.problems.iter().map(|p| p.to_string()));
        match d.resource {
            Some(zdeploy_api::validate::Resource::ZmqService(s)) if loaded.service.is_none() => {
                loaded.service = Some(*s)
            }
            Some(zdeploy_api::validate::Resource::ChaosSchedule(cs)) => {
                zdeploy_chaos::schedule::check(&cs.spec)?;
                loaded.chaos.push(*cs);
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{}:\n{}",
        file.display(),
        problems.join("\n")
    );
    Ok(loaded)
}

/// Loads the first ZmqService of a manifest file, with every problem named.
pub fn load_service(file: &std::path::Path) -> anyhow::Result<zdeploy_api::ZmqService> {
    load_manifest(file)?
        .service
        .with_context(|| format!("{} holds no ZmqService", file.display()))
}

/// Loads every ChaosSchedule of a manifest file, with every problem named.
pub fn load_chaos(file: &std::path::Path) -> anyhow::Result<Vec<zdeploy_api::ChaosSchedule>> {
    Ok(load_manifest(file)?.chaos)
}

/// Runs `zdeploy up` in the foreground until SIGINT or SIGTERM.
pub async fn up(args: &UpArgs) -> anyhow::Result<()> {
    if !args.admin.ip().is_loopback() {
        bail!(
            "--admin {} is not a loopback address: the local admin API only listens on 127.0.0.1 or ::1",
            args.admin
        );
    }
    // Read and validated once: a second `up` on a held state is told so at once.
    let manifest = load_manifest(&args.file)?;
    let service = manifest
        .service
        .with_context(|| format!("{} holds no ZmqService", args.file.display()))?;
    let name = kube::ResourceExt::name_any(&service);
    let chaos = manifest
        .chaos
        .into_iter()
        .filter(|c| c.spec.experiment.service == name)
        .collect();
    let config = UpConfig {
        service,
        manifest_dir: match args.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        },
        state_root: args.state.state_dir.clone(),
        frontend: args.frontend.clone(),
        prometheus: args.prometheus.clone(),
        admin: args.admin,
        webhook: args.alertmanager_webhook,
        chaos,
    };
    let (runtime, mut events) = Runtime::start(config).await.map_err(anyhow::Error::msg)?;
    println!(
        "zdeploy up: {} ready: frontend {} admin {} state {}",
        runtime.name(),
        runtime.frontend(),
        runtime.admin_url,
        runtime.state_dir().display()
    );
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let RuntimeEvent::Note(line) = e {
                println!("{} {line}", jiff::Zoned::now().strftime("%H:%M:%S"));
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut run = tokio::spawn(runtime.run(stop_rx));
    tokio::select! {
        _ = crate::signals::wait_for_stop() => {
            let _ = stop_tx.send(true);
            run.await??;
        }
        // It stops by itself only when its gateway stopped serving.
        ended = &mut run => ended??,
    }
    Ok(())
}

/// A client of a running `zdeploy up`.
pub struct LocalClient {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl LocalClient {
    /// Finds the runtime of `name` in the state directory.
    pub fn connect(state: &StateArgs, name: &str) -> anyhow::Result<Self> {
        let dir = StateDir::existing(&state.state_dir, name).with_context(|| {
            format!("no service {name:?} in {}: start it with `zdeploy up -f MANIFEST` (or pass --state-dir)", state.state_dir.display())
        })?;
        let url = dir
            .endpoint()
            .context("zdeploy up has not recorded its admin address")?;
        let token = dir.token()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { url, token, http })
    }

    /// The runtime's status.
    pub async fn status(&self) -> anyhow::Result<StatusView> {
        self.send(self.http.get(format!("{}/v1/status", self.url)))
            .await
    }

    async fn post<Req: serde::Serialize, Reply: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> anyhow::Result<Reply> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(req))
            .await
    }

    /// Sends a request with the token; an unreachable runtime or a refusal is an error.
    async fn send<Reply: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<Reply> {
        let r = request.bearer_auth(&self.token).send().await;
        let r = r.with_context(|| {
            format!(
                "zdeploy up is not answering at {} (is it running?)",
                self.url
            )
        })?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "zdeploy up refused the request ({status}): {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(r.json().await?)
    }

    /// Sends a chaos request and returns the answer.
    pub async fn chaos(&self, req: &ChaosRequest) -> anyhow::Result<ChaosReply> {
        self.post("/v1/chaos", req).await
    }

    /// Sends a command and returns the answer.
    pub async fn command(&self, req: &CommandRequest) -> anyhow::Result<CommandReply> {
        self.post("/v1/commands", req).await
    }
}

/// Runs a verb and prints the status it leads to; exit 1 when refused.
pub async fn run_verb(
    state: &StateArgs,
    name: &str,
    req: CommandRequest,
    output: Output,
) -> anyhow::Result<std::process::ExitCode> {
    let client = LocalClient::connect(state, name)?;
    let reply = client.command(&req).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"refused": reply.refused, "status": reply.status})
            )?
        ),
        Output::Text => {
            if let Some(why) = &reply.refused {
                eprintln!("refused: {why}");
            } else {
                print!("{}", describe(name, &reply.status));
            }
        }
    }
    Ok(if reply.refused.is_some() {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// `zdeploy status NAME [--watch]`.
pub async fn status(
    state: &StateArgs,
    name: &str,
    watch: bool,
    output: Output,
) -> anyhow::Result<()> {
    let client = LocalClient::connect(state, name)?;
    loop {
        let view = client.status().await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
            Output::Text => {
                print!("{}", describe(name, &view.status));
                println!("Frontend:  {}", view.frontend);
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if output == Output::Text {
            println!();
        }
    }
}

/// `zdeploy history NAME`.
pub async fn history(state: &StateArgs, name: &str, output: Output) -> anyhow::Result<()> {
    let view = LocalClient::connect(state, name)?.status().await?;
    let h = &view.status.history;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(h)?);
        return Ok(());
    }
    println!(
        "{:<22} {:<28} {:<28} {:<11} REASON",
        "ENDED", "REVISION", "FROM", "OUTCOME"
    );
    for r in h {
        let outcome = match r.outcome {
            Outcome::Promoted => "Promoted",
            Outcome::RolledBack => "RolledBack",
        };
        let runbook = r
            .runbook
            .as_ref()
            .map(|x| format!(" (runbook {x})"))
            .unwrap_or_default();
        println!(
            "{:<22} {:<28} {:<28} {:<11} {}{runbook}",
            r.ended.0.strftime("%Y-%m-%d %H:%M:%S"),
            r.revision,
            r.stable_revision,
            outcome,
            r.reason
        );
    }
    Ok(())
}

/// A few lines a person reads at 3 a.m.
pub fn describe(name: &str, s: &ZmqServiceStatus) -> String {
    let mut out = format!("Name:      {name}\nPhase:     {:?}\n", s.phase);
    out.push_str(&format!(
        "Stable:    {}\n",
        s.stable_revision.as_deref().unwrap_or("-")
    ));
    if let Some(c) = &s.canary_revision {
        out.push_str(&format!("Canary:    {c}\n"));
    }
    if !s.changes.is_empty() {
        out.push_str(&format!("Changes:   {}\n", s.changes.join(", ")));
    }
    if let Some(step) = s.current_step {
        out.push_str(&format!("Step:      {step}\n"));
    }
    out.push_str(&format!(
        "Weights:   stable {}%, canary {}%\n",
        s.canary_weight.complement(),
        s.canary_weight
    ));
    if !s.routes.is_empty() {
        let routes: Vec<String> = s.routes.iter().map(|r| r.to_string()).collect();
        out.push_str(&format!("Routes:    {}\n", routes.join(", ")));
    }
    if let Some(percent) = s.shadow_percent {
        out.push_str(&format!(
            "Shadow:    {percent}% of stable's requests copied to the canary, replies compared\n"
        ));
    }
    if let Some(at) = s.rollout.as_ref().and_then(|r| r.switched.as_ref()) {
        out.push_str(&format!(
            "Switched:  {} (blue-green: the old pool is kept; `zdeploy rollback` switches back)\n",
            at.0.strftime("%Y-%m-%d %H:%M:%S")
        ));
    }
    if let Some(m) = &s.message {
        out.push_str(&format!("Message:   {m}\n"));
    }
    for m in &s.analysis {
        let v = match m.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "inconclusive",
        };
        let value = m
            .value
            .map(|x| format!("{x:.4}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "Analysis:  {:<14} {v:<12} {value:<8} {}\n",
            m.metric, m.reason
        ));
    }
    if let Some(last) = s.history.first()
        && last.outcome == Outcome::RolledBack
        && let Some(rb) = &last.runbook
    {
        out.push_str(&format!(
            "Runbook:   {rb} (last rollback: {})\n",
            last.reason
        ));
    }
    out
}
