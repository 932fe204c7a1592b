//! Endpoints from EndpointSlices: in a cluster, a pool given as the name of its headless
//! Service (`tcp://echo-stable.trading.svc.cluster.local:5555`) is every endpoint of that
//! Service's EndpointSlices, followed by watch. A ready endpoint serves; one that turns
//! not ready or terminating drains at once (no new requests, its requests finish); one
//! that goes is closed after its last reply. DNS could say none of this, and only every
//! few seconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use crate::control::{Control, Endpoint, EndpointState};
use crate::discovery::named;
use crate::watch_retry::WatchRetry;

/// How often the slices are listed again beside the watch. Once in the cluster suite a
/// watch started right after an API server restart delivered nothing for a minute and
/// reported no error (cause not found); a list bounds what such a watch can miss.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The label EndpointSlices carry with the name of their Service.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// A pool's Service: where its EndpointSlices are and which port is the ZeroMQ one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolService {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port: the slice port of that number, or the slice's only port.
    pub port: u16,
}

impl PoolService {
    /// The Service named by `tcp://NAME.NAMESPACE.svc[.cluster.local]:PORT`, if it is one.
    pub fn from_endpoint(endpoint: &str) -> Option<Self> {
        let (host, port) = named(endpoint)?;
        let mut labels = host.split('.');
        let name = labels.next()?.to_string();
        let namespace = labels.next()?.to_string();
        (labels.next() == Some("svc")).then_some(Self {
            namespace,
            name,
            port,
        })
    }
}

fn address_of(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("tcp://[{ip}]:{port}")
    } else {
        format!("tcp://{ip}:{port}")
    }
}

/// The endpoints `slices` give for `service`, one per address: serving when ready (an
/// unknown readiness counts as ready, as the API says), draining when not ready or
/// terminating. An address in two slices (a slice being replaced) serves if either says so.
pub fn endpoints_of(service: &PoolService, slices: &[EndpointSlice]) -> Vec<Endpoint> {
    let mut out: BTreeMap<String, EndpointState> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .filter_map(|p| p.port)
            .find(|p| *p == i32::from(service.port))
            .or(match ports {
                [only] => only.port,
                _ => None,
            });
        let Some(port) = port else {
            continue;
        };
        for e in &slice.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            let state = if c.ready.unwrap_or(true) && !c.terminating.unwrap_or(false) {
                EndpointState::Serving
            } else {
                EndpointState::Draining
            };
            for ip in &e.addresses {
                let entry = out
                    .entry(address_of(ip, port))
                    .or_insert(EndpointState::Draining);
                if state == EndpointState::Serving {
                    *entry = state;
                }
            }
        }
    }
    out.into_iter()
        .map(|(address, state)| Endpoint { address, state })
        .collect()
}

/// Lists each pool's Services' EndpointSlices now, then follows them by watch until the
/// task is dropped. Literal addresses in a pool stay as given. Fails when a pool endpoint
/// is a name that is not a Service's, or when the first list is refused.
pub async fn follow(
    client: Client,
    configured: Vec<Vec<String>>,
    control: Arc<Control>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut watches = Vec::new();
    let mut literal: Vec<Vec<Endpoint>> = Vec::new();
    for (pool, endpoints) in configured.iter().enumerate() {
        let mut addresses = Vec::new();
        for e in endpoints {
            if named(e).is_none() {
                addresses.push(Endpoint::serving(e));
                continue;
            }
            let service = PoolService::from_endpoint(e).ok_or_else(|| {
                format!("pool endpoint {e}: with EndpointSlice discovery write tcp://SERVICE.NAMESPACE.svc.cluster.local:PORT")
            })?;
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &service.namespace);
            let selector = format!("{SERVICE_LABEL}={}", service.name);
            let first = api
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map_err(|e| {
                    format!(
                        "listing the EndpointSlices of Service {}/{}: {e}",
                        service.namespace, service.name
                    )
                })?;
            watches.push((pool, service, api, selector, first.items));
        }
        literal.push(addresses);
    }
    let state = Arc::new(PoolEndpoints {
        literal,
        found: std::sync::Mutex::new(BTreeMap::new()),
        control,
    });
    let mut tasks = Vec::new();
    for (pool, service, api, selector, first) in watches {
        state.set(pool, &service, endpoints_of(&service, &first));
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            watch(pool, service, api, selector, state).await;
        }));
    }
    Ok(tokio::spawn(async move {
        // Dropping (aborting) this task stops the watches with it.
        let _guard = AbortOnDrop(tasks);
        std::future::pending::<()>().await;
    }))
}

/// Aborts the watch tasks when the following task ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Every pool's endpoints: its literal addresses plus what each of its Services has.
struct PoolEndpoints {
    literal: Vec<Vec<Endpoint>>,
    /// By (pool, namespace/name).
    found: std::sync::Mutex<BTreeMap<(usize, String), Vec<Endpoint>>>,
    control: Arc<Control>,
}

impl PoolEndpoints {
    /// Records `endpoints` for `service` of `pool` and hands the pool's whole set on.
    fn set(&self, pool: usize, service: &PoolService, endpoints: Vec<Endpoint>) {
        let mut found = self.found.lock().expect("endpoints lock");
        let key = (pool, format!("{}/{}", service.namespace, service.name));
        if found.get(&key) == Some(&endpoints) {
            return;
        }
        tracing::info!(service = %key.1, ?endpoints, "endpoints changed");
        found.insert(key, endpoints);
        let mut all = self.literal[pool].clone();
        for ((p, _), eps) in found.iter() {
            if *p == pool {
                all.extend(eps.iter().cloned());
            }
        }
        self.control.update(|s| s.endpoints[pool] = all);
    }
}

