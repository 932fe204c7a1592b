//! What the controller knows to be in place, so an idle fleet costs nothing: a service
//! whose inputs (its object, the ConfigMaps its pods read) are those of its last reconcile
//! that changed nothing is not re-read, re-rendered or re-applied; applies whose rendered
//! objects are unchanged are skipped. Owned Deployments and ConfigMaps wake their service
//! only when they differ from what the controller last applied (someone edited or deleted
//! them, or the Deployment's replica count moved), not on every status update.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use zdeploy_api::{ZmqService, ZmqServiceStatus};

/// An owned object's kind, as far as drift is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    /// A Deployment: its generation and replica count.
    Deployment,
    /// A ConfigMap: its resourceVersion.
    ConfigMap,
}

type ObjectKey = (OwnedKind, String, String);

/// Whether something a service owns changed since the controller applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Someone changed or deleted an owned object.
    Drifted,
    /// Everything is as applied.
    AsApplied,
}

/// The last reconcile of a service that found nothing to do.
struct Entry {
    inputs: u64,
    at: Instant,
}

/// Fingerprints of settled services, the rendered objects last applied, and the owned
/// objects' markers as the controller applied them.
#[derive(Default)]
pub struct Settled {
    entries: Mutex<HashMap<String, Entry>>,
    rendered: Mutex<HashMap<String, u64>>,
    dirty: Mutex<HashSet<String>>,
    expected: Mutex<HashMap<ObjectKey, Marker>>,
}

/// What of an owned object the controller compares with what it applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A Deployment's spec generation and the replica count its status reports.
    Deployment {
        /// `metadata.generation`.
        generation: i64,
        /// `status.replicas`.
        replicas: i32,
    },
    /// Any other object's resourceVersion.
    Version(String),
}

/// A stable hash of anything serializable (within this process).
pub fn fingerprint(parts: &[serde_json::Value]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.to_string().hash(&mut h);
    }
    h.finish()
}

/// The key of a service.
pub fn key_of(svc: &ZmqService) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Whether `status` has nothing under way: no rollout, queue place or hand-over.
pub fn idle(status: &ZmqServiceStatus) -> bool {
    status.rollout.is_none() && status.queued_since.is_none() && status.handover.is_none()
}

/// What a service's reconcile reads, as one number: its metadata, spec and status, and the
/// resourceVersion of every ConfigMap in `read` (from the ConfigMap cache).
pub fn inputs_of(
    svc: &ZmqService,
    read: &[String],
    config_maps: &Store<PartialObjectMeta<ConfigMap>>,
) -> u64 {
    let ns = svc.namespace().unwrap_or_default();
    let versions: Vec<Option<String>> = read
        .iter()
        .map(|name| {
            config_maps
                .get(&ObjectRef::new(name).within(&ns))
                .and_then(|cm| cm.resource_version())
        })
        .collect();
    fingerprint(&[
        serde_json::json!(svc.metadata.uid),
        serde_json::json!(svc.metadata.generation),
        serde_json::json!(svc.metadata.labels),
        serde_json::json!(svc.metadata.annotations),
        serde_json::to_value(&svc.spec).unwrap_or_default(),
        serde_json::to_value(&svc.status).unwrap_or_default(),
        serde_json::json!(versions),
    ])
}

impl Settled {
    /// Whether the service at `key` with `inputs` is as its last reconcile left it, with
    /// nothing of its own drifted since; a service reading Secrets (not watched) is looked
    /// at again after `fresh_for`.
    pub fn unchanged(&self, key: &str, inputs: u64, fresh_for: Option<Duration>) -> bool {
        if self.dirty.lock().expect("settled lock").contains(key) {
            return false;
        }
        let entries = self.entries.lock().expect("settled lock");
        entries.get(key).is_some_and(|e| {
            e.inputs == inputs && fresh_for.is_none_or(|fresh| e.at.elapsed() < fresh)
        })
    }

    /// Starts a reconcile that acts: forgets the service's settled inputs and says whether
    /// something it owns drifted (then everything is applied again).
    pub fn begin(&self, key: &str) -> Drift {
        self.entries.lock().expect("settled lock").remove(key);
        match self.dirty.lock().expect("settled lock").remove(key) {
            true => Drift::Drifted,
            false => Drift::AsApplied,
        }
    }

    /// Whether objects rendered as `rendered` for `key` were applied already.
    pub fn applied(&self, key: &str, rendered: u64) -> bool {
        self.rendered.lock().expect("settled lock").get(key) == Some(&rendered)
    }

    /// Forgets what was applied for `key` (applies under way may fail half done).
    pub fn forget_applied(&self, key: &str) {
        self.rendered.lock().expect("settled lock").remove(key);
    }

    /// Records that `rendered` is what the cluster holds for `key`.
    pub fn record_applied(&self, key: &str, rendered: u64) {
        self.rendered
            .lock()
            .expect("settled lock")
            .insert(key.to_string(), rendered);
    }

    /// Records a reconcile of `key` that found nothing to do with `inputs`.
    pub fn settle(&self, key: &str, inputs: u64) {
        self.entries.lock().expect("settled lock").insert(
            key.to_string(),
            Entry {
                inputs,
                at: Instant::now(),
            },
        );
    }

