//! The rules a schema cannot express: ordering of steps, cross-references, Windows pod rules.

use std::collections::HashSet;

use kube::ResourceExt;

use super::{FieldPath, Problem};
use crate::chaos::MAX_FAULT;
use crate::service::{Builtin, Canary, MAX_REQUEST_TIMEOUT, Metric, Router, SocketPattern, Step};
use crate::windows::forbidden_fields;
use crate::{ChaosSchedule, Fault, ZmqService};

/// Longest name that still leaves room for the `-canary` suffix in a DNS-1035 label.
const MAX_NAME_LEN: usize = 56;

fn spec() -> FieldPath {
    FieldPath::default().key("spec")
}

fn problem(path: FieldPath, rule: impl Into<String>) -> Problem {
    Problem::new(path, rule.into(), None)
}

fn valued(path: FieldPath, rule: impl Into<String>, value: impl serde::Serialize) -> Problem {
    Problem::new(path, rule.into(), serde_json::to_value(value).ok().as_ref())
}

/// Routes by client: each matches one way, and needs zgate to route them.
fn routes(svc: &ZmqService, out: &mut Vec<Problem>) {
    let strategy = &svc.spec.strategy;
    let path = spec().key("strategy").key(strategy.field()).key("routes");
    let routes = strategy.routes();
    if !routes.is_empty() && svc.spec.strategy.router != Router::Gateway {
        out.push(problem(
            path.clone(),
            "routes by client need zgate: use strategy.router: gateway, or remove them",
        ));
    }
    if routes.len() > crate::route::MAX_ROUTES {
        out.push(valued(
            path.clone(),
            format!(
                "at most {} routes: route by a shared prefix instead of one route per client",
                crate::route::MAX_ROUTES
            ),
            routes.len(),
        ));
    }
    for (i, r) in routes.iter().enumerate() {
        if let Err(e) = r.route() {
            out.push(problem(path.index(i).key("match"), e));
        }
    }
}

/// Rules for a ZmqService that passed the schema.
pub fn zmq_service(svc: &ZmqService) -> Vec<Problem> {
    let mut out = Vec::new();
    let name = svc.name_any();
    let is_label = name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !is_label {
        out.push(valued(
            FieldPath::default().key("metadata").key("name"),
            format!("must be a DNS label: lowercase letters, digits and '-', starting with a letter, at most {MAX_NAME_LEN} characters (zdeploy appends -stable and -canary)"),
            &name,
        ));
    }
    workload(svc, &mut out);
    blue_green(svc, &mut out);
    steps(svc, &mut out);
    routes(svc, &mut out);
    let metrics_path = spec()
        .key("strategy")
        .key(svc.spec.strategy.field())
        .key("analysis")
        .key("metrics");
    metrics(
        &svc.spec.strategy.analysis().metrics,
        &metrics_path,
        &mut out,
    );
    latency_edges(svc, &metrics_path, &mut out);
    let one_way = matches!(
        svc.spec.zmq.pattern,
        SocketPattern::PushPull | SocketPattern::PubSub
    );
    if one_way && svc.spec.strategy.router == Router::Gateway {
        out.push(valued(
            spec().key("zmq").key("pattern"),
            "zgate routes request/reply traffic only: use strategy.router: replicas for one-way patterns",
            svc.spec.zmq.pattern,
        ));
    }
    let timeout = svc.spec.zmq.request_timeout;
    if timeout.get().is_zero() || timeout > MAX_REQUEST_TIMEOUT {
        out.push(valued(
            spec().key("zmq").key("requestTimeout"),
            format!("must be above 0s and at most {MAX_REQUEST_TIMEOUT}"),
            timeout.to_string(),
        ));
    }
    if let Some(local) = &svc.spec.local
        && local.command.first().is_none_or(|c| c.trim().is_empty())
    {
        out.push(problem(
            spec().key("local").key("command"),
            "must name the program to start, e.g. [python3, service.py, --port, \"{{port}}\"]",
        ));
    }
    if let Some(local) = &svc.spec.local {
        let mut seen = std::collections::BTreeSet::new();
        for (i, path) in local.track.iter().enumerate() {
            let p = std::path::Path::new(path);
            let outside = p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if path.is_empty() || outside {
                out.push(valued(
                    spec().key("local").key("track").index(i),
                    "must be a file under the manifest's folder, named relative to it (no .., no leading /)",
                    path.clone(),
                ));
            } else if !seen.insert(path.as_str()) {
                out.push(valued(
                    spec().key("local").key("track").index(i),
                    "is named twice",
                    path.clone(),
                ));
            }
        }
    }
    out
}

