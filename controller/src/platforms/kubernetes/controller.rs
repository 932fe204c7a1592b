//! The Kubernetes controller, in the kube-rs style: `reconcile` drives the rollout engine
//! for one ZmqService from its recorded status, server-side applies what `render` makes of
//! the new status (weights before workloads, so a rollback sets the canary weight to 0
//! before the canary scales down), records the status, and publishes Events with the
//! runbook on a rollback. `error_policy` backs off. The spec is never written: commands
//! arrive as a `zdeploy.io/command` annotation, so Argo CD and Flux see no drift.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use zdeploy_api::{ZmqService, ZmqServiceStatus};
use zdeploy_gateway::watch_retry::WatchRetry;

use super::endpoints::Endpoints;
use super::render::{Rendered, render};
use crate::analysis::promql::Target;
use crate::analysis::{Analyzer, Source, Span};
use crate::engine::{self, Action as EngineAction, Command, Input};
use crate::platforms::local::api::CommandRequest;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "zdeploy";
/// The finalizer that lets zdeploy clean up before a ZmqService goes.
pub const FINALIZER: &str = "zdeploy.io/cleanup";
/// The annotation the CLI writes to steer a rollout.
pub const COMMAND_ANNOTATION: &str = "zdeploy.io/command";

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Where canary measurements come from.
    pub metrics: MetricsSource,
    /// One analyzer per service (the embedded scrape keeps history between reconciles).
    analyzers: Analyzers,
    /// The pods behind zdeploy's Services: zgate replicas to scrape, ready canary pods.
    pub endpoints: Endpoints,
    /// Scrapes each canary between analyses and wakes its reconcile on a breach.
    watches: CanaryWatches,
    /// The objects this process has reconciled: the first reconcile of each resumes a
    /// rollout that no controller drove meanwhile.
    driven: std::sync::Mutex<std::collections::HashSet<String>>,
    http: reqwest::Client,
}

/// The longest wait between two looks at a service with no rollout.
const IDLE_RECHECK: Duration = Duration::from_secs(300);
/// How often a canary's zgate replicas are scraped between analyses.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// One task per canary judged by the embedded scrape: it scrapes every `WATCH_EVERY` and,
/// when the counts already show a bound broken, asks for a reconcile at once (which runs
/// the analysis), so a breach rolls back within a scrape or two, not an interval.
#[derive(Default)]
struct CanaryWatches {
    tasks: std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
    wake: std::sync::OnceLock<
        tokio::sync::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<ZmqService>>,
    >,
}

impl CanaryWatches {
    /// Starts watching `svc`'s canary (started at `started`) unless it is watched already.
    fn ensure(
        &self,
        svc: &ZmqService,
        analyzer: SharedAnalyzer,
        endpoints: Endpoints,
        started: Timestamp,
    ) {
        let Some(wake) = self.wake.get().cloned() else {
            return;
        };
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let key = format!("{ns}/{name}");
        let mut tasks = self.tasks.lock().expect("watches lock");
        if tasks.get(&key).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let reference = kube::runtime::reflector::ObjectRef::from_obj(svc);
        tasks.insert(
            key,
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_EVERY).await;
                    let age: Duration = Timestamp::now()
                        .duration_since(started)
                        .try_into()
                        .unwrap_or_default();
                    let mut a = analyzer.lock().await;
                    a.scrape_targets(endpoints.zgate_metrics(&ns, &name));
                    if a.observe().await.is_ok() && a.breach(age) {
                        drop(a);
                        if wake.send(reference.clone()).is_err() {
                            return;
                        }
                        // The reconcile records the verdict; no second wake meanwhile.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }),
        );
    }

    /// Stops watching `key`'s canary.
    fn stop(&self, key: &str) {
        if let Some(t) = self.tasks.lock().expect("watches lock").remove(key) {
            t.abort();
        }
    }
}

