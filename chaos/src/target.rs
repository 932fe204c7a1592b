//! Which targets an experiment hits: how many, by mode and cap, and the label selector of
//! a pool's pods.

use zdeploy_api::Pool;
use zdeploy_api::chaos::{SelectionMode, TargetPool};

/// How many of `size` targets the selection hits: `mode` and `value`, capped by `max_targets`.
pub fn count(mode: SelectionMode, value: Option<u32>, max_targets: u32, size: usize) -> usize {
    let wanted = match mode {
        SelectionMode::One => 1,
        SelectionMode::Fixed => value.unwrap_or(1) as usize,
        SelectionMode::Percent => (size * value.unwrap_or(100) as usize).div_ceil(100),
    };
    wanted.min(max_targets as usize).min(size)
}

/// The pools a target pool stands for.
pub fn pools(pool: TargetPool) -> Vec<Pool> {
    match pool {
        TargetPool::Stable => vec![Pool::Stable],
        TargetPool::Canary => vec![Pool::Canary],
        TargetPool::All => Pool::ALL.to_vec(),
    }
}

/// The label selector of the service's pods in `pool` (labels zdeploy renders).
pub fn pod_selector(service: &str, pool: TargetPool) -> String {
    let names: Vec<&str> = pools(pool).into_iter().map(Pool::name).collect();
    let pool_expr = match names.as_slice() {
        [one] => format!("zdeploy.io/pool={one}"),
        many => format!("zdeploy.io/pool in ({})", many.join(",")),
    };
    format!("app.kubernetes.io/name={service},app.kubernetes.io/component=service,{pool_expr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_obeys_mode_and_max_targets() {
        assert_eq!(count(SelectionMode::One, None, 5, 4), 1);
        assert_eq!(count(SelectionMode::Fixed, Some(3), 2, 4), 2);
        assert_eq!(count(SelectionMode::Fixed, Some(9), 9, 4), 4);
        assert_eq!(count(SelectionMode::Percent, Some(50), 10, 3), 2);
        assert_eq!(count(SelectionMode::Percent, Some(10), 10, 3), 1);
        assert_eq!(count(SelectionMode::One, None, 1, 0), 0);
    }

    #[test]
    fn selectors() {
        assert_eq!(
            pod_selector("echo", TargetPool::Canary),
            "app.kubernetes.io/name=echo,app.kubernetes.io/component=service,zdeploy.io/pool=canary"
        );
        assert!(
            pod_selector("echo", TargetPool::All).ends_with("zdeploy.io/pool in (stable,canary)")
        );
    }
}
