//! RFC 8785 (JSON Canonicalization Scheme) for everything that is hashed or signed.
//!
//! Serialization goes through `serde_json_canonicalizer`, a maintained RFC 8785
//! implementation (ECMAScript number formatting, UTF-16 key ordering), so custody
//! never formats canonical JSON by hand. [`decode_line`] and [`LineError`] read
//! the lines the bundle format requires in that form.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::LedgerError;

/// The JCS bytes of a value.
pub fn to_canonical<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| LedgerError::Canonical(e.to_string()))
}

/// Whether `bytes` are exactly the JCS form of the JSON they contain.
pub fn is_canonical(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => to_canonical(&v).map(|c| c == bytes).unwrap_or(false),
        Err(_) => false,
    }
}

/// Why a line of a bundle's `.jsonl` file holds no record. The variants split
/// into the two verdicts FORMAT.md §9 gives: a line that cannot be read at
/// all ([`LineError::is_unreadable`], exit 2) and a readable JSON object that
/// is not a record of its kind (the check that owns the file fails, exit 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Not UTF-8 JSON text, or JSON that is not an object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// Written by a format version this build does not read: its members may
    /// mean something else, so nothing in it is judged.
    #[error("unsupported {what} version {found} (this build reads {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u64,
        supported: u64,
    },
    /// A JSON object that is not a record of its kind: a member unknown,
    /// missing, duplicated, or of the wrong type or form.
    #[error("{0}")]
    Malformed(String),
}

impl LineError {
    /// Whether the line cannot be read at all, as opposed to a JSON object
    /// that fails the format's rules. Exhaustive on purpose: a new variant
    /// must decide which verdict it gives.
    pub fn is_unreadable(&self) -> bool {
        match self {
            LineError::TooLarge { .. }
            | LineError::NotJson(_)
            | LineError::UnsupportedVersion { .. } => true,
            LineError::Malformed(_) => false,
        }
    }
}

/// A record read from a line, and whether the line was its JCS form. A line
/// that is not canonical still says something the other checks can judge;
/// the encoding check reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    pub canonical: bool,
}

/// Reads one `.jsonl` line the format requires in JCS form (credentials,
/// DIDs, payloads). Parsing as a `Value` first is what tells "not JSON" from
/// "not this record"; these files are small next to `entries.jsonl`.
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<Decoded<T>, LineError> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(LineError::NotJson(
            "a JSON value that is not an object".into(),
        ));
    }
    // A value JCS cannot write (an integer beyond 2^53 written exactly, say)
    // has no canonical line, so it cannot equal this one.
    let canonical = to_canonical(&v).map(|c| c == line).unwrap_or(false);
    let value = serde_json::from_value(v).map_err(|e| LineError::Malformed(e.to_string()))?;
    Ok(Decoded { value, canonical })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc8785_ordering_and_numbers() {
        let v = json!({"b": 1, "a": [1.0, 1e21, "\u{20ac}"], "\u{e9}": null});
        let c = String::from_utf8(to_canonical(&v).unwrap()).unwrap();
        assert_eq!(c, "{\"a\":[1,1e+21,\"\u{20ac}\"],\"b\":1,\"\u{e9}\":null}");
        assert!(is_canonical(c.as_bytes()));
        assert!(!is_canonical(b"{\"b\":1,\"a\":2}"));
        assert!(!is_canonical(b"{\"a\": 2}"));
    }
}
