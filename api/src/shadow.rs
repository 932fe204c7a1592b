//! Shadow traffic, the contract between the engine, the weights ConfigMap and zgate: a
//! share of the requests sent to other pools is copied to `pool` as well; the client gets
//! the first reply only, and the copy's reply is compared with it (`compare.rs`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Weight;

/// Copy `percent` of the requests that go elsewhere to `pool`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowCopy {
    /// The pool the copies go to (the canary).
    pub pool: String,
    /// The share of requests copied.
    pub percent: Weight,
}

impl std::str::FromStr for ShadowCopy {
    type Err = String;

    /// Parses `canary=5`: the pool and the percent of requests copied to it.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: write POOL=PERCENT, e.g. canary=5");
        let (pool, percent) = s.split_once('=').ok_or_else(bad)?;
        let percent: i64 = percent.trim().parse().map_err(|_| bad())?;
        let percent = Weight::new(percent).map_err(|e| format!("{s:?}: {e}"))?;
        let pool = pool.trim();
        if pool.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            pool: pool.to_string(),
            percent,
        })
    }
}

impl std::fmt::Display for ShadowCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.pool, self.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows_pool_and_percent() {
        let s: ShadowCopy = "canary=5".parse().unwrap();
        assert_eq!(s.percent.percent(), 5);
        assert_eq!(s.to_string(), "canary=5");
        assert!("canary".parse::<ShadowCopy>().is_err());
        assert!("canary=101".parse::<ShadowCopy>().is_err());
        assert!("=5".parse::<ShadowCopy>().is_err());
    }
}
