//! Validation of zdeploy manifests: YAML syntax, the CRD schema, then the rules a schema
//! cannot say. Every problem names the field path, the rule and the value, and its line.

mod lines;
mod path;
mod rules;
mod schema;
pub mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use path::{FieldPath, Segment};

use crate::{ChaosSchedule, ZmqService};
use lines::LineIndex;

/// The apiVersion of every zdeploy resource.
pub const API_VERSION: &str = "zdeploy.io/v1alpha1";

/// One broken rule in one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where: `spec.strategy.canary.steps[2].setWeight`.
    pub path: FieldPath,
    /// What rule is broken, in words.
    pub rule: String,
    /// The value given, when there was one, as JSON.
    pub value: Option<String>,
    /// 1-based source line, when the YAML parser can give one.
    pub line: Option<usize>,
}

impl Problem {
    /// A problem without a line yet.
    pub fn new(path: FieldPath, rule: String, value: Option<&Value>) -> Self {
        let value = value
            .filter(|v| !(v.is_object() || v.is_array()))
            .map(|v| v.to_string());
        Self {
            path,
            rule,
            value,
            line: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.path, self.rule)?;
        if let Some(v) = &self.value {
            write!(f, " (got {v})")?;
        }
        Ok(())
    }
}

/// A manifest that passed validation.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A ZmqService.
    ZmqService(Box<ZmqService>),
    /// A ChaosSchedule.
    ChaosSchedule(Box<ChaosSchedule>),
}

/// The outcome for one YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    /// Position in the stream, from 0.
    pub index: usize,
    /// `kind`, as written.
    pub kind: String,
    /// `metadata.name`, as written.
    pub name: String,
    /// The typed resource, when there are no problems.
    pub resource: Option<Resource>,
    /// Everything wrong with the document.
    pub problems: Vec<Problem>,
}

/// The text is not YAML at all.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not valid YAML: {0}")]
pub struct SyntaxError(pub String);

/// The parser's message with its library advice put in zdeploy's words.
fn in_our_words(message: &str) -> String {
    let duplicate = regex::Regex::new(r", set DuplicateKeyPolicy in Options if acceptable")
        .expect("a valid regex");
    let budget = regex::Regex::new(r"budget breached: \w+ \{ \w+: \d+ \}").expect("a valid regex");
    let m = duplicate.replace_all(message, " (a key may appear once in a mapping: remove one)");
    budget
        .replace_all(
            &m,
            "too many YAML nodes for a manifest (it is not a ZmqService, or it repeats itself)",
        )
        .into_owned()
}

/// Validates every document of a (multi-document) YAML text.
pub fn validate_str(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let values: Vec<Value> = serde_saphyr::from_str_multiple(text)
        .map_err(|e| SyntaxError(in_our_words(&e.to_string())))?;
    let index = LineIndex::build(text);
    let docs = values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| {
            let mut doc = validate_value(i, v);
            for p in &mut doc.problems {
                p.line = index.line(i, &p.path);
            }
            doc
        })
        .collect();
    Ok(docs)
}

/// Loads the ZmqServices of a text, failing with every problem found.
pub fn load_services(text: &str) -> Result<Vec<ZmqService>, String> {
    let docs = validate_str(text).map_err(|e| e.to_string())?;
    let mut services = Vec::new();
    let mut errors = Vec::new();
    for d in docs {
        errors.extend(d.problems.iter().map(|p| p.to_string()));
        if let Some(Resource::ZmqService(s)) = d.resource {
            services.push(*s);
        }
    }
    if errors.is_empty() {
        Ok(services)
    } else {
        Err(errors.join("\n"))
    }
}

fn validate_value(index: usize, value: Value) -> Document {
    let text = |p: &str| {
        value
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = text("/kind");
    let name = text("/metadata/name");
    let mut problems = Vec::new();
    let root = FieldPath::default();
    if !value.is_object() {
        problems.push(Problem::new(
            root.clone(),
            "must be a mapping (a Kubernetes object)".into(),
            Some(&value),
        ));
    } else if value.get("apiVersion") != Some(&Value::String(API_VERSION.into())) {
        problems.push(Problem::new(
            root.key("apiVersion"),
            format!("must be {API_VERSION}"),
            value.get("apiVersion"),
        ));
    }
    let resource = match kind.as_str() {
        "ZmqService" => typed::<ZmqService>(&value, &mut problems).map(|svc| {
            problems.extend(rules::zmq_service(&svc));
            Resource::ZmqService(Box::new(svc))
        }),
        "ChaosSchedule" => typed::<ChaosSchedule>(&value, &mut problems).map(|cs| {
            problems.extend(rules::chaos_schedule(&cs));
            Resource::ChaosSchedule(Box::new(cs))
        }),
        _ => {
            problems.push(Problem::new(
                root.key("kind"),
                "must be ZmqService or ChaosSchedule".into(),
                value.get("kind"),
            ));
            None
        }
    };
    Document {
        index,
        kind,
        name,
        resource: resource.filter(|_| problems.is_empty()),
        problems,
    }
}

/// `K`'s CRD, generated once: making it is most of the cost of validating a document.
fn crd_of<K: CustomResourceExt + 'static>() -> &'static CustomResourceDefinition {
    type Crds = Mutex<BTreeMap<std::any::TypeId, &'static CustomResourceDefinition>>;
    static CRDS: OnceLock<Crds> = OnceLock::new();
    let mut crds = CRDS
        .get_or_init(Default::default)
        .lock()
        .expect("CRD cache lock");
    crds.entry(std::any::TypeId::of::<K>())
        .or_insert_with(|| Box::leak(Box::new(K::crd())))
}

/// Checks `value` against `K`'s CRD schema, then deserializes it; `None` with problems on failure.
fn typed<K: CustomResourceExt + DeserializeOwned + 'static>(
    value: &Value,
    problems: &mut Vec<Problem>,
) -> Option<K> {
    let crd = crd_of::<K>();
    let root_schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref());
    let root = FieldPath::default();
    if let Some(s) = root_schema {
        let before = problems.len();
        for (key, child) in s.properties.iter().flatten() {
            match value.get(key) {
                Some(v) => schema::check(child, v, &root.key(key), problems),
                None if s.required.iter().flatten().any(|r| r == key) => {
                    problems.push(Problem::new(root.key(key), "is required".into(), None))
                }
                None => {}
            }
        }
        if value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(Problem::new(
                root.key("metadata").key("name"),
                "is required".into(),
                None,
            ));
        }
        if problems.len() > before {
            return None;
        }
    }
    match serde_path_to_error::deserialize::<_, K>(value) {
        Ok(k) => Some(k),
        Err(e) => {
            let path = FieldPath::parse(&e.path().to_string());
            problems.push(Problem::new(path, e.inner().to_string(), None));
            None
        }
    }
}
