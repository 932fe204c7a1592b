//! Rendering a ZmqService into the objects that run it: stable and canary Deployments on
//! the Windows pool, a headless Service per pool, the zgate Deployment on the Linux pool
//! with the Service clients use, the weights ConfigMap, PodDisruptionBudgets and
//! ServiceAccounts, all labelled and owned by the ZmqService. Pure: no API calls.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodOS, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
    ServicePort, ServiceSpec, TCPSocketAction, Toleration, WindowsSecurityContextOptions,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use zdeploy_api::revision::Revision;
use zdeploy_api::service::Router;
use zdeploy_api::{Weight, ZmqService, ZmqServiceStatus};

use crate::engine::sizing;

use zdeploy_api::Pool;
use zdeploy_api::image::tag_of;

/// The image zgate runs (this release of zdeploy).
pub const ZGATE_IMAGE: &str = concat!("ghcr.io/zdeploy/zdeploy:", env!("CARGO_PKG_VERSION"));
/// zgate's metrics port.
pub const METRICS_PORT: i32 = 9464;

/// Everything a ZmqService becomes.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    /// The stable and canary Deployments.
    pub pools: Vec<Deployment>,
    /// zgate's Deployment, when the gateway routes (not with the replica router).
    pub gateway: Option<Deployment>,
    /// Per-pool headless Services and the Service clients use.
    pub services: Vec<Service>,
    /// The weights ConfigMap.
    pub config_maps: Vec<ConfigMap>,
    /// Disruption budgets for stable and zgate.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// Identities for the service pods and zgate.
    pub service_accounts: Vec<ServiceAccount>,
    /// zgate's right to read its weights ConfigMap, and nothing else.
    pub roles: Vec<Role>,
    /// Binds that Role to zgate's ServiceAccount.
    pub role_bindings: Vec<RoleBinding>,
}

impl Rendered {
    /// Every object as one number: equal numbers mean the same objects to apply.
    pub fn fingerprint(&self) -> u64 {
        super::settled::fingerprint(&[serde_json::Value::String(self.to_yaml())])
    }

    /// Every object as multi-document YAML, in apply order.
    pub fn to_yaml(&self) -> String {
        fn doc<T: Serialize>(out: &mut String, o: &T) {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(o).expect("objects serialize"));
        }
        let mut out = String::new();
        self.service_accounts.iter().for_each(|o| doc(&mut out, o));
        self.roles.iter().for_each(|o| doc(&mut out, o));
        self.role_bindings.iter().for_each(|o| doc(&mut out, o));
        self.config_maps.iter().for_each(|o| doc(&mut out, o));
        self.services.iter().for_each(|o| doc(&mut out, o));
        self.pools.iter().for_each(|o| doc(&mut out, o));
        self.gateway.iter().for_each(|o| doc(&mut out, o));
        self.pdbs.iter().for_each(|o| doc(&mut out, o));
        out
    }
}

/// The name of `pool`'s Deployment, headless Service and disruption budget.
pub fn pool_service(service: &str, pool: Pool) -> String {
    format!("{service}-{pool}")
}

/// The name of the ConfigMap holding the weights (and chaos faults) zgate follows.
pub fn weights_configmap(service: &str) -> String {
    format!("{service}-weights")
}

/// Selects every object zdeploy renders.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=zdeploy";

fn labels(svc: &ZmqService, component: &str, pool: Option<Pool>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), svc.name_any()),
        ("app.kubernetes.io/instance".to_string(), svc.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "zdeploy".to_string(),
        ),
    ]);
    if let Some(p) = pool {
        l.insert("zdeploy.io/pool".into(), p.name().into());
    }
    l
}

fn meta(svc: &ZmqService, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: svc.namespace(),
        labels: Some(labels),
        owner_references: owner(svc).map(|o| vec![o]),
        ..Default::default()
    }
}

/// An owner reference to the ZmqService (only once it has a uid, i.e. exists in a cluster).
fn owner(svc: &ZmqService) -> Option<OwnerReference> {
    svc.controller_owner_ref(&())
}

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        ..Default::default()
    }
}

/// The pod templates of the revisions a render runs, by revision name: the recorded ones
/// (pointing at their configuration's copies, `revisions::record`); any other revision is
/// the manifest's template with the revision's image (one named before revisions covered
/// configuration, or `zdeploy render` without a cluster).
#[derive(Clone, Debug, Default)]
pub struct Templates(BTreeMap<String, PodTemplateSpec>);

impl Templates {
    /// Adds `revision`'s recorded template.
    pub fn insert(&mut self, revision: String, template: PodTemplateSpec) {
        self.0.insert(revision, template);
    }

