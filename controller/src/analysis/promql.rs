//! PromQL for canary analysis: user templates with `{{service}}`, `{{namespace}}`,
//! `{{pool}}` and `{{interval}}`, and the built-in queries over zgate's metrics. Every
//! value put into a query is escaped as a PromQL string, so a name cannot inject PromQL.

use zdeploy_api::Duration;
use zdeploy_api::service::Builtin;

/// Who a query is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The ZmqService name.
    pub service: String,
    /// Its namespace; `None` when zgate's metrics carry no namespace label (local runs).
    pub namespace: Option<String>,
    /// The pool: `canary` or `stable`.
    pub pool: String,
}

impl Target {
    /// The same service, another pool.
    pub fn with_pool(&self, pool: &str) -> Target {
        Target {
            pool: pool.to_string(),
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
        .replace("{{pool}}", &escape(&target.pool))
        .replace("{{interval}}", &window.to_string())
}

/// The label matchers that select one pool of one service in zgate's metrics.
pub fn selector(target: &Target, extra: &str) -> String {
    let mut s = format!("service=\"{}\"", escape(&target.service));
    if let Some(ns) = &target.namespace {
        s.push_str(&format!(",namespace=\"{}\"", escape(ns)));
    }
    s.push_str(&format!(",pool=\"{}\"", escape(&target.pool)));
    s.push_str(extra);
    format!("{{{s}}}")
}

/// The PromQL of a built-in measurement.
pub fn builtin(kind: Builtin, target: &Target, window: Duration) -> String {
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(zgate_request_duration_seconds_bucket{}[{window}])))",
            selector(target, "")
        )
    };
    match kind {
        Builtin::ErrorRatio => format!(
            "sum(rate(zgate_requests_total{}[{window}])) / sum(rate(zgate_requests_total{}[{window}]))",
            selector(target, ",outcome!=\"ok\""),
            selector(target, "")
        ),
        Builtin::LatencyP99 => quantile(0.99),
        Builtin::LatencyP50 => quantile(0.5),
    }
}

/// The number of requests a pool served in the window: the sample count behind a verdict.
pub fn sample_count(target: &Target, window: Duration) -> String {
    format!(
        "sum(increase(zgate_requests_total{}[{window}]))",
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
            pool: "canary".into(),
        }
    }

    #[test]
    fn builtins_select_the_pool() {
        let q = builtin(
            Builtin::ErrorRatio,
            &target("echo"),
            Duration::from_secs(300),
        );
        assert_eq!(
            q,
            "sum(rate(zgate_requests_total{service=\"echo\",namespace=\"trading\",pool=\"canary\",outcome!=\"ok\"}[5m])) / sum(rate(zgate_requests_total{service=\"echo\",namespace=\"trading\",pool=\"canary\"}[5m]))"
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
