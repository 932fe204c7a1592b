//! The ZmqService reconciler, in the kube-rs style: `reconcile` drives the rollout engine
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
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use zdeploy_api::command::{COMMAND_ANNOTATION, CommandAnnotation};
use zdeploy_api::revision::{ConfigKind, Revision};
use zdeploy_api::{Pool, ZmqService, ZmqServiceStatus};

use super::endpoints::Endpoints;
use super::errors::{Error, backoff};
use super::events::publish;
use super::lanes::{Lanes, lane_of};
use super::measure::{Analyzers, MetricsSource, SharedAnalyzer};
use super::queue::Turn;
use super::render::{Rendered, Templates, render, revisions_in_use};
use super::revisions;
use super::settled::{self, Drift, Settled};
use crate::analysis::exposition::Exposition;
use crate::analysis::{Analyzer, Span};
use crate::engine::{self, Action as EngineAction, Command, Input, Origin, Severity};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "zdeploy";
/// The finalizer that lets zdeploy clean up before a ZmqService goes.
pub const FINALIZER: &str = "zdeploy.io/cleanup";

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
    /// The canaries in flight per namespace and the changes waiting for their turn.
    pub queue: super::queue::Queue,
    /// The objects this process has reconciled: the first reconcile of each resumes a
    /// rollout that no controller drove meanwhile.
    driven: std::sync::Mutex<std::collections::HashSet<String>>,
    http: reqwest::Client,
    /// What is in place for idle services, so they cost nothing.
    pub settled: Settled,
    /// The fast lane and the slow lane's turns.
    lanes: Arc<Lanes>,
    /// The watched ZmqServices (none in tests driving `reconcile` alone).
    services: Option<Store<ZmqService>>,
    /// Every ConfigMap's metadata, for what a service's pods read.
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