    fn of(&self, svc: &ZmqService, revision: &str) -> (PodTemplateSpec, String) {
        let image = Revision::parse(revision).image;
        let template = self
            .0
            .get(revision)
            .cloned()
            .unwrap_or_else(|| super::revisions::template_with_image(svc, &image));
        (template, image)
    }
}

/// The revisions `render` runs at `now`: stable's, and the canary's (or the one that
/// drains).
pub fn revisions_in_use(svc: &ZmqService, now: jiff::Timestamp) -> Vec<String> {
    let status = svc.status.clone().unwrap_or_default();
    let mut in_use: Vec<String> = status.stable_revision.iter().cloned().collect();
    in_use.extend(status.rollout_revision());
    let draining = crate::engine::clock::draining_until(&svc.spec, &status)
        .filter(|until| now < *until)
        .and(status.history.first());
    in_use.extend(draining.map(|last| last.revision.clone()));
    in_use
}

/// The pod template of one pool: the revision's template made right for the Windows pool.
fn windows_pod(
    svc: &ZmqService,
    pool: Pool,
    (mut tpl, image): (PodTemplateSpec, String),
) -> PodTemplateSpec {
    let image = image.as_str();
    let spec = &svc.spec;
    let mut tpl_meta = tpl.metadata.take().unwrap_or_default();
    let mut l = tpl_meta.labels.take().unwrap_or_default();
    l.extend(labels(svc, "service", Some(pool)));
    l.insert(
        "app.kubernetes.io/version".into(),
        tag_of(image).chars().take(63).collect(),
    );
    tpl_meta.labels = Some(l);
    let mut pod: PodSpec = tpl.spec.take().unwrap_or_default();
    pod.os = Some(PodOS {
        name: "windows".into(),
    });
    pod.service_account_name = Some(format!("{}-service", svc.name_any()));
    pod.termination_grace_period_seconds.get_or_insert(30);
    match &spec.windows.runtime_class_name {
        // The RuntimeClass's `scheduling` carries node selector and tolerations.
        Some(rc) => pod.runtime_class_name = Some(rc.clone()),
        None => {
            let ns = pod.node_selector.get_or_insert_with(BTreeMap::new);
            ns.insert("kubernetes.io/os".into(), "windows".into());
            ns.insert("kubernetes.io/arch".into(), spec.windows.arch.clone());
            ns.insert(
                "node.kubernetes.io/windows-build".into(),
                spec.windows.build.node_label().into(),
            );
            let tolerations = pod.tolerations.get_or_insert_with(Vec::new);
            for key in ["os", "node.kubernetes.io/os"] {
                if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
                    tolerations.push(Toleration {
                        key: Some(key.into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoSchedule".into()),
                        ..Default::default()
                    });
                }
            }
        }
    }
    let sc = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    let win = sc
        .windows_options
        .get_or_insert_with(WindowsSecurityContextOptions::default);
    win.run_as_user_name
        .get_or_insert_with(|| "ContainerUser".into());
    let main = spec.main_container().unwrap_or(0);
    if let Some(c) = pod.containers.get_mut(main) {
        zmq_container(c, spec.zmq.port as i32, image);
    }
    PodTemplateSpec {
        metadata: Some(tpl_meta),
        spec: Some(pod),
    }
}

fn zmq_container(c: &mut Container, port: i32, image: &str) {
    c.image = Some(image.to_string());
    let ports = c.ports.get_or_insert_with(Vec::new);
    if !ports.iter().any(|p| p.container_port == port) {
        ports.push(ContainerPort {
            name: Some("zmq".into()),
            container_port: port,
            ..Default::default()
        });
    }
    // tcpSocket works on Windows and needs nothing inside the image.
    let tcp = || Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    c.readiness_probe.get_or_insert_with(tcp);
    c.liveness_probe.get_or_insert_with(|| Probe {
        initial_delay_seconds: Some(15),
        ..tcp()
    });
}

