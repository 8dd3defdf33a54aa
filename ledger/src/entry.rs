//! Entries: what the ledger appends.
//!
//! An entry wraps a signed event with its position (`seq`), the hash of the entry
//! before it (`prev`) and the broker's receive time. Its bytes are the RFC 8785
//! form of the JSON object — one line of `entries.jsonl` — and its hash is the
//! RFC 6962 leaf hash of those bytes, `SHA-256(0x00 ‖ line)`, which is at once the
//! next entry's `prev` and the Merkle tree's leaf.

use custody_identity::Signature;
use serde::{Deserialize, Serialize};

use crate::canonical::{to_canonical, Decoded, LineError};
use crate::event::{Event, SignedEvent, EVENT_VERSION, MAX_EVENT_BYTES};
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
        match Self::read_line(line) {
            Ok(Decoded {
                value,
                canonical: true,
            }) => Ok(value),
            Ok(Decoded {
                canonical: false, ..
            }) => Err(LedgerError::NotCanonical(
                "entry bytes differ from JCS of its content",
            )),
            Err(LineError::TooLarge { size, limit }) => Err(LedgerError::TooLarge {
                what: "entry",
                size,
                limit,
            }),
            Err(LineError::UnsupportedVersion {
                what,
                found,
                supported,
            }) => Err(LedgerError::UnsupportedVersion {
                what,
                found,
                supported,
            }),
            Err(LineError::NotJson(reason) | LineError::Malformed(reason)) => {
                Err(LedgerError::Malformed {
                    what: "entry",
                    reason,
                })
            }
        }
    }

    /// Reads one line of `entries.jsonl` the way the verifier needs it
    /// (FORMAT.md §4, §9): a line that cannot be read at all (not a JSON
    /// object, an entry or event `v` other than 1) apart from one that is an
    /// object but not an entry (unknown, missing or mistyped members, a
    /// timestamp in another form), and an entry whose bytes are not its JCS
    /// form is returned with `canonical: false` so that the other checks
    /// can still judge what it says.
    pub fn read_line(line: &[u8]) -> Result<Decoded<Self>, LineError> {
        if line.len() > MAX_ENTRY_BYTES {
            return Err(LineError::TooLarge {
                size: line.len(),
                limit: MAX_ENTRY_BYTES,
            });
        }
        let entry: Entry = match serde_json::from_slice(line) {
            Ok(e) => e,
            // Classify only on failure, so that the common case parses once.
            Err(e) => return Err(classify_unparsed(line, e)),
        };
        check_versions(Some(entry.v), Some(entry.event.v))?;
        // The same bytes as `to_line`, without running the outer object
        // through the canonicalizer again (a fifth of the verifier's
        // non-signature time per entry).
        let event_json = crate::canonical::to_canonical_fast(&entry.event)
            .map_err(|e| LineError::Malformed(format!("the event has no JCS form: {e}")))?;
        let jcs = entry
            .to_line_with_event(&event_json)
            .map_err(|e| LineError::Malformed(format!("the entry has no JCS form: {e}")))?;
        Ok(Decoded {
            canonical: jcs == line,
            value: entry,
        })
    }

    /// Checks the actor's signature on the event.
    pub fn verify_signature(&self) -> Result<(), LedgerError> {
        self.event.verify_signature(&self.sig)
    }

    /// Checks the actor's signature like [`Entry::verify_signature`], taking
    /// the event's canonical bytes from `line`, the line this entry was parsed
    /// from by [`Entry::parse_line`] (or [`Entry::read_line`] with
    /// `canonical: true`), instead of serializing the event again: the
    /// verifier's hot path. For a line that is not canonical the event's
    /// bytes in it are not the signed bytes: use [`Entry::verify_signature`].
    /// The bytes the actor signed (`custody/event/v1\n ‖ JCS(event)`),
    /// taken from `line` when it is this entry's canonical line (as
    /// [`Entry::verify_signature_in`] does), computed otherwise. For checking
    /// many signatures at once.
    pub fn signed_message(&self, line: &[u8], canonical: bool) -> Result<Vec<u8>, LedgerError> {
        match event_json(line).filter(|_| canonical) {
            Some(event) => crate::event::signing_message(event),
            None => crate::event::signing_message(&crate::canonical::to_canonical(&self.event)?),
        }
    }

    pub fn verify_signature_in(&self, line: &[u8]) -> Result<(), LedgerError> {
        match event_json(line) {
            Some(event) => self.event.verify_signature_canonical(&self.sig, event),
            None => self.verify_signature(),
        }
    }
}

/// An unsupported version is named before anything else about the line: a
/// newer writer's members may differ, and "unsupported version" is the
/// useful answer, not the first member this build does not know. Only a
/// non-negative integer is a version; any other `v` is a malformed member.
fn check_versions(entry_v: Option<u64>, event_v: Option<u64>) -> Result<(), LineError> {
    for (what, found, supported) in [
        ("entry", entry_v, ENTRY_VERSION),
        ("event", event_v, EVENT_VERSION),
    ] {
        if let Some(found) = found.filter(|f| *f != supported) {
            return Err(LineError::UnsupportedVersion {
                what,
                found,
                supported,
            });
        }
    }
    Ok(())
}

