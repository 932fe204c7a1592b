//! `Weight`: a share of traffic in percent, checked to lie in 0..=100.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// A traffic share in percent; construction refuses anything above 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Weight(u8);

/// A weight outside 0..=100 was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("weight must be between 0 and 100 (got {0})")]
pub struct WeightOutOfRange(pub i64);

impl Weight {
    /// No traffic.
    pub const ZERO: Weight = Weight(0);
    /// All traffic.
    pub const FULL: Weight = Weight(100);

    /// A weight, if `percent` lies in 0..=100.
    pub fn new(percent: i64) -> Result<Self, WeightOutOfRange> {
        u8::try_from(percent)
            .ok()
            .filter(|p| *p <= 100)
            .map(Weight)
            .ok_or(WeightOutOfRange(percent))
    }

    /// The share in percent.
    pub const fn percent(self) -> u8 {
        self.0
    }

    /// What is left for the other side of a two-way split.
    pub const fn complement(self) -> Weight {
        Weight(100 - self.0)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        Weight::new(n).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Weight {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Weight".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_0_to_100() {
        assert_eq!(Weight::new(0).unwrap().percent(), 0);
        assert_eq!(Weight::new(100).unwrap().percent(), 100);
        assert_eq!(Weight::new(101), Err(WeightOutOfRange(101)));
        assert_eq!(Weight::new(-1), Err(WeightOutOfRange(-1)));
        assert!(serde_json::from_str::<Weight>("150").is_err());
        assert_eq!(Weight::new(10).unwrap().complement().percent(), 90);
    }
}