fn deployment(
    svc: &ZmqService,
    name: String,
    pool_labels: BTreeMap<String, String>,
    replicas: i32,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: meta(svc, name, pool_labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(&pool_labels),
            template,
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(
    svc: &ZmqService,
    name: String,
    select: BTreeMap<String, String>,
    headless: bool,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: meta(svc, name, select.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".into()),
            selector: Some(select),
            ports: Some(ports),
            publish_not_ready_addresses: headless.then_some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn zmq_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("zmq".into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Replicas of the canary pool during a rollout: behind zgate, sized for the share it
/// takes or is about to take (`engine::sizing`); with the replica router, the share of
/// `replicas` that approximates the weight, since the pod ratio is the split.
fn canary_replicas(svc: &ZmqService, status: &ZmqServiceStatus) -> i32 {
    let spec = &svc.spec;
    match spec.strategy.router {
        Router::Gateway => sizing::canary_replicas(spec, sizing::canary_share(spec, status)),
        Router::Replicas => sizing::proportional(spec.replicas, status.canary_weight).max(1),
    }
}

/// The label selector of the stable pool's pods, as `/scale` reports it.
pub fn stable_selector(svc: &ZmqService) -> String {
    labels(svc, "service", Some(Pool::Stable))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders the service for its recorded status (stable and canary revisions, weight) at
/// `now` (a canary that just stopped taking traffic drains before it scales down).
pub fn render(svc: &ZmqService, templates: &Templates, now: jiff::Timestamp) -> Rendered {
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let status = svc.status.clone().unwrap_or_default();
    let manifest_image = svc.spec.image();
    let stable_image = status.stable_revision.clone().unwrap_or(manifest_image);
    let canary_image = status
        .canary_revision
        .clone()
        .unwrap_or_else(|| stable_image.clone());
    let in_rollout = status.rollout.is_some();
    let port = svc.spec.zmq.port as i32;
    let mut r = Rendered::default();

    let pool = |p: Pool| labels(svc, "service", Some(p));
    let stable_replicas = match svc.spec.strategy.router {
        Router::Replicas if in_rollout => {
            (svc.spec.replicas - canary_replicas(svc, &status)).max(1)
        }
        _ => svc.spec.replicas,
    };
    r.pools.push(deployment(
        svc,
        pool_service(&name, Pool::Stable),
        pool(Pool::Stable),
        stable_replicas,
        windows_pod(svc, Pool::Stable, templates.of(svc, &stable_image)),
    ));
    let draining = crate::engine::clock::draining_until(&svc.spec, &status)
        .filter(|until| now < *until)
        .and(status.history.first());
    // A draining canary keeps the size it had at its peak: it answers what it holds. During
    // a promotion's hand-over it runs stable's new revision and takes every request.
    let handover = super::handover::canary_pods(&svc.spec, &status);
    let (canary_image, canary_count) = match (handover, draining) {
        (Some(pods), _) => (stable_image.clone(), pods),
        (None, Some(last)) => (
            last.revision.clone(),
            sizing::canary_replicas(&svc.spec, last.peak_weight),
        ),
        (None, None) if in_rollout => (canary_image, canary_replicas(svc, &status)),
        (None, None) => (canary_image, 0),
    };
    r.pools.push(deployment(
        svc,
        pool_service(&name, Pool::Canary),
        pool(Pool::Canary),
        canary_count,
        windows_pod(svc, Pool::Canary, templates.of(svc, &canary_image)),
    ));
    r.service_accounts.push(ServiceAccount {
        metadata: meta(svc, format!("{name}-service"), labels(svc, "service", None)),
        automount_service_account_token: Some(false),
        ..Default::default()
    });
    r.pdbs.push(PodDisruptionBudget {
        metadata: meta(svc, pool_service(&name, Pool::Stable), pool(Pool::Stable)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(&pool(Pool::Stable))),
            ..Default::default()
        }),
        ..Default::default()
    });
    for p in Pool::ALL {
        r.services.push(service(
            svc,
            pool_service(&name, p),
            pool(p),
            true,
            vec![zmq_port(port)],
        ));
    }
    match svc.spec.strategy.router {
        Router::Replicas => {
            // No gateway: the client Service spans both pools; the replica ratio is the split.
            r.services.push(service(
                svc,
                name.clone(),
                labels(svc, "service", None),
                false,
                vec![zmq_port(port)],
            ));
        }
        Router::Gateway => render_gateway(svc, &name, &ns, port, &status, &mut r),
    }
    r
}

/// An HTTP probe of zgate's metrics port.
fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn render_gateway(
    svc: &ZmqService,
    name: &str,
    ns: &str,
    port: i32,
    status: &zdeploy_api::ZmqServiceStatus,
    r: &mut Rendered,
) {
    let weight = match super::handover::canary_holds_all(status) {
        true => Weight::FULL,
        false => status.canary_weight,
    };
    let gw = labels(svc, "gateway", None);
    let weights = zdeploy_gateway::follow::TwoPoolWeights::canary_at(weight).document();
    let mut data = BTreeMap::from([(zdeploy_gateway::follow::KEY.to_string(), weights)]);
    // Left out when there are none: the apply then removes the key zdeploy wrote.
    if !status.routes.is_empty() {
        data.insert(
            zdeploy_gateway::follow::ROUTES_KEY.to_string(),
            serde_json::to_string(&status.routes).expect("routes serialize"),
        );
    }
    if let Some(percent) = status.shadow_percent.filter(|p| *p != Weight::ZERO) {
        let shadow = zdeploy_api::shadow::ShadowCopy {
            pool: Pool::Canary.name().into(),
            percent,
        };
        data.insert(
            zdeploy_gateway::follow::SHADOW_KEY.to_string(),
            serde_json::to_string(&shadow).expect("shadow serializes"),
        );
    }
    r.config_maps.push(ConfigMap {
        metadata: meta(svc, weights_configmap(name), gw.clone()),
        data: Some(data),
        ..Default::default()
    });
    // `--pool NAME=ENDPOINT`: the pool's headless Service, resolved through its EndpointSlices.
    let pool_arg = |p: Pool| format!("{p}=tcp://{name}-{p}.{ns}.svc.cluster.local:{port}");
    let mut args = vec![
        "gateway".to_string(),
        "--service".into(),
        name.to_string(),
        "--frontend".into(),
        format!("tcp://*:{port}"),
        "--pool".into(),
        pool_arg(Pool::Stable),
        "--pool".into(),
        pool_arg(Pool::Canary),
        // Every pod of a pool, with its readiness and termination, pushed by watch.
        "--discovery".into(),
        "endpointslices".into(),
        // Weights come from the ConfigMap through the API: no restart on a change.
        "--weights-configmap".into(),
        format!("{ns}/{}", weights_configmap(name)),
        "--timeout".into(),
        svc.spec.zmq.request_timeout.to_string(),
        // The pod's own address (kubelet expands $(POD_IP)): not every interface.
        "--metrics".into(),
        format!("$(POD_IP):{METRICS_PORT}"),
    ];
    // Latency gates count the requests slower than their thresholds: edges there.
    for edge in svc.spec.latency_edges() {
        args.push("--latency-edge".into());
        args.push(zdeploy_api::Duration::from(edge).to_string());
    }
    // Which replies are errors: the manifest's, as the local runtime's zgate uses it.
    let classifier = &svc.spec.zmq.error_classifier;
    args.extend([
        "--error-prefix".into(),
        classifier.reply_prefix.clone().unwrap_or_default(),
    ]);
    if let Some(f) = &classifier.status_frame {
        args.extend(["--error-status-frame".into(), f.frame.to_string()]);
        args.extend(["--error-status-min".into(), f.error_at_or_above.to_string()]);
    }
    // How shadow replies are compared: fixed by the manifest, so part of the pod spec.
    let compare = &svc.spec.zmq.compare;
    if *compare != zdeploy_api::compare::ReplyComparison::default() {
        args.extend(["--compare-by".into(), compare.by.to_string()]);
        for f in &compare.ignore_frames {
            args.extend(["--compare-ignore-frame".into(), f.to_string()]);
        }
        for m in &compare.masks {
            args.extend(["--compare-mask".into(), m.to_string()]);
        }
    }
    let container = Container {
        name: "zgate".into(),
        image: Some(ZGATE_IMAGE.into()),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("zmq".into()),
                container_port: port,
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..Default::default()
            },
        ]),
        env: Some(vec![EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        // Ready once every pool with weight has a live backend (or the wait is over);
        // alive while the data plane turns: a stalled one is restarted.
        readiness_probe: Some(http_probe("/readyz", 2, 1)),
        liveness_probe: Some(http_probe("/healthz", 5, 3)),
        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pod_labels = gw.clone();
    pod_labels.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    let pod = PodSpec {
        containers: vec![container],
        service_account_name: Some(format!("{name}-zgate")),
        automount_service_account_token: Some(true),
        node_selector: Some(BTreeMap::from([(
            "kubernetes.io/os".to_string(),
            "linux".to_string(),
        )])),
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                ("prometheus.io/port".to_string(), METRICS_PORT.to_string()),
            ])),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    r.gateway = Some(deployment(
        svc,
        format!("{name}-zgate"),
        gw.clone(),
        2,
        template,
    ));
    r.service_accounts.push(ServiceAccount {
        metadata: meta(svc, format!("{name}-zgate"), gw.clone()),
        ..Default::default()
    });
    r.roles.push(Role {
        metadata: meta(svc, format!("{name}-zgate"), gw.clone()),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![weights_configmap(name)]),
                // list and watch with a metadata.name field selector are scoped by the name too.
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            // The pools' endpoints: slice names are generated, so no resourceNames.
            PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".into()]),
                resources: Some(vec!["endpointslices".into()]),
                verbs: vec!["list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
    });
    r.role_bindings.push(RoleBinding {
        metadata: meta(svc, format!("{name}-zgate"), gw.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: format!("{name}-zgate"),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: format!("{name}-zgate"),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    });
    r.pdbs.push(PodDisruptionBudget {
        metadata: meta(svc, format!("{name}-zgate"), gw.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(selector(&gw)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let metrics = ServicePort {
        name: Some("metrics".into()),
        port: METRICS_PORT,
        target_port: Some(IntOrString::Int(METRICS_PORT)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    // Clients keep using the service's own name: it now resolves to zgate.
    r.services.push(service(
        svc,
        name.to_string(),
        gw,
        false,
        vec![zmq_port(port), metrics],
    ));
}
