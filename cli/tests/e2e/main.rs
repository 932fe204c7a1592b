//! The cluster suite: zdeploy against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok nodes) built from Go modules by
//! `tests/controlplane/build`. One control plane serves every scenario; the scenarios
//! run one after another (they share the controller's Lease in zdeploy-system), each in
//! its own namespace. Nothing is skipped: missing binaries fail the suite.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod controlplane;
mod fleet;
mod leader;
mod netns;
mod placement;
mod pods;
mod rbac;
mod rollout;
mod scenario;
mod traffic;
mod windows;
mod zgate;

use std::sync::{Arc, OnceLock};

use controlplane::ControlPlane;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    if let Some(code) = netns::isolate() {
        std::process::exit(code);
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // Started by the first scenario that runs (none for `--list` or a filter that matches
    // nothing), on the main thread: scenarios run there one after another.
    let cp: Arc<OnceLock<ControlPlane>> = Arc::default();
    let trials = vec![
        trial(&cp, "rollout_through_the_cli", rollout::through_the_cli),
        trial(&cp, "rollout_through_gitops", rollout::through_gitops),
        trial(
            &cp,
            "a_fleet_of_idle_services_and_one_rollback",
            fleet::a_fleet_of_idle_services_and_one_rollback,
        ),
        trial(
            &cp,
            "the_crds_install_as_the_help_says",
            fleet::the_crds_install_as_the_help_says,
        ),
        trial(
            &cp,
            "config_changes_are_released_by_canary",
            rollout::config_changes_are_released_by_canary,
        ),
        trial(
            &cp,
            "a_change_to_many_services_waits_in_a_queue",
            rollout::a_change_to_many_services_waits_in_a_queue,
        ),
        trial(
            &cp,
            "scaled_through_the_scale_subresource",
            rollout::scaled_through_the_scale_subresource,
        ),
        trial(
            &cp,
            "pools_land_on_their_windows_build",
            placement::pools_land_on_their_windows_build,
        ),
        trial(
            &cp,
            "windows_rules_match_the_api_server",
            placement::windows_rules_match_the_api_server,
        ),
        trial(
            &cp,
            "the_crd_schema_refuses_what_validate_refuses",
            placement::the_crd_schema_refuses_what_validate_refuses,
        ),
        trial(
            &cp,
            "zgate_follows_its_configmap_through_the_api",
            zgate::follows_its_configmap_through_the_api,
        ),
        trial(
            &cp,
            "requests_through_zgate_survive_pod_churn",
            traffic::requests_through_zgate_survive_pod_churn,
        ),
        trial(
            &cp,
            "a_bad_canary_is_rolled_back_through_the_controller",
            traffic::a_bad_canary_is_rolled_back_through_the_controller,
        ),
        trial(
            &cp,
            "a_bad_config_is_rolled_back_by_the_analysis",
            traffic::a_bad_config_is_rolled_back_by_the_analysis,
        ),
        trial(
            &cp,
            "an_unreachable_canary_gets_nothing_and_is_rolled_back",
            traffic::an_unreachable_canary_gets_nothing_and_is_rolled_back,
        ),
        trial(
            &cp,
            "routes_by_client_reach_the_canary_at_weight_zero",
            traffic::routes_by_client_reach_the_canary_at_weight_zero,
        ),
        trial(
            &cp,
            "blue_green_switches_and_switches_back_in_one_change",
            traffic::blue_green_switches_and_switches_back_in_one_change,
        ),
        trial(
            &cp,
            "the_windows_exe_rolls_a_canary_back",
            windows::the_windows_exe_rolls_a_canary_back,
        ),
        trial(
            &cp,
            "a_standby_takes_over_from_a_killed_leader",
            leader::a_standby_takes_over_from_a_killed_leader,
        ),
        trial(
            &cp,
            "chaos_pod_kill_and_gateway_faults",
            chaos::pod_kill_and_gateway_faults,
        ),
        trial(&cp, "chaos_verbs_of_the_cli", chaos::chaos_verbs_of_the_cli),
        // Last: it reads the audit log the scenarios above wrote.
        trial(
            &cp,
            "rbac_roles_are_exactly_what_is_used",
            rbac::roles_are_exactly_what_is_used,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    drop(cp);
    conclusion.exit();
}

/// A scenario run against the shared control plane.
fn trial(
    cp: &Arc<OnceLock<ControlPlane>>,
    name: &str,
    test: fn(&ControlPlane) -> Result<(), Failed>,
) -> Trial {
    let cp = cp.clone();
    Trial::test(name, move || {
        test(cp.get_or_init(|| {
            let cp = ControlPlane::start();
            println!(
                "control plane {} ready at {} in {:.1} s",
                cp.version,
                cp.server,
                cp.started_in.as_secs_f64()
            );
            cp
        }))
    })
}
