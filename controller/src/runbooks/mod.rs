//! Runbooks: versioned markdown with front matter, embedded in the binary, found by id or
//! by the alert they answer, rendered for a terminal, and linted (see `lint`).

pub mod lint;
pub mod steps;

use serde::{Deserialize, Serialize};
use zdeploy_api::service::RunbookRef;

include!(concat!(env!("OUT_DIR"), "/runbooks.rs"));

/// Sections every runbook has, in this order.
pub const SECTIONS: [&str; 5] = ["Meaning", "Impact", "Diagnosis", "Mitigation", "Rollback"];

/// The front matter of a runbook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    /// Stable id; the file is `<id>.md`.
    pub id: String,
    /// Title.
    pub title: String,
    /// Semantic version; bumped whenever the body changes.
    pub version: String,
    /// Teams or people who keep it true.
    pub owners: Vec<String>,
    /// Alerts it answers (`alertname`).
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Services it applies to (`*` for all).
    #[serde(default)]
    pub services: Vec<String>,
    /// Date of the last review, `YYYY-MM-DD`.
    pub last_reviewed: String,
}

/// A parsed runbook.
#[derive(Clone, Debug, PartialEq)]
pub struct Runbook {
    /// Its front matter.
    pub meta: FrontMatter,
    /// The markdown after the front matter.
    pub body: String,
}

/// Splits `---\nYAML\n---\nbody` and parses the YAML.
pub fn parse(text: &str) -> Result<Runbook, String> {
    let rest = text
        .strip_prefix("---\n")
        .ok_or("must start with a front matter block (---)")?;
    let end = rest
        .find("\n---\n")
        .ok_or("the front matter block is not closed by ---")?;
    let meta: FrontMatter =
        serde_saphyr::from_str(&rest[..end]).map_err(|e| format!("front matter: {e}"))?;
    Ok(Runbook {
        meta,
        body: rest[end + 5..].to_string(),
    })
}

/// Every embedded runbook.
pub fn catalog() -> Vec<Runbook> {
    EMBEDDED
        .iter()
        .filter_map(|(_, text)| parse(text).ok())
        .collect()
}

/// The runbook with this id, or the one that answers this alert.
pub fn find(id_or_alert: &str) -> Option<Runbook> {
    let all = catalog();
    all.iter()
        .find(|r| r.meta.id == id_or_alert)
        .or_else(|| {
            all.iter()
                .find(|r| r.meta.alerts.iter().any(|a| a == id_or_alert))
        })
        .cloned()
}

/// `id@version` of a shipped runbook (the id alone when none ships with that id).
pub fn pin(id: &str) -> RunbookRef {
    match find(id) {
        Some(r) if r.meta.id == id => RunbookRef::new(id, Some(&r.meta.version)),
        _ => RunbookRef::new(id, None),
    }
}

/// The runbook as a terminal shows it: title, version, owners, then the body.
pub fn render(r: &Runbook) -> String {
    let m = &r.meta;
    let mut out = format!("{}\n{}\n", m.title, "=".repeat(m.title.chars().count()));
    out.push_str(&format!(
        "{} v{} · owners: {} · reviewed {}\n",
        m.id,
        m.version,
        m.owners.join(", "),
        m.last_reviewed
    ));
    if !m.alerts.is_empty() {
        out.push_str(&format!("alerts: {}\n", m.alerts.join(", ")));
    }
    for line in r.body.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&format!("{h}\n{}\n", "-".repeat(h.chars().count())));
        } else if !line.starts_with("```") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_runbook_parses_and_alerts_find_theirs() {
        assert_eq!(catalog().len(), EMBEDDED.len());
        let r = find("CanaryErrorRateHigh").expect("runbook for the alert");
        assert_eq!(r.meta.id, "canary-error-ratio-high");
        assert!(
            pin("canary-error-ratio-high")
                .to_string()
                .starts_with("canary-error-ratio-high@")
        );
        assert_eq!(
            pin("no-such-runbook"),
            RunbookRef::new("no-such-runbook", None)
        );
        let text = render(&r);
        assert!(text.starts_with("Canary error ratio high\n====="));
        assert!(text.contains("\nMitigation\n----------\n"));
    }
}