/// Where the controller measures canaries.
#[derive(Clone, Debug)]
pub enum MetricsSource {
    /// Scrape each service's zgate Service (`http://NAME.NAMESPACE.svc:9464/metrics`).
    Scrape,
    /// Query Prometheus; `namespace_label` says whether zgate's series carry `namespace`.
    Prometheus {
        /// Prometheus' base URL.
        url: String,
        /// Series carry a `namespace` label (the usual Kubernetes relabeling).
        namespace_label: bool,
    },
}

/// One analyzer per object, shared with a lock: the embedded scrape builds history between
/// reconciles.
pub(super) type SharedAnalyzer = Arc<tokio::sync::Mutex<Analyzer>>;

/// The analyzers of every object, each made anew when its object's spec changes. Each has
/// its own lock, so a slow source delays only the analyses that use it.
#[derive(Default)]
pub(super) struct Analyzers(
    std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, SharedAnalyzer)>>,
);

impl Analyzers {
    /// The analyzer of `key` for spec `generation`, made by `make` when there is none yet.
    pub(super) fn current(
        &self,
        key: String,
        generation: Option<i64>,
        make: impl FnOnce() -> Analyzer,
    ) -> SharedAnalyzer {
        let mut all = self.0.lock().expect("analyzers lock");
        match all.get(&key) {
            Some((g, analyzer)) if *g == generation => analyzer.clone(),
            _ => {
                let analyzer = Arc::new(tokio::sync::Mutex::new(make()));
                all.insert(key, (generation, analyzer.clone()));
                analyzer
            }
        }
    }

    /// Drops the analyzer of a deleted object.
    pub(super) fn forget(&self, key: &str) {
        self.0.lock().expect("analyzers lock").remove(key);
    }
}

impl MetricsSource {
    /// Where the measurements of `pool` of service `name` in `ns` come from.
    pub fn source_for(&self, name: &str, ns: &str, pool: &str) -> (Source, Target) {
        let (source, namespace) = match self {
            MetricsSource::Scrape => (
                Source::scrape(&format!(
                    "http://{name}.{ns}.svc.cluster.local:{}/metrics",
                    super::render::METRICS_PORT
                )),
                None,
            ),
            MetricsSource::Prometheus {
                url,
                namespace_label,
            } => (
                Source::prometheus(url),
                namespace_label.then(|| ns.to_string()),
            ),
        };
        let target = Target {
            service: name.to_string(),
            namespace,
            pool: pool.to_string(),
        };
        (source, target)
    }
}

impl Context {
    /// A context for `client`, reporting Events as `zdeploy-controller`, that knows no
    /// endpoints (a canary is never reached: see `with_endpoints`).
    pub fn new(client: Client, metrics: MetricsSource) -> Self {
        let (store, _writer) = kube::runtime::reflector::store();
        Self::with_endpoints(client, metrics, Endpoints(store))
    }

    /// A context for `client` that finds zgate replicas and canary pods in `endpoints`.
    pub fn with_endpoints(client: Client, metrics: MetricsSource, endpoints: Endpoints) -> Self {
        crate::tls::install_ring_provider();
        let reporter = Reporter {
            controller: "zdeploy-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            analyzers: Default::default(),
            endpoints,
            watches: CanaryWatches::default(),
            driven: Default::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("building an HTTP client"),
        }
    }

    /// What every zgate replica of `svc` sees of its canary.
    async fn reach(&self, svc: &ZmqService) -> engine::Reach {
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let mut pages = Vec::new();
        for url in self.endpoints.zgate_metrics(&ns, &name) {
            match crate::analysis::scrape::scrape(&self.http, &url).await {
                Ok(p) => pages.push(p),
                Err(e) => tracing::debug!("{e}"),
            }
        }
        super::endpoints::reach(&name, self.endpoints.canary_ready(&ns, &name), &pages)
    }

    fn analyzer(&self, svc: &ZmqService, status: &ZmqServiceStatus) -> SharedAnalyzer {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let key = format!("{ns}/{name}");
        self.analyzers.current(key, svc.metadata.generation, || {
            let (source, target) = self.metrics.source_for(&name, &ns, "canary");
            let mut analyzer = Analyzer::new(
                source,
                target,
                svc.spec.strategy.canary.analysis.clone(),
                None,
                Span::CanaryLife,
            );
            // A controller that restarted carries on from the counts it recorded.
            analyzer.resume(&status.analysis);
            analyzer
        })
    }

