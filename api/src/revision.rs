//! What a revision is: the whole pod template (image, command, args, env, resources,
//! volumes, probes, the template's labels and annotations) plus the content of every
//! ConfigMap and Secret it reads. Any change of either is a new revision, released by
//! canary like a new image. A revision is named `IMAGE+DIGEST`: the image people know,
//! and a digest of everything else so that a config release has a name of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use sha2::{Digest, Sha256};

/// Hex digits of the digest kept in a revision's name.
const DIGEST_LEN: usize = 10;

/// The kind of a configuration object a pod reads.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum ConfigKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        })
    }
}

/// A ConfigMap or Secret the pod template reads, by name (in the service's namespace).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ConfigRef {
    /// ConfigMap or Secret.
    pub kind: ConfigKind,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ConfigRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The content of a ConfigMap or Secret: its keys and bytes (`data` and `binaryData`
/// alike: a key moved from one to the other with the same bytes is no change).
pub type ConfigContent = BTreeMap<String, Vec<u8>>;

/// A revision's name: `IMAGE+DIGEST`, or just `IMAGE` for one recorded before revisions
/// covered more than the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// The image of the ZeroMQ container.
    pub image: String,
    /// The digest of the pod template and the configuration it reads.
    pub digest: Option<String>,
}

impl Revision {
    /// Reads a revision's name: a `+` followed by exactly a digest's hex digits ends it
    /// (`+` is not valid in an image reference, but a name given by hand may hold one).
    pub fn parse(name: &str) -> Self {
        let digest = |d: &str| d.len() == DIGEST_LEN && d.bytes().all(|b| b.is_ascii_hexdigit());
        match name.rsplit_once('+').filter(|(_, d)| digest(d)) {
            Some((image, digest)) => Self {
                image: image.to_string(),
                digest: Some(digest.to_string()),
            },
            None => Self {
                image: name.to_string(),
                digest: None,
            },
        }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.digest {
            Some(d) => write!(f, "{}+{d}", self.image),
            None => f.write_str(&self.image),
        }
    }
}

/// Every container of the pod, init containers first.
fn containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

fn containers_mut(pod: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    pod.init_containers
        .iter_mut()
        .flatten()
        .chain(pod.containers.iter_mut())
}

/// Calls `visit` on the name of every ConfigMap and Secret the pod reads: env
/// `valueFrom`, `envFrom`, volumes and projected volumes.
fn each_reference(pod: &mut PodSpec, visit: &mut dyn FnMut(ConfigKind, &mut String)) {
    for c in containers_mut(pod) {
        for e in c.env.iter_mut().flatten() {
            if let Some(from) = e.value_from.as_mut() {
                if let Some(r) = from.config_map_key_ref.as_mut() {
                    visit(ConfigKind::ConfigMap, &mut r.name);
                }
                if let Some(r) = from.secret_key_ref.as_mut() {
                    visit(ConfigKind::Secret, &mut r.name);
                }
            }
        }
        for e in c.env_from.iter_mut().flatten() {
            if let Some(r) = e.config_map_ref.as_mut() {
                visit(ConfigKind::ConfigMap, &mut r.name);
            }
            if let Some(r) = e.secret_ref.as_mut() {
                visit(ConfigKind::Secret, &mut r.name);
            }
        }
    }
    for v in pod.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut() {
            visit(ConfigKind::ConfigMap, &mut cm.name);
        }
        if let Some(s) = v.secret.as_mut()
            && let Some(name) = s.secret_name.as_mut()
        {
            visit(ConfigKind::Secret, name);
        }
        for source in v
            .projected
            .iter_mut()
            .flat_map(|p| p.sources.iter_mut().flatten())
        {
            if let Some(cm) = source.config_map.as_mut() {
                visit(ConfigKind::ConfigMap, &mut cm.name);
            }
            if let Some(s) = source.secret.as_mut() {
                visit(ConfigKind::Secret, &mut s.name);
            }
        }
    }
}

/// The ConfigMaps and Secrets `template` reads, minus `ignored`.
pub fn references(
    template: &PodTemplateSpec,
    ignored: &BTreeSet<ConfigRef>,
) -> BTreeSet<ConfigRef> {
    let mut found = BTreeSet::new();
    let mut pod = template.spec.clone().unwrap_or_default();
    each_reference(&mut pod, &mut |kind, name| {
        let r = ConfigRef {
            kind,
            name: name.clone(),
        };
        if !name.is_empty() && !ignored.contains(&r) {
            found.insert(r);
        }
    });
    found
}

/// Points every reference of `template` to one of `copies` at the copy's name.
pub fn point_to_copies(template: &mut PodTemplateSpec, copies: &BTreeMap<ConfigRef, String>) {
    if let Some(pod) = template.spec.as_mut() {
        each_reference(pod, &mut |kind, name| {
            let r = ConfigRef {
                kind,
                name: name.clone(),
            };
            if let Some(copy) = copies.get(&r) {
                *name = copy.clone();
            }
        });
    }
}

