//! `zdeploy runbook lint`: every runbook has valid front matter and the required sections;
//! every alert rule links a runbook that exists and lists it; every alert a runbook lists
//! exists; a runbook whose body changed since the last commit has a new version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{Runbook, SECTIONS, parse};

/// One problem, in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the repository.
    pub file: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// An alert rule found in `manifests/prometheus/`.
#[derive(Clone, Debug)]
struct AlertRule {
    file: String,
    name: String,
    runbook_url: Option<String>,
}

fn semver(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn date(d: &str) -> bool {
    let b = d.as_bytes();
    d.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && d.chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn check_runbook(file: &str, stem: &str, r: &Runbook, out: &mut Vec<Problem>) {
    let mut p = |m: String| {
        out.push(Problem {
            file: file.to_string(),
            message: m,
        })
    };
    if r.meta.id != stem {
        p(format!(
            "id {:?} must match the file name ({stem})",
            r.meta.id
        ));
    }
    if !semver(&r.meta.version) {
        p(format!(
            "version {:?} must be semver, e.g. 1.0.0",
            r.meta.version
        ));
    }
    if r.meta.owners.is_empty() {
        p("owners must name at least one team or person".into());
    }
    if !date(&r.meta.last_reviewed) {
        p(format!(
            "last_reviewed {:?} must be a date, YYYY-MM-DD",
            r.meta.last_reviewed
        ));
    }
    let headings: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    for s in SECTIONS {
        if !headings.contains(&s) {
            p(format!(
                "missing section \"## {s}\" (required: {})",
                SECTIONS.join(", ")
            ));
        }
    }
}

fn alert_rules(repo: &Path, out: &mut Vec<Problem>) -> Vec<AlertRule> {
    let dir = repo.join("manifests/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| {
        f.extension().is_some_and(|x| x == "yaml" || x == "yml")
            && !f.to_string_lossy().contains(".test.")
    });
    files.sort();
    let mut rules = Vec::new();
    for f in files {
        let rel = f.strip_prefix(repo).unwrap_or(&f).display().to_string();
        let doc: Value = match std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_saphyr::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                out.push(Problem {
                    file: rel,
                    message: format!("cannot read the rules: {e}"),
                });
                continue;
            }
        };
        for group in doc["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                if let Some(name) = rule["alert"].as_str() {
                    rules.push(AlertRule {
                        file: rel.clone(),
                        name: name.to_string(),
                        runbook_url: rule["annotations"]["runbook_url"]
                            .as_str()
                            .map(String::from),
                    });
                }
            }
        }
    }
    rules
}

/// The body of `runbooks/<file>` at HEAD, if git knows it.
fn committed(repo: &Path, file: &str) -> Option<Runbook> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["show", &format!("HEAD:runbooks/{file}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse(&String::from_utf8_lossy(&out.stdout)).ok())
        .flatten()
}

/// Lints the runbooks and alert rules of the repository at `repo`.
pub fn lint(repo: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut runbooks: BTreeMap<String, Runbook> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("runbooks"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|x| x == "md"));
    files.sort();
    for f in &files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let rel = format!("runbooks/{name}");
        let stem = name.trim_end_matches(".md");
        let text = std::fs::read_to_string(f).unwrap_or_default();
        match parse(&text) {
            Err(e) => out.push(Problem {
                file: rel,
                message: e,
            }),
            Ok(r) => {
                check_runbook(&rel, stem, &r, &mut out);
                if let Some(old) = committed(repo, &name)
                    && old.body != r.body
                    && old.meta.version == r.meta.version
                {
                    out.push(Problem {
                        file: rel.clone(),
                        message: format!("the body changed since the last commit but version is still {}: bump it", r.meta.version),
                    });
                }
                runbooks.insert(stem.to_string(), r);
            }
        }
    }
    let rules = alert_rules(repo, &mut out);
    for rule in &rules {
        let mut p = |m: String| {
            out.push(Problem {
                file: rule.file.clone(),
                message: format!("alert {}: {m}", rule.name),
            })
        };
        let Some(url) = &rule.runbook_url else {
            p("has no runbook_url annotation".into());
            continue;
        };
        let id = url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".md");
        match runbooks.get(id) {
            None => p(format!(
                "runbook_url {url} points to runbooks/{id}.md, which does not exist"
            )),
            Some(r) if !r.meta.alerts.contains(&rule.name) => p(format!(
                "runbook {id} does not list this alert in its alerts"
            )),
            Some(_) => {}
        }
    }
    for (id, r) in &runbooks {
        for a in &r.meta.alerts {
            if !rules.iter().any(|rule| &rule.name == a) {
                out.push(Problem {
                    file: format!("runbooks/{id}.md"),
                    message: format!(
                        "lists alert {a}, which no rule in manifests/prometheus/ defines"
                    ),
                });
            }
        }
    }
    out
}
