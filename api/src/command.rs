//! What a person asks of a rollout (`zdeploy rollout`, `promote`, `rollback`, ...), as the
//! CLI sends it to `zdeploy up`'s admin API and, in a cluster, as the annotation the
//! controller carries out once; and the other annotations people steer zdeploy with.

use serde::{Deserialize, Serialize};

use crate::Weight;

/// The annotation on a ZmqService that carries a command (a [`CommandAnnotation`]).
pub const COMMAND_ANNOTATION: &str = "zdeploy.io/command";
/// The annotation that pauses a ChaosSchedule (`"true"`) without touching its spec.
pub const SUSPEND_ANNOTATION: &str = "zdeploy.io/suspend";
/// The annotation asking a ChaosSchedule for one run now (its value is the request's id,
/// carried out once).
pub const RUN_NOW_ANNOTATION: &str = "zdeploy.io/run-now";

/// A command as the CLI sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum CommandRequest {
    /// Release an image (the manifest's when none is given).
    Rollout {
        /// The image to release.
        #[serde(default)]
        image: Option<String>,
        /// Start at this weight.
        #[serde(default)]
        canary: Option<Weight>,
        /// With no image: release the manifest's even when the running stable is another
        /// (without it, that is refused: it may be a downgrade).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        manifest_over_stable: bool,
    },
    /// Skip the current pause, or finish the rollout with `full`.
    Promote {
        /// Promote all the way.
        #[serde(default)]
        full: bool,
    },
    /// Roll back now.
    Rollback {
        /// Why.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Restart the last rolled-back revision.
    Retry,
    /// Hold the rollout.
    Pause,
    /// Continue it.
    Resume,
}

/// The value of [`COMMAND_ANNOTATION`]: a command with the id the controller records
/// (`status.lastCommand`) once it has carried it out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandAnnotation {
    /// Unique per command: the same id is never carried out twice.
    pub id: String,
    /// The command.
    #[serde(flatten)]
    pub request: CommandRequest,
}

impl CommandAnnotation {
    /// The annotation's text.
    pub fn to_value(&self) -> String {
        serde_json::to_string(self).expect("a command serializes")
    }

    /// Reads an annotation's text; `None` when it is not a command.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_annotation_reads_back_as_written() {
        let a = CommandAnnotation {
            id: "c-1".into(),
            request: CommandRequest::Rollout {
                image: Some("echo:2".into()),
                canary: Some(Weight::new(10).unwrap()),
                manifest_over_stable: false,
            },
        };
        let text = a.to_value();
        assert_eq!(
            text,
            r#"{"id":"c-1","command":"rollout","image":"echo:2","canary":10}"#
        );
        assert_eq!(CommandAnnotation::parse(&text), Some(a));
        assert_eq!(CommandAnnotation::parse("not json"), None);
    }
}
