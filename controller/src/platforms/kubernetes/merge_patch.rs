//! The JSON merge patch (RFC 7386) that turns one document into another. A merge patch
//! keeps every field it does not name, so a field that is gone must be sent as `null`:
//! a status written whole as a merge patch would keep a finished rollout forever.

use serde_json::{Map, Value};

/// The merge patch from `old` to `new`: changed fields with their new value, removed
/// ones as `null`, objects compared field by field, anything else replaced whole.
pub fn between(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(was) if was == v => {}
                    Some(was @ Value::Object(_)) if v.is_object() => {
                        patch.insert(k.clone(), between(was, v));
                    }
                    _ => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removed_fields_become_null_and_unchanged_ones_are_left_out() {
        let old = json!({"phase": "Progressing", "rollout": {"paused": false, "step": 1}, "history": [1], "same": 3});
        let new = json!({"phase": "Healthy", "history": [2, 1], "same": 3, "message": "done"});
        assert_eq!(
            between(&old, &new),
            json!({"phase": "Healthy", "rollout": null, "history": [2, 1], "message": "done"})
        );
        let nested = between(
            &json!({"a": {"x": 1, "y": 2}}),
            &json!({"a": {"x": 1, "z": 3}}),
        );
        assert_eq!(nested, json!({"a": {"y": null, "z": 3}}));
    }
}
