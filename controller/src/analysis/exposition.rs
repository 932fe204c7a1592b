//! A parser for the Prometheus text exposition format (0.0.4) and OpenMetrics text, as
//! produced by prometheus-client, Python's prometheus_client and Prometheus itself. Label
//! values may hold commas, quotes, braces and escapes; `_total`, `_bucket`, `_sum` and
//! `_count` samples are tied back to their family's type.

use std::collections::{BTreeMap, HashMap};

/// The type a family declares with `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
    /// Quantiles, sum and count.
    Summary,
    /// Anything else (untyped, unknown, info, stateset, gaugehistogram).
    Untyped,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name as written, e.g. `zgate_requests_total`.
    pub name: String,
    /// Its labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The label `Exposition::merge` gives each sample: which replica it was scraped from.
pub const REPLICA_LABEL: &str = "zdeploy_replica";

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    types: HashMap<String, MetricType>,
}

/// A line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The line (cut at 120 characters).
    pub text: String,
}

impl Exposition {
    /// The type of the family a sample belongs to (`x_total` and `x_bucket` resolve to `x`).
    pub fn type_of(&self, sample_name: &str) -> MetricType {
        if let Some(t) = self.types.get(sample_name) {
            return *t;
        }
        for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
            if let Some(base) = sample_name.strip_suffix(suffix)
                && let Some(t) = self.types.get(base)
            {
                return *t;
            }
        }
        MetricType::Untyped
    }

    /// The scrapes of several replicas of one service as one exposition, each sample
    /// labelled `REPLICA_LABEL` with its replica's name: a selection adds the replicas
    /// up, and a counter that restarts in one replica is seen in that replica alone.
    pub fn merge(parts: Vec<(String, Exposition)>) -> Exposition {
        let mut out = Exposition::default();
        for (replica, p) in parts {
            out.samples.extend(p.samples.into_iter().map(|mut s| {
                s.labels.insert(REPLICA_LABEL.into(), replica.clone());
                s
            }));
            out.types.extend(p.types);
        }
        out
    }

    /// Samples named `name` whose labels include every pair in `matching`.
    pub fn select(&self, name: &str, matching: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && matching
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }
}

/// Parses a whole exposition text.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let err = |reason: &str| ParseError {
            line: i + 1,
            reason: reason.to_string(),
            text: line.chars().take(120).collect(),
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().ok_or_else(|| err("TYPE without a name"))?;
                let kind = match words.next().ok_or_else(|| err("TYPE without a type"))? {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    _ => MetricType::Untyped,
                };
                out.types.insert(name.to_string(), kind);
            }
            continue;
        }
        out.samples
            .push(parse_sample(trimmed).map_err(|r| err(&r))?);
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err("invalid metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..])?;
        labels = parsed;
        rest = after;
    }
    // OpenMetrics exemplars follow " # "; the value and optional timestamp come first.
    let rest = rest.split(" # ").next().unwrap_or_default();
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("a sample needs a value")?;
    let value = parse_value(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        let body = s.strip_prefix('"').ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key.to_string(), value);
        s = body[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_label_values_survive() {
        let text = "# TYPE req counter\nreq_total{path=\"/a,b\",q=\"say \\\"hi\\\" {x}\",nl=\"a\\nb\",bs=\"c:\\\\d\"} 3 1700000000000\n";
        let e = parse(text).unwrap();
        let s = &e.samples[0];
        assert_eq!(s.labels["path"], "/a,b");
        assert_eq!(s.labels["q"], "say \"hi\" {x}");
        assert_eq!(s.labels["nl"], "a\nb");
        assert_eq!(s.labels["bs"], "c:\\d");
        assert_eq!(s.value, 3.0);
        assert_eq!(e.type_of("req_total"), MetricType::Counter);
    }

    #[test]
    fn histogram_parts_resolve_to_their_family() {
        let text = "# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.5\nlat_count 2\nup NaN\nx{} -Inf # {trace_id=\"1\"} 0.1\n";
        let e = parse(text).unwrap();
        assert_eq!(e.type_of("lat_bucket"), MetricType::Histogram);
        assert_eq!(e.type_of("lat_count"), MetricType::Histogram);
        assert_eq!(e.samples[0].labels["le"], "+Inf");
        assert!(e.samples[3].value.is_nan());
        assert_eq!(e.samples[4].value, f64::NEG_INFINITY);
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let err = parse("ok 1\nbad{x=\"1\" 2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse("x{a=1} 2").is_err());
        assert!(parse("x{a=\"1\"} two").is_err());
        assert!(parse("<html>").is_err());
    }
}
