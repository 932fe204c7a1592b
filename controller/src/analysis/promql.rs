//! PromQL for canary analysis: user templates with `{{service}}`, `{{namespace}}`,
//! `{{pool}}` and `{{interval}}`, and the counts over zgate's metrics behind the built-ins. Every
//! value put into a query is escaped as a PromQL string, so a name cannot inject PromQL.

use zdeploy_api::{Duration, Pool};

/// Who a query is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The ZmqService name.
    pub service: String,
    /// Its namespace; `None` when zgate's metrics carry no namespace label (local runs).
    pub namespace: Option<String>,
    /// The pool.
    pub pool: Pool,
}

impl Target {
    /// The same service, another pool.
    pub fn with_pool(&self, pool: Pool) -> Target {
        Target {
            pool,
            ..self.clone()
        }
    }
}

/// Escapes a value for use inside a double-quoted PromQL string.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Fills a user template; placeholders belong inside quotes, e.g. `service="{{service}}"`.
pub fn render(template: &str, target: &Target, window: Duration) -> String {
    template
        .replace("{{service}}", &escape(&target.service))
        .replace(
            "{{namespace}}",
            &escape(target.namespace.as_deref().unwrap_or_default()),
        )
        .replace("{{pool}}", target.pool.name())
        .replace("{{interval}}", &window.to_string())
}

/// The label matchers that select one pool of one service in zgate's metrics.
pub fn selector(target: &Target, extra: &str) -> String {
    let mut s = format!("service=\"{}\"", escape(&target.service));
    if let Some(ns) = &target.namespace {
        s.push_str(&format!(",namespace=\"{}\"", escape(ns)));
    }
    s.push_str(&format!(",pool=\"{}\"", target.pool));
    s.push_str(extra);
    format!("{{{s}}}")
}

/// Every request of a pool over `range`: the count behind a verdict.
pub fn requests(target: &Target, range: Duration) -> String {
    format!(
        "sum(increase(zgate_requests_total{}[{range}]))",
        selector(target, "")
    )
}

/// A pool's requests that did not end `ok` (errors, timeouts, unavailable) over `range`.
pub fn errors(target: &Target, range: Duration) -> String {
    format!(
        "sum(increase(zgate_requests_total{}[{range}]))",
        selector(target, ",outcome!=\"ok\"")
    )
}

/// Requests copied to a pool by shadow traffic whose reply was judged over `range`.
pub fn shadowed(target: &Target, range: Duration) -> String {
    format!(
        "sum(increase(zgate_shadow_total{}[{range}]))",
        selector(target, "")
    )
}

/// Shadowed requests whose reply did not match stable's (different, an error, none).
pub fn mismatched(target: &Target, range: Duration) -> String {
    format!(
        "sum(increase(zgate_shadow_total{}[{range}]))",
        selector(target, ",outcome!=\"match\"")
    )
}

/// A pool's latency histogram over `range`, one series per bucket edge (`le`): the count
/// below the threshold's edge and the total, and the quantile's interpolation.
pub fn buckets(target: &Target, range: Duration) -> String {
    format!(
        "sum by (le) (increase(zgate_request_duration_seconds_bucket{}[{range}]))",
        selector(target, "")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str) -> Target {
        Target {
            service: service.into(),
            namespace: Some("trading".into()),
            pool: Pool::Canary,
        }
    }

    #[test]
    fn builtins_count_the_pool() {
        let q = errors(&target("echo"), Duration::from_secs(300));
        assert_eq!(
            q,
            "sum(increase(zgate_requests_total{service=\"echo\",namespace=\"trading\",pool=\"canary\",outcome!=\"ok\"}[5m]))"
        );
        assert_eq!(
            mismatched(&target("echo"), Duration::from_secs(60)),
            "sum(increase(zgate_shadow_total{service=\"echo\",namespace=\"trading\",pool=\"canary\",outcome!=\"match\"}[1m]))"
        );
        assert_eq!(
            buckets(&target("echo"), Duration::from_secs(90)),
            "sum by (le) (increase(zgate_request_duration_seconds_bucket{service=\"echo\",namespace=\"trading\",pool=\"canary\"}[1m30s]))"
        );
    }

    #[test]
    fn a_hostile_name_stays_inside_its_string() {
        let evil = "echo\"} or vector(1) or up{x=\"";
        let q = render(
            "rate(x{service=\"{{service}}\"}[{{interval}}])",
            &target(evil),
            Duration::from_secs(60),
        );
        assert_eq!(
            q,
            "rate(x{service=\"echo\\\"} or vector(1) or up{x=\\\"\"}[1m])"
        );
        assert_eq!(escape("a\\\"b\n"), "a\\\\\\\"b\\n");
    }
}
