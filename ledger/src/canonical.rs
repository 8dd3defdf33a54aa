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

/// The JCS bytes of a value, as [`to_canonical`] writes them, faster when
/// plain `serde_json` already writes them: its compact output is the JCS
/// form whenever every object's keys come out in JCS order (UTF-16 code
/// units, strictly ascending) and every number is an integer of at most 15
/// digits (both then print it the same way; JCS writes every number as an
/// IEEE double, which differs from serde_json for fractions, exponents and
/// integers above 2^53). Strings, literals and structure are written by the
/// same serde_json code in both. Anything else takes [`to_canonical`]. The
/// verifier's hot path: the canonicalizer buffers and re-parses every key
/// to sort it, most of the cost of checking a line is its JCS form.
pub fn to_canonical_fast<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    match serde_json::to_vec(value) {
        Ok(plain) if already_jcs(&plain) => Ok(plain),
        _ => to_canonical(value),
    }
}

/// Whether `json`, compact JSON as serde_json writes it, is in JCS form by
/// the rule of [`to_canonical_fast`]. `false` when in doubt (a key with an
/// escape, anything unexpected).
pub(crate) fn already_jcs(json: &[u8]) -> bool {
    /// An open object (the last key seen in it) or array.
    enum Open<'a> {
        Object(Option<&'a str>),
        Array,
    }
    let mut open: Vec<Open<'_>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&c) = json.get(i) {
        match c {
            b'{' => {
                open.push(Open::Object(None));
                expect_key = true;
                i += 1;
            }
            b'[' => {
                open.push(Open::Array);
                i += 1;
            }
            b'}' | b']' => {
                open.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                expect_key = matches!(open.last(), Some(Open::Object(_)));
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match json.get(j) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => {
                            escaped = true;
                            j += 2;
                        }
                        Some(_) => j += 1,
                    }
                }
                if expect_key {
                    let Ok(key) = std::str::from_utf8(&json[start..j]) else {
                        return false;
                    };
                    let Some(Open::Object(last)) = open.last_mut() else {
                        return false;
                    };
                    if escaped
                        || last.is_some_and(|l| l.encode_utf16().cmp(key.encode_utf16()).is_ge())
                    {
                        return false;
                    }
                    *last = Some(key);
                    expect_key = false;
                }
                i = j + 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while json
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let token = &json[start..i];
                let digits = token.strip_prefix(b"-").unwrap_or(token);
                // "-0" (kept as written with serde_json's
                // arbitrary_precision) is "0" in JCS.
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_digit)
                    || token == b"-0"
                {
                    return false;
                }
            }
            // The letters of true, false and null.
            _ => i += 1,
        }
    }
    open.is_empty()
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
    use proptest::prelude::*;
    use serde_json::json;

    /// JSON values with what JCS treats specially: keys whose UTF-16 order
    /// differs from their UTF-8 order, escapes, fractions, exponents, large
    /// integers, nesting.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let key = prop_oneof![
            "[a-e]{0,3}",
            Just("\u{e9}".to_string()),
            Just("\u{ff61}".to_string()),
            Just("\u{1f600}".to_string()),
            Just("a\"b\\c\n\u{1}".to_string()),
            Just("/".to_string()),
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1_000_000i64..1_000_000).prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            (-100i32..100).prop_map(|x| serde_json::Value::from(x as f64 / 4.0)),
            "[a-z\u{0}-\u{1f}\"\\\\/\u{e9}\u{1f600}]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The fast path writes exactly what the canonicalizer writes, on
        /// any JSON value (the only claim it makes).
        #[test]
        fn fast_canonical_is_canonical(v in json_value()) {
            prop_assert_eq!(to_canonical_fast(&v).ok(), to_canonical(&v).ok());
        }
    }

    #[test]
    fn fast_path_is_taken_for_plain_sorted_json_only() {
        assert!(already_jcs(
            br#"{"a":[1,-2,{"b":null,"c":true}],"b":"x\n"}"#
        ));
        // Out of order, duplicated, escaped key, fraction, exponent, > 15 digits.
        for not in [
            &br#"{"b":1,"a":2}"#[..],
            br#"{"a":1,"a":2}"#,
            br#"{"\u0061":1}"#,
            br#"{"a":1.5}"#,
            br#"{"a":1e21}"#,
            br#"{"a":9007199254740993}"#,
            br#"{"a":-0}"#,
        ] {
            assert!(!already_jcs(not), "{}", String::from_utf8_lossy(not));
        }
        // UTF-16 order: U+FF61 sorts after U+1F600 (a surrogate pair, 0xD83D).
        let v = json!({"\u{1f600}": 1, "\u{ff61}": 2});
        assert_eq!(to_canonical_fast(&v).unwrap(), to_canonical(&v).unwrap());
    }

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
