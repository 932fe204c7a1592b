//! Routes by client, the contract between a manifest, the status and zgate: a request
//! that matches a route goes to the route's pool whatever the weights (internal testers
//! first, one customer's traffic, one topic). A route matches the client's ZeroMQ routing
//! id by prefix (`identity:PREFIX`, for clients that set `ZMQ_ROUTING_ID`) or a frame of the
//! request body by prefix (`frame:N:PREFIX`). Prefixes are text, with `\xNN` for any byte.
//! Written `POOL=identity:PREFIX` or `POOL=frame:N:PREFIX`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a route looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// The client's routing id starts with these bytes.
    IdentityPrefix(Vec<u8>),
    /// Body frame `frame` (0: the first after the delimiter) starts with `prefix`.
    FramePrefix {
        /// Which body frame.
        frame: usize,
        /// The bytes it starts with.
        prefix: Vec<u8>,
    },
}

/// A route: matching requests go to `pool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Route {
    /// The pool matching requests go to.
    pub pool: String,
    /// What matches.
    pub matcher: Match,
}

impl Match {
    /// Whether a request from `identity` whose body frame `n` is `frame(n)` matches.
    pub fn matches<'a>(&self, identity: &[u8], frame: impl Fn(usize) -> Option<&'a [u8]>) -> bool {
        match self {
            Match::IdentityPrefix(p) => identity.starts_with(p),
            Match::FramePrefix { frame: n, prefix } => {
                frame(*n).is_some_and(|f| f.starts_with(prefix))
            }
        }
    }
}

/// Routes are written as text in documents and status: a string in the schema.
impl JsonSchema for Route {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Route".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "POOL=identity:PREFIX or POOL=frame:N:PREFIX (\\xNN for any byte)"
        })
    }
}

fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' && tail.first() == Some(&b'x') {
            // Exactly two hex digits: from_str_radix alone would take "+1" too.
            let hex = tail
                .get(1..3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{text:?}: \\x must be followed by two hex digits"))?;
            out.push(hex);
            rest = &tail[3..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Ok(out)
}

fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'\\' => "\\x5c".to_string(),
            0x21..=0x7e => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

impl std::str::FromStr for Route {
    type Err = String;

    /// `POOL=identity:PREFIX` or `POOL=frame:N:PREFIX`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write POOL=identity:PREFIX or POOL=frame:N:PREFIX (\\xNN for any byte)";
        let (pool, rule) = s
            .split_once('=')
            .ok_or_else(|| format!("route {s:?}: {usage}"))?;
        if pool.is_empty() {
            return Err(format!("route {s:?}: no pool before '='; {usage}"));
        }
        let matcher = if let Some(p) = rule.strip_prefix("identity:") {
            Match::IdentityPrefix(unescape(p)?)
        } else if let Some(rest) = rule.strip_prefix("frame:") {
            let (n, p) = rest
                .split_once(':')
                .ok_or_else(|| format!("route {s:?}: {usage}"))?;
            let frame = n
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| n.parse().ok())
                .flatten()
                .ok_or_else(|| {
                    format!("route {s:?}: frame {n:?} is not a frame index (0, 1, ...)")
                })?;
            Match::FramePrefix {
                frame,
                prefix: unescape(p)?,
            }
        } else {
            return Err(format!("route {s:?}: {usage}"));
        };
        let empty = match &matcher {
            Match::IdentityPrefix(p) | Match::FramePrefix { prefix: p, .. } => p.is_empty(),
        };
        if empty {
            return Err(format!(
                "route {s:?}: an empty prefix matches every request; set the weights instead"
            ));
        }
        let prefix = match &matcher {
            Match::IdentityPrefix(p) | Match::FramePrefix { prefix: p, .. } => p,
        };
        if prefix.len() > MAX_PREFIX {
            return Err(format!(
                "route {s:?}: a prefix is at most {MAX_PREFIX} bytes (a ZeroMQ routing id is at most 255)"
            ));
        }
        if matches!(&matcher, Match::IdentityPrefix(p) if p[0] == 0) {
            return Err(format!(
                "route {s:?}: routing ids starting with \\x00 are the ones libzmq makes up for clients that set none, so this would catch every such client; set ZMQ_ROUTING_ID on the clients to route and match that"
            ));
        }
        Ok(Route {
            pool: pool.to_string(),
            matcher,
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.matcher {
            Match::IdentityPrefix(p) => write!(f, "{}=identity:{}", self.pool, escape(p)),
            Match::FramePrefix { frame, prefix } => {
                write!(f, "{}=frame:{frame}:{}", self.pool, escape(prefix))
            }
        }
    }
}

impl TryFrom<String> for Route {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Route> for String {
    fn from(r: Route) -> Self {
        r.to_string()
    }
}

/// The most routes a service or a gateway takes.
pub const MAX_ROUTES: usize = 10_000;
/// The longest prefix a route matches, in bytes.
pub const MAX_PREFIX: usize = 255;

/// Checks that there are at most `MAX_ROUTES` routes and every one names one of `pools`.
pub fn check_routes(pools: &[String], routes: &[Route]) -> Result<(), String> {
    if routes.len() > MAX_ROUTES {
        return Err(format!(
            "{} routes: at most {MAX_ROUTES} are taken; route by a shared prefix instead of one route per client",
            routes.len()
        ));
    }
    match routes.iter().find(|r| !pools.contains(&r.pool)) {
        Some(r) => Err(format!(
            "route {r}: no pool {:?}; pools are: {}",
            r.pool,
            pools.join(", ")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_back_as_written_and_match_by_prefix() {
        let r: Route = "canary=identity:tester-".parse().unwrap();
        assert_eq!(r.to_string(), "canary=identity:tester-");
        assert!(r.matcher.matches(b"tester-7", |_| None));
        assert!(!r.matcher.matches(b"customer-7", |_| None));
        let f: Route = r"canary=frame:1:EUR\x00".parse().unwrap();
        assert_eq!(f.to_string(), r"canary=frame:1:EUR\x00");
        let body: [&[u8]; 2] = [b"quote", b"EUR\x00USD"];
        assert!(f.matcher.matches(b"any", |n| body.get(n).copied()));
        assert!(
            !f.matcher.matches(b"any", |n| body[..1].get(n).copied()),
            "no frame 1"
        );
        let json = serde_json::to_string(&vec![r.clone()]).unwrap();
        assert_eq!(json, r#"["canary=identity:tester-"]"#);
        assert_eq!(serde_json::from_str::<Vec<Route>>(&json).unwrap(), [r]);
    }

    #[test]
    fn a_bad_route_says_how_to_write_one() {
        for (bad, said) in [
            ("canary", "write POOL=identity:PREFIX"),
            ("=identity:x", "no pool"),
            ("canary=topic:x", "write POOL="),
            ("canary=frame:x:y", "not a frame index"),
            ("canary=identity:", "empty prefix"),
            (r"canary=identity:\xZZ", "two hex digits"),
            (r"canary=identity:\x+1", "two hex digits"),
            (r"canary=identity:\x-1", "two hex digits"),
            ("canary=frame:+0:x", "not a frame index"),
            ("canary=frame: 0:x", "not a frame index"),
            (r"canary=identity:\x00", "ZMQ_ROUTING_ID"),
        ] {
            let e = bad.parse::<Route>().unwrap_err();
            assert!(e.contains(said), "{bad}: {e}");
        }
        let long = format!("canary=frame:0:{}", "x".repeat(MAX_PREFIX + 1));
        assert!(long.parse::<Route>().unwrap_err().contains("at most 255"));
        let pools = ["stable".to_string(), "canary".to_string()];
        let many: Vec<Route> = (0..=MAX_ROUTES)
            .map(|i| format!("canary=identity:c{i}").parse().unwrap())
            .collect();
        assert!(
            check_routes(&pools, &many)
                .unwrap_err()
                .contains("at most 10000")
        );
        assert!(check_routes(&pools, &many[1..]).is_ok());
        let blue: Route = "blue=identity:x".parse().unwrap();
        assert!(
            check_routes(&pools, &[blue])
                .unwrap_err()
                .contains("no pool \"blue\"")
        );
    }
}
