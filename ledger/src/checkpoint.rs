//! Checkpoints: the ledger key's signature over a tree head, in the C2SP
//! `tlog-checkpoint` / `signed-note` form that transparency logs and witnesses
//! already speak.
//!
//! Wire format (the signed text is the first four lines, each ending in `\n`):
//!
//! ```text
//! custody/z6Mk…                      origin = key name
//! 42                                 tree size
//! 3q2+7w…=                           root hash, standard base64
//! time 2026-11-24T19:20:00Z          extension line: when it was signed
//!
//! — custody/z6Mk… <base64(key id ‖ Ed25519 signature)>
//! ```
//!
//! The key id is `SHA-256(origin ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`. Parsing and
//! signing go through `signed_note` and `tlog_tiles`; verification is custody's
//! own [`signed_note::Verifier`] so that it is `verify_strict`.
//!
//! ```
//! use custody_identity::KeyPair;
//! use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
//! use custody_ledger::merkle::{TreeHead, EMPTY_HASH};
//! let key = KeyPair::from_seed(&[1u8; 32]);
//! let origin = Origin::for_ledger(&key.did());
//! let time = time::macros::datetime!(2026-11-24 19:20:00 UTC);
//! let cp = SignedCheckpoint::sign(&key, &origin, TreeHead { size: 0, root: EMPTY_HASH }, time).unwrap();
//! assert_eq!(
//!     String::from_utf8(cp.to_bytes()).unwrap(),
//!     "custody/z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\n\
//!      0\n\
//!      47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\
//!      time 2026-11-24T19:20:00Z\n\
//!      \n\
//!      — custody/z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX \
//!      pqGwvrTvxNQQOEB/LBb9cp+ngqHtxSfTRbgIzJsANECLsVJJBQMm3ipT6XX5ruvdQpOFXLYJOPbsrSOOAi2QHqO4wQg=\n"
//! );
//! cp.verify(&key.public()).unwrap();
//! ```

use custody_identity::{Did, KeyPair, PublicKey, Signature};
use signed_note::{Note, VerificationError, Verifier, VerifierList};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;
use tlog_tiles::Checkpoint;

use crate::merkle::TreeHead;

/// Signature type byte for Ed25519 in signed-note key ids.
const ALG_ED25519: u8 = 0x01;
/// Longest origin accepted; C2SP origins are short host/path names.
pub const MAX_ORIGIN_LEN: usize = 256;
/// A note is a few hundred bytes plus one line per cosignature.
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;
const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("invalid origin {0:?}: non-empty, printable, no spaces or '+', at most 256 bytes")]
    BadOrigin(String),
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint has no valid signature by the ledger key {0}")]
    NotSigned(String),
    #[error("checkpoint signature by the ledger key does not verify")]
    BadSignature,
    #[error("signing failed")]
    Signing,
    #[error("checkpoint has no cosignature by witness {0}")]
    NotCosigned(String),
    #[error("cosignature by witness {0} does not verify")]
    BadCosignature(String),
    #[error("the notes are for different checkpoints")]
    DifferentText,
}

/// A validated checkpoint origin, also the ledger key's note name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    pub fn new(text: &str) -> Result<Self, CheckpointError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_ORIGIN_LEN
            && signed_note::is_key_name_valid(text)
            && text.chars().all(|c| !c.is_control());
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(CheckpointError::BadOrigin(text.chars().take(80).collect()))
        }
    }

    /// `custody/<multibase of the ledger DID>`.
    pub fn for_ledger(ledger: &Did) -> Self {
        Self(format!("custody/{}", ledger.multibase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// signed-note key id for an Ed25519 key under `origin`.
pub fn key_id(origin: &Origin, key: &PublicKey) -> u32 {
    let mut k = vec![ALG_ED25519];
    k.extend_from_slice(&key.to_bytes());
    signed_note::key_id(origin.as_str(), &k)
}

/// The verifier key in signed-note text form, `<origin>+<id hex>+<base64(0x01‖key)>`.
pub fn verifier_key_string(origin: &Origin, key: &PublicKey) -> String {
    signed_note::new_ed25519_verifier_key(origin.as_str(), key.dalek())
}

struct LedgerSigner<'a> {
    origin: &'a Origin,
    key: &'a KeyPair,
    id: u32,
}

impl signed_note::Signer for LedgerSigner<'_> {
    fn name(&self) -> &str {
        self.origin.as_str()
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.key.sign(msg).0.to_vec())
    }
}

