//! The two pools of a ZmqService, stable and canary. Their names are a contract: the
//! `zdeploy.io/pool` label, zgate's pool names and its metrics' `pool` label, the keys of
//! the weights document, and what analysis queries all use [`Pool::name`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Weight;

/// A pool of a ZmqService.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The released revision.
    Stable,
    /// The revision being released.
    Canary,
}

impl Pool {
    /// Both pools, stable first: the order of zgate's pools wherever zdeploy configures it.
    pub const ALL: [Pool; 2] = [Pool::Stable, Pool::Canary];

    /// Its name in labels, metrics and documents.
    pub const fn name(self) -> &'static str {
        match self {
            Pool::Stable => "stable",
            Pool::Canary => "canary",
        }
    }

    /// Its share when the canary takes `canary`.
    pub const fn share(self, canary: Weight) -> Weight {
        match self {
            Pool::Stable => canary.complement(),
            Pool::Canary => canary,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pool::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("no pool {s:?}: stable or canary"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_reads_back_from_its_name_and_shares_the_weight() {
        for p in Pool::ALL {
            assert_eq!(p.name().parse::<Pool>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("blue".parse::<Pool>().is_err());
        let ten = Weight::new(10).unwrap();
        assert_eq!(Pool::Stable.share(ten).percent(), 90);
        assert_eq!(Pool::Canary.share(ten), ten);
    }
}
