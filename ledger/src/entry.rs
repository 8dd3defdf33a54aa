//! Entries: what the ledger appends.
//!
//! An entry wraps a signed event with its position (`seq`), the hash of the entry
//! before it (`prev`) and the broker's receive time. Its bytes are the RFC 8785
//! form of the JSON object — one line of `entries.jsonl` — and its hash is the
//! RFC 6962 leaf hash of those bytes, `SHA-256(0x00 ‖ line)`, which is at once the
//! next entry's `prev` and the Merkle tree's leaf.

use custody_identity::Signature;
use serde::{Deserialize, Serialize};

use crate::canonical::to_canonical;
use crate::event::{Event, SignedEvent, MAX_EVENT_BYTES};
use crate::time::Timestamp;
use crate::types::{EntryHash, Seq};
use crate::LedgerError;

/// Version of the entry format.
pub const ENTRY_VERSION: u64 = 1;
/// Upper bound on one line of `entries.jsonl`: an event at its limit plus the
/// entry's own fields with room to spare. Readers refuse longer lines before
/// parsing them, which bounds the verifier's memory per entry.
pub const MAX_ENTRY_BYTES: usize = MAX_EVENT_BYTES + 1024;

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u64,
    pub seq: Seq,
    pub prev: EntryHash,
    pub received_at: Timestamp,
    pub event: Event,
    pub sig: Signature,
}

impl Entry {
    pub fn new(seq: Seq, prev: EntryHash, received_at: Timestamp, signed: SignedEvent) -> Self {
        Self {
            v: ENTRY_VERSION,
            seq,
            prev,
            received_at,
            event: signed.event,
            sig: signed.sig,
        }
    }

    /// The canonical line (no trailing newline).
    pub fn to_line(&self) -> Result<Vec<u8>, LedgerError> {
        to_canonical(self)
    }

    /// [`Entry::to_line`] given the event's canonical JSON, which the writer
    /// already has (the signature was checked over it): the entry's own
    /// fields are plain strings and integers, so the JCS object is assembled
    /// around the event instead of serializing it again. Debug builds check
    /// the result against `to_line` on every call.
    pub fn to_line_with_event(&self, event_json: &[u8]) -> Result<Vec<u8>, LedgerError> {
        // JCS writes integers above 2^53 in exponent form; leave those (never
        // reached in practice) to the general path.
        if self.seq.0 > (1 << 53) || self.v > (1 << 53) {
            return self.to_line();
        }
        let prev = self.prev.to_hex();
        let at = self.received_at.to_string();
        let sig = self.sig.to_base64url();
        let mut l = Vec::with_capacity(event_json.len() + prev.len() + at.len() + sig.len() + 64);
        l.extend_from_slice(b"{\"event\":");
        l.extend_from_slice(event_json);
        l.extend_from_slice(b",\"prev\":\"");
        l.extend_from_slice(prev.as_bytes());
        l.extend_from_slice(b"\",\"received_at\":\"");
        l.extend_from_slice(at.as_bytes());
        l.extend_from_slice(b"\",\"seq\":");
        l.extend_from_slice(self.seq.0.to_string().as_bytes());
        l.extend_from_slice(b",\"sig\":\"");
        l.extend_from_slice(sig.as_bytes());
        l.extend_from_slice(b"\",\"v\":");
        l.extend_from_slice(self.v.to_string().as_bytes());
        l.push(b'}');
        debug_assert_eq!(
            Some(&l),
            self.to_line().ok().as_ref(),
            "fast entry line differs from JCS"
        );
        Ok(l)
    }

    /// Parses one line and insists it is the canonical encoding of what it says:
    /// no extra fields, no nulls, no alternative number or string forms.
    pub fn parse_line(line: &[u8]) -> Result<Self, LedgerError> {
        if line.len() > MAX_ENTRY_BYTES {
            return Err(LedgerError::TooLarge {
                what: "entry",
                size: line.len(),
                limit: MAX_ENTRY_BYTES,
            });
        }
        let entry: Entry = match serde_json::from_slice(line) {
            Ok(e) => e,
            // Only now look at the version, so that an entry from a newer
            // writer gets a clear "unsupported version" rather than a
            // field-by-field parse error (the common case parses once).
            Err(e) => {
                #[derive(Deserialize)]
                struct Version {
                    v: Option<u64>,
                }
                return Err(match serde_json::from_slice::<Version>(line) {
                    Ok(Version { v: Some(found) }) if found != ENTRY_VERSION => {
                        LedgerError::UnsupportedVersion {
                            what: "entry",
                            found,
                            supported: ENTRY_VERSION,
                        }
                    }
                    Ok(Version { v: None }) => LedgerError::Malformed {
                        what: "entry",
                        reason: "missing field `v`".into(),
                    },
                    _ => LedgerError::Malformed {
                        what: "entry",
                        reason: e.to_string(),
                    },
                });
            }
        };
        if entry.v != ENTRY_VERSION {
            return Err(LedgerError::UnsupportedVersion {
                what: "entry",
                found: entry.v,
                supported: ENTRY_VERSION,
            });
        }
        // The same bytes as `to_line`, without running the outer object
        // through the canonicalizer again (a fifth of the verifier's
        // non-signature time per entry).
        let event_json = to_canonical(&entry.event)?;
        if entry.to_line_with_event(&event_json)? != line {
            return Err(LedgerError::NotCanonical(
                "entry bytes differ from JCS of its content",
            ));
        }
        Ok(entry)
    }