/// Verifies with `verify_strict` (signed_note's StandardVerifier does not).
struct StrictVerifier {
    name: String,
    id: u32,
    key: PublicKey,
}

impl Verifier for StrictVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig)
            .map(|s| self.key.verify(msg, &s).is_ok())
            .unwrap_or(false)
    }
}

/// The signed text of a checkpoint (the note body): origin, size, root and
/// the `time` extension line.
fn signed_text(
    origin: &Origin,
    head: TreeHead,
    time: OffsetDateTime,
) -> Result<Vec<u8>, CheckpointError> {
    let ext = format!(
        "time {}\n",
        time.format(TIME_FORMAT)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?
    );
    let body = Checkpoint::new(origin.as_str(), head.size, head.root, &ext)
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    Ok(body.to_bytes())
}

/// A parsed checkpoint note.
#[derive(Debug)]
pub struct SignedCheckpoint {
    origin: Origin,
    head: TreeHead,
    time: OffsetDateTime,
    note: Note,
}

impl SignedCheckpoint {
    /// Signs `head` as the ledger under `origin` at `time` (whole seconds, UTC).
    pub fn sign(
        key: &KeyPair,
        origin: &Origin,
        head: TreeHead,
        time: OffsetDateTime,
    ) -> Result<Self, CheckpointError> {
        let time = time
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let mut note = Note::new(&signed_text(origin, head, time)?, &[])
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let signer = LedgerSigner {
            origin,
            key,
            id: key_id(origin, &key.public()),
        };
        note.add_sigs(&[&signer])
            .map_err(|_| CheckpointError::Signing)?;
        Ok(Self {
            origin: origin.clone(),
            head,
            time,
            note,
        })
    }

    /// Parses a note; checks its layout but not its signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::Malformed(format!(
                "{} bytes, more than {MAX_CHECKPOINT_BYTES}",
                bytes.len()
            )));
        }
        let note =
            Note::from_bytes(bytes).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let cp = Checkpoint::from_bytes(note.text())
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let origin = Origin::new(cp.origin())?;
        let ext = cp.extension();
        let time_text = ext
            .strip_prefix("time ")
            .and_then(|r| r.strip_suffix('\n'))
            .filter(|t| !t.contains('\n'))
            .ok_or_else(|| {
                CheckpointError::Malformed("expected one extension line `time <RFC 3339>`".into())
            })?;
        let time = time::PrimitiveDateTime::parse(time_text, TIME_FORMAT)
            .map_err(|_| CheckpointError::Malformed(format!("bad time {time_text:?}")))?
            .assume_utc();
        let head = TreeHead {
            size: cp.size(),
            root: *cp.hash(),
        };
        // One text per checkpoint: the time in its one form (no sign, no
        // fraction), the root in canonical base64, as `sign` writes them.
        if signed_text(&origin, head, time)? != note.text() {
            return Err(CheckpointError::Malformed(
                "signed text not in canonical form".into(),
            ));
        }
        let parsed = Self {
            origin,
            head,
            time,
            note,
        };
        if parsed.to_bytes() != bytes {
            return Err(CheckpointError::Malformed("not in canonical form".into()));
        }
        Ok(parsed)
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn head(&self) -> TreeHead {
        self.head
    }

    pub fn time(&self) -> OffsetDateTime {
        self.time
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.note.to_bytes()
    }

    /// Checks that the ledger key signed this note under its origin.
    pub fn verify(&self, ledger_key: &PublicKey) -> Result<(), CheckpointError> {
        let v = StrictVerifier {
            name: self.origin.as_str().to_string(),
            id: key_id(&self.origin, ledger_key),
            key: *ledger_key,
        };
        let list = VerifierList::new(vec![Box::new(v)]);
        match self.note.verify(&list) {
            Ok(_) => Ok(()),
            Err(signed_note::NoteError::InvalidSignature { .. }) => {
                Err(CheckpointError::BadSignature)
            }
            Err(signed_note::NoteError::UnverifiedNote) => Err(CheckpointError::NotSigned(
                Did::from_public_key(ledger_key).to_string(),
            )),
            Err(e) => Err(CheckpointError::Malformed(e.to_string())),
        }
    }
}