/// The name of `source`'s copy for the revision with `digest`.
pub fn copy_name(source: &ConfigRef, digest: &str) -> String {
    format!("{}-{digest}", source.name)
}

/// The digest of a pod template and the content of what it reads. The order of env
/// entries and of keys does not count (a reordered list is the same release); every
/// byte of every value does.
pub fn digest(template: &PodTemplateSpec, configs: &BTreeMap<ConfigRef, ConfigContent>) -> String {
    let mut canonical = template.clone();
    if let Some(pod) = canonical.spec.as_mut() {
        for c in containers_mut(pod) {
            if let Some(env) = c.env.as_mut() {
                env.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
    }
    let mut h = Sha256::new();
    // serde_json writes struct fields in a fixed order and maps sorted (BTreeMap).
    h.update(serde_json::to_vec(&canonical).expect("a pod template serializes"));
    for (r, content) in configs {
        h.update(format!("\n{r}\n").as_bytes());
        for (key, bytes) in content {
            h.update((key.len() as u64).to_le_bytes());
            h.update(key.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
    finish(h)
}

/// The first `DIGEST_LEN` hex digits of a hash.
pub(crate) fn finish(h: Sha256) -> String {
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(DIGEST_LEN)
        .collect()
}

/// What differs between two releases, in words: "image A -> B", "env ECHO_LOG_LEVEL",
/// "args of echo", "ConfigMap echo-config (2 keys)". Secret values are never shown.
pub fn changes(
    (old, old_configs): (&PodTemplateSpec, &BTreeMap<ConfigRef, ConfigContent>),
    (new, new_configs): (&PodTemplateSpec, &BTreeMap<ConfigRef, ConfigContent>),
) -> Vec<String> {
    let mut out = Vec::new();
    let empty = PodSpec::default();
    let (op, np) = (
        old.spec.as_ref().unwrap_or(&empty),
        new.spec.as_ref().unwrap_or(&empty),
    );
    let by_name = |p: &PodSpec| -> BTreeMap<String, Container> {
        containers(p).map(|c| (c.name.clone(), c.clone())).collect()
    };
    let (oc, nc) = (by_name(op), by_name(np));
    for (name, n) in &nc {
        let Some(o) = oc.get(name) else {
            out.push(format!("container {name} added"));
            continue;
        };
        if o.image != n.image {
            out.push(format!(
                "image {} -> {}",
                o.image.as_deref().unwrap_or("-"),
                n.image.as_deref().unwrap_or("-")
            ));
        }
        let env = |c: &Container| -> BTreeMap<String, String> {
            c.env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), serde_json::to_string(e).unwrap_or_default()))
                .collect()
        };
        let (oe, ne) = (env(o), env(n));
        let names: BTreeSet<&String> = oe.keys().chain(ne.keys()).collect();
        for var in names {
            if oe.get(var) != ne.get(var) {
                out.push(format!("env {var}"));
            }
        }
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        let probes =
            |c: &Container| json(&(&c.readiness_probe, &c.liveness_probe, &c.startup_probe));
        for (field, o_json, n_json) in [
            ("command", json(&o.command), json(&n.command)),
            ("args", json(&o.args), json(&n.args)),
            ("envFrom", json(&o.env_from), json(&n.env_from)),
            ("resources", json(&o.resources), json(&n.resources)),
            (
                "volumeMounts",
                json(&o.volume_mounts),
                json(&n.volume_mounts),
            ),
            ("probes", probes(o), probes(n)),
        ] {
            if o_json != n_json {
                out.push(format!("{field} of {name}"));
            }
        }
    }
    for name in oc.keys().filter(|n| !nc.contains_key(*n)) {
        out.push(format!("container {name} removed"));
    }
    let mut rest_old = op.clone();
    let mut rest_new = np.clone();
    for p in [&mut rest_old, &mut rest_new] {
        p.containers.clear();
        p.init_containers = None;
    }
    if rest_old.volumes != rest_new.volumes {
        out.push("volumes".into());
    }
    rest_old.volumes = None;
    rest_new.volumes = None;
    if rest_old != rest_new {
        out.push("pod spec".into());
    }
    if old.metadata != new.metadata {
        out.push("template labels or annotations".into());
    }
    let sources: BTreeSet<&ConfigRef> = old_configs.keys().chain(new_configs.keys()).collect();
    for r in sources {
        let (o, n) = (old_configs.get(r), new_configs.get(r));
        if o == n {
            continue;
        }
        let empty = ConfigContent::new();
        let (o, n) = (o.unwrap_or(&empty), n.unwrap_or(&empty));
        let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        let differing = keys.iter().filter(|k| o.get(**k) != n.get(**k)).count();
        out.push(format!(
            "{r} ({differing} key{})",
            if differing == 1 { "" } else { "s" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, ConfigMapVolumeSource, EnvVar, EnvVarSource, SecretVolumeSource,
        Volume,
    };

    fn template() -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"team": "md"}},
            "spec": {
                "containers": [{
                    "name": "echo",
                    "image": "echo:1",
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "echo-config", "key": "level"}}},
                        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "echo-token", "key": "t"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "shared"}}]
                }],
                "volumes": [
                    {"name": "ca", "configMap": {"name": "ca-bundle"}},
                    {"name": "tls", "secret": {"secretName": "echo-tls"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "extra"}}]}}
                ]
            }
        }))
        .unwrap()
    }

    fn r(kind: ConfigKind, name: &str) -> ConfigRef {
        ConfigRef {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn every_kind_of_reference_is_found_and_ignored_ones_are_not() {
        let ignored = BTreeSet::from([r(ConfigKind::ConfigMap, "ca-bundle")]);
        let found: Vec<String> = references(&template(), &ignored)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "ConfigMap echo-config",
                "ConfigMap extra",
                "ConfigMap shared",
                "Secret echo-tls",
                "Secret echo-token"
            ]
        );
    }

    #[test]
    fn copies_replace_the_names_they_stand_for() {
        let mut t = template();
        let copies = BTreeMap::from([(
            r(ConfigKind::ConfigMap, "echo-config"),
            "echo-config-abc".to_string(),
        )]);
        point_to_copies(&mut t, &copies);
        let env = &t.spec.unwrap().containers[0].env.clone().unwrap()[1];
        assert_eq!(
            env.value_from,
            Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: "echo-config-abc".into(),
                    key: "level".into(),
                    optional: None
                }),
                ..Default::default()
            })
        );
    }

    fn content(pairs: &[(&str, &[u8])]) -> ConfigContent {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_byte() {
        let configs = BTreeMap::from([(
            r(ConfigKind::ConfigMap, "echo-config"),
            content(&[("a", b"1"), ("b", b"2")]),
        )]);
        let base = digest(&template(), &configs);
        assert_eq!(base.len(), DIGEST_LEN);
        let mut reordered = template();
        reordered.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap()
            .reverse();
        assert_eq!(digest(&reordered, &configs), base, "env order");
        let swapped = BTreeMap::from([(
            r(ConfigKind::ConfigMap, "echo-config"),
            content(&[("b", b"2"), ("a", b"1")]),
        )]);
        assert_eq!(digest(&template(), &swapped), base, "key order");
        let binary = BTreeMap::from([(
            r(ConfigKind::ConfigMap, "echo-config"),
            content(&[("a", b"1"), ("b", &[0xff, 0x00])]),
        )]);
        assert_ne!(digest(&template(), &binary), base, "binaryData bytes");
        // A key's end and a value's start cannot trade bytes.
        let shifted = BTreeMap::from([(
            r(ConfigKind::ConfigMap, "echo-config"),
            content(&[("a1", b""), ("b", b"2")]),
        )]);
        assert_ne!(digest(&template(), &shifted), base);
        let mut env = template();
        env.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap()[0] = EnvVar {
            name: "A".into(),
            value: Some("2".into()),
            value_from: None,
        };
        assert_ne!(digest(&env, &configs), base, "an env value");
    }

    #[test]
    fn changes_are_told_in_words_without_values() {
        let old_configs = BTreeMap::from([(
            r(ConfigKind::Secret, "echo-token"),
            content(&[("t", b"old"), ("u", b"x")]),
        )]);
        let new_configs = BTreeMap::from([(
            r(ConfigKind::Secret, "echo-token"),
            content(&[("t", b"new"), ("u", b"y")]),
        )]);
        let mut new = template();
        let c = &mut new.spec.as_mut().unwrap().containers[0];
        c.image = Some("echo:2".into());
        c.env.as_mut().unwrap()[0].value = Some("2".into());
        c.args = Some(vec!["--fast".into()]);
        new.spec
            .as_mut()
            .unwrap()
            .volumes
            .as_mut()
            .unwrap()
            .push(Volume {
                name: "more".into(),
                secret: Some(SecretVolumeSource::default()),
                config_map: Some(ConfigMapVolumeSource::default()),
                ..Default::default()
            });
        let said = changes((&template(), &old_configs), (&new, &new_configs));
        assert_eq!(
            said,
            [
                "image echo:1 -> echo:2",
                "env A",
                "args of echo",
                "volumes",
                "Secret echo-token (2 keys)"
            ]
        );
        assert!(!said.join(" ").contains("new"), "no secret value is shown");
    }

    #[test]
    fn names_carry_the_image_and_the_digest() {
        let r = Revision::parse("registry:5000/echo:2+0123456789");
        assert_eq!(r.image, "registry:5000/echo:2");
        assert_eq!(r.digest.as_deref(), Some("0123456789"));
        assert_eq!(r.to_string(), "registry:5000/echo:2+0123456789");
        assert_eq!(Revision::parse("echo:1").digest, None);
        // A `+` in a name given by hand is part of the image unless a digest follows it.
        let by_hand = Revision::parse("echo:1.1+errors=0.2");
        assert_eq!(
            (by_hand.image.as_str(), by_hand.digest),
            ("echo:1.1+errors=0.2", None)
        );
        let both = Revision::parse("echo:1.1+errors=0.2+0123456789");
        assert_eq!(both.image, "echo:1.1+errors=0.2");
        assert_eq!(both.digest.as_deref(), Some("0123456789"));
    }
}
