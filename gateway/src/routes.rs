//! Routes by client in the data plane: the route types are the API's
//! (`zdeploy_api::route`); here, a route is matched against a request's frames.

pub use zdeploy_api::route::{Match, Route, check_routes};

/// Whether a request from `identity` with body frames `body` matches `m`.
pub fn matches(m: &Match, identity: &[u8], body: &[zmq::Message]) -> bool {
    m.matches(identity, |n| body.get(n).map(|f| &f[..]))
}