    /// Runs the canary analysis of `svc` when one is due; `None` when it is not.
    async fn analyse(
        &self,
        svc: &ZmqService,
        status: &ZmqServiceStatus,
        now: Timestamp,
    ) -> Option<Input> {
        let rollout = status.rollout.as_ref()?;
        // Nothing to judge before the canary takes traffic.
        if engine::waiting_for_reach(&svc.spec, rollout) {
            return None;
        }
        let analyzer = self.analyzer(svc, status);
        let age = engine::clock::canary_age(rollout, now);
        let mut analyzer = analyzer.lock().await;
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        analyzer.scrape_targets(self.endpoints.zgate_metrics(&ns, &name));
        let every = svc.spec.strategy.canary.analysis.interval.get();
        let last = status.analysis.iter().map(|m| m.at.0).max();
        let due = last.is_none_or(|t| {
            now.duration_since(t) >= jiff::SignedDuration::try_from(every).unwrap_or_default()
        });
        // Between intervals only a breach the scrapes already show is judged.
        if !due && !analyzer.breach(age) {
            return None;
        }
        let run = analyzer.run(age).await;
        Some(Input::Analysis {
            verdict: run.verdict,
            measurements: run.measurements,
            started: now,
        })
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object cannot be reconciled as it is.
    #[error("{0}")]
    Invalid(String),
}

/// What kind of failure a reconcile error is: its metric label and its backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The object changed since it was read (HTTP 409): retried at once.
    Conflict,
    /// Any other API error.
    Kube,
    /// The finalizer could not be added or removed.
    Finalizer,
    /// The object cannot be reconciled as it is.
    Invalid,
}

impl ErrorKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Conflict,
        ErrorKind::Kube,
        ErrorKind::Finalizer,
        ErrorKind::Invalid,
    ];

    /// The label of the `reconcile_errors_total` metric.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Kube => "kube",
            ErrorKind::Finalizer => "finalizer",
            ErrorKind::Invalid => "invalid",
        }
    }
}

impl Error {
    /// Its kind; a finalizer's failed apply or cleanup is the inner error's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => ErrorKind::Conflict,
            Error::Kube(_) => ErrorKind::Kube,
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                _ => ErrorKind::Finalizer,
            },
            Error::Invalid(_) => ErrorKind::Invalid,
        }
    }
}

/// A command annotation: a CLI request with an id, carried out once.
#[derive(Deserialize)]
struct Annotated {
    id: String,
    #[serde(flatten)]
    request: CommandRequest,
}

/// What happened since the last reconcile: the engine input, the command id it carries
/// out, and the spec image to record as acted on.
struct Observed {
    input: Input,
    command_id: Option<String>,
    spec_revision: Option<String>,
}

/// A command annotation not yet carried out comes first; then a change of the spec's
/// image (GitOps) starts a rollout once no rollout runs.
fn observe(svc: &ZmqService, status: &ZmqServiceStatus) -> Observed {
    if let Some(raw) = svc.annotations().get(COMMAND_ANNOTATION)
        && let Ok(a) = serde_json::from_str::<Annotated>(raw)
        && status.last_command.as_deref() != Some(a.id.as_str())
    {
        let cmd = a.request.into_command(svc.spec.image());
        return Observed {
            input: Input::Command(cmd),
            command_id: Some(a.id),
            spec_revision: None,
        };
    }
    let image = svc.spec.image();
    let settled = |input| Observed {
        input,
        command_id: None,
        spec_revision: Some(image.clone()),
    };
    // A status written before specRevision existed: the spec was last acted on when
    // its image became stable.
    let seen = status
        .spec_revision
        .as_deref()
        .or(status.stable_revision.as_deref());
    if seen == Some(image.as_str()) {
        return settled(Input::Tick);
    }
    if status.rollout.is_some() {
        // Decided when the running rollout ends; the change is not forgotten.
        return Observed {
            input: Input::Tick,
            command_id: None,
            spec_revision: None,
        };
    }
    let released = status.stable_revision.as_deref() == Some(image.as_str());
    let rejected = status.history.first().is_some_and(|h| h.revision == image);
    if released || rejected {
        return settled(Input::Tick);
    }
    settled(Input::Command(Command::Rollout {
        revision: image.clone(),
        canary: None,
    }))
}

