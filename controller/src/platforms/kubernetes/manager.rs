//! The controller manager: both controllers (ZmqServices with what they own, and
//! ChaosSchedules) over one EndpointSlice watch, until SIGINT or SIGTERM.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};
use zdeploy_api::ZmqService;
use zdeploy_gateway::watch_retry::WatchRetry;

use super::endpoints::Endpoints;
use super::errors::Error;
use super::measure::MetricsSource;
use super::queue::CanaryLimits;
use super::service::{Context, error_policy, reconcile};
use super::settled::OwnedKind;
use super::stats::Stats;

/// How long reconciles under way may take to finish once the controller is asked to stop
/// (well within the 30 s a kubelet waits before killing).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the controllers until SIGINT or SIGTERM: every ZmqService and what it owns, and
/// every ChaosSchedule. `alerts` are Alertmanager's pushed alerts, for the chaos guard;
/// `limits` bound the canaries in flight per namespace; `stop` ends both gracefully
/// (reconciles under way finish).
pub async fn run(
    client: Client,
    metrics: MetricsSource,
    stats: Arc<Stats>,
    alerts: Option<Arc<crate::analysis::webhook::AlertInbox>>,
    limits: CanaryLimits,
    stop: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
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
        Error::Invalid(format!("cannot list ZmqServices and ChaosSchedules ({e}): install the CRDs first (`zdeploy crds | kubectl apply --server-side -f -`)"))
    })?;
    // Every slice of zdeploy's Services, for the zgate replicas and the canary's readiness.
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::WatchStreamExt;
    let (store, writer) = kube::runtime::reflector::store();
    let slices = Api::<EndpointSlice>::all(client.clone());
    let slice_config = watcher::Config::default().labels(super::endpoints::SELECTOR);
    // Managed fields are most of a slice and never read.
    let slice_watch = watcher(slices, slice_config).modify(|s| s.managed_fields_mut().clear());
    let slice_events = kube::runtime::reflector(writer, slice_watch)
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
    // One watch of ZmqServices (managed fields dropped) serves both controllers; a command
    // arriving moves its service's waiting reconcile to the fast lane.
    let (services_store, services_writer) = kube::runtime::reflector::store_shared(1024);
    let for_rollouts = services_writer.subscribe().expect("a shared store");
    let for_chaos = services_writer.subscribe().expect("a shared store");
    let lanes = Arc::new(super::lanes::Lanes::default());
    let commands = lanes.clone();
    let services_root = watcher(services, watcher::Config::default())
        .modify(|s: &mut ZmqService| s.managed_fields_mut().clear())
        .backoff(WatchRetry::default())
        .reflect_shared(services_writer)
        .for_each(move |event| {
            if let Ok(watcher::Event::Apply(s)) = &event
                && super::lanes::lane_of(s) == super::lanes::Lane::Urgent
            {
                commands.wake_urgent();
            }
            futures::future::ready(())
        });
    // Every ConfigMap's metadata: a change of one a service's pods read wakes that service
    // (its revision changed); an owned one the controller did not write wakes its owner.
    let (config_maps, config_writer) = kube::runtime::reflector::store();
    let config_events = kube::runtime::reflector(
        config_writer,
        watcher(
            Api::<kube::core::PartialObjectMeta<ConfigMap>>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(|cm| cm.managed_fields_mut().clear())
        .backoff(WatchRetry::default()),
    );
    // zdeploy's own Deployments, without their pod templates: one that drifted from what
    // was applied wakes its owner; status updates alone do not.
    let deployments = watcher(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default().labels(super::render::MANAGED_SELECTOR),
    )
    .modify(super::settled::strip_deployment)
    .backoff(WatchRetry::default());
    let ctx = Context::with_endpoints(client.clone(), metrics.clone(), endpoints.clone())
        .limit_canaries(limits)
        .with_caches(services_store.clone(), config_maps, lanes);
    ctx.queue.read_from(services_store.clone());
    let ctx = Arc::new(ctx);
    ctx.wake_on_breach(wake);
    let woken = futures::stream::unfold(
        woken,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    );
    let chaos_ctx = Arc::new(
        super::chaos::ChaosContext::new(client.clone(), metrics, alerts, stats.clone())
            .with_endpoints(endpoints),
    );
    let overdue = stop.clone();
    let readers = services_store.clone();
    let config_drift = ctx.clone();
    let deployment_drift = ctx.clone();
    let rollouts = Controller::for_shared_stream(for_rollouts, services_store)
        .watches_stream(touched(config_events), move |cm| {
            let mut wake = super::revisions::readers_of(&cm, &readers.state());
            let kept = cm.labels().contains_key(super::revisions::REVISION_LABEL);
            // Revision records and copies are never re-applied: only their loss matters.
            let marker = (!kept).then(|| {
                super::settled::Marker::Version(cm.resource_version().unwrap_or_default())
            });
            wake.extend(
                config_drift
                    .settled
                    .drifted(OwnedKind::ConfigMap, &cm, marker),
            );
            wake
        })
        .watches_stream(touched(deployments), move |d| {
            deployment_drift.settled.deployment_seen(&d)
        })
        .reconcile_on(woken)
        .trigger_backoff(WatchRetry::default())
        .graceful_shutdown_on(stop.clone())
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
        .watches_shared_stream(for_chaos, move |svc| {
            super::chaos::aimed_at(&svc, &known.state())
        })
        .trigger_backoff(WatchRetry::default())
        .graceful_shutdown_on(stop)
        .run(
            super::chaos::reconcile,
            super::chaos::error_policy,
            chaos_ctx,
        )
        .for_each(|result| {
            stats.tally(result);
            futures::future::ready(())
        });
    // The slice watch ends with the process; the controllers end on a signal, once their
    // reconciles under way finish, but not later than SHUTDOWN_GRACE after it: a stop that
    // comes before the first list of ZmqServices is in would otherwise wait for a cache
    // that no watch fills any more.
    let overdue = async move {
        overdue.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    // The memory of a fleet's first reconciles goes back to the OS once they are done.
    let give_back = zdeploy_gateway::memory::give_back_periodically();
    tokio::select! {
        _ = async { futures::join!(rollouts, chaos) } => {}
        _ = follow_slices => {}
        _ = services_root => {}
        _ = overdue => tracing::warn!(
            "stopping {SHUTDOWN_GRACE:?} after the request to stop, without waiting further for reconciles"
        ),
    }
    give_back.abort();
    Ok(())
}

/// The objects a watch saw, a deleted one marked as such (its Delete event carries its
/// last state, which alone would look unchanged).
fn touched<K: kube::Resource + Send + 'static>(
    events: impl futures::Stream<
        Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
    > + Send
    + 'static,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static {
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    events.filter_map(|event| {
        futures::future::ready(match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => Some(Ok(o)),
            Ok(Event::Delete(mut o)) => {
                super::settled::mark_gone(&mut o);
                Some(Ok(o))
            }
            Ok(Event::Init | Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    })
}
