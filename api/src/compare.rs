//! Shadow traffic's reply comparison (`zmq.compare`), the contract between a manifest and
//! zgate: for a request copied to the canary, the canary's reply is compared with
//! stable's, frame by frame, after frames to ignore are skipped and volatile parts
//! (timestamps, ids) are masked; or only by the error classifier (error vs not).
//! On zgate's command line: `--compare-by`, `--compare-ignore-frame N` and
//! `--compare-mask FRAME:regex:PATTERN | FRAME:bytes:START..END`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How replies are compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CompareBy {
    /// Byte for byte, after ignored frames and masks.
    #[default]
    Bytes,
    /// Only whether each reply is an error by `zmq.errorClassifier`.
    Classifier,
}

/// The rules of `zmq.compare`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplyComparison {
    /// `bytes` (default) or `classifier`.
    #[serde(default)]
    pub by: CompareBy,
    /// Body frames left out of the comparison, by index (0: the first after the delimiter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_frames: Vec<u32>,
    /// Parts of frames blanked before the comparison.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<Mask>,
}

/// A part of one body frame that may differ: give `regex` or `bytes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mask {
    /// Which body frame.
    pub frame: u32,
    /// Every match of this regular expression (over the frame's bytes) is blanked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Bytes `start` up to `end` (exclusive) are blanked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteRange>,
}

/// A byte range of a frame, `end` exclusive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ByteRange {
    /// First byte blanked.
    pub start: u32,
    /// First byte kept after the range.
    pub end: u32,
}

/// A mask ready to apply.
#[derive(Clone, Debug)]
enum Blank {
    Regex(regex::bytes::Regex),
    Bytes(std::ops::Range<usize>),
}

/// How two replies compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// The same, as the rules see them.
    Same,
    /// Different.
    Different,
}

/// Compiled comparison rules.
#[derive(Clone, Debug, Default)]
pub struct Comparator {
    by: CompareBy,
    ignore: Vec<usize>,
    masks: Vec<(usize, Blank)>,
}

impl Mask {
    /// The compiled mask; `Err` says what is wrong.
    fn compile(&self) -> Result<Blank, String> {
        match (&self.regex, self.bytes) {
            (Some(r), None) => regex::bytes::Regex::new(r)
                .map(Blank::Regex)
                .map_err(|e| format!("regex {r:?}: {e}")),
            (None, Some(b)) if b.start < b.end => {
                Ok(Blank::Bytes(b.start as usize..b.end as usize))
            }
            (None, Some(b)) => Err(format!(
                "bytes {}..{}: start must be below end",
                b.start, b.end
            )),
            _ => Err("give exactly one of regex and bytes".into()),
        }
    }
}

impl ReplyComparison {
    /// The compiled rules; `Err` names the mask (by index) and what is wrong with it.
    pub fn compile(&self) -> Result<Comparator, (usize, String)> {
        let masks = self
            .masks
            .iter()
            .enumerate()
            .map(|(i, m)| Ok((m.frame as usize, m.compile().map_err(|e| (i, e))?)))
            .collect::<Result<_, _>>()?;
        Ok(Comparator {
            by: self.by,
            ignore: self.ignore_frames.iter().map(|&f| f as usize).collect(),
            masks,
        })
    }
}

impl Comparator {
    /// Whether only the error classifier decides.
    pub fn by(&self) -> CompareBy {
        self.by
    }

    /// Compares two reply bodies byte for byte, after ignored frames and masks (the
    /// classifier mode is the caller's: it owns the classifier).
    pub fn compare<F: std::ops::Deref<Target = [u8]>>(&self, a: &[F], b: &[F]) -> Comparison {
        if a.len() != b.len() {
            return Comparison::Different;
        }
        let same = (0..a.len())
            .filter(|i| !self.ignore.contains(i))
            .all(|i| self.frame(i, &a[i]) == self.frame(i, &b[i]));
        if same {
            Comparison::Same
        } else {
            Comparison::Different
        }
    }