fn workload(svc: &ZmqService, out: &mut Vec<Problem>) {
    let tpl = spec().key("template").key("spec");
    let Some(pod) = &svc.spec.template.spec else {
        out.push(problem(
            tpl,
            "is required: the pod spec with the service's container",
        ));
        return;
    };
    if let Some(os) = &pod.os
        && os.name != "windows"
    {
        out.push(valued(
            tpl.key("os").key("name"),
            "must be windows (or left out: zdeploy sets it)",
            &os.name,
        ));
    }
    for f in forbidden_fields(pod) {
        out.push(problem(
            FieldPath::parse(&format!("{tpl}.{}", f.path)),
            "is not allowed in a Windows pod (spec.os.name: windows): the API server rejects it; remove it (run as a user with securityContext.windowsOptions.runAsUserName)",
        ));
    }
    let containers = tpl.key("containers");
    if pod.containers.is_empty() {
        out.push(problem(containers, "must list the service's container"));
        return;
    }
    let Some(main) = svc.spec.main_container() else {
        // Containers exist, so only a `zmq.container` naming none of them gets here.
        out.push(valued(
            spec().key("zmq").key("container"),
            "names no container of spec.template.spec.containers",
            &svc.spec.zmq.container,
        ));
        return;
    };
    let image = pod.containers[main].image.as_deref().unwrap_or_default();
    if image.trim().is_empty() {
        out.push(problem(
            containers.index(main).key("image"),
            "is required: the image of the revision to run, e.g. registry.example.com/echo:2.1",
        ));
    }
}

/// Blue-green is the canary's alternative, needs zgate to switch all traffic at once,
/// and keeps the old pool for less than the progress deadline.
fn blue_green(svc: &ZmqService, out: &mut Vec<Problem>) {
    let strategy = &svc.spec.strategy;
    let Some(bg) = &strategy.blue_green else {
        return;
    };
    let path = spec().key("strategy").key("blueGreen");
    if strategy.canary != Canary::default() {
        out.push(problem(
            spec().key("strategy").key("canary"),
            "give strategy.canary or strategy.blueGreen, not both: blue-green has its own preview, analysis and routes",
        ));
    }
    if strategy.router != Router::Gateway {
        out.push(problem(
            path.clone(),
            "blue-green switches traffic through zgate: use strategy.router: gateway",
        ));
    }
    if bg.scale_down_delay.get() >= strategy.progress_deadline.get() {
        out.push(valued(
            path.key("scaleDownDelay"),
            format!(
                "must be shorter than strategy.progressDeadline ({}): the rollout ends when the old pool is scaled down",
                strategy.progress_deadline
            ),
            bg.scale_down_delay,
        ));
    }
}

