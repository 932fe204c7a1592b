//! Verdicts: one measured value against a metric's thresholds. Too few requests, no data or
//! NaN make a measurement inconclusive, never a failure and never a pass.

use zdeploy_api::service::{Metric, Verdict};

/// What was measured for one metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// The canary's value, when the source had one.
    pub value: Option<f64>,
    /// Requests the canary served in the window.
    pub samples: Option<f64>,
    /// Stable's value, for relative checks.
    pub stable: Option<f64>,
    /// Why there is no value, when the source could not give one.
    pub error: Option<String>,
}

/// Judges a reading; `min_samples` is the analysis-wide default.
pub fn judge(metric: &Metric, min_samples: u64, r: &Reading) -> (Verdict, String) {
    let inconclusive = |why: String| (Verdict::Inconclusive, why);
    if let Some(e) = &r.error {
        return inconclusive(format!("no measurement: {e}"));
    }
    let need = metric.min_samples.unwrap_or(min_samples) as f64;
    let samples = r.samples.unwrap_or(0.0);
    if samples < need {
        return inconclusive(format!(
            "only {samples:.0} canary requests in the window, {need:.0} needed to judge"
        ));
    }
    let Some(v) = r.value.filter(|v| !v.is_nan()) else {
        return inconclusive("no data: the query returned no series (or NaN)".into());
    };
    if let Some(max) = metric.max
        && v > max
    {
        return (Verdict::Fail, format!("{v:.4} is above the maximum {max}"));
    }
    if let Some(min) = metric.min
        && v < min
    {
        return (Verdict::Fail, format!("{v:.4} is below the minimum {min}"));
    }
    if let Some(rel) = &metric.relative {
        let Some(stable) = r.stable.filter(|s| !s.is_nan()) else {
            return inconclusive("no stable value to compare with".into());
        };
        if let Some(margin) = rel.margin
            && v > stable + margin
        {
            return (
                Verdict::Fail,
                format!("{v:.4} exceeds stable's {stable:.4} by more than {margin}"),
            );
        }
        if let Some(factor) = rel.factor
            && v > stable * factor
        {
            return (
                Verdict::Fail,
                format!("{v:.4} is more than {factor} times stable's {stable:.4}"),
            );
        }
    }
    (
        Verdict::Pass,
        format!("{v:.4} is within bounds ({samples:.0} requests)"),
    )
}

/// The verdict of a whole analysis: any failure fails; otherwise any inconclusive is inconclusive.
pub fn overall(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut result = Verdict::Pass;
    for v in verdicts {
        match v {
            Verdict::Fail => return Verdict::Fail,
            Verdict::Inconclusive => result = Verdict::Inconclusive,
            Verdict::Pass => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdeploy_api::Duration;
    use zdeploy_api::service::{Builtin, Relative};

    fn metric() -> Metric {
        Metric {
            name: "error-ratio".into(),
            builtin: Some(Builtin::ErrorRatio),
            query: None,
            window: Duration::from_secs(60),
            max: Some(0.01),
            min: None,
            relative: None,
            min_samples: None,
        }
    }

    fn reading(value: f64, samples: f64) -> Reading {
        Reading {
            value: Some(value),
            samples: Some(samples),
            ..Reading::default()
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(
            judge(&metric(), 50, &reading(0.005, 100.0)).0,
            Verdict::Pass
        );
        assert_eq!(judge(&metric(), 50, &reading(0.2, 100.0)).0, Verdict::Fail);
    }

    #[test]
    fn too_few_samples_or_no_data_is_inconclusive_not_failed() {
        let (v, why) = judge(&metric(), 50, &reading(1.0, 10.0));
        assert_eq!(v, Verdict::Inconclusive);
        assert!(why.contains("only 10 canary requests"), "{why}");
        assert_eq!(
            judge(&metric(), 50, &reading(f64::NAN, 100.0)).0,
            Verdict::Inconclusive
        );
        let none = Reading {
            samples: Some(100.0),
            ..Reading::default()
        };
        assert_eq!(judge(&metric(), 50, &none).0, Verdict::Inconclusive);
        let down = Reading {
            error: Some("connection refused".into()),
            ..Reading::default()
        };
        assert_eq!(judge(&metric(), 0, &down).0, Verdict::Inconclusive);
    }

    #[test]
    fn relative_to_stable() {
        let mut m = metric();
        m.max = None;
        m.relative = Some(Relative {
            margin: Some(0.005),
            factor: None,
        });
        let mut r = reading(0.02, 100.0);
        r.stable = Some(0.01);
        assert_eq!(judge(&m, 0, &r).0, Verdict::Fail);
        r.stable = Some(0.018);
        assert_eq!(judge(&m, 0, &r).0, Verdict::Pass);
        r.stable = None;
        assert_eq!(judge(&m, 0, &r).0, Verdict::Inconclusive);
        m.relative = Some(Relative {
            margin: None,
            factor: Some(1.5),
        });
        r.stable = Some(0.01);
        assert_eq!(judge(&m, 0, &r).0, Verdict::Fail);
    }

    #[test]
    fn overall_verdict() {
        use Verdict::*;
        assert_eq!(overall([Pass, Inconclusive, Fail]), Fail);
        assert_eq!(overall([Pass, Inconclusive]), Inconclusive);
        assert_eq!(overall([Pass, Pass]), Pass);
    }
}