async fn apply_all<K>(client: &Client, ns: &str, objects: &[K]) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for o in objects {
        api.patch(&o.name_any(), &params, &Patch::Apply(o)).await?;
    }
    Ok(())
}

/// Applies every rendered object: identities, zgate's read access and weights first, then Services, zgate,
/// stable, canary, and disruption budgets last.
async fn apply_rendered(client: &Client, ns: &str, r: &Rendered) -> Result<(), Error> {
    apply_all::<ServiceAccount>(client, ns, &r.service_accounts).await?;
    apply_all::<Role>(client, ns, &r.roles).await?;
    apply_all::<RoleBinding>(client, ns, &r.role_bindings).await?;
    apply_all::<ConfigMap>(client, ns, &r.config_maps).await?;
    apply_all::<Service>(client, ns, &r.services).await?;
    apply_all::<Deployment>(client, ns, r.gateway.as_slice()).await?;
    apply_all::<Deployment>(client, ns, &r.pools).await?;
    apply_all::<PodDisruptionBudget>(client, ns, &r.pdbs).await?;
    Ok(())
}

async fn apply(svc: Arc<ZmqService>, ctx: &Context) -> Result<Action, Error> {
    let ns = svc
        .namespace()
        .ok_or_else(|| Error::Invalid("a ZmqService must be namespaced".into()))?;
    let recorded = svc.status.clone().unwrap_or_default();
    let mut before = recorded.clone();
    // First deploy: the manifest's image is stable; nothing to roll out.
    before
        .stable_revision
        .get_or_insert_with(|| svc.spec.image());
    before.observed_generation = svc.metadata.generation;
    let now = Timestamp::now();
    let key = format!("{ns}/{}", svc.name_any());
    let first = ctx.driven.lock().expect("driven lock").insert(key.clone());
    if first && before.rollout.is_some() {
        // The time no controller ran (a restart, a new leader) is not the canary's lack
        // of progress.
        before = engine::step(&svc.spec, &before, &Input::Restarted, now).status;
    }
    let observed = observe(&svc, &before);
    let mut d = engine::step(&svc.spec, &before, &observed.input, now);
    // A new canary (a retry seconds after a rollback too) is counted from zero.
    if d.actions
        .iter()
        .any(|a| matches!(a, EngineAction::StartCanary { .. }))
    {
        ctx.analyzer(&svc, &d.status).lock().await.new_canary();
    }
    // Behind zgate, the canary takes weight once a zgate replica reaches it.
    if d.refused.is_none()
        && let Some(r) = &d.status.rollout
        && engine::waiting_for_reach(&svc.spec, r)
    {
        let reached = engine::step(
            &svc.spec,
            &d.status,
            &Input::Reach(ctx.reach(&svc).await),
            now,
        );
        d.actions.extend(reached.actions);
        d.status = reached.status;
    }
    if d.refused.is_none()
        && let Some(measured) = ctx.analyse(&svc, &d.status, now).await
    {
        // The measurement is judged on the status the first input produced.
        let judged = engine::step(&svc.spec, &d.status, &measured, now);
        d.actions.extend(judged.actions);
        d.status = judged.status;
    }
    crate::runbooks::pin_in(&mut d.status, &mut d.actions);
    if let Some(id) = observed.command_id {
        d.status.last_command = Some(id);
        d.status.last_command_refused = d.refused.clone();
    }
    if let Some(image) = observed.spec_revision {
        d.status.spec_revision = Some(image);
    }
    if let Some(why) = &d.refused {
        d.status.message = Some(format!("command refused: {why}"));
    }
    d.status.conditions = super::conditions::conditions(&d.status, svc.metadata.generation, now);
    let mut desired = (*svc).clone();
    desired.status = Some(d.status.clone());
    apply_rendered(&ctx.client, &ns, &render(&desired, now)).await?;
    if d.status != recorded {
        let api: Api<ZmqService> = Api::namespaced(ctx.client.clone(), &ns);
        // Fields the new status no longer has (a finished rollout) must be removed.
        // A first status is written whole (defaults included).
        let was = match &svc.status {
            Some(s) => serde_json::to_value(s),
            None => Ok(serde_json::json!({})),
        }
        .map_err(|e| Error::Invalid(format!("status: {e}")))?;
        let now_is =
            serde_json::to_value(&d.status).map_err(|e| Error::Invalid(format!("status: {e}")))?;
        let patch = serde_json::json!({ "status": super::merge_patch::between(&was, &now_is) });
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    let reference = svc.object_ref(&());
    for a in &d.actions {
        if let EngineAction::Event {
            warning,
            reason,
            message,
        } = a
        {
            let note = message.clone();
            publish(&ctx.recorder, &reference, *warning, reason, note, "Rollout").await;
        }
    }
    match &d.status.rollout {
        Some(r) if !engine::waiting_for_reach(&svc.spec, r) => ctx.watches.ensure(
            &svc,
            ctx.analyzer(&svc, &d.status),
            ctx.endpoints.clone(),
            r.started.0,
        ),
        _ => ctx.watches.stop(&key),
    }
    // Look again at least every analysis interval during a rollout, every second while
    // zgate has not reached the canary (endpoint changes wake it too), and whenever the
    // engine has a deadline sooner (a timed pause, the progress deadline, a drain).
    let look = match &d.status.rollout {
        Some(r) if engine::waiting_for_reach(&svc.spec, r) => Duration::from_secs(1),
        Some(_) => svc
            .spec
            .strategy
            .canary
            .analysis
            .interval
            .get()
            .max(Duration::from_secs(1)),
        None => IDLE_RECHECK,
    };
    let deadline = engine::clock::poll_timeout(&svc.spec, &d.status, now)
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default());
    Ok(match deadline {
        // Just after the deadline, so the tick finds it passed.
        Some(left) if left < look => Action::requeue(left + Duration::from_millis(100)),
        _ => Action::requeue(look),
    })
}