/// Why a line that did not deserialize as an entry is not one: not a JSON
/// object at all, a version this build does not read, or an object that
/// breaks the entry's member rules (`err` says which).
fn classify_unparsed(line: &[u8], err: serde_json::Error) -> LineError {
    let value: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return LineError::NotJson(e.to_string()),
    };
    let Some(obj) = value.as_object() else {
        return LineError::NotJson("a JSON value that is not an object".into());
    };
    let version =
        |o: Option<&serde_json::Value>| o.and_then(|v| v.get("v")).and_then(|v| v.as_u64());
    if let Err(e) = check_versions(version(Some(&value)), version(obj.get("event"))) {
        return e;
    }
    LineError::Malformed(format!("malformed entry: {err}"))
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

    /// An event with every member set is written by plain serde_json in
    /// JCS form, so reading its line skips the canonicalizer (only speed
    /// depends on this; a member added out of order fails here).
    #[test]
    fn events_take_the_fast_canonical_path() {
        use crate::event::{Approval, PayloadRef};
        use crate::types::{Context, Nonce, PayloadDigest, SessionId};
        let k = KeyPair::generate();
        let mut e = Event::new(
            k.did(),
            ActorKind::Agent,
            ActionType::new("tool.call").unwrap(),
        );
        e.session = Some(SessionId::new("urn:uuid:0f0e").unwrap());
        e.on_behalf_of = Some(KeyPair::generate().did());
        e.context = Some(Context::new("ci").unwrap());
        e.details.insert("tool".into(), "Bash".into());
        e.details.insert("i".into(), 7.into());
        e.details
            .insert("z".into(), serde_json::json!({"b": [1, "x"], "a": null}));
        e.payload = Some(PayloadRef {
            digest: PayloadDigest([3; 32]),
            size: 10,
        });
        e.nonce = Nonce([5; 16]);
        for approval in [
            None,
            Some(Approval::Policy {
                policy: "p".into(),
                seq: Some(3),
            }),
            Some(Approval::AutoReview {
                reviewer: "r".into(),
                seq: Some(4),
            }),
        ] {
            e.approval = approval;
            // As the verifier has it: read from its line, so `details` holds
            // its members in the line's (JCS) order whether or not
            // serde_json's `preserve_order` is on (the workspace's build
            // turns it on through the server's dependencies).
            let read: Event = serde_json::from_slice(&to_canonical(&e).unwrap()).unwrap();
            let plain = serde_json::to_vec(&read).unwrap();
            assert!(
                crate::canonical::already_jcs(&plain),
                "{}",
                String::from_utf8_lossy(&plain)
            );
            assert_eq!(plain, to_canonical(&read).unwrap());
        }
        // A human approval writes its tag first ("by" after "approver"):
        // the canonicalizer's path, with the same result.
        e.approval = Some(Approval::Human {
            approver: k.did(),
            seq: Some(1),
        });
        assert_eq!(
            crate::canonical::to_canonical_fast(&e).unwrap(),
            to_canonical(&e).unwrap()
        );
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

    /// The classification the verifier's exit codes rest on (FORMAT.md §9).
    #[test]
    fn read_line_tells_unreadable_from_malformed() {
        let e = entry();
        let line = String::from_utf8(e.to_line().unwrap()).unwrap();
        let read = |s: &str| Entry::read_line(s.as_bytes());

        let ok = read(&line).unwrap();
        assert!(ok.canonical);
        assert_eq!(ok.value, e);

        // Re-encoded: the same entry, not in JCS form.
        for re in [
            line.replacen(':', ": ", 1),
            line.replacen("\"prompt\"", "\"\\u0070rompt\"", 1),
            format!("{line} "),
        ] {
            let d = read(&re).unwrap();
            assert!(!d.canonical, "{re}");
            assert_eq!(d.value, e);
        }
        // Key order: the entry's `v` moved to the front.
        let reordered = format!("{{\"v\":1,{}}}", &line[1..line.len() - 7]);
        let d = read(&reordered).unwrap();
        assert!(!d.canonical && d.value == e, "{reordered}");

        // The entry's own `v` ends the line; the event's ends the event.
        assert!(line.ends_with(",\"v\":1}") && line.contains(",\"v\":1},\"prev\""));
        let entry_v = |with: &str| format!("{},{with}}}", &line[..line.len() - 7]);
        let event_v =
            |with: &str| line.replacen(",\"v\":1},\"prev\"", &format!(",{with}}},\"prev\""), 1);

        // Unreadable: not a JSON object, or a version this build does not read.
        for (bad, what) in [
            ("{not json", "not json"),
            ("[1,2]", "not json"),
            ("\"x\"", "not json"),
            (&*entry_v("\"v\":2"), "entry"),
            (&*entry_v("\"v\":2,\"x\":1"), "entry"),
            (&*event_v("\"v\":2"), "event"),
            (&*event_v("\"v\":2,\"x\":{}"), "event"),
        ] {
            let err = read(bad).unwrap_err();
            assert!(err.is_unreadable(), "{bad}: {err}");
            match (what, &err) {
                ("not json", LineError::NotJson(_)) => {}
                (w, LineError::UnsupportedVersion { what, found: 2, .. }) if w == *what => {}
                _ => panic!("{bad}: {err:?}"),
            }
        }

        // Readable JSON objects that are not entries.
        let ts = e.received_at.to_string();
        for bad in [
            line.replacen(&ts, &format!("{}Z", &ts[..19]), 1),
            line.replacen(&ts, &format!("{}+00:00", &ts[..23]), 1),
            entry_v("\"v\":1,\"x\":1"),
            event_v("\"v\":1,\"x\":1"),
            entry_v("\"v\":\"1\""),
            event_v("\"v\":-1"),
            line.replacen("\"seq\":0", "\"seq\":\"0\"", 1),
            line.replacen("did:key:z6Mk", "did:key:z7Mk", 1),
            "{}".to_string(),
        ] {
            let err = read(&bad).unwrap_err();
            assert!(
                matches!(err, LineError::Malformed(_)) && !err.is_unreadable(),
                "{bad}: {err:?}"
            );
        }
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
