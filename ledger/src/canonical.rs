//! RFC 8785 (JSON Canonicalization Scheme) for everything that is hashed or signed.
//!
//! Serialization goes through `serde_json_canonicalizer`, a maintained RFC 8785
//! implementation (ECMAScript number formatting, UTF-16 key ordering), so custody
//! never formats canonical JSON by hand.

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