    /// Forgets a deleted service.
    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("settled lock").remove(key);
        self.rendered.lock().expect("settled lock").remove(key);
        self.dirty.lock().expect("settled lock").remove(key);
    }

    /// Records an owned object as the controller applied it.
    pub fn expect_deployment(&self, d: &Deployment) {
        self.expect(OwnedKind::Deployment, d, deployment_marker(d));
    }

    /// The replica count last seen of Deployment `name` in `ns`.
    pub fn replicas_of(&self, ns: &str, name: &str) -> Option<i32> {
        let key = (OwnedKind::Deployment, ns.to_string(), name.to_string());
        match self.expected.lock().expect("settled lock").get(&key) {
            Some(Marker::Deployment { replicas, .. }) => Some(*replicas),
            _ => None,
        }
    }

    /// The service to wake for a seen owned Deployment: as `drifted`, except that a
    /// Deployment whose spec is as applied and only its replica count moved wakes its
    /// service without counting as drift (the count is recorded, nothing re-applied).
    pub fn deployment_seen(&self, d: &Deployment) -> Option<ObjectRef<ZmqService>> {
        let seen = deployment_marker(d);
        let key = (
            OwnedKind::Deployment,
            d.metadata.namespace.clone().unwrap_or_default(),
            d.metadata.name.clone().unwrap_or_default(),
        );
        let expected = self
            .expected
            .lock()
            .expect("settled lock")
            .get(&key)
            .cloned();
        let only_replicas_moved = match (&expected, &seen) {
            (
                Some(Marker::Deployment {
                    generation,
                    replicas,
                }),
                Marker::Deployment {
                    generation: g,
                    replicas: r,
                },
            ) => generation == g && replicas != r,
            _ => false,
        };
        if only_replicas_moved && d.metadata.deletion_timestamp.is_none() {
            self.expect(OwnedKind::Deployment, d, seen);
            let owner = owner_of(d)?;
            // Its settled inputs no longer hold: the status records the count.
            self.entries
                .lock()
                .expect("settled lock")
                .remove(&format!("{}/{}", key.1, owner));
            return Some(ObjectRef::new(&owner).within(&key.1));
        }
        self.drifted(OwnedKind::Deployment, d, Some(seen))
    }

    /// Records an owned ConfigMap as the controller applied it.
    pub fn expect_config_map(&self, cm: &ConfigMap) {
        self.expect(
            OwnedKind::ConfigMap,
            cm,
            Marker::Version(cm.resource_version().unwrap_or_default()),
        );
    }

    fn expect<K: Resource>(&self, kind: OwnedKind, o: &K, marker: Marker) {
        let key = (
            kind,
            o.meta().namespace.clone().unwrap_or_default(),
            o.meta().name.clone().unwrap_or_default(),
        );
        self.expected
            .lock()
            .expect("settled lock")
            .insert(key, marker);
    }

    /// The service to wake for a seen owned object: its owner, when the object is gone or
    /// differs from what the controller applied (marked drifted); `None` otherwise.
    pub fn drifted<K: Resource>(
        &self,
        kind: OwnedKind,
        o: &K,
        marker: Option<Marker>,
    ) -> Option<ObjectRef<ZmqService>> {
        let meta = o.meta();
        let owner = owner_of(o)?;
        let ns = meta.namespace.clone().unwrap_or_default();
        let key = (kind, ns.clone(), meta.name.clone().unwrap_or_default());
        let mut expected = self.expected.lock().expect("settled lock");
        let gone = meta.deletion_timestamp.is_some();
        match (&marker, expected.get(&key)) {
            (Some(m), Some(e)) if !gone && m == e => return None,
            // Objects the controller does not re-apply (revision records) matter only gone.
            (None, _) if !gone => return None,
            _ => {}
        }
        if gone {
            expected.remove(&key);
        }
        drop(expected);
        self.dirty
            .lock()
            .expect("settled lock")
            .insert(format!("{ns}/{owner}"));
        Some(ObjectRef::new(&owner).within(&ns))
    }
}

/// The ZmqService that controls `o`, by name.
fn owner_of<K: Resource>(o: &K) -> Option<String> {
    o.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "ZmqService")
        .map(|r| r.name.clone())
}

/// Whether the controller cares how an owned Deployment changed: its spec (generation)
/// or the replica count it records in the ZmqService's status.
pub fn deployment_marker(d: &Deployment) -> Marker {
    Marker::Deployment {
        generation: d.metadata.generation.unwrap_or_default(),
        replicas: d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
    }
}

/// Whether deleting the service's object is under way (then it is reconciled whatever).
pub fn deleting(svc: &ZmqService) -> bool {
    svc.metadata.deletion_timestamp.is_some()
}

/// A Deployment cut to what drift needs (metadata without managed fields, and status): the
/// pod template is the bulk of it and is never read from the watch.
pub fn strip_deployment(d: &mut Deployment) {
    d.managed_fields_mut().clear();
    d.annotations_mut().clear();
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Marks an object seen deleted (the watch's Delete event carries its last state).
pub fn mark_gone<K: Resource>(o: &mut K) {
    if o.meta().deletion_timestamp.is_none() {
        o.meta_mut().deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
    }
}
