//! The special functions the sequential tests need, in log space so that counts in the
//! millions neither overflow nor underflow: ln Γ, ln B and the tails of the beta integral.

/// ln Γ(x) for x > 0: the Stirling series, shifted up to x >= 10 where five terms give
/// about 15 digits.
pub fn ln_gamma(x: f64) -> f64 {
    debug_assert!(x > 0.0, "ln_gamma({x})");
    let mut shift = 0.0;
    let mut x = x;
    while x < 10.0 {
        shift += x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv
        * (1.0 / 12.0
            - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0 - inv2 / 1188.0))));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
}

/// ln B(a, b) = ln Γ(a) + ln Γ(b) - ln Γ(a + b).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln of ∫_0^x t^(a-1) (1-t)^(b-1) dt, the lower part of the beta integral.
pub fn ln_beta_lower(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if x >= 1.0 {
        return ln_beta(a, b);
    }
    // The continued fraction converges fast below the mode; above it, take the
    // complement of the other tail (which is then the small one).
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_tail_by_fraction(x, a, b)
    } else {
        let total = ln_beta(a, b);
        let upper = ln_tail_by_fraction(1.0 - x, b, a);
        total + (-(upper - total).exp()).ln_1p()
    }
}

/// ln of ∫_x^1 t^(a-1) (1-t)^(b-1) dt, the upper part of the beta integral.
pub fn ln_beta_upper(x: f64, a: f64, b: f64) -> f64 {
    ln_beta_lower(1.0 - x, b, a)
}

/// ln ∫_0^x t^(a-1)(1-t)^(b-1) dt by the continued fraction of the incomplete beta
/// function (modified Lentz), valid for x below (a+1)/(a+b+2).
fn ln_tail_by_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let front = a * x.ln() + b * (1.0 - x).ln() - a.ln();
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut fraction = d;
    // The number of terms needed grows like sqrt(a + b); the cap is far beyond it.
    for m in 1..100_000 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 + even * d;
        d = if d.abs() < TINY { 1.0 / TINY } else { 1.0 / d };
        c = 1.0 + even / c;
        if c.abs() < TINY {
            c = TINY;
        }
        fraction *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 + odd * d;
        d = if d.abs() < TINY { 1.0 / TINY } else { 1.0 / d };
        c = 1.0 + odd / c;
        if c.abs() < TINY {
            c = TINY;
        }
        let delta = d * c;
        fraction *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    front + fraction.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0_f64;
        for n in 1..30 {
            assert!(
                close(ln_gamma(f64::from(n)), factorial.ln(), 1e-13),
                "Γ({n})"
            );
            factorial *= f64::from(n);
        }
        // Γ(1/2) = sqrt(pi)
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-13
        ));
    }

    #[test]
    fn beta_tails_add_up_and_match_closed_forms() {
        // For a = 1: ∫_0^x (1-t)^(b-1) dt = (1 - (1-x)^b) / b.
        for (x, b) in [
            (0.01_f64, 3.0_f64),
            (0.5, 10.0),
            (0.9, 200.0),
            (0.001, 50_000.0),
        ] {
            let exact: f64 = (1.0 - (1.0 - x).powf(b)) / b;
            assert!(
                close(ln_beta_lower(x, 1.0, b), exact.ln(), 1e-10),
                "x={x} b={b}"
            );
        }
        for (x, a, b) in [
            (0.01, 3.0, 98.0),
            (0.3, 40.0, 60.0),
            (0.011, 1001.0, 99_001.0),
            (0.2, 2.0, 5.0),
        ] {
            // Compared in log space: B(1001, 99001) is far below the smallest f64.
            let (lower, upper) = (ln_beta_lower(x, a, b), ln_beta_upper(x, a, b));
            let top = lower.max(upper);
            let sum = top + ((lower - top).exp() + (upper - top).exp()).ln();
            assert!(close(sum, ln_beta(a, b), 1e-9), "x={x} a={a} b={b}");
        }
    }
}