async fn cleanup(svc: Arc<ZmqService>, ctx: &Context) -> Result<Action, Error> {
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    ctx.analyzers.forget(&key);
    ctx.driven.lock().expect("driven lock").remove(&key);
    ctx.watches.stop(&key);
    // Owned objects go with the ZmqService (owner references); say so where people look.
    let note = format!(
        "{} deleted: its workloads, gateway and Services are garbage-collected",
        svc.name_any()
    );
    let reference = svc.object_ref(&());
    publish(&ctx.recorder, &reference, false, "Deleted", note, "Cleanup").await;
    Ok(Action::await_change())
}

/// Publishes an Event on `reference`. One that cannot be written is logged: Events must
/// never stop a rollout or an experiment.
pub(super) async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::warn!("event {reason}: {e}");
    }
}

/// Reconciles one ZmqService.
pub async fn reconcile(svc: Arc<ZmqService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = svc
        .namespace()
        .ok_or_else(|| Error::Invalid("a ZmqService must be namespaced".into()))?;
    let api: Api<ZmqService> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, svc, |event| async {
        match event {
            Finalizer::Apply(s) => apply(s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup(s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Counts of reconciles, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciles that succeeded.
    pub ok: std::sync::atomic::AtomicU64,
    /// Reconciles that failed, by kind.
    pub failed: std::sync::Mutex<std::collections::BTreeMap<ErrorKind, u64>>,
    leader: std::sync::atomic::AtomicBool,
    /// Chaos runs recorded, by verdict.
    pub chaos_runs: crate::experiment::RunCounts,
}

impl Stats {
    /// Records whether this replica holds the Lease (and so reconciles).
    pub fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "# TYPE zdeploy_controller_leader gauge\nzdeploy_controller_leader {}\n",
            u8::from(self.leader.load(std::sync::atomic::Ordering::Relaxed))
        );
        out.push_str("# TYPE zdeploy_reconciles_total counter\n");
        out.push_str(&format!(
            "zdeploy_reconciles_total{{result=\"ok\"}} {}\n",
            self.ok.load(std::sync::atomic::Ordering::Relaxed)
        ));
        out.push_str("# TYPE zdeploy_reconcile_errors_total counter\n");
        for kind in ErrorKind::ALL {
            let n = self
                .failed
                .lock()
                .expect("stats lock")
                .get(&kind)
                .copied()
                .unwrap_or(0);
            out.push_str(&format!(
                "zdeploy_reconcile_errors_total{{error=\"{}\"}} {n}\n",
                kind.label()
            ));
        }
        out.push_str(&self.chaos_runs.encode());
        out
    }

    /// Counts one reconcile's result.
    fn tally<K>(&self, result: ReconcileResult<K>)
    where
        K: Resource,
        K::DynamicType: Clone + std::fmt::Debug + Eq + std::hash::Hash,
    {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                *self
                    .failed
                    .lock()
                    .expect("stats lock")
                    .entry(e.kind())
                    .or_default() += 1;
                tracing::warn!(object = %obj.name, "reconcile failed: {e}");
            }
            Err(e) => tracing::warn!("controller: {e}"),
        }
    }
}