async fn watch(
    pool: usize,
    service: PoolService,
    api: Api<EndpointSlice>,
    selector: String,
    state: Arc<PoolEndpoints>,
) {
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    // A relist builds a fresh set; the old one stays in force until it is complete.
    let mut relisted: Option<BTreeMap<String, EndpointSlice>> = None;
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api.clone(), config)
        .backoff(WatchRetry::default())
        .boxed();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(e) => e,
                None => return,
            },
            _ = resync.tick() => {
                // A consistent read: what a watch that went quiet missed is caught here.
                match api.list(&kube::api::ListParams::default().labels(&selector)).await {
                    Ok(list) => {
                        slices = list.items.into_iter().map(|s| (s.name_any(), s)).collect();
                        relisted = None;
                        let all: Vec<EndpointSlice> = slices.values().cloned().collect();
                        state.set(pool, &service, endpoints_of(&service, &all));
                    }
                    Err(e) => tracing::debug!("relisting the EndpointSlices of {}/{}: {e}", service.namespace, service.name),
                }
                continue;
            }
        };
        match event {
            Ok(Event::Init) => relisted = Some(BTreeMap::new()),
            Ok(Event::InitApply(s)) => {
                relisted.get_or_insert_default().insert(s.name_any(), s);
            }
            Ok(Event::InitDone) => slices = relisted.take().unwrap_or_default(),
            Ok(Event::Apply(s)) => {
                slices.insert(s.name_any(), s);
            }
            Ok(Event::Delete(s)) => {
                slices.remove(&s.name_any());
            }
            Err(e) => {
                tracing::warn!(
                    "watching the EndpointSlices of Service {}/{}: {e}; keeping the current endpoints",
                    service.namespace,
                    service.name
                );
                continue;
            }
        }
        if relisted.is_none() {
            let all: Vec<EndpointSlice> = slices.values().cloned().collect();
            state.set(pool, &service, endpoints_of(&service, &all));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };

    fn service() -> PoolService {
        PoolService::from_endpoint("tcp://echo-stable.trading.svc.cluster.local:5555").unwrap()
    }

    fn endpoint(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            ..Default::default()
        }
    }

    fn slice(endpoints: Vec<SliceEndpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("zmq".into()),
                port: Some(5555),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_service_name_is_read_from_the_endpoint() {
        assert_eq!(
            service(),
            PoolService {
                namespace: "trading".into(),
                name: "echo-stable".into(),
                port: 5555
            }
        );
        let short = PoolService::from_endpoint("tcp://echo-canary.trading.svc:5555").unwrap();
        assert_eq!(short.name, "echo-canary");
        assert_eq!(PoolService::from_endpoint("tcp://echo-canary:5555"), None);
        assert_eq!(PoolService::from_endpoint("tcp://10.0.0.7:5555"), None);
    }

    #[test]
    fn ready_endpoints_serve_and_not_ready_or_terminating_ones_drain() {
        let got = endpoints_of(
            &service(),
            &[slice(vec![
                endpoint("10.1.0.1", Some(true), Some(false)),
                endpoint("10.1.0.2", Some(false), Some(false)),
                endpoint("10.1.0.3", Some(false), Some(true)),
                endpoint("10.1.0.4", None, None),
            ])],
        );
        let states: Vec<(&str, EndpointState)> =
            got.iter().map(|e| (e.address.as_str(), e.state)).collect();
        assert_eq!(
            states,
            vec![
                ("tcp://10.1.0.1:5555", EndpointState::Serving),
                ("tcp://10.1.0.2:5555", EndpointState::Draining),
                ("tcp://10.1.0.3:5555", EndpointState::Draining),
                ("tcp://10.1.0.4:5555", EndpointState::Serving),
            ]
        );
    }

    #[test]
    fn an_address_in_two_slices_serves_if_either_says_so_and_fqdn_slices_are_ignored() {
        let mut fqdn = slice(vec![endpoint("pod.example", Some(true), None)]);
        fqdn.address_type = "FQDN".into();
        let got = endpoints_of(
            &service(),
            &[
                slice(vec![endpoint("10.1.0.1", Some(false), Some(true))]),
                slice(vec![endpoint("10.1.0.1", Some(true), None)]),
                fqdn,
            ],
        );
        assert_eq!(got, vec![Endpoint::serving("tcp://10.1.0.1:5555")]);
    }

    #[test]
    fn a_slice_port_of_another_number_is_used_only_when_it_is_the_only_one() {
        let mut s = slice(vec![endpoint("fd00::7", Some(true), None)]);
        s.address_type = "IPv6".into();
        s.ports.as_mut().unwrap()[0].port = Some(6000);
        assert_eq!(
            endpoints_of(&service(), std::slice::from_ref(&s)),
            vec![Endpoint::serving("tcp://[fd00::7]:6000")]
        );
        s.ports.as_mut().unwrap().push(EndpointPort {
            port: Some(9464),
            ..Default::default()
        });
        assert!(endpoints_of(&service(), &[s]).is_empty());
    }
}
