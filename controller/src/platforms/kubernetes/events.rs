//! Publishing Kubernetes Events for both controllers.

use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};

use crate::engine::Severity;

/// Publishes an Event on `reference`. One that cannot be written is logged: Events must
/// never stop a rollout or an experiment.
pub(super) async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    severity: Severity,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = KubeEvent {
        type_: match severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::warn!("event {reason}: {e}");
    }
}
