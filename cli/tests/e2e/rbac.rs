//! Least privilege, checked by the real authorizer: every request the controller's and
//! zgate's ServiceAccounts made in the suite was allowed, and every verb their roles grant
//! was used by some scenario. Runs last: it reads the audit log the others wrote.

use std::collections::BTreeSet;

use libtest_mimic::Failed;
use serde_json::Value;

use crate::controlplane::ControlPlane;

const CONTROLLER: &str = "system:serviceaccount:zdeploy-system:zdeploy-controller";
/// zgate's identity, in the namespaces the audit policy records: following its ConfigMap
/// (e2e-zgate) and serving traffic to pods it finds in EndpointSlices (e2e-traffic).
fn is_zgate(user: &str) -> bool {
    user.strip_prefix("system:serviceaccount:e2e-")
        .is_some_and(|rest| rest.ends_with(":echo-zgate"))
}

/// Granted and needed, but not always seen as a request in one run of the suite:
/// OwnerReferencesPermissionEnforcement (on in the suite's API server) asks the authorizer
/// whether the controller may update the owner's finalizers before it lets an object carry
/// blockOwnerDeletion; kube's event recorder patches an Event only when the same one
/// repeats soon after, which depends on timing.
const NOT_ALWAYS_A_REQUEST: [&str; 2] = [
    "zdeploy.io/zmqservices/finalizers update",
    "events.k8s.io/events patch",
];

/// Whether the authorizer refused the request: at the door, or inside an apply that
/// creates (the server asks again for `create`). A 403 because a namespace is being
/// deleted is not an RBAC refusal.
fn forbidden(record: &Value) -> bool {
    let status = &record["responseStatus"];
    record["annotations"]["authorization.k8s.io/decision"] == "forbid"
        || (status["code"] == 403
            && !status["message"]
                .as_str()
                .is_some_and(|m| m.contains("is being terminated")))
}

/// `group/resource[/subresource] verb` for an audit record or a role rule.
fn permission(group: &str, resource: &str, verb: &str) -> String {
    format!("{group}/{resource} {verb}")
}

/// The permissions a request used: a server-side apply that created its object (201)
/// used `create` as well as `patch`.
fn used(record: &Value) -> Vec<String> {
    let Some(one) = permission_of(record) else {
        return Vec::new();
    };
    let created_by_apply = record["verb"] == "patch" && record["responseStatus"]["code"] == 201;
    let mut out = vec![one.clone()];
    if created_by_apply {
        out.push(one.replace(" patch", " create"));
    }
    out
}

fn permission_of(record: &Value) -> Option<String> {
    let o = &record["objectRef"];
    let resource = o["resource"].as_str()?;
    let resource = match o["subresource"].as_str() {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    Some(permission(
        o["apiGroup"].as_str().unwrap_or(""),
        &resource,
        record["verb"].as_str()?,
    ))
}

/// Every permission the rules of `role` grant.
fn granted_by(role: &Value, out: &mut BTreeSet<String>) {
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert(permission(
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap(),
                    ));
                }
            }
        }
    }
}

/// What the installed roles grant the controller.
fn controller_grants(cp: &ControlPlane) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for role in [
        cp.json(&["get", "clusterrole", "zdeploy-controller"]),
        cp.json(&["get", "clusterrole", "zdeploy-chaos-podkill"]),
        cp.json(&[
            "get",
            "role",
            "zdeploy-controller-leader",
            "-n",
            "zdeploy-system",
        ]),
    ] {
        granted_by(&role, &mut out);
    }
    out
}

/// What the Role zdeploy renders for zgate grants it.
fn zgate_grants(cp: &ControlPlane) -> BTreeSet<String> {
    let file = cp.echo_manifest("e2e-zgate", |t| t);
    let rendered = cp.zdeploy(&["render", "-f", &file.display().to_string()]);
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&rendered).unwrap();
    let mut out = BTreeSet::new();
    for role in docs.iter().filter(|d| d["kind"] == "Role") {
        granted_by(role, &mut out);
    }
    out
}

/// The problems with the requests of `user` (the users it holds for) against `granted`:
/// refusals, and grants neither used nor in `needed_unseen`.
fn check(
    cp: &ControlPlane,
    (user, is_user): (&str, &dyn Fn(&str) -> bool),
    granted: &BTreeSet<String>,
    needed_unseen: &[&str],
) -> Vec<String> {
    // A freshly started API server refuses for a moment while its RBAC cache fills
    // ("role ... not found"): not the roles' fault.
    let warming = |r: &Value| {
        let at: Option<jiff::Timestamp> = r["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok());
        at.is_some_and(|at| {
            cp.restarts()
                .iter()
                .any(|start| at >= *start && at < *start + jiff::SignedDuration::from_secs(15))
        })
    };
    let records: Vec<Value> = cp.audit(is_user);
    assert!(
        !records.is_empty(),
        "only {} requests by {user} recorded: run the whole suite, this check reads what the other scenarios did",
        records.len()
    );
    // Refusals during that moment are not counted; requests allowed then still show use.
    let refused: Vec<String> = records
        .iter()
        .filter(|r| forbidden(r) && !warming(r))
        .filter_map(|r| {
            Some(format!(
                "{} {}",
                permission_of(r)?,
                r["requestURI"].as_str()?
            ))
        })
        .collect();
    let used: BTreeSet<String> = records
        .iter()
        .filter(|r| !forbidden(r))
        .flat_map(used)
        .chain(needed_unseen.iter().map(|p| p.to_string()))
        .filter(|p| granted.contains(p))
        .collect();
    let unused: Vec<&String> = granted.difference(&used).collect();
    println!(
        "{user}: {} requests, {} permissions used of {} granted",
        records.len(),
        used.len(),
        granted.len()
    );
    let mut problems = Vec::new();
    if !refused.is_empty() {
        problems.push(format!("{user} refused by RBAC: {refused:?}"));
    }
    if !unused.is_empty() {
        problems.push(format!("{user} granted and never used: {unused:?}"));
    }
    problems
}

/// No request refused, and no granted verb left unused by the whole suite.
pub fn roles_are_exactly_what_is_used(cp: &ControlPlane) -> Result<(), Failed> {
    let mut problems = check(
        cp,
        (CONTROLLER, &|u| u == CONTROLLER),
        &controller_grants(cp),
        &NOT_ALWAYS_A_REQUEST,
    );
    problems.extend(check(cp, ("zgate", &is_zgate), &zgate_grants(cp), &[]));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}