impl SignedCheckpoint {
    /// Adds this witness's `cosignature/v1` at `time` (see [`crate::witness`]).
    /// A witness must first have checked that the checkpoint extends the last
    /// one it cosigned.
    pub fn cosign(
        &mut self,
        witness: &KeyPair,
        time: OffsetDateTime,
    ) -> Result<(), CheckpointError> {
        let t = u64::try_from(time.unix_timestamp())
            .map_err(|_| CheckpointError::Malformed("time before 1970".into()))?;
        let signer = crate::witness::Cosigner::new(witness, t);
        self.note
            .add_sigs(&[&signer])
            .map_err(|_| CheckpointError::Signing)
    }

    /// Checks the pinned witness's cosignature; returns its timestamp.
    pub fn verify_cosignature(
        &self,
        witness: &crate::witness::WitnessKey,
    ) -> Result<u64, CheckpointError> {
        let list = VerifierList::new(vec![Box::new(witness.verifier())]);
        match self.note.verify(&list) {
            Ok((verified, _)) => verified
                .first()
                .and_then(|s| crate::witness::cosignature_time(s.signature()))
                .ok_or_else(|| CheckpointError::BadCosignature(witness.name().into())),
            Err(signed_note::NoteError::UnverifiedNote) => {
                Err(CheckpointError::NotCosigned(witness.name().into()))
            }
            Err(_) => Err(CheckpointError::BadCosignature(witness.name().into())),
        }
    }

    /// Checks every signature line: the ledger's and each known witness's
    /// must verify; returns the names of the known witnesses that cosigned
    /// and the names on lines nobody here knows.
    pub fn verify_with_witnesses(
        &self,
        ledger_key: &PublicKey,
        witnesses: &[crate::witness::WitnessKey],
    ) -> Result<(Vec<String>, Vec<String>), CheckpointError> {
        self.verify(ledger_key)?;
        let mut list: Vec<Box<dyn Verifier>> = vec![Box::new(StrictVerifier {
            name: self.origin.as_str().to_string(),
            id: key_id(&self.origin, ledger_key),
            key: *ledger_key,
        })];
        for w in witnesses {
            list.push(Box::new(w.verifier()));
        }
        match self.note.verify(&VerifierList::new(list)) {
            Ok((verified, unknown)) => Ok((
                verified
                    .iter()
                    .map(|s| s.name().to_string())
                    .filter(|n| n != self.origin.as_str())
                    .collect(),
                unknown.iter().map(|s| s.name().to_string()).collect(),
            )),
            Err(signed_note::NoteError::InvalidSignature { name, .. }) => {
                Err(CheckpointError::BadCosignature(name))
            }
            Err(e) => Err(CheckpointError::Malformed(e.to_string())),
        }
    }

    /// How many signature lines the note carries: the ledger's own and one
    /// per cosignature (none of them checked here).
    pub fn signature_count(&self) -> usize {
        let bytes = self.note.to_bytes();
        // A note is its text, a blank line, then one signature per line.
        bytes
            .get(self.note.text().len() + 1..)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    }

    /// Adds the signature lines of `other` (the same checkpoint, e.g. back
    /// from a witness) that this note does not have yet.
    pub fn merge_signatures(&mut self, other: &SignedCheckpoint) -> Result<(), CheckpointError> {
        if self.note.text() != other.note.text() {
            return Err(CheckpointError::DifferentText);
        }
        let mut sigs = signature_lines(&self.note)?;
        for s in signature_lines(&other.note)? {
            if !sigs.contains(&s) {
                sigs.push(s);
            }
        }
        self.note = Note::new(self.note.text(), &sigs)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        Ok(())
    }
}

/// A note's signature lines, parsed back (signed_note keeps them private).
fn signature_lines(note: &Note) -> Result<Vec<signed_note::Signature>, CheckpointError> {
    let bytes = note.to_bytes();
    let sigs = &bytes[note.text().len() + 1..];
    sigs.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            signed_note::Signature::from_bytes(l)
                .map_err(|e| CheckpointError::Malformed(e.to_string()))
        })
        .collect()
}

