//! What the controller knows of the pods behind its Services, from their EndpointSlices
//! (one watch of every slice of a zdeploy Service): which zgate replicas to scrape, and
//! whether the canary has ready pods. With both, whether zgate reaches the canary.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::analysis::exposition::Exposition;
use crate::engine::Reach;
use zdeploy_api::Pool;
use zdeploy_gateway::metrics::HandshakeFailure;

use super::render::{METRICS_PORT, pool_service};

/// The label selecting the slices of every Service zdeploy renders.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=zdeploy";

/// The slices of `service` in `ns`.
fn slices_of<'a>(
    all: &'a [std::sync::Arc<EndpointSlice>],
    ns: &'a str,
    service: &'a str,
) -> impl Iterator<Item = &'a EndpointSlice> {
    all.iter().map(|s| s.as_ref()).filter(move |s| {
        s.namespace().as_deref() == Some(ns)
            && s.labels()
                .get("kubernetes.io/service-name")
                .map(String::as_str)
                == Some(service)
    })
}

/// Addresses of the ready endpoints of `service` (unknown readiness counts as ready).
fn ready_addresses(all: &[std::sync::Arc<EndpointSlice>], ns: &str, service: &str) -> Vec<String> {
    let mut out: Vec<String> = slices_of(all, ns, service)
        .filter(|s| s.address_type != "FQDN")
        .flat_map(|s| &s.endpoints)
        .filter(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            c.ready.unwrap_or(true) && !c.terminating.unwrap_or(false)
        })
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The pods behind zdeploy's Services, as their EndpointSlices say.
#[derive(Clone)]
pub struct Endpoints(pub Store<EndpointSlice>);

impl Endpoints {
    /// `/metrics` of every ready zgate replica of service `name`.
    pub fn zgate_metrics(&self, ns: &str, name: &str) -> Vec<String> {
        ready_addresses(&self.0.state(), ns, name)
            .into_iter()
            .map(|ip| match ip.contains(':') {
                true => format!("http://[{ip}]:{METRICS_PORT}/metrics"),
                false => format!("http://{ip}:{METRICS_PORT}/metrics"),
            })
            .collect()
    }

    /// Whether a canary pod of service `name` is ready.
    pub fn canary_ready(&self, ns: &str, name: &str) -> bool {
        !ready_addresses(&self.0.state(), ns, &pool_service(name, Pool::Canary)).is_empty()
    }
}

/// The fewest live backends of `pool` that any zgate replica reports; `None` when no
/// replica was scraped.
pub fn fewest_live(service: &str, pool: Pool, replicas: &[Exposition]) -> Option<f64> {
    let labels = [("service", service), ("pool", pool.name())];
    replicas
        .iter()
        .map(|e| {
            e.select("zgate_backends_live", &labels)
                .iter()
                .map(|s| s.value)
                .sum::<f64>()
        })
        .min_by(f64::total_cmp)
}

/// Whether zgate reaches the canary, from every zgate replica's scrape: live when one
/// reports a live canary backend (a replica that does not reach it routes it 0% by
/// itself); unreachable when ready canary pods are live in no replica; not ready when no
/// canary pod is ready or no replica could be scraped (nothing to blame the canary for).
pub fn reach(service: &str, canary_ready: bool, replicas: &[Exposition]) -> Reach {
    if !canary_ready || replicas.is_empty() {
        return Reach::NotReady;
    }
    let labels = [("service", service), ("pool", Pool::Canary.name())];
    let live = |e: &Exposition| {
        e.select("zgate_backends_live", &labels)
            .iter()
            .map(|s| s.value)
            .sum::<f64>()
            > 0.0
    };
    if replicas.iter().any(live) {
        return Reach::Live;
    }
    let failures = |why: HandshakeFailure| -> f64 {
        replicas
            .iter()
            .flat_map(|e| {
                e.select(
                    "zgate_handshake_failures_total",
                    &[
                        ("service", service),
                        ("pool", Pool::Canary.name()),
                        ("reason", why.label()),
                    ],
                )
            })
            .map(|s| s.value)
            .sum()
    };
    let handshake = [
        HandshakeFailure::Protocol,
        HandshakeFailure::Auth,
        HandshakeFailure::Other,
    ]
    .into_iter()
    .map(|why| (failures(why), why))
    .filter(|(n, _)| *n > 0.0)
    .max_by(|a, b| a.0.total_cmp(&b.0))
    .map(|(_, why)| why);
    Reach::Unreachable { handshake }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::exposition::parse;

    fn page(live: u32, protocol_failures: u32) -> Exposition {
        parse(&format!(
            "zgate_backends_live{{service=\"echo\",pool=\"canary\"}} {live}\n\
             zgate_backends_live{{service=\"echo\",pool=\"stable\"}} 3\n\
             zgate_handshake_failures_total{{service=\"echo\",pool=\"canary\",reason=\"protocol\"}} {protocol_failures}\n\
             zgate_handshake_failures_total{{service=\"echo\",pool=\"canary\",reason=\"auth\"}} 0\n"
        ))
        .unwrap()
    }

    #[test]
    fn live_when_a_replica_reaches_the_canary() {
        assert_eq!(reach("echo", true, &[page(1, 0), page(2, 0)]), Reach::Live);
        assert_eq!(reach("echo", true, &[page(1, 0), page(0, 0)]), Reach::Live);
        assert_eq!(
            reach("echo", true, &[page(0, 0), page(0, 0)]),
            Reach::Unreachable { handshake: None }
        );
    }

    #[test]
    fn a_failing_handshake_is_named_and_nothing_ready_blames_nobody() {
        assert_eq!(
            reach("echo", true, &[page(0, 7)]),
            Reach::Unreachable {
                handshake: Some(HandshakeFailure::Protocol)
            }
        );
        assert_eq!(reach("echo", false, &[page(0, 0)]), Reach::NotReady);
        assert_eq!(reach("echo", true, &[]), Reach::NotReady);
    }
}