type ReconcileResult<K> = Result<
    (kube::runtime::reflector::ObjectRef<K>, Action),
    kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>,
>;

/// Runs the controllers until SIGINT or SIGTERM: every ZmqService and what it owns, and
/// every ChaosSchedule. `alerts` are Alertmanager's pushed alerts, for the chaos guard.
pub async fn run(
    client: Client,
    metrics: MetricsSource,
    stats: Arc<Stats>,
    alerts: Option<Arc<crate::analysis::webhook::AlertInbox>>,
) -> Result<(), Error> {
    use futures::StreamExt;
    use kube::runtime::{Controller, watcher};
    use zdeploy_api::chaos::ChaosSchedule;
    let services: Api<ZmqService> = Api::all(client.clone());
    let schedules: Api<ChaosSchedule> = Api::all(client.clone());
    let params = kube::api::ListParams::default().limit(1);
    let installed = match services.list(&params).await {
        Ok(_) => schedules.list(&params).await.map(|_| ()),
        Err(e) => Err(e),
    };
    installed.map_err(|e| {
        Error::Invalid(format!("cannot list ZmqServices and ChaosSchedules ({e}): install the CRDs first (`zdeploy crds | kubectl apply -f -`)"))
    })?;
    // Every slice of zdeploy's Services, for the zgate replicas and the canary's readiness.
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::WatchStreamExt;
    let (store, writer) = kube::runtime::reflector::store();
    let slices = Api::<EndpointSlice>::all(client.clone());
    let slice_config = watcher::Config::default().labels(super::endpoints::SELECTOR);
    let slice_events = kube::runtime::reflector(writer, watcher(slices, slice_config))
        .backoff(WatchRetry::default())
        .touched_objects();
    // A slice change wakes the reconcile of the ZmqService behind it (canary pods ready).
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    let slice_wake = wake.clone();
    let follow_slices = slice_events.for_each(move |slice| {
        if let Ok(s) = slice
            && let (Some(ns), Some(owner)) =
                (s.namespace(), s.labels().get("app.kubernetes.io/instance"))
        {
            let _ = slice_wake.send(kube::runtime::reflector::ObjectRef::new(owner).within(&ns));
        }
        futures::future::ready(())
    });
    let endpoints = Endpoints(store);
    let ctx = Arc::new(Context::with_endpoints(
        client.clone(),
        metrics.clone(),
        endpoints.clone(),
    ));
    let _ = ctx.watches.wake.set(wake);
    let woken = futures::stream::unfold(
        woken,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    );
    let chaos_ctx = Arc::new(
        super::chaos::ChaosContext::new(client.clone(), metrics, alerts, stats.clone())
            .with_endpoints(endpoints),
    );
    let rollouts = Controller::new(services, watcher::Config::default())
        .owns(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .reconcile_on(woken)
        .trigger_backoff(WatchRetry::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            stats.tally(result);
            futures::future::ready(())
        });
    // A change of a ZmqService (a rollout starting) reaches the schedules aimed at it at
    // once, so a running experiment is aborted without waiting for its next check.
    let chaos = Controller::new(schedules, watcher::Config::default());
    let known = chaos.store();
    let chaos = chaos
        .watches(
            Api::<ZmqService>::all(client.clone()),
            watcher::Config::default(),
            move |svc| super::chaos::aimed_at(&svc, &known.state()),
        )
        .trigger_backoff(WatchRetry::default())
        .shutdown_on_signal()
        .run(
            super::chaos::reconcile,
            super::chaos::error_policy,
            chaos_ctx,
        )
        .for_each(|result| {
            stats.tally(result);
            futures::future::ready(())
        });
    // The slice watch ends with the process; the controllers end on a signal.
    tokio::select! {
        _ = async { futures::join!(rollouts, chaos) } => {}
        _ = follow_slices => {}
    }
    Ok(())
}