// Keep VerificationError in scope for readers of Note::verify's contract.
#[allow(dead_code)]
type _VerificationError = VerificationError;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn sample(key: &KeyPair) -> SignedCheckpoint {
        let origin = Origin::for_ledger(&key.did());
        let head = TreeHead {
            size: 7,
            root: leaf_hash(b"x"),
        };
        SignedCheckpoint::sign(key, &origin, head, OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn round_trip_and_verify() {
        let k = KeyPair::generate();
        let cp = sample(&k);
        let bytes = cp.to_bytes();
        let back = SignedCheckpoint::parse(&bytes).unwrap();
        assert_eq!(back.head(), cp.head());
        assert_eq!(back.to_bytes(), bytes);
        back.verify(&k.public()).unwrap();
        assert!(back.verify(&KeyPair::generate().public()).is_err());
    }

    /// FORMAT.md §6: the time line has one form, and so has the note.
    #[test]
    fn other_spellings_of_the_signed_text_are_refused() {
        let k = KeyPair::generate();
        let origin = Origin::for_ledger(&k.did());
        let head = TreeHead {
            size: 7,
            root: leaf_hash(b"x"),
        };
        let t = time::macros::datetime!(2026-11-24 19:20:00 UTC);
        let text = String::from_utf8(
            SignedCheckpoint::sign(&k, &origin, head, t)
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        assert!(SignedCheckpoint::parse(text.as_bytes()).is_ok());
        for other in [
            "time 2026-11-24T19:20:00.000Z",
            "time +2026-11-24T19:20:00Z",
            "time 2026-11-24t19:20:00Z",
            "time 2026-11-24T19:20:00z",
            "time 2026-11-24T19:20:00+00:00",
        ] {
            let bad = text.replacen("time 2026-11-24T19:20:00Z", other, 1);
            assert!(SignedCheckpoint::parse(bad.as_bytes()).is_err(), "{other}");
        }
        let bad = text.replacen("\n7\n", "\n07\n", 1);
        assert!(SignedCheckpoint::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn interop_with_signed_note_standard_verifier() {
        let k = KeyPair::generate();
        let cp = sample(&k);
        let vkey = verifier_key_string(cp.origin(), &k.public());
        let v = signed_note::StandardVerifier::new(&vkey).unwrap();
        let note = Note::from_bytes(&cp.to_bytes()).unwrap();
        note.verify(&VerifierList::new(vec![Box::new(v)])).unwrap();
    }

    #[test]
    fn any_changed_byte_fails() {
        let k = KeyPair::generate();
        let bytes = sample(&k).to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = SignedCheckpoint::parse(&b)
                .map(|c| c.verify(&k.public()).is_ok())
                .unwrap_or(false);
            assert!(!ok, "byte {i} changed and still verified");
        }
    }

    #[test]
    fn cosignatures_verify_merge_and_fail_on_any_change() {
        use crate::witness::WitnessKey;
        let k = KeyPair::generate();
        let (w1, w2) = (KeyPair::generate(), KeyPair::generate());
        let (p1, p2) = (
            WitnessKey::from_did(&w1.did()),
            WitnessKey::from_did(&w2.did()),
        );
        let plain = sample(&k);
        let mut a = SignedCheckpoint::parse(&plain.to_bytes()).unwrap();
        let mut b = SignedCheckpoint::parse(&plain.to_bytes()).unwrap();
        a.cosign(&w1, OffsetDateTime::now_utc()).unwrap();
        b.cosign(&w2, OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(
            plain.verify_cosignature(&p1),
            Err(CheckpointError::NotCosigned(_))
        ));
        let mut merged = SignedCheckpoint::parse(&plain.to_bytes()).unwrap();
        merged.merge_signatures(&a).unwrap();
        merged.merge_signatures(&b).unwrap();
        merged.merge_signatures(&a).unwrap();
        let merged = SignedCheckpoint::parse(&merged.to_bytes()).unwrap();
        merged.verify(&k.public()).unwrap();
        assert_eq!((plain.signature_count(), merged.signature_count()), (1, 3));
        assert!(merged.verify_cosignature(&p1).is_ok());
        assert!(merged.verify_cosignature(&p2).is_ok());
        assert_eq!(
            merged
                .to_bytes()
                .split(|c| *c == b'\n')
                .filter(|l| l.starts_with("—".as_bytes()))
                .count(),
            3
        );
        // Another checkpoint's cosignature does not carry over.
        let other = SignedCheckpoint::sign(
            &k,
            plain.origin(),
            TreeHead {
                size: 8,
                root: leaf_hash(b"y"),
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(matches!(
            SignedCheckpoint::parse(&other.to_bytes())
                .unwrap()
                .merge_signatures(&a),
            Err(CheckpointError::DifferentText)
        ));
        // Any changed byte breaks the ledger's signature or the cosignature.
        let bytes = a.to_bytes();
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x01;
            let ok = SignedCheckpoint::parse(&m)
                .map(|c| c.verify(&k.public()).is_ok() && c.verify_cosignature(&p1).is_ok())
                .unwrap_or(false);
            assert!(!ok, "byte {i} changed and both signatures still verified");
        }
    }
}
