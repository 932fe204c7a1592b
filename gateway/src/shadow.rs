//! Shadow traffic, the parts without sockets: how a shadow copy ends, how the canary's
//! reply is judged against stable's, and the mismatching pairs kept for people to read.

use serde::Serialize;
use zdeploy_api::compare::{Comparator, CompareBy, Comparison};

/// Mismatching pairs kept between two changes of the shadow setting.
pub const SAMPLES: usize = 5;
/// Bytes of each frame a sample shows.
const SAMPLE_BYTES: usize = 256;
/// Frames of each message a sample shows.
const SAMPLE_FRAMES: usize = 8;

/// How a shadow copy ended, compared with the reply the client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowOutcome {
    /// The canary answered what stable answered (as the rules see it).
    Match,
    /// The canary answered something else.
    Mismatch,
    /// The canary answered an error where stable did not.
    CanaryError,
    /// The canary did not answer within the request timeout.
    CanaryTimeout,
}

impl ShadowOutcome {
    /// Every outcome, in label order.
    pub const ALL: [Self; 4] = [
        Self::Match,
        Self::Mismatch,
        Self::CanaryError,
        Self::CanaryTimeout,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Mismatch => "mismatch",
            Self::CanaryError => "canary_error",
            Self::CanaryTimeout => "canary_timeout",
        }
    }
}

/// Why a request was not shadowed, or its copy not judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowSkip {
    /// No room: the canary's queues or zgate's shadow budget were full (shed first).
    Shed,
    /// Stable did not answer (error from zgate, timeout): nothing to compare with.
    StableFailed,
}

impl ShadowSkip {
    /// Every reason, in label order.
    pub const ALL: [Self; 2] = [Self::Shed, Self::StableFailed];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Shed => "shed",
            Self::StableFailed => "stable_failed",
        }
    }
}

/// One reply body, copied out of its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The body frames.
    pub frames: Vec<Vec<u8>>,
    /// The error classifier matched it (or zgate saw it malformed).
    pub error: bool,
}

/// The canary's reply judged against stable's, for the same request.
pub fn judge(rules: &Comparator, stable: &Reply, canary: &Reply) -> ShadowOutcome {
    if canary.error && !stable.error {
        return ShadowOutcome::CanaryError;
    }
    let same = match rules.by() {
        CompareBy::Classifier => canary.error == stable.error,
        CompareBy::Bytes => rules.compare(&stable.frames, &canary.frames) == Comparison::Same,
    };
    if same {
        ShadowOutcome::Match
    } else {
        ShadowOutcome::Mismatch
    }
}

/// A mismatching (or failed) pair, with every frame escaped and capped, for `GET /shadow`,
/// `zdeploy analyze` and the rollback Event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MismatchSample {
    /// How the copy ended.
    pub outcome: ShadowOutcome,
    /// The request body.
    pub request: Vec<String>,
    /// What stable answered (the client got this).
    pub stable: Vec<String>,
    /// What the canary answered (nobody got this); empty on a timeout.
    pub canary: Vec<String>,
}

impl MismatchSample {
    /// One line for an Event or a log: the outcome and the three messages' frames.
    pub fn summary(&self) -> String {
        format!(
            "{}: request {:?}, stable answered {:?}, canary {:?}",
            self.outcome.label(),
            self.request,
            self.stable,
            self.canary
        )
    }
}

/// The first bytes of a message's first frames, as much as a sample shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excerpt {
    /// Each shown frame's first bytes and its full size.
    frames: Vec<(Vec<u8>, usize)>,
    /// Frames in the whole message.
    total: usize,
}

impl Excerpt {
    /// The excerpt of `frames`.
    pub fn of<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Self {
        Self {
            frames: frames
                .iter()
                .take(SAMPLE_FRAMES)
                .map(|f| (f[..f.len().min(SAMPLE_BYTES)].to_vec(), f.len()))
                .collect(),
            total: frames.len(),
        }
    }

    /// As people read it: printable ASCII as is, other bytes as `\xNN`, each frame cut at
    /// 256 bytes with its full size said.
    pub fn shown(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .frames
            .iter()
            .map(|(head, len)| {
                let text = head.escape_ascii().to_string();
                if *len > head.len() {
                    format!("{text}... ({len} bytes)")
                } else {
                    text
                }
            })
            .collect();
        if self.total > self.frames.len() {
            out.push(format!("... ({} frames)", self.total));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdeploy_api::compare::ReplyComparison;

    fn reply(body: &str, error: bool) -> Reply {
        Reply {
            frames: vec![body.as_bytes().to_vec()],
            error,
        }
    }

    #[test]
    fn canary_errors_mismatches_and_matches_are_told_apart() {
        let bytes = ReplyComparison::default().compile().unwrap();
        let ok = reply("42", false);
        assert_eq!(judge(&bytes, &ok, &ok), ShadowOutcome::Match);
        assert_eq!(
            judge(&bytes, &ok, &reply("43", false)),
            ShadowOutcome::Mismatch
        );
        assert_eq!(
            judge(&bytes, &ok, &reply("ERR", true)),
            ShadowOutcome::CanaryError
        );
        // Stable failing where the canary answers is a difference, not the canary's error.
        assert_eq!(
            judge(&bytes, &reply("ERR", true), &ok),
            ShadowOutcome::Mismatch
        );
        let classes = ReplyComparison {
            by: CompareBy::Classifier,
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert_eq!(
            judge(&classes, &ok, &reply("43", false)),
            ShadowOutcome::Match
        );
        assert_eq!(
            judge(&classes, &reply("ERR a", true), &reply("ERR b", true)),
            ShadowOutcome::Match
        );
    }

    #[test]
    fn samples_are_escaped_and_capped() {
        assert_eq!(
            Excerpt::of(&[b"ok\x00\xff\n".to_vec()]).shown(),
            ["ok\\x00\\xff\\n"]
        );
        let text = Excerpt::of(&[vec![b'a'; 1000]]).shown();
        assert!(text[0].ends_with("a... (1000 bytes)"), "{text:?}");
        assert_eq!(text[0].len(), SAMPLE_BYTES + "... (1000 bytes)".len());
        let sample = MismatchSample {
            outcome: ShadowOutcome::Mismatch,
            request: Excerpt::of(&[b"q\"1".to_vec()]).shown(),
            stable: Excerpt::of(&[b"a".to_vec()]).shown(),
            canary: Excerpt::of(&[b"b\n".to_vec()]).shown(),
        };
        assert_eq!(
            sample.summary(),
            r#"mismatch: request ["q\\\"1"], stable answered ["a"], canary ["b\\n"]"#
        );
        let many: Vec<Vec<u8>> = (0..20).map(|_| b"f".to_vec()).collect();
        let text = Excerpt::of(&many).shown();
        assert_eq!(text.len(), SAMPLE_FRAMES + 1);
        assert_eq!(text[SAMPLE_FRAMES], "... (20 frames)");
    }
}
