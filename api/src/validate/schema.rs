//! Structural check of a document against the CRD's OpenAPI schema: unknown fields, types,
//! required fields, enums, ranges and patterns, each reported with its field path.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use super::Problem;
use super::path::FieldPath;
use crate::duration::DURATION_PATTERN;

/// Appends to `out` every way `value` at `path` breaks `schema`.
pub fn check(schema: &JSONSchemaProps, value: &Value, path: &FieldPath, out: &mut Vec<Problem>) {
    let mut report = |rule: String| out.push(Problem::new(path.clone(), rule, Some(value)));
    if value.is_null() {
        if schema.nullable != Some(true) && schema.type_.is_some() {
            report(format!("must not be empty: give a {}", type_name(schema)));
        }
        return;
    }
    if schema.x_kubernetes_int_or_string == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            report("must be an integer or a string".into());
        }
        return;
    }
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    match schema.type_.as_deref() {
        Some("object") => check_object(schema, value, path, preserve, out),
        Some("array") => {
            let Value::Array(items) = value else {
                return report(format!("must be a list, not {}", describe(value)));
            };
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    check(item, v, &path.index(i), out);
                }
            }
        }
        Some("string") => {
            let Value::String(s) = value else {
                let hint = if value.is_number() {
                    format!(": quote it, \"{value}\"")
                } else {
                    String::new()
                };
                return report(format!("must be a string, not {}{hint}", describe(value)));
            };
            check_enum(schema, value, &mut report);
            if let Some(p) = &schema.pattern
                && !regex::Regex::new(p).is_ok_and(|re| re.is_match(s))
            {
                report(if p == DURATION_PATTERN {
                    "must be a duration: a number and a unit (ms, s, m, h), e.g. 800ms, 30s, 5m, 1h30m".into()
                } else {
                    format!("must match the pattern {p}")
                });
            }
        }
        Some("integer") => {
            if !(value.is_i64() || value.is_u64()) {
                return report(format!("must be a whole number, not {}", describe(value)));
            }
            check_range(schema, value, &mut report);
        }
        Some("number") => {
            if !value.is_number() {
                return report(format!("must be a number, not {}", describe(value)));
            }
            check_range(schema, value, &mut report);
        }
        Some("boolean") if !value.is_boolean() => {
            report(format!("must be true or false, not {}", describe(value)));
        }
        _ => {}
    }
}

fn check_object(
    schema: &JSONSchemaProps,
    value: &Value,
    path: &FieldPath,
    preserve: bool,
    out: &mut Vec<Problem>,
) {
    let Value::Object(map) = value else {
        out.push(Problem::new(
            path.clone(),
            format!("must be a mapping, not {}", describe(value)),
            Some(value),
        ));
        return;
    };
    for req in schema.required.iter().flatten() {
        if !map.contains_key(req) {
            out.push(Problem::new(path.key(req), "is required".into(), None));
        }
    }
    let props = schema.properties.as_ref();
    for (k, v) in map {
        let child = path.key(k);
        if let Some(s) = props.and_then(|p| p.get(k)) {
            check(s, v, &child, out);
            continue;
        }
        match &schema.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(s)) => check(s, v, &child, out),
            Some(JSONSchemaPropsOrBool::Bool(true)) => {}
            _ if preserve || props.is_none() => {}
            _ => {
                let known: Vec<&str> = props
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.as_str())
                    .collect();
                let hint = match closest(k, &known) {
                    Some(near) => format!("; did you mean {near:?}?"),
                    None => format!("; known fields: {}", known.join(", ")),
                };
                out.push(Problem::new(child, format!("unknown field{hint}"), None));
            }
        }
    }
    // Externally tagged enums (steps, faults) become a oneOf of single required keys.
    if let Some(branches) = &schema.one_of {
        let keys: Vec<&String> = branches
            .iter()
            .filter_map(|b| b.required.as_ref().filter(|r| r.len() == 1).map(|r| &r[0]))
            .collect();
        if keys.len() == branches.len() {
            let set = keys.iter().filter(|k| map.contains_key(k.as_str())).count();
            if set != 1 {
                let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
                out.push(Problem::new(
                    path.clone(),
                    format!("must set exactly one of {} (found {set})", names.join(", ")),
                    None,
                ));
            }
        }
    }
}

fn check_enum(schema: &JSONSchemaProps, value: &Value, report: &mut impl FnMut(String)) {
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let names: Vec<String> = allowed.iter().map(|a| a.0.to_string()).collect();
        report(format!("must be one of {}", names.join(", ")));
    }
}

fn check_range(schema: &JSONSchemaProps, value: &Value, report: &mut impl FnMut(String)) {
    let Some(n) = value.as_f64() else { return };
    match (schema.minimum, schema.maximum) {
        (Some(lo), Some(hi)) if n < lo || n > hi => {
            report(format!("must be between {lo} and {hi}"));
        }
        (Some(lo), None) if n < lo => report(format!("must be at least {lo}")),
        (None, Some(hi)) if n > hi => report(format!("must be at most {hi}")),
        _ => {}
    }
}

fn type_name(schema: &JSONSchemaProps) -> &str {
    match schema.type_.as_deref() {
        Some("object") => "mapping",
        Some("array") => "list",
        Some("integer") => "whole number",
        Some(other) => other,
        None => "value",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The known name nearest to a typo, if it is near enough to be the one meant.
fn closest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&typo.to_lowercase(), &k.to_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        assert_eq!(
            closest("replcas", &["replicas", "template"]),
            Some("replicas")
        );
        assert_eq!(closest("zzzzzz", &["replicas", "template"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