    /// Frame `i` with its masks applied (blanked parts become one `*` each).
    fn frame<'a>(&self, i: usize, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut out = std::borrow::Cow::Borrowed(bytes);
        for (_, blank) in self.masks.iter().filter(|(f, _)| *f == i) {
            out = match blank {
                Blank::Regex(r) => match r.replace_all(&out, &b"*"[..]) {
                    std::borrow::Cow::Borrowed(_) => out,
                    std::borrow::Cow::Owned(v) => std::borrow::Cow::Owned(v),
                },
                Blank::Bytes(range) => {
                    let mut v = out.into_owned();
                    let end = range.end.min(v.len());
                    if range.start < end {
                        v.splice(range.start..end, [b'*']);
                    }
                    std::borrow::Cow::Owned(v)
                }
            };
        }
        out
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.regex, self.bytes) {
            (Some(r), _) => write!(f, "{}:regex:{r}", self.frame),
            (None, Some(b)) => write!(f, "{}:bytes:{}..{}", self.frame, b.start, b.end),
            (None, None) => write!(f, "{}:", self.frame),
        }
    }
}

impl std::str::FromStr for Mask {
    type Err = String;

    /// `FRAME:regex:PATTERN` or `FRAME:bytes:START..END`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "write FRAME:regex:PATTERN or FRAME:bytes:START..END";
        let mut parts = s.splitn(3, ':');
        let (Some(frame), Some(kind), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?}: {usage}"));
        };
        let frame: u32 = frame
            .parse()
            .map_err(|_| format!("{s:?}: the frame {frame:?} is not a number; {usage}"))?;
        let mask = match kind {
            "regex" => Mask {
                frame,
                regex: Some(rest.to_string()),
                bytes: None,
            },
            "bytes" => {
                let range = rest.split_once("..").and_then(|(a, b)| {
                    Some(ByteRange {
                        start: a.parse().ok()?,
                        end: b.parse().ok()?,
                    })
                });
                Mask {
                    frame,
                    regex: None,
                    bytes: Some(range.ok_or_else(|| format!("{s:?}: {usage}"))?),
                }
            }
            _ => return Err(format!("{s:?}: {usage}")),
        };
        mask.compile().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(mask)
    }
}

impl std::str::FromStr for CompareBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bytes" => Ok(Self::Bytes),
            "classifier" => Ok(Self::Classifier),
            _ => Err(format!("{s:?}: write bytes or classifier")),
        }
    }
}

impl fmt::Display for CompareBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bytes => "bytes",
            Self::Classifier => "classifier",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(v: &[&'static str]) -> Vec<&'static [u8]> {
        v.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn masks_and_ignored_frames_hide_what_may_differ() {
        let rules = ReplyComparison {
            by: CompareBy::Bytes,
            ignore_frames: vec![2],
            masks: vec![
                "0:regex:t=[0-9]+".parse().unwrap(),
                "1:bytes:0..4".parse().unwrap(),
            ],
        };
        let c = rules.compile().unwrap();
        let a = frames(&["OK t=1700000000 x", "abcdrest", "id-1"]);
        let b = frames(&["OK t=1800000001 x", "wxyzrest", "id-2"]);
        assert_eq!(c.compare(&a, &b), Comparison::Same);
        let d = frames(&["OK t=1800000001 y", "wxyzrest", "id-2"]);
        assert_eq!(c.compare(&a, &d), Comparison::Different);
        let e = frames(&["OK t=1 x", "wxyzrest"]);
        assert_eq!(c.compare(&a, &e), Comparison::Different, "a frame fewer");
        let none = ReplyComparison::default().compile().unwrap();
        assert_eq!(none.compare(&a, &b), Comparison::Different);
    }

    #[test]
    fn bad_masks_are_named() {
        assert!(
            "x:regex:a"
                .parse::<Mask>()
                .unwrap_err()
                .contains("not a number")
        );
        assert!("0:regex:(".parse::<Mask>().unwrap_err().contains("regex"));
        assert!(
            "0:bytes:4..2"
                .parse::<Mask>()
                .unwrap_err()
                .contains("below end")
        );
        assert!("0:glob:*".parse::<Mask>().is_err());
        let both = ReplyComparison {
            masks: vec![Mask {
                frame: 0,
                regex: Some("a".into()),
                bytes: Some(ByteRange { start: 0, end: 1 }),
            }],
            ..ReplyComparison::default()
        };
        assert_eq!(both.compile().unwrap_err().0, 0);
        for m in ["0:regex:[0-9]+", "3:bytes:0..8"] {
            assert_eq!(m.parse::<Mask>().unwrap().to_string(), m);
        }
    }
}
