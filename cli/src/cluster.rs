//! The verbs against a cluster: commands become a `zdeploy.io/command` annotation (never a
//! spec change, so GitOps tools see no drift) that the controller carries out once;
//! `status` and `history` read the recorded status; `apply` and `diff` work on manifests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use zdeploy_api::ZmqService;
use zdeploy_api::chaos::{ChaosRun, ChaosSchedule};
use zdeploy_api::command::{
    COMMAND_ANNOTATION, CommandAnnotation, CommandRequest, RUN_NOW_ANNOTATION, SUSPEND_ANNOTATION,
};
use zdeploy_api::validate::{Resource, validate_str};
use zdeploy_chaos::target::pools;
use zdeploy_controller::experiment::{
    Injection, PROCESS_KILL_IN_A_CLUSTER, describe_fault, injection,
};

use crate::Output;
use crate::local::describe;
use zdeploy_controller::platforms::kubernetes::leader::LEASE_NAME;

/// Which cluster and namespace, kubectl style.
#[derive(clap::Args, Clone, Default)]
pub struct ClusterArgs {
    /// Namespace to work in (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// kubeconfig file to use (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterArgs {
    /// True when a flag asks for the cluster explicitly.
    pub fn given(&self) -> bool {
        self.namespace.is_some() || self.context.is_some() || self.kubeconfig.is_some()
    }

    /// A client for the chosen cluster and the namespace to work in.
    pub async fn client(&self) -> anyhow::Result<(Client, String)> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await?
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                // In a pod, its service account; anywhere else, say what was looked for.
                Err(e) => Config::incluster().map_err(|_| NoCluster::after(&e))?,
            },
        };
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        Ok((Client::try_from(config)?, ns))
    }
}

/// No cluster to talk to: no kubeconfig, and not in a pod.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kubernetes cluster configured: {looked}, and this is not a pod; point at a cluster with --kubeconfig PATH, the KUBECONFIG variable or --context NAME"
)]
pub struct NoCluster {
    looked: String,
}

impl NoCluster {
    /// What was looked for, given the kubeconfig's error.
    fn after(error: &kube::config::KubeconfigError) -> Self {
        let looked = match std::env::var_os("KUBECONFIG") {
            Some(v) if !v.is_empty() => format!(
                "KUBECONFIG={} cannot be read ({error})",
                v.to_string_lossy()
            ),
            _ => match std::env::home_dir().map(|h| h.join(".kube").join("config")) {
                Some(p) if !p.exists() => {
                    format!("KUBECONFIG is unset and {} does not exist", p.display())
                }
                Some(p) => format!("{} cannot be read ({error})", p.display()),
                None => "KUBECONFIG is unset and there is no home directory".into(),
            },
        };
        Self { looked }
    }
}

/// Where the install runs the controller (and its Lease).
const CONTROLLER_NAMESPACE: &str = "zdeploy-system";

fn command_id() -> String {
    format!(
        "{}-{:08x}",
        jiff::Timestamp::now().as_second(),
        fastrand::u32(..)
    )
}