/// The longest wait between two looks at a service whose pods read a Secret.
const SECRET_RECHECK: Duration = Duration::from_secs(30);
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
            queue: Default::default(),
            driven: Default::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("building an HTTP client"),
            settled: Settled::default(),
            lanes: Default::default(),
            services: None,
            config_maps: kube::runtime::reflector::store().0,
        }
    }

    /// The same context reading the watched ZmqServices and ConfigMaps, with `lanes`.
    pub fn with_caches(
        mut self,
        services: Store<ZmqService>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
        lanes: Arc<Lanes>,
    ) -> Self {
        self.services = Some(services);
        self.config_maps = config_maps;
        self.lanes = lanes;
        self
    }

    /// `svc` as the cache has it now (a reconcile may have waited since it was queued).
    fn latest(&self, svc: Arc<ZmqService>) -> Arc<ZmqService> {
        self.services
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::from_obj(svc.as_ref())))
            .unwrap_or(svc)
    }

    /// What an idle `svc` that changed nothing since its last reconcile needs: nothing
    /// now, and a look again when a Secret its pods read may have changed. `None` when it
    /// must be reconciled.
    fn settled_action(&self, svc: &ZmqService) -> Option<Action> {
        let status = svc.status.as_ref()?;
        if settled::deleting(svc)
            || !svc.finalizers().iter().any(|f| f == FINALIZER)
            || !settled::idle(status)
        {
            return None;
        }
        let secrets = revisions::reads_secrets(svc);
        let inputs = settled::inputs_of(svc, &revisions::config_maps_read(svc), &self.config_maps);
        let fresh_for = secrets.then_some(SECRET_RECHECK);
        self.settled
            .unchanged(&settled::key_of(svc), inputs, fresh_for)
            .then(|| match secrets {
                true => Action::requeue(SECRET_RECHECK),
                false => Action::await_change(),
            })
    }

    /// The same context, with at most `limits` canaries in flight per namespace.
    pub fn limit_canaries(mut self, limits: super::queue::CanaryLimits) -> Self {
        self.queue = super::queue::Queue::new(limits);
        self
    }

    /// Where the canary watches ask for a reconcile when they see a breach.
    pub(super) fn wake_on_breach(
        &self,
        wake: tokio::sync::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<ZmqService>>,
    ) {
        let _ = self.watches.wake.set(wake);
    }

    /// The `/metrics` page of every zgate replica of `svc` that answered.
    async fn zgate_pages(&self, svc: &ZmqService) -> Vec<Exposition> {
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let mut pages = Vec::new();
        for url in self.endpoints.zgate_metrics(&ns, &name) {
            match crate::analysis::scrape::scrape(&self.http, &url).await {
                Ok(p) => pages.push(p),
                Err(e) => tracing::debug!("{e}"),
            }
        }
        pages
    }

    /// What every zgate replica of `svc` sees of its canary.
    async fn reach(&self, svc: &ZmqService) -> engine::Reach {
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let pages = self.zgate_pages(svc).await;
        super::endpoints::reach(&name, self.endpoints.canary_ready(&ns, &name), &pages)
    }

    /// Whether every zgate replica of `svc` is connected to `pods` stable pods; a zgate
    /// that cannot be scraped is not waited for.
    async fn stable_reached(&self, svc: &ZmqService, pods: i32) -> bool {
        let pages = self.zgate_pages(svc).await;
        super::endpoints::fewest_live(&svc.name_any(), Pool::Stable, &pages)
            .is_none_or(|live| live >= f64::from(pods))
    }

    fn analyzer(&self, svc: &ZmqService, status: &ZmqServiceStatus) -> SharedAnalyzer {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let key = format!("{ns}/{name}");
        self.analyzers.current(key, svc.metadata.generation, || {
            let (source, target) = self.metrics.source_for(&name, &ns, Pool::Canary);
            let mut analyzer = Analyzer::new(
                source,
                target,
                svc.spec.strategy.analysis().clone(),
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
        let every = svc.spec.strategy.analysis().interval.get();
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

/// What happened since the last reconcile: the engine input, the command id it carries
/// out, and the spec image to record as acted on.
struct Observed {
    input: Input,
    command_id: Option<String>,
    spec_revision: Option<String>,
}

impl Observed {
    /// A canary the spec's change starts, not a person's command: it waits its turn.
    fn starts_by_itself(&self) -> bool {
        self.command_id.is_none() && matches!(self.input, Input::Command(Command::Rollout { .. }))
    }
}

/// How often a change waiting in the queue looks for its turn.
const QUEUE_RECHECK: Duration = Duration::from_secs(2);

/// A command annotation not yet carried out comes first; then a change of the spec's
/// revision `image` (its pod template or the configuration it reads, GitOps) starts a
/// rollout once no rollout runs.
fn observe(svc: &ZmqService, status: &ZmqServiceStatus, image: &str) -> Observed {
    if let Some(raw) = svc.annotations().get(COMMAND_ANNOTATION)
        && let Some(a) = CommandAnnotation::parse(raw)
        && status.last_command.as_deref() != Some(a.id.as_str())
    {
        let cmd = Command::from_request(a.request, image.to_string());
        return Observed {
            input: Input::Command(cmd),
            command_id: Some(a.id),
            spec_revision: None,
        };
    }
    let image = image.to_string();
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
    // (A record named by its image alone, from before, names that image's release.)
    let rejected = status
        .history
        .first()
        .is_some_and(|h| h.revision == image || h.revision == Revision::parse(&image).image);
    if released || rejected {
        return settled(Input::Tick);
    }
    settled(Input::Command(Command::Rollout {
        revision: image.clone(),
        canary: None,
        origin: Origin::Named,
    }))
}

/// Applies `objects` in order; returns them as the API server has them now.
/// Renames revisions recorded by their image alone (before revisions covered the pod
/// template and its configuration) to what that image releases now, recorded, so that
/// stable keeps its template from here on; a rollout under way keeps its canary's name.
async fn adopt_image_names(
    client: &Client,
    svc: &ZmqService,
    status: &mut ZmqServiceStatus,
    spec_release: &revisions::Release,
    releases: &mut Vec<revisions::Release>,
) -> Result<(), Error> {
    let spec_image = svc.spec.image();
    if let Some(stable) = status.stable_revision.clone()
        && Revision::parse(&stable).digest.is_none()
    {
        let release = if stable == spec_image {
            spec_release.clone()
        } else {
            revisions::release_of(client, svc, &stable).await?
        };
        status.stable_revision = Some(release.revision.clone());
        releases.push(release);
    }
    if status.spec_revision.as_deref() == Some(spec_image.as_str()) {
        status.spec_revision = Some(spec_release.revision.clone());
    }
    Ok(())
}

/// Whether the canary Deployment runs only pods of its current template, one of them
/// available: the pods zgate reaches are then the new canary's.
async fn canary_rolled(client: &Client, svc: &ZmqService) -> Result<bool, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let Some(d) = api
        .get_opt(&super::render::pool_service(&svc.name_any(), Pool::Canary))
        .await?
    else {
        return Ok(false);
    };
    Ok(super::handover::only_current_pods(&d))
}

async fn apply_all<K>(client: &Client, ns: &str, objects: &[K]) -> Result<Vec<K>, Error>
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
    let mut applied = Vec::with_capacity(objects.len());
    for o in objects {
        applied.push(api.patch(&o.name_any(), &params, &Patch::Apply(o)).await?);
    }
    Ok(applied)
}

/// Applies every rendered object: identities, zgate's read access and weights first, then Services, zgate,
/// stable, canary, and disruption budgets last. Returns the stable Deployment as applied.
/// Records them as applied (their later changes are drift).
async fn apply_rendered(
    ctx: &Context,
    ns: &str,
    r: &Rendered,
) -> Result<Option<Deployment>, Error> {
    let client = &ctx.client;
    apply_all::<ServiceAccount>(client, ns, &r.service_accounts).await?;
    apply_all::<Role>(client, ns, &r.roles).await?;
    apply_all::<RoleBinding>(client, ns, &r.role_bindings).await?;
    for cm in apply_all::<ConfigMap>(client, ns, &r.config_maps).await? {
        ctx.settled.expect_config_map(&cm);
    }
    apply_all::<Service>(client, ns, &r.services).await?;
    let gateway = apply_all::<Deployment>(client, ns, r.gateway.as_slice()).await?;
    let pools = apply_all::<Deployment>(client, ns, &r.pools).await?;
    for d in gateway.iter().chain(&pools) {
        ctx.settled.expect_deployment(d);
    }
    apply_all::<PodDisruptionBudget>(client, ns, &r.pdbs).await?;
    Ok(pools.into_iter().next())
}

async fn apply(cached: Arc<ZmqService>, ctx: &Context) -> Result<Action, Error> {
    let ns = cached
        .namespace()
        .ok_or_else(|| Error::Invalid("a ZmqService must be namespaced".into()))?;
    let api: Api<ZmqService> = Api::namespaced(ctx.client.clone(), &ns);
    // Read fresh: a cache minutes behind (a watch re-listing under load) must not carry
    // out a command that a newer one replaced, nor one already carried out.
    let mut fresh = api.get(&cached.name_any()).await?;
    fresh.managed_fields_mut().clear();
    let svc = Arc::new(fresh);
    let key = settled::key_of(&svc);
    let drift = ctx.settled.begin(&key);
    let inputs = settled::inputs_of(&svc, &revisions::config_maps_read(&svc), &ctx.config_maps);
    let recorded = svc.status.clone().unwrap_or_default();
    let mut before = recorded.clone();
    // What the spec releases now: its pod template and the configuration it reads.
    let spec_release = revisions::release_of(&ctx.client, &svc, &svc.spec.image()).await?;
    let mut releases = vec![spec_release.clone()];
    // First deploy: the manifest's revision is stable; nothing to roll out.
    before
        .stable_revision
        .get_or_insert_with(|| spec_release.revision.clone());
    adopt_image_names(&ctx.client, &svc, &mut before, &spec_release, &mut releases).await?;
    before.observed_generation = svc.metadata.generation;
    let now = Timestamp::now();
    let first = ctx.driven.lock().expect("driven lock").insert(key.clone());
    if first && before.rollout.is_some() {
        // The time no controller ran (a restart, a new leader) is not the canary's lack
        // of progress.
        before = engine::step(&svc.spec, &before, &Input::Restarted, now).status;
    }
    let mut observed = observe(&svc, &before, &spec_release.revision);
    // A person's `--image X` releases X with the spec's pod template and configuration.
    if let Input::Command(Command::Rollout { revision, .. }) = &mut observed.input
        && Revision::parse(revision).digest.is_none()
    {
        let release = revisions::release_of(&ctx.client, &svc, revision).await?;
        *revision = release.revision.clone();
        releases.push(release);
    }
    let mut queued = None;
    if observed.starts_by_itself() {
        let since = before.queued_since.as_ref().map_or(now, |t| t.0);
        match ctx.queue.turn(&svc, since) {
            Turn::Go => {}
            Turn::Wait {
                in_flight,
                limit,
                position,
            } => {
                // Not acted on: the change is looked at again on its turn.
                observed = Observed {
                    input: Input::Tick,
                    command_id: None,
                    spec_revision: None,
                };
                queued = Some(format!(
                    "queued: {in_flight} canaries already in progress in {ns} (at most {limit}); {} is number {position} in the queue",
                    svc.spec.image()
                ));
            }
        }
    }
    // Recorded while it waits, so its place survives a restart; gone once it is not.
    before.queued_since = match queued {
        Some(_) => {
            before
                .queued_since
                .or(Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    now,
                )))
        }
        None => None,
    };
    let mut d = engine::step(&svc.spec, &before, &observed.input, now);
    if d.status.rollout.is_none() {
        ctx.queue.ended(&svc);
    }
    let starting = d
        .actions
        .iter()
        .any(|a| matches!(a, EngineAction::StartCanary { .. }));
    // A new canary (a retry seconds after a rollback too) is counted from zero.
    if starting {
        ctx.analyzer(&svc, &d.status).lock().await.new_canary();
    }
    // Behind zgate, the canary takes weight once a zgate replica reaches it: not in the
    // reconcile that starts it (its pods are not even asked for yet, and the pods zgate may
    // reach are a previous canary's, draining), and only once its Deployment has rolled.
    if d.refused.is_none()
        && !starting
        && let Some(r) = &d.status.rollout
        && engine::waiting_for_reach(&svc.spec, r)
        && canary_rolled(&ctx.client, &svc).await?
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
    // What the new canary changes from stable, for its status, history and Event.
    let started = d.actions.iter().find_map(|a| match a {
        EngineAction::StartCanary { revision } => releases.iter().find(|r| &r.revision == revision),
        _ => None,
    });
    if let (Some(release), Some(stable)) = (started, before.stable_revision.as_deref()) {
        d.status.changes = revisions::changes_from(&ctx.client, &svc, stable, release).await?;
    }
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
    if let Some(why) = &queued {
        d.status.message = Some(why.clone());
    }
    d.status.conditions = super::conditions::conditions(&d.status, svc.metadata.generation, now);
    // Scraped only when it matters: the reconcile that promotes.
    let canary_live = if super::handover::promotes(&d.actions) {
        let pages = ctx.zgate_pages(&svc).await;
        super::endpoints::fewest_live(&svc.name_any(), Pool::Canary, &pages)
    } else {
        None
    };
    super::handover::begin_or_end(
        &svc.spec,
        before.rollout.as_ref(),
        canary_live,
        &mut d.status,
        &d.actions,
    );
    super::handover::end_drained(&svc.spec, &mut d.status, now);
    let mut desired = (*svc).clone();
    desired.status = Some(d.status.clone());
    let mut templates = Templates::default();
    for revision in revisions_in_use(&desired, now) {
        let release = releases.iter().find(|r| r.revision == revision);
        if let Some(t) = revisions::template_of(&ctx.client, &svc, &revision, release).await? {
            templates.insert(revision, t);
        }
    }
    if recorded.rollout.is_some() && d.status.rollout.is_none() {
        // Stable, and the one that ended (it drains, and `zdeploy retry` runs it again).
        let keep: Vec<String> = d
            .status
            .stable_revision
            .iter()
            .chain(d.status.history.first().map(|h| &h.revision))
            .cloned()
            .collect();
        revisions::collect(&ctx.client, &svc, &keep).await?;
    }
    // The count an autoscaler reads through `/scale`; it sets `spec.replicas`, which
    // the controller only reads, so the two never fight.
    let rendered = render(&desired, &templates, now);
    let rendered_hash = rendered.fingerprint();
    let stable = match settled::idle(&d.status)
        && drift == Drift::AsApplied
        && ctx.settled.applied(&key, rendered_hash)
    {
        // Idle, nothing drifted, the same objects: applying them again changes nothing.
        true => {
            let stable = super::render::pool_service(&svc.name_any(), Pool::Stable);
            if let Some(count) = ctx.settled.replicas_of(&ns, &stable) {
                d.status.replicas = Some(count);
            }
            None
        }
        false => {
            ctx.settled.forget_applied(&key);
            let stable = apply_rendered(ctx, &ns, &rendered).await?;
            ctx.settled.record_applied(&key, rendered_hash);
            d.status.replicas = Some(
                stable
                    .as_ref()
                    .and_then(|d| d.status.as_ref()?.replicas)
                    .unwrap_or(0),
            );
            stable
        }
    };
    let mut handed_over = None;
    if super::handover::canary_holds_all(&d.status)
        && let Some(stable) = &stable
        && super::handover::rolled(stable, svc.spec.replicas)
        && ctx.stable_reached(&svc, svc.spec.replicas).await
    {
        super::handover::stable_took_over(&mut d.status, now);
        handed_over = Some(format!(
            "stable's {} pods run {} and zgate reaches them: they take the requests back and the canary drains",
            svc.spec.replicas,
            d.status.stable_revision.as_deref().unwrap_or_default()
        ));
    }
    d.status.selector = Some(super::render::stable_selector(&svc));
    let unchanged = d.status == recorded;
    if !unchanged {
        // Fields the new status no longer has (a finished rollout) must be removed.
        // A first status is written whole (defaults included).
        let was = match &svc.status {
            Some(s) => serde_json::to_value(s),
            None => Ok(serde_json::json!({})),
        }
        .map_err(|e| Error::Invalid(format!("status: {e}")))?;
        let now_is =
            serde_json::to_value(&d.status).map_err(|e| Error::Invalid(format!("status: {e}")))?;
        // Written only over the object as read: a command or status written meanwhile
        // makes it a conflict, retried on the newer object.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": svc.resource_version() },
            "status": super::merge_patch::between(&was, &now_is),
        });
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    let reference = svc.object_ref(&());
    if started.is_some() && !d.status.changes.is_empty() {
        let revision = d.status.canary_revision.clone().unwrap_or_default();
        let what = format!("canary {revision} changes {}", d.status.changes.join(", "));
        publish(
            &ctx.recorder,
            &reference,
            Severity::Normal,
            "Changes",
            what,
            "Rollout",
        )
        .await;
    }
    if let Some(what) = handed_over {
        publish(
            &ctx.recorder,
            &reference,
            Severity::Normal,
            "HandedOver",
            what,
            "Rollout",
        )
        .await;
    }
    if let Some(why) = queued.filter(|_| recorded.queued_since.is_none()) {
        publish(
            &ctx.recorder,
            &reference,
            Severity::Normal,
            "Queued",
            why,
            "Rollout",
        )
        .await;
    }
    for a in &d.actions {
        if let EngineAction::Event(n) = a {
            let (severity, reason) = (n.severity, n.reason.as_str());
            publish(
                &ctx.recorder,
                &reference,
                severity,
                reason,
                n.text(),
                "Rollout",
            )
            .await;
        }
    }
    let deadline = engine::clock::poll_timeout(&svc.spec, &d.status, now)
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default());
    if unchanged && settled::idle(&d.status) && deadline.is_none() {
        ctx.settled.settle(&key, inputs);
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
        Some(r) if engine::waiting_for_reach(&svc.spec, r) => Some(Duration::from_secs(1)),
        Some(_) => Some(
            svc.spec
                .strategy
                .analysis()
                .interval
                .get()
                .max(Duration::from_secs(1)),
        ),
        // Secrets are not watched (reading them is enough): a change of one is seen here.
        None if spec_release
            .configs
            .keys()
            .any(|r| r.kind == ConfigKind::Secret) =>
        {
            Some(SECRET_RECHECK)
        }
        // Idle: woken by a change of the service, a ConfigMap it reads or what it owns.
        None => None,
    };
    let sooner = [
        d.status.queued_since.as_ref().map(|_| QUEUE_RECHECK),
        super::handover::next_look(&svc.spec, &d.status, now),
        // Just after the engine's deadline, so the tick finds it passed.
        deadline.map(|left| left + Duration::from_millis(100)),
    ];
    let look = sooner.into_iter().flatten().chain(look).min();
    Ok(match look {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

async fn cleanup(svc: Arc<ZmqService>, ctx: &Context) -> Result<Action, Error> {
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    ctx.analyzers.forget(&key);
    ctx.settled.forget(&key);
    ctx.driven.lock().expect("driven lock").remove(&key);
    ctx.watches.stop(&key);
    // Owned objects go with the ZmqService (owner references); say so where people look.
    let note = format!(
        "{} deleted: its workloads, gateway and Services are garbage-collected",
        svc.name_any()
    );
    let reference = svc.object_ref(&());
    publish(
        &ctx.recorder,
        &reference,
        Severity::Normal,
        "Deleted",
        note,
        "Cleanup",
    )
    .await;
    Ok(Action::await_change())
}

/// Reconciles one ZmqService.
pub async fn reconcile(svc: Arc<ZmqService>, ctx: Arc<Context>) -> Result<Action, Error> {
    tracing::debug!("reconcile");
    let ns = svc
        .namespace()
        .ok_or_else(|| Error::Invalid("a ZmqService must be namespaced".into()))?;
    let svc = ctx.latest(svc);
    if let Some(nothing_to_do) = ctx.settled_action(&svc) {
        return Ok(nothing_to_do);
    }
    let _turn = ctx.lanes.turn(|| lane_of(&ctx.latest(svc.clone()))).await;
    let svc = ctx.latest(svc);
    let api: Api<ZmqService> = Api::namespaced(ctx.client.clone(), &ns);
    // Boxed: a reconcile waiting for its turn above holds only a few words.
    Box::pin(finalizer(&api, FINALIZER, svc, |event| async {
        match event {
            Finalizer::Apply(s) => apply(s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup(s, &ctx).await,
        }
    }))
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Backs off after a failed reconcile: conflicts retry at once, the rest after a pause.
pub fn error_policy(svc: Arc<ZmqService>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %error, kind = ?error.kind(), "reconcile failed");
    backoff(error)
}
