//! Publishing Kubernetes Events for both controllers.

use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};

/// Publishes an Event on `reference`. One that cannot be written is logged: Events must
/// never stop a rollout or an experiment.
pub(super) async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
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