fn steps(svc: &ZmqService, out: &mut Vec<Problem>) {
    let strategy = &svc.spec.strategy;
    let release = spec().key("strategy").key(strategy.field());
    let path = release.key(strategy.steps_field());
    let analysis = strategy.analysis();
    let names: HashSet<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
    let mut last: Option<(usize, u8)> = None;
    for (i, step) in strategy.steps().iter().enumerate() {
        match step {
            Step::SetWeight(w) if strategy.blue_green.is_some() => out.push(valued(
                path.index(i).key("setWeight"),
                "blue-green gives the new revision all traffic at once after the preview: preview it with shadow or routes, or use strategy.canary for weights",
                w.percent(),
            )),
            Step::SetWeight(w) => {
                if let Some((at, prev)) = last
                    && w.percent() < prev
                {
                    out.push(valued(
                        path.index(i).key("setWeight"),
                        format!("weights must not go down: steps[{at}] already set {prev}"),
                        w.percent(),
                    ));
                }
                last = Some((i, w.percent()));
            }
            Step::Analysis(a) => {
                for (j, m) in a.metrics.iter().enumerate() {
                    if !names.contains(m.as_str()) {
                        out.push(valued(
                            path.index(i).key("analysis").key("metrics").index(j),
                            format!(
                                "names no metric of strategy.{}.analysis.metrics",
                                strategy.field()
                            ),
                            m,
                        ));
                    }
                }
            }
            Step::Shadow(_) => shadow_step(svc, &path.index(i).key("shadow"), out),
            Step::Pause(_) => {}
        }
    }
    let shadowed = strategy
        .steps()
        .iter()
        .any(|s| matches!(s, Step::Shadow(_)));
    let metrics = release.key("analysis").key("metrics");
    for (i, m) in analysis.metrics.iter().enumerate() {
        if m.builtin == Some(Builtin::ShadowMismatchRatio) && !shadowed {
            out.push(problem(
                metrics.index(i).key("builtin"),
                "shadowMismatchRatio measures shadow traffic: add a step `shadow: {percent: N}` before the analysis, or remove the metric",
            ));
        }
    }
    if let Err((i, e)) = svc.spec.zmq.compare.compile() {
        out.push(problem(
            spec().key("zmq").key("compare").key("masks").index(i),
            e,
        ));
    }
}

/// A shadow step sends each copied request twice (stable and canary): only for
/// requests that may be repeated, and only through zgate.
fn shadow_step(svc: &ZmqService, at: &FieldPath, out: &mut Vec<Problem>) {
    if !svc.spec.zmq.idempotent {
        out.push(problem(
            at.clone(),
            "needs spec.zmq.idempotent: true: a shadowed request reaches stable and the canary, so a request that changes something (a write, a payment) would happen twice; declare it only when a request may be sent twice without harm",
        ));
    }
    if svc.spec.strategy.router != Router::Gateway {
        out.push(problem(
            at.clone(),
            "shadow traffic needs zgate: use strategy.router: gateway",
        ));
    }
}

/// Rules shared by canary analysis and chaos steady-state metrics.
fn metrics(metrics: &[Metric], path: &FieldPath, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for (i, m) in metrics.iter().enumerate() {
        let at = path.index(i);
        if !seen.insert(m.name.as_str()) {
            out.push(valued(at.key("name"), "must be unique", &m.name));
        }
        let kinds = [m.builtin.is_some(), m.query.is_some(), m.counts.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            out.push(problem(
                at.clone(),
                "must set exactly one of builtin, query and counts",
            ));
        }
        if m.judges_rate() {
            for (key, bound) in [("max", m.max), ("min", m.min)] {
                if let Some(b) = bound
                    && !(b > 0.0 && b < 1.0)
                {
                    out.push(valued(
                        at.key(key),
                        "must be a rate between 0 and 1, both excluded: it is judged by counting bad requests, and no count tells a rate of 0 from a tiny one (use e.g. 0.001)",
                        b,
                    ));
                }
            }
        }
        if m.max.is_none() && m.min.is_none() && m.relative.is_none() {
            out.push(problem(
                at.clone(),
                "must set a threshold: max, min or relative",
            ));
        }
        if m.builtin == Some(Builtin::ShadowMismatchRatio) && m.relative.is_some() {
            out.push(problem(
                at.key("relative"),
                "shadowMismatchRatio has no stable value to compare with (stable's replies are the reference): use max",
            ));
        }
        if let Some(r) = &m.relative
            && r.margin.is_none()
            && r.factor.is_none()
        {
            out.push(problem(at.key("relative"), "must set margin or factor"));
        }
        if let (Some(lo), Some(hi)) = (m.min, m.max)
            && lo > hi
        {
            out.push(valued(
                at.key("min"),
                format!("must not exceed max ({hi})"),
                lo,
            ));
        }
    }
}