/// Sends a command through the annotation and waits (at most `wait`) for the controller.
pub async fn command(
    cluster: &ClusterArgs,
    name: &str,
    request: CommandRequest,
    output: Output,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let (client, ns) = cluster.client().await?;
    let api: Api<ZmqService> = Api::namespaced(client, &ns);
    let id = command_id();
    let command = CommandAnnotation {
        id: id.clone(),
        request,
    };
    let patch =
        serde_json::json!({"metadata": {"annotations": {COMMAND_ANNOTATION: command.to_value()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("ZmqService {name} in namespace {ns}"))?;
    eprintln!("command {id} sent to {ns}/{name}; waiting for the controller");
    let asked = Instant::now();
    let deadline = asked + wait;
    let mut next_word = asked + Duration::from_secs(15);
    loop {
        let svc = api.get(name).await?;
        let status = svc.status.clone().unwrap_or_default();
        if status.last_command.as_deref() == Some(id.as_str()) {
            let refused = status.last_command_refused.clone();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"refused": refused, "status": status})
                    )?
                ),
                Output::Text => match &refused {
                    Some(why) => eprintln!("refused: {why}"),
                    None => print!("{}", describe(name, &status)),
                },
            }
            return Ok(if refused.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        let now_asked = svc
            .annotations()
            .get(COMMAND_ANNOTATION)
            .and_then(|raw| CommandAnnotation::parse(raw))
            .map(|a| a.id);
        if now_asked.as_deref() != Some(id.as_str()) {
            bail!(
                "command {id} was replaced by {} before the controller carried it out: it will not be; see `zdeploy status {name} -n {ns}`",
                now_asked.as_deref().unwrap_or("no command")
            );
        }
        if Instant::now() > deadline {
            let seen = controller_seen(&api, &svc).await;
            bail!(
                "the controller did not carry out command {id} within {}: the command was accepted (it is on {ns}/{name}) and is not yet acted on; {seen}",
                zdeploy_api::Duration::from(wait)
            );
        }
        if Instant::now() > next_word {
            eprintln!(
                "command {id}: accepted, not yet acted on ({} s); {}",
                asked.elapsed().as_secs(),
                controller_seen(&api, &svc).await
            );
            next_word = Instant::now() + Duration::from_secs(15);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the CLI can see of the controller: who holds its Lease and how lately it renewed
/// it, and the last command it carried out on `svc`.
async fn controller_seen(api: &Api<ZmqService>, svc: &ZmqService) -> String {
    use k8s_openapi::api::coordination::v1::Lease;
    let last = svc
        .status
        .as_ref()
        .and_then(|s| s.last_command.clone())
        .unwrap_or_else(|| "none".into());
    let leases: Api<Lease> = Api::namespaced(api.clone().into_client(), CONTROLLER_NAMESPACE);
    let lease = match leases.get_opt(LEASE_NAME).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return format!(
                "no controller has ever led here (no Lease {CONTROLLER_NAMESPACE}/{LEASE_NAME}): is `zdeploy controller` installed and running? (last command carried out on this service: {last})"
            );
        }
        Err(e) => {
            return format!(
                "the controller's Lease {CONTROLLER_NAMESPACE}/{LEASE_NAME} cannot be read ({e}); last command carried out on this service: {last}"
            );
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let renewed = spec
        .renew_time
        .map(|t| jiff::Timestamp::now().duration_since(t.0).as_secs());
    match (spec.holder_identity, renewed) {
        (Some(holder), Some(ago)) if ago <= 30 => format!(
            "controller {holder} holds the Lease (renewed {ago} s ago), so it runs but has not reached this service yet: it may be busy (see its logs and `zdeploy_reconciles_total`); last command carried out on this service: {last}"
        ),
        (Some(holder), Some(ago)) => format!(
            "controller {holder} last renewed the Lease {ago} s ago: it is stopped or cut off from the API server; last command carried out on this service: {last}"
        ),
        _ => format!(
            "no controller holds the Lease {CONTROLLER_NAMESPACE}/{LEASE_NAME}: is `zdeploy controller` running? (last command carried out on this service: {last})"
        ),
    }
}

/// `status` (every second with `watch`) or `history`, from the recorded status.
pub async fn show(
    cluster: &ClusterArgs,
    name: &str,
    history: bool,
    watch: bool,
    output: Output,
) -> anyhow::Result<()> {
    let (client, ns) = cluster.client().await?;
    let api = Api::<ZmqService>::namespaced(client, &ns);
    loop {
        let svc = api
            .get(name)
            .await
            .with_context(|| format!("ZmqService {name} in namespace {ns}"))?;
        print_status(name, svc, history, output)?;
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_status(name: &str, svc: ZmqService, history: bool, output: Output) -> anyhow::Result<()> {
    let status = svc.status.unwrap_or_default();
    match (output, history) {
        (Output::Json, true) => println!("{}", serde_json::to_string_pretty(&status.history)?),
        (Output::Json, false) => println!("{}", serde_json::to_string_pretty(&status)?),
        (Output::Text, true) => {
            for r in &status.history {
                println!(
                    "{}  {:<28} {:?}  {}",
                    r.ended.0, r.revision, r.outcome, r.reason
                );
            }
        }
        (Output::Text, false) => print!("{}", describe(name, &status)),
    }
    Ok(())
}

/// Arguments of `zdeploy apply` and `zdeploy diff`.
#[derive(clap::Args)]
pub struct FileArgs {
    /// The manifest (ZmqService documents).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn services(args: &FileArgs) -> anyhow::Result<Vec<ZmqService>> {
    let text = crate::manifest::read(&args.file)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for d in validate_str(&text)? {
        problems.extend(
            d.problems
                .iter()
                .map(|p| format!("{}: {p}", args.file.display())),
        );
        if let Some(Resource::ZmqService(s)) = d.resource {
            out.push(*s);
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(out)
}

/// `zdeploy apply -f`: validates, then server-side applies each ZmqService.
pub async fn apply(args: &FileArgs) -> anyhow::Result<()> {
    let (client, default_ns) = args.cluster.client().await?;
    for mut svc in services(args)? {
        let ns = svc
            .namespace()
            .or_else(|| args.cluster.namespace.clone())
            .unwrap_or_else(|| default_ns.clone());
        svc.metadata.namespace = Some(ns.clone());
        svc.status = None;
        let api: Api<ZmqService> = Api::namespaced(client.clone(), &ns);
        api.patch(
            &svc.name_any(),
            &PatchParams::apply("zdeploy-cli"),
            &Patch::Apply(&svc),
        )
        .await?;
        println!("zmqservice.zdeploy.io/{} applied in {ns}", svc.name_any());
    }
    Ok(())
}

/// `zdeploy diff -f`: the spec lines that would change; exit 1 when any would.
pub async fn diff(args: &FileArgs) -> anyhow::Result<ExitCode> {
    let (client, default_ns) = args.cluster.client().await?;
    let mut changed = false;
    for svc in services(args)? {
        let ns = svc
            .namespace()
            .or_else(|| args.cluster.namespace.clone())
            .unwrap_or_else(|| default_ns.clone());
        let api: Api<ZmqService> = Api::namespaced(client.clone(), &ns);
        let live = api.get_opt(&svc.name_any()).await?;
        let want = serde_saphyr::to_string(&svc.spec)?;
        let have = match &live {
            Some(l) => serde_saphyr::to_string(&l.spec)?,
            None => String::new(),
        };
        let lines = line_diff(&have, &want);
        if !lines.is_empty() {
            changed = true;
            println!(
                "--- {ns}/{} (live)\n+++ {ns}/{} ({})",
                svc.name_any(),
                svc.name_any(),
                args.file.display()
            );
            lines.iter().for_each(|l| println!("{l}"));
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Lines removed (`-`) and added (`+`), by longest common subsequence.
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}

/// The ChaosSchedules in the namespace.
pub async fn chaos_schedules(cluster: &ClusterArgs) -> anyhow::Result<Vec<ChaosSchedule>> {
    let (client, ns) = cluster.client().await?;
    let api: Api<ChaosSchedule> = Api::namespaced(client, &ns);
    Ok(api.list(&Default::default()).await?.items)
}

/// Pauses or resumes a ChaosSchedule through its annotation: the spec, kept in git, is
/// not touched, so Argo CD and Flux see no drift.
pub async fn chaos_suspend(cluster: &ClusterArgs, name: &str, suspend: bool) -> anyhow::Result<()> {
    let (client, ns) = cluster.client().await?;
    let api: Api<ChaosSchedule> = Api::namespaced(client, &ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {SUSPEND_ANNOTATION: suspend.to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("ChaosSchedule {ns}/{name}"))?;
    Ok(())
}

/// What `zdeploy chaos run` produced in the cluster.
pub enum ChaosOutcome {
    /// A dry run: what would be hit.
    Plan(String),
    /// The recorded run.
    Run(ChaosRun),
}

/// Runs a ChaosSchedule's experiment once, now, through the controller: applies the
/// schedule, asks for a run with the `zdeploy.io/run-now` annotation and waits for the
/// verdict. A dry run lists what would be hit and changes nothing.
pub async fn chaos_run(
    cluster: &ClusterArgs,
    mut cs: ChaosSchedule,
    dry_run: bool,
) -> anyhow::Result<ChaosOutcome> {
    let (client, default_ns) = cluster.client().await?;
    let ns = cs.namespace().unwrap_or(default_ns);
    let name = cs.name_any();
    let x = cs.spec.experiment.clone();
    if dry_run {
        let hits = match injection(&x.fault, x.duration) {
            Injection::Gateway(f) => pools(x.pool)
                .into_iter()
                .map(|p| describe_fault(p, &f))
                .collect::<Vec<_>>()
                .join("; "),
            Injection::ProcessKill => bail!(PROCESS_KILL_IN_A_CLUSTER),
            Injection::PodKill => {
                let mut rng = fastrand::Rng::new();
                let pods = zdeploy_chaos::podkill::choose(client, &ns, &x, &mut rng).await?;
                format!("delete pods {}", pods.join(", "))
            }
        };
        return Ok(ChaosOutcome::Plan(format!(
            "dry run, nothing changed: would hit {hits}"
        )));
    }
    cs.metadata.namespace = Some(ns.clone());
    cs.status = None;
    let api: Api<ChaosSchedule> = Api::namespaced(client, &ns);
    api.patch(
        &name,
        &PatchParams::apply("zdeploy-cli"),
        &Patch::Apply(&cs),
    )
    .await
    .with_context(|| format!("applying ChaosSchedule {ns}/{name}"))?;
    let id = command_id();
    let patch = serde_json::json!({"metadata": {"annotations": {RUN_NOW_ANNOTATION: id}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eprintln!("run {id} of {ns}/{name} requested; waiting for the controller");
    let recovery = cs
        .spec
        .steady_state
        .as_ref()
        .map_or(Duration::ZERO, |s| s.recovery_deadline.get());
    let deadline = Instant::now() + x.duration.get() + recovery + Duration::from_secs(120);
    let mut announced = false;
    loop {
        let status = api.get(&name).await?.status.unwrap_or_default();
        if status.last_run_request.as_deref() == Some(id.as_str()) {
            match (&status.active, status.history.first()) {
                (Some(a), _) if !announced => {
                    eprintln!("running: injected into {}", a.targets.join(", "));
                    announced = true;
                }
                (None, Some(run)) => return Ok(ChaosOutcome::Run(run.clone())),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("no verdict for run {id} in time: is `zdeploy controller` running?");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines_only() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nB\nc\n"), ["-b", "+B"]);
        assert!(line_diff("x\n", "x\n").is_empty());
    }
}
