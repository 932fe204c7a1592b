//! Typed fixtures, built the way the objects are used instead of as edited JSON: the
//! example service (`manifests/examples/echo.yaml`) as the API server would hold it, and
//! the statuses a controller records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::service::{Outcome, Phase, RolloutRecord, RolloutState};
use zdeploy_api::{Weight, ZmqService, ZmqServiceStatus};

/// The stable image of the example.
pub const STABLE: &str = "registry.example.com/trading/echo:2.0.3-ltsc2022";
/// The canary image the fixtures release.
pub const CANARY: &str = "registry.example.com/trading/echo:2.1.0-ltsc2022";

/// Path of a file in the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A ZmqService fixture: `echo()`, then what the test needs.
#[derive(Clone, Debug)]
pub struct ServiceFixture(ZmqService);

/// The example service as stored: namespace `trading`, a uid, generation 1.
pub fn echo() -> ServiceFixture {
    let text = std::fs::read_to_string(repo("manifests/examples/echo.yaml"))
        .expect("reading the example manifest");
    let mut svc: ZmqService = serde_saphyr::from_str(&text).expect("the example parses");
    svc.metadata.namespace = Some("trading".into());
    svc.metadata.uid = Some("0c8f2a2e-0000-4000-8000-000000000001".into());
    svc.metadata.generation = Some(1);
    ServiceFixture(svc)
}

impl ServiceFixture {
    /// With `image` in the spec (the release GitOps asks for).
    pub fn image(mut self, image: &str) -> Self {
        let containers = &mut self
            .0
            .spec
            .template
            .spec
            .as_mut()
            .expect("the example has a pod spec")
            .containers;
        containers[0].image = Some(image.into());
        self
    }

    /// With its spec changed by `change`.
    pub fn spec(mut self, change: impl FnOnce(&mut zdeploy_api::ZmqServiceSpec)) -> Self {
        change(&mut self.0.spec);
        self
    }

    /// With `status` recorded.
    pub fn with_status(mut self, status: ZmqServiceStatus) -> Self {
        self.0.status = Some(status);
        self
    }

    /// With annotation `key` set to `value`.
    pub fn annotated(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Holding `finalizer` (a controller has seen it).
    pub fn finalized(mut self, finalizer: &str) -> Self {
        self.0
            .metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(finalizer.into());
        self
    }

    /// Being deleted (a deletion timestamp set; the finalizers hold it).
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp =
            Some(Time("2026-11-25T10:00:00Z".parse().expect("a timestamp")));
        self
    }

    /// The object.
    pub fn build(self) -> ZmqService {
        self.0
    }

    /// The object as the API server sends it.
    pub fn json(self) -> serde_json::Value {
        serde_json::to_value(self.0).expect("a ZmqService serializes")
    }
}

/// Recorded statuses of the example.
pub mod status {
    use super::*;

    /// Healthy on `STABLE`, no rollout, spec generation 1 acted on.
    pub fn healthy() -> ZmqServiceStatus {
        ZmqServiceStatus {
            phase: Phase::Healthy,
            stable_revision: Some(STABLE.into()),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    /// `CANARY` at step 1 (the 2-minute pause) at 10%, started (and last progressing)
    /// at `since`, reached by zgate then.
    pub fn progressing(since: Timestamp) -> ZmqServiceStatus {
        ZmqServiceStatus {
            phase: Phase::Progressing,
            current_step: Some(1),
            canary_weight: Weight::new(10).expect("10%"),
            canary_revision: Some(CANARY.into()),
            message: Some("step 1: pausing 2m at 10%".into()),
            rollout: Some(RolloutState::started_at(Time(since), None)),
            ..healthy()
        }
    }

    /// `CANARY` rolled back at `ended` (started a minute before), for `reason`.
    pub fn rolled_back(ended: Timestamp, reason: &str) -> ZmqServiceStatus {
        ZmqServiceStatus {
            phase: Phase::RolledBack,
            history: vec![RolloutRecord {
                revision: CANARY.into(),
                stable_revision: STABLE.into(),
                started: Time(ended - jiff::SignedDuration::from_secs(60)),
                ended: Time(ended),
                outcome: Outcome::RolledBack,
                reason: reason.into(),
                runbook: None,
                peak_weight: zdeploy_api::Weight::new(10).expect("a weight"),
                changes: Vec::new(),
            }],
            ..healthy()
        }
    }
}

/// `secs` seconds before now.
pub fn ago(secs: i64) -> Timestamp {
    Timestamp::now() - jiff::SignedDuration::from_secs(secs)
}
