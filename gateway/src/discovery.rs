//! Endpoints by name: a pool given as `tcp://echo-stable.trading.svc.cluster.local:5555`
//! (a headless Service) means every address the name resolves to, one connection each, so
//! zgate reaches every pod. libzmq alone would resolve the name once, to one address.
//! Names are resolved again every few seconds as pods come and go. In a cluster, zgate
//! follows EndpointSlices instead (`endpointslices.rs`): DNS says nothing of readiness.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, Endpoint};

/// How often names are resolved again.
pub const EVERY: Duration = Duration::from_secs(2);

/// `(host, port)` of a `tcp://host:port` endpoint whose host is a name, not an address.
pub fn named(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let is_address = host == "*" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
    (!is_address).then(|| (host.to_string(), port))
}

/// The endpoint string libzmq connects to for an address.
pub fn endpoint_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("tcp://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("tcp://[{}]:{}", a.ip(), a.port()),
    }
}

/// The endpoints of each pool now: addresses as given, names resolved (a name that does
/// not resolve keeps what it had).
async fn resolve(configured: &[Vec<String>], previous: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (pool, endpoints) in configured.iter().enumerate() {
        let mut set = BTreeSet::new();
        for e in endpoints {
            match named(e) {
                None => {
                    set.insert(e.clone());
                }
                Some((host, port)) => match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => set.extend(addrs.map(endpoint_of)),
                    Err(err) => {
                        tracing::warn!("resolving {e}: {err}; keeping its previous addresses");
                        set.extend(previous.get(pool).into_iter().flatten().cloned());
                    }
                },
            }
        }
        out.push(set.into_iter().collect());
    }
    out
}

fn serving(pools: &[Vec<String>]) -> Vec<Vec<Endpoint>> {
    pools
        .iter()
        .map(|eps| eps.iter().map(Endpoint::serving).collect())
        .collect()
}

/// Resolves the pools' names now and every `EVERY`, handing changes to the data plane.
pub async fn follow(
    configured: Vec<Vec<String>>,
    control: Arc<Control>,
) -> tokio::task::JoinHandle<()> {
    let mut current = resolve(&configured, &[]).await;
    control.update(|s| s.endpoints = serving(&current));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let next = resolve(&configured, &current).await;
            if next != current {
                tracing::info!(?next, "pool endpoints changed");
                control.update(|s| s.endpoints = serving(&next));
                current = next;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(
            named("tcp://echo-stable.trading.svc.cluster.local:5555"),
            Some(("echo-stable.trading.svc.cluster.local".into(), 5555))
        );
        assert_eq!(named("tcp://127.0.0.1:5555"), None);
        assert_eq!(named("tcp://[::1]:5555"), None);
        assert_eq!(named("tcp://*:5555"), None);
        assert_eq!(named("ipc:///tmp/x"), None);
        assert_eq!(endpoint_of("[::1]:7".parse().unwrap()), "tcp://[::1]:7");
    }

    #[tokio::test]
    async fn localhost_resolves_to_its_addresses() {
        let got = resolve(
            &[vec![
                "tcp://localhost:6001".into(),
                "tcp://127.0.0.2:6002".into(),
            ]],
            &[],
        )
        .await;
        assert!(
            got[0].contains(&"tcp://127.0.0.1:6001".to_string()),
            "{got:?}"
        );
        assert!(got[0].contains(&"tcp://127.0.0.2:6002".to_string()));
        assert!(!got[0].iter().any(|e| e.contains("localhost")));
    }
}
