//! JSON read strictly: a key given twice in one object is refused, wherever it is. serde
//! keeps the last of two keys of a map silently (`{"stable":100,"stable":0}` would mean
//! stable 0), and a request that says two things must not be read as one of them.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a strict read failed.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// A key appears twice in one object.
    #[error("{0}")]
    Duplicate(serde_json::Error),
    /// Not JSON, or not the expected shape.
    #[error("{0}")]
    Invalid(serde_json::Error),
}

/// Reads `T` from `bytes`, refusing any object that repeats a key.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StrictJsonError> {
    serde_json::from_slice::<NoDuplicates>(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => StrictJsonError::Duplicate(e),
        _ => StrictJsonError::Invalid(e),
    })?;
    serde_json::from_slice(bytes).map_err(StrictJsonError::Invalid)
}

/// Reads `T` from `text`, refusing any object that repeats a key.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, StrictJsonError> {
    from_slice(text.as_bytes())
}

/// Any JSON value, checked for repeated keys and then forgotten.
struct NoDuplicates;

impl<'de> de::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoDuplicates>()?;
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears twice in one object: give it once"
                )));
            }
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        let e = from_str::<BTreeMap<String, i64>>(r#"{"stable":100,"stable":0,"canary":100}"#)
            .unwrap_err();
        assert!(matches!(e, StrictJsonError::Duplicate(_)), "{e}");
        assert!(e.to_string().contains("\"stable\" appears twice"), "{e}");
        let nested = r#"[{"a":{"b":1,"b":2}}]"#;
        assert!(from_str::<serde_json::Value>(nested).is_err());
        let ok: BTreeMap<String, i64> = from_str(r#"{"stable":90,"canary":10}"#).unwrap();
        assert_eq!(ok["canary"], 10);
        assert!(matches!(
            from_str::<serde_json::Value>("{"),
            Err(StrictJsonError::Invalid(_))
        ));
    }
}