/// Turns firing canary alerts from Alertmanager into rollback commands on the ZmqService
/// their labels name (`service`, `namespace`): the controller sees the annotation at once.
/// Alerts that name no service, or a service that does not exist, are logged and dropped.
pub async fn rollback_on_alerts(client: Client, inbox: Arc<crate::analysis::webhook::AlertInbox>) {
    loop {
        inbox.notify.notified().await;
        for alert in inbox.take_canary() {
            let (Some(service), Some(ns)) =
                (alert.labels.get("service"), alert.labels.get("namespace"))
            else {
                tracing::warn!(alert = %alert.name, "firing canary alert without service and namespace labels; ignored");
                continue;
            };
            let api: Api<ZmqService> = Api::namespaced(client.clone(), ns);
            let id = format!("alert-{}-{}", alert.name, Timestamp::now().as_millisecond());
            let reason = format!("alert {} fired for the canary", alert.name);
            let command = serde_json::json!({"id": id, "command": "rollback", "reason": reason});
            let patch = serde_json::json!({"metadata": {"annotations": {COMMAND_ANNOTATION: command.to_string()}}});
            match api
                .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(%service, %ns, alert = %alert.name, "rollback requested by Alertmanager")
                }
                Err(e) => tracing::warn!(%service, %ns, "could not request the rollback: {e}"),
            }
        }
    }
}

/// Backs off after a failed reconcile: conflicts retry at once, the rest after a pause.
pub fn error_policy(svc: Arc<ZmqService>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %error, kind = ?error.kind(), "reconcile failed");
    backoff(error)
}

/// How long to wait after `error`: a conflict is retried at once, the rest after a pause.
pub fn backoff(error: &Error) -> Action {
    match error.kind() {
        ErrorKind::Conflict => Action::requeue(Duration::from_millis(200)),
        ErrorKind::Kube | ErrorKind::Finalizer | ErrorKind::Invalid => {
            Action::requeue(Duration::from_secs(5))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_analyzer_is_kept_per_generation_and_made_anew_when_the_spec_changes() {
        let mut made = 0;
        let mut make = || {
            made += 1;
            let (source, target) = MetricsSource::Scrape.source_for("echo", "trading", "canary");
            Analyzer::new(source, target, Default::default(), None, Span::CanaryLife)
        };
        let analyzers = Analyzers::default();
        let first = analyzers.current("trading/echo".into(), Some(1), &mut make);
        let again = analyzers.current("trading/echo".into(), Some(1), &mut make);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same analyzer, history kept"
        );
        // An analysis in progress for one service does not hold up another's.
        let busy = first.try_lock().unwrap();
        let other = analyzers.current("trading/quotes".into(), Some(1), &mut make);
        assert!(other.try_lock().is_ok());
        drop(busy);
        analyzers.current("trading/echo".into(), Some(2), &mut make);
        analyzers.forget("trading/echo");
        analyzers.current("trading/echo".into(), Some(2), &mut make);
        assert_eq!(made, 4);
    }
}
