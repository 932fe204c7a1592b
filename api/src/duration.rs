//! `Duration`: a time span written the Kubernetes way (`800ms`, `30s`, `5m`, `1h30m`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern a duration string must match (also enforced by the API server).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A non-negative time span, written as `800ms`, `30s`, `5m` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDurationError {
    /// Not a number and a unit.
    #[error(
        "{0:?} is not a duration: write a number and a unit (ms, s, m, h), e.g. 800ms, 30s, 5m, 1h30m"
    )]
    Malformed(String),
    /// Longer than any zdeploy takes.
    #[error(
        "{0:?} is longer than the maximum of 8760h (one year) that zdeploy takes for any duration"
    )]
    TooLong(String),
}

impl Duration {
    /// The longest span zdeploy accepts anywhere (one year): every deadline computed from
    /// an accepted duration fits a clock, so no input can overflow one.
    pub const MAX: Self = Self::from_secs(365 * 24 * 3600);

    /// A span of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A span of whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The span as a standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError::Malformed(s.to_string());
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(err());
        }
        let mut total = 0f64;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            // `ms` must be tried before `m`.
            let (unit_secs, unit_len) = if rest.starts_with("ms") {
                (0.001, 2)
            } else if rest.starts_with('s') {
                (1.0, 1)
            } else if rest.starts_with('m') {
                (60.0, 1)
            } else if rest.starts_with('h') {
                (3600.0, 1)
            } else {
                return Err(err());
            };
            total += number * unit_secs;
            rest = &rest[unit_len..];
        }
        if total > Self::MAX.0.as_secs_f64() {
            return Err(ParseDurationError::TooLong(s.to_string()));
        }
        std::time::Duration::try_from_secs_f64(total)
            .map(Self)
            .map_err(|_| err())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = ms / 1000;
        let (h, m) = (secs / 3600, (secs % 3600) / 60);
        secs %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_spans() {
        assert_eq!(
            "800ms".parse::<Duration>().unwrap(),
            Duration::from_millis(800)
        );
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!(
            "1h30m".parse::<Duration>().unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            "1.5s".parse::<Duration>().unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "5", "m", "5 minutes", "5x", "-1s", "1..2s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_spans_beyond_the_maximum() {
        assert_eq!("8760h".parse::<Duration>().unwrap(), Duration::MAX);
        for long in [
            "8760h1ms",
            "9223372036854775807s",
            "2562047788015215h",
            "99999999999999999999999999999999999999999999h",
        ] {
            let e = long.parse::<Duration>().unwrap_err();
            assert!(
                matches!(e, ParseDurationError::TooLong(_)) && e.to_string().contains("8760h"),
                "{long}: {e}"
            );
        }
    }

    proptest::proptest! {
        /// Any number with any unit parses to a span within the maximum, or is refused as
        /// too long exactly when it is; nothing panics.
        #[test]
        fn extreme_spans_parse_or_are_refused_as_too_long(
            whole in proptest::prelude::any::<u64>(),
            frac in 0u32..1000,
            unit in proptest::sample::select(vec![("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]),
        ) {
            let text = format!("{whole}.{frac:03}{}", unit.0);
            let secs = (whole as f64 + f64::from(frac) / 1000.0) * unit.1;
            match text.parse::<Duration>() {
                Ok(d) => proptest::prop_assert!(d <= Duration::MAX && secs <= Duration::MAX.0.as_secs_f64()),
                Err(ParseDurationError::TooLong(_)) => proptest::prop_assert!(secs > Duration::MAX.0.as_secs_f64()),
                Err(e) => proptest::prop_assert!(false, "{text}: {e}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["800ms", "30s", "5m", "1h30m", "2h", "1m5s", "0s"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in ["800ms", "1h30m", "1.5s"] {
            assert!(re.is_match(s) && s.parse::<Duration>().is_ok());
        }
        for s in ["5", "5x", "-1s"] {
            assert!(!re.is_match(s) && s.parse::<Duration>().is_err());
        }
    }
}