/// Latency gates are judged on the count of requests slower than the threshold, so each
/// threshold must be one of zgate's bucket edges: whole milliseconds, below the request
/// timeout (no request is slower than that: it is answered with a timeout error).
fn latency_edges(svc: &ZmqService, path: &FieldPath, out: &mut Vec<Problem>) {
    let timeout = svc.spec.zmq.request_timeout.get().as_secs_f64();
    for (i, m) in svc.spec.strategy.analysis().metrics.iter().enumerate() {
        let Some(edge) = m.latency_edge() else {
            continue;
        };
        let at = path.index(i).key("max");
        if crate::service::bucket_edge(edge).is_none() {
            out.push(valued(
                at,
                "is not a bucket edge zgate can have: a latency threshold becomes an edge of zgate's histogram (the count of slower requests is judged) and edges are whole milliseconds from 0.001 s, e.g. 0.8 for 800 ms",
                edge,
            ));
        } else if edge >= timeout {
            out.push(valued(
                at,
                format!("must be below zmq.requestTimeout ({}): no request is slower than the timeout, it is answered with a timeout error and counted as one", svc.spec.zmq.request_timeout),
                edge,
            ));
        }
    }
}

/// Rules for a ChaosSchedule that passed the schema.
pub fn chaos_schedule(cs: &ChaosSchedule) -> Vec<Problem> {
    let mut out = Vec::new();
    let exp = spec().key("experiment");
    let fault = exp.key("fault");
    match &cs.spec.experiment.fault {
        Fault::GatewayErrors { ratio } | Fault::GatewayDrop { ratio }
            if !(0.0..=1.0).contains(ratio) =>
        {
            let kind = if matches!(cs.spec.experiment.fault, Fault::GatewayErrors { .. }) {
                "gatewayErrors"
            } else {
                "gatewayDrop"
            };
            out.push(valued(
                fault.key(kind).key("ratio"),
                "must be between 0 and 1",
                ratio,
            ));
        }
        _ => {}
    }
    let x = &cs.spec.experiment;
    if x.duration > MAX_FAULT || x.duration.get().is_zero() {
        out.push(valued(
            exp.key("duration"),
            format!("must be above 0s and at most {MAX_FAULT}"),
            x.duration.to_string(),
        ));
    }
    if let Fault::GatewayLatency { latency } = &x.fault
        && *latency > MAX_FAULT
    {
        out.push(valued(
            fault.key("gatewayLatency").key("latency"),
            format!("must be at most {MAX_FAULT}"),
            latency.to_string(),
        ));
    }
    if cs.spec.schedule.split_whitespace().count() != 5 {
        out.push(valued(
            spec().key("schedule"),
            "must be a cron expression of 5 fields (minute hour day month weekday), e.g. \"0 3 1 * *\"",
            &cs.spec.schedule,
        ));
    }
    for (i, w) in cs.spec.allowed_windows.iter().enumerate() {
        if w.start_hour >= w.end_hour {
            out.push(valued(
                spec().key("allowedWindows").index(i).key("endHour"),
                format!("must be after startHour ({})", w.start_hour),
                w.end_hour,
            ));
        }
    }
    if let Some(ss) = &cs.spec.steady_state {
        metrics(
            &ss.metrics,
            &spec().key("steadyState").key("metrics"),
            &mut out,
        );
    }
    out
}
