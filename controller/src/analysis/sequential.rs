//! Anytime-valid sequential tests on counts: "is the canary's bad-request rate beyond its
//! bound?" answered with an e-value that may be looked at after every request. By Ville's
//! inequality a nonnegative supermartingale under the null reaches 1/alpha with probability
//! at most alpha, however often it is looked at and whenever the looking stops, so a
//! canary no worse than its gate is failed with probability at most alpha over its whole
//! rollout (Lindon, Sanden, Shirikian, KDD 2022, do the same for deployments at Netflix).
//!
//! Why these tests:
//! - One sample (`max`, `min`): the likelihood ratio of the counts against the bound p0,
//!   mixed over a prior on the alternative side. Against p0 it is a martingale; against
//!   any rate on the null side it is a supermartingale (each request's factor has
//!   expectation below 1), so the null may be composite. Above a bound the prior's
//!   density falls as p^-3/4: about as much weight on a canary failing 20% of requests as
//!   a uniform prior (caught in about fifteen of them), seven times more near 2% (caught
//!   in a few thousand requests rather than tens of thousands). Below a bound (`min`) it is
//!   uniform. Both mixtures have closed forms through the incomplete beta function.
//! - Two samples (`relative`, canary against stable): the numerator mixes both pools' rates
//!   over uniform priors (a product of two beta functions); the denominator is the
//!   likelihood maximised over the whole null (canary at most stable + margin, or stable x
//!   factor). The ratio is at most the mixture martingale over the *true* null point, so it
//!   is valid whatever stable's rate is and however the traffic split changes between
//!   steps; it depends on the counts alone, so a restart recomputes it from counters.
//!   Conditioning on the split (a binomial of errors between pools) would need the split at
//!   every error, which counters do not keep.

use super::special::{ln_beta, ln_beta_lower, ln_beta_upper};

/// The prior above a bound has density proportional to p^-PRIOR_DECAY.
const PRIOR_DECAY: f64 = 0.75;
use zdeploy_api::service::Tally;

/// Which side of the bound the canary's rate must stay on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The rate must be at most this (a `max` gate).
    AtMost(f64),
    /// The rate must be at least this (a `min` gate).
    AtLeast(f64),
}

/// How the canary's rate may relate to stable's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    /// Canary at most stable + margin.
    Margin(f64),
    /// Canary at most stable x factor.
    Factor(f64),
}

impl Comparison {
    /// The highest canary rate the null allows for stable's rate `s`.
    fn ceiling(self, s: f64) -> f64 {
        match self {
            Comparison::Margin(m) => (s + m).min(1.0),
            Comparison::Factor(f) => (s * f).min(1.0),
        }
    }
}

/// `a * ln(b)` with 0 * ln(0) = 0, as in a likelihood with no events of a kind.
fn xlny(a: f64, b: f64) -> f64 {
    if a == 0.0 { 0.0 } else { a * b.ln() }
}

/// ln of the Bernoulli likelihood of `t` at rate `p`.
fn ln_likelihood(t: Tally, p: f64) -> f64 {
    let (n, k) = (t.requests as f64, t.bad as f64);
    xlny(k, p) + xlny(n - k, 1.0 - p)
}

fn rate(t: Tally) -> f64 {
    if t.requests == 0 {
        0.0
    } else {
        t.bad as f64 / t.requests as f64
    }
}

/// ln of the evidence that the rate behind `t` breaks `bound`.
pub fn ln_evidence(t: Tally, bound: Bound) -> f64 {
    let (n, k) = (t.requests as f64, t.bad.min(t.requests) as f64);
    let (a, b) = (k + 1.0, n - k + 1.0);
    match bound {
        Bound::AtMost(p0) => {
            let p0 = p0.clamp(0.0, 1.0);
            if p0 >= 1.0 {
                return f64::NEG_INFINITY;
            }
            // ∫_p0^1 p^-c dp = (1 - p0^(1-c)) / (1-c) normalises the prior.
            let c = PRIOR_DECAY;
            let norm = ((1.0 - p0.powf(1.0 - c)) / (1.0 - c)).ln();
            ln_beta_upper(p0, a - c, b) - norm - ln_likelihood(t, p0)
        }
        Bound::AtLeast(p0) => {
            let p0 = p0.clamp(0.0, 1.0);
            if p0 <= 0.0 {
                return f64::NEG_INFINITY;
            }
            ln_beta_lower(p0, a, b) - p0.ln() - ln_likelihood(t, p0)
        }
    }
}

/// An upper bound of [`ln_evidence`] that costs a few logarithms: the likelihood ratio at
/// the best rate on the alternative side (the mixture can never beat its best component).
pub fn ln_evidence_bound(t: Tally, bound: Bound) -> f64 {
    let p = rate(t);
    let p0 = match bound {
        Bound::AtMost(p0) if p > p0 => p0,
        Bound::AtLeast(p0) if p < p0 => p0,
        _ => return 0.0,
    };
    ln_likelihood(t, p) - ln_likelihood(t, p0)
}

/// ln of the evidence that the canary's rate is beyond what `cmp` allows against stable.
pub fn ln_evidence_relative(canary: Tally, stable: Tally, cmp: Comparison) -> f64 {
    let mix = |t: Tally| {
        let k = t.bad.min(t.requests) as f64;
        ln_beta(k + 1.0, t.requests as f64 - k + 1.0)
    };
    let numerator = mix(canary) + mix(stable);
    let (pc, ps) = (rate(canary), rate(stable));
    let denominator = if pc <= cmp.ceiling(ps) {
        ln_likelihood(canary, pc) + ln_likelihood(stable, ps)
    } else {
        // The null's best point lies on its boundary, canary = ceiling(stable), with stable's
        // rate between its own estimate and the one that puts the ceiling at the canary's:
        // the log-likelihood is concave along it, so a ternary search finds the maximum.
        let on_boundary = |s: f64| ln_likelihood(canary, cmp.ceiling(s)) + ln_likelihood(stable, s);
        let reach = match cmp {
            Comparison::Margin(m) => pc - m,
            Comparison::Factor(f) if f > 0.0 => pc / f,
            Comparison::Factor(_) => 1.0,
        };
        let (mut lo, mut hi) = (ps, reach.clamp(ps, 1.0));
        for _ in 0..100 {
            let a = lo + (hi - lo) / 3.0;
            let b = hi - (hi - lo) / 3.0;
            if on_boundary(a) < on_boundary(b) {
                lo = a;
            } else {
                hi = b;
            }
        }
        on_boundary((lo + hi) / 2.0)
    };
    numerator - denominator
}

/// The Wilson score interval for the rate behind `t` at normal quantile `z` (1.96: 95%).
pub fn wilson_interval(t: Tally, z: f64) -> (f64, f64) {
    if t.requests == 0 {
        return (0.0, 1.0);
    }
    let n = t.requests as f64;
    let p = rate(t);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests;
