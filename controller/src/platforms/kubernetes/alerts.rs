//! The Alertmanager bridge: firing canary alerts become rollback commands on the
//! ZmqService their labels name.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use zdeploy_api::ZmqService;
use zdeploy_api::command::{COMMAND_ANNOTATION, CommandAnnotation, CommandRequest};

/// Turns firing canary alerts from Alertmanager into rollback commands on the ZmqService
/// their labels name (`service`, `namespace`): the controller sees the annotation at once.
/// Alerts that name no service, or a service that does not exist, are logged and dropped.
pub async fn rollback_on_alerts(client: Client, inbox: Arc<crate::analysis::webhook::AlertInbox>) {
    loop {
        inbox.notify.notified().await;
        for alert in inbox.take_canary() {
            let (Some(service), Some(ns)) =
                (alert.labels.get("service"), alert.labels.get("namespace"))
            else {
                tracing::warn!(alert = %alert.name, "firing canary alert without service and namespace labels; ignored");
                continue;
            };
            let api: Api<ZmqService> = Api::namespaced(client.clone(), ns);
            let id = format!("alert-{}-{}", alert.name, Timestamp::now().as_millisecond());
            let reason = format!("alert {} fired for the canary", alert.name);
            let command = CommandAnnotation {
                id,
                request: CommandRequest::Rollback {
                    reason: Some(reason),
                },
            };
            let patch = serde_json::json!({"metadata": {"annotations": {COMMAND_ANNOTATION: command.to_value()}}});
            match api
                .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(%service, %ns, alert = %alert.name, "rollback requested by Alertmanager")
                }
                Err(e) => tracing::warn!(%service, %ns, "could not request the rollback: {e}"),
            }
        }
    }
}
