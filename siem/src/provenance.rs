//! What ties a SIEM event to the ledger, read back from the event, and the
//! comparison of a SIEM's copy with the event an entry maps to.
//!
//! `unmapped.custody` names the ledger DID, the entry's `seq` and entry hash
//! (`SHA-256(0x00 ‖ line)`, the Merkle leaf) and the tree size it was read at:
//! with `custody-verify prove BUNDLE --seq N` an incident responder gets the
//! inclusion proof, and `custody-verify check-event` checks that the event is
//! that entry's event, field for field.

use custody_identity::Did;
use serde_json::Value;

use crate::ocsf::MAPPING_VERSION;
use crate::SiemError;

/// What an event says about where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    pub ledger: Did,
    pub seq: u64,
    /// The entry hash, 64 lowercase hex digits.
    pub hash: String,
    /// The ledger's size when the entry was read (> `seq`).
    pub tree_size: u64,
    /// The mapping version the event was made with.
    pub mapping: u64,
}

/// Reads `unmapped.custody` of an OCSF event made by [`crate::to_ocsf`].
pub fn provenance(event: &Value) -> Result<Provenance, SiemError> {
    let c = event
        .pointer("/unmapped/custody")
        .and_then(Value::as_object)
        .ok_or_else(|| SiemError::Event("no unmapped.custody object".into()))?;
    let field = |k: &str| {
        c.get(k)
            .ok_or_else(|| SiemError::Event(format!("unmapped.custody.{k} is missing")))
    };
    let uint = |k: &str| {
        field(k)?
            .as_u64()
            .ok_or_else(|| SiemError::Event(format!("unmapped.custody.{k} is not an integer")))
    };
    let ledger = field("ledger")?
        .as_str()
        .ok_or_else(|| SiemError::Event("unmapped.custody.ledger is not a string".into()))?;
    let ledger = Did::parse(ledger)
        .map_err(|e| SiemError::Event(format!("unmapped.custody.ledger: {e}")))?;
    let hash = field("hash")?
        .as_str()
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| SiemError::Event("unmapped.custody.hash is not a hash".into()))?
        .to_string();
    let (seq, tree_size, mapping) = (uint("seq")?, uint("tree_size")?, uint("mapping")?);
    if mapping != MAPPING_VERSION {
        return Err(SiemError::Event(format!(
            "mapping version {mapping}; this build reads version {MAPPING_VERSION}"
        )));
    }
    if seq >= tree_size {
        return Err(SiemError::Event(format!(
            "seq {seq} is not below the tree size {tree_size}"
        )));
    }
    Ok(Provenance {
        ledger,
        seq,
        hash,
        tree_size,
        mapping,
    })
}

/// How a SIEM's copy of an event differs from the expected one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields custody wrote that are missing or hold another value (JSON
    /// pointers): any one of them means the copy is not the entry's event.
    pub differ: Vec<String>,
    /// Fields the copy has that custody did not write (added by the SIEM or
    /// anyone after it): not vouched for by the ledger, reported.
    pub added: Vec<String>,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.differ.is_empty()
    }
}

/// Compares `actual` (a SIEM's copy) with `expected` (what the entry maps
/// to): every field of `expected` must be in `actual` with the same value;
/// objects may carry more members (listed in [`Comparison::added`]); arrays
/// must match element for element.
pub fn compare(expected: &Value, actual: &Value) -> Comparison {
    let mut c = Comparison::default();
    walk(expected, actual, &mut String::new(), &mut c);
    c
}

fn walk(expected: &Value, actual: &Value, path: &mut String, c: &mut Comparison) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                match a.get(k) {
                    Some(av) => walk(ev, av, path, c),
                    None => c.differ.push(path.clone()),
                }
                path.truncate(len);
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                c.added.push(format!(
                    "{path}/{}",
                    k.replace('~', "~0").replace('/', "~1")
                ));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(ev, av, path, c);
                path.truncate(len);
            }
        }
        (e, a) if e == a => {}
        _ => c.differ.push(if path.is_empty() {
            "/".into()
        } else {
            path.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compare_names_what_differs_and_what_was_added() {
        let e = json!({"a": 1, "b": {"c": [1, 2]}, "d": "x"});
        let same = compare(&e, &e.clone());
        assert!(same.matches() && same.added.is_empty());
        let a = json!({"a": 1, "b": {"c": [1, 3], "z": true}, "e": 0});
        let c = compare(&e, &a);
        assert_eq!(c.differ, vec!["/b/c/1", "/d"]);
        assert_eq!(c.added, vec!["/b/z", "/e"]);
        assert!(!compare(&json!([1]), &json!([1, 2])).matches());
    }
}