    /// Checks the actor's signature on the event.
    pub fn verify_signature(&self) -> Result<(), LedgerError> {
        self.event.verify_signature(&self.sig)
    }

    /// Checks the actor's signature like [`Entry::verify_signature`], taking
    /// the event's canonical bytes from `line`, the line this entry was parsed
    /// from by [`Entry::parse_line`] (which proved it canonical), instead of
    /// serializing the event again: the verifier's hot path.
    pub fn verify_signature_in(&self, line: &[u8]) -> Result<(), LedgerError> {
        match event_json(line) {
            Some(event) => self.event.verify_signature_canonical(&self.sig, event),
            None => self.verify_signature(),
        }
    }
}

/// The value of `event` in a canonical entry line. JCS sorts `event` first;
/// the entry's own fields follow it, starting with `,"prev":"`, and contain no
/// nested objects, so the last occurrence of that marker ends the event (one
/// inside the event, e.g. a `prev` detail, comes earlier).
fn event_json(line: &[u8]) -> Option<&[u8]> {
    const HEAD: &[u8] = b"{\"event\":";
    const TAIL: &[u8] = b",\"prev\":\"";
    if !line.starts_with(HEAD) {
        return None;
    }
    let end = line.windows(TAIL.len()).rposition(|w| w == TAIL)?;
    line.get(HEAD.len()..end)
}

/// RFC 6962 leaf hash of an entry line: `SHA-256(0x00 ‖ line)`.
pub fn entry_hash(line: &[u8]) -> EntryHash {
    EntryHash(tlog_tiles::record_hash(line).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ActorKind;
    use crate::types::ActionType;
    use custody_identity::KeyPair;

    fn entry() -> Entry {
        let k = KeyPair::generate();
        let e = Event::new(
            k.did(),
            ActorKind::Human,
            ActionType::new("prompt").unwrap(),
        );
        Entry::new(
            Seq(0),
            EntryHash::ZERO,
            Timestamp::now(),
            e.sign(&k).unwrap(),
        )
    }

    #[test]
    fn line_round_trip() {
        let e = entry();
        let line = e.to_line().unwrap();
        assert_eq!(Entry::parse_line(&line).unwrap(), e);
        e.verify_signature().unwrap();
    }

    #[test]
    fn non_canonical_rejected() {
        let e = entry();
        let line = String::from_utf8(e.to_line().unwrap()).unwrap();
        let spaced = line.replacen(":", ": ", 1);
        assert!(matches!(
            Entry::parse_line(spaced.as_bytes()),
            Err(LedgerError::NotCanonical(_))
        ));
    }

    #[test]
    fn versions_and_garbage() {
        assert!(matches!(
            Entry::parse_line(b"{\"v\":2}"),
            Err(LedgerError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            Entry::parse_line(b"not json"),
            Err(LedgerError::Malformed { .. })
        ));
        assert!(Entry::parse_line(b"").is_err());
    }

    #[test]
    fn leaf_hash_is_rfc6962() {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(b"abc");
        assert_eq!(entry_hash(b"abc").0, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn event_bytes_in_the_line_are_the_signed_bytes() {
        let k = KeyPair::generate();
        let mut e = Event::new(
            k.did(),
            ActorKind::Human,
            ActionType::new("tool.call").unwrap(),
        );
        // A detail that looks like the entry's own `prev` field must not confuse it.
        e.details.insert("prev".into(), "x\",\"prev\":\"y".into());
        e.details
            .insert("nested".into(), serde_json::json!({"prev": {"prev": 1}}));
        let entry = Entry::new(
            Seq(3),
            EntryHash::ZERO,
            Timestamp::now(),
            e.sign(&k).unwrap(),
        );
        let line = entry.to_line().unwrap();
        let parsed = Entry::parse_line(&line).unwrap();
        assert_eq!(
            event_json(&line).unwrap(),
            crate::canonical::to_canonical(&parsed.event).unwrap()
        );
        parsed.verify_signature_in(&line).unwrap();
        // Another key's signature fails the same way as the slow path.
        let mut forged = parsed.clone();
        forged.sig = KeyPair::generate().sign(b"x");
        assert!(forged.verify_signature_in(&line).is_err());
        assert!(forged.verify_signature().is_err());
    }
}
