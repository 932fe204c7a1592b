//! Pool choice per request: smooth weighted round-robin (as in nginx), or a stable hash
//! of the client identity when routing is sticky.

use zdeploy_api::Weight;

/// Picks a pool for each request so that shares follow the weights closely at every
/// point of the sequence, not just on average.
#[derive(Clone, Debug)]
pub struct WeightedRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl WeightedRoundRobin {
    /// A router over pools with these weights, in pool order.
    pub fn new(weights: &[Weight]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(w.percent())).collect();
        Self {
            current: vec![0; weights.len()],
            total: weights.iter().sum(),
            weights,
        }
    }

    /// The next pool, or `None` when every weight is 0. A pool at weight 0 is never chosen.
    pub fn pick(&mut self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if self.weights[i] == 0 {
                continue;
            }
            self.current[i] += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= self.total;
        Some(b)
    }

    /// The pool for a client identity: the same while weights do not change.
    pub fn pick_sticky(&self, client: &[u8]) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        // FNV-1a: stable across runs and processes, unlike the std hasher.
        let hash = client.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut slot = (hash % self.total as u64) as i64;
        for (i, w) in self.weights.iter().enumerate() {
            if slot < *w {
                return Some(i);
            }
            slot -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ps: &[i64]) -> Vec<Weight> {
        ps.iter().map(|p| Weight::new(*p).unwrap()).collect()
    }

    #[test]
    fn shares_are_exact_over_each_cycle() {
        let mut r = WeightedRoundRobin::new(&w(&[90, 10]));
        let mut counts = [0; 2];
        for _ in 0..100 {
            counts[r.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [90, 10]);
    }

    #[test]
    fn smooth_means_spread_out() {
        let mut r = WeightedRoundRobin::new(&w(&[50, 50]));
        let seq: Vec<usize> = (0..6).map(|_| r.pick().unwrap()).collect();
        assert_eq!(seq, [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn weight_zero_gets_nothing() {
        let mut r = WeightedRoundRobin::new(&w(&[0, 100, 0]));
        assert!((0..1000).all(|_| r.pick() == Some(1)));
        assert!((0..1000u32).all(|i| r.pick_sticky(&i.to_le_bytes()) == Some(1)));
        assert_eq!(WeightedRoundRobin::new(&w(&[0, 0])).pick(), None);
    }

    #[test]
    fn sticky_is_stable_and_follows_weights() {
        let r = WeightedRoundRobin::new(&w(&[80, 20]));
        let mut canary = 0;
        for i in 0..10_000u32 {
            let id = i.to_be_bytes();
            let p = r.pick_sticky(&id).unwrap();
            assert_eq!(r.pick_sticky(&id), Some(p));
            canary += usize::from(p == 1);
        }
        assert!(
            (1_700..2_300).contains(&canary),
            "canary got {canary} of 10000"
        );
    }
}
