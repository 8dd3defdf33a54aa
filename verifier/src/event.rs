//! `custody-verify check-event EVENT --proof PROOF`: is this SIEM event the
//! ledger's entry? For a responder who starts from an alert: export the
//! bundle, `prove` the event's `seq`, and check the event against the proof.
//!
//! The proof is checked first, alone (as `check-proof`: the entry, its
//! signature, its path to a checkpoint the ledger key signed). Then the
//! event must be that entry's:
//!
//! - an OCSF event (`custody tail --format ocsf`, or the `event` of a Splunk
//!   HEC envelope): its `unmapped.custody` names the same ledger, `seq` and
//!   entry hash, and every field custody's mapping makes of the proof's entry
//!   is in the event with the same value (`custody_siem::compare`); fields a
//!   SIEM added are reported, not vouched for;
//! - an entry (`--format jsonl`): its canonical form is the proof's entry,
//!   byte for byte.

use std::path::Path;

use custody_identity::Did;
use custody_ledger::canonical::to_canonical;
use custody_ledger::entry_hash;
use serde::Serialize;
use serde_json::Value;

use crate::proof::{check_proof, InclusionProof, ProofCheck, ProofError};

/// An event file is one SIEM event: an entry is at most 66,560 bytes, and its
/// OCSF form about twice that.
pub const MAX_EVENT_FILE_BYTES: u64 = 1 << 20;

/// What a checked event establishes.
#[derive(Clone, Debug, Serialize)]
pub struct EventCheck {
    /// `ocsf` or `entry`.
    pub form: &'static str,
    pub proof: ProofCheck,
    /// Fields of the event that custody did not write (JSON pointers).
    pub added_fields: Vec<String>,
}

/// Reads an event file: one JSON object.
pub fn read_event(path: &Path) -> Result<Value, ProofError> {
    use std::io::Read;
    let unreadable = |m: String| ProofError::Unreadable(format!("{}: {m}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_EVENT_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| unreadable(e.to_string()))?;
    if buf.len() as u64 > MAX_EVENT_FILE_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_EVENT_FILE_BYTES} bytes"
        )));
    }
    let v: Value = serde_json::from_slice(&buf).map_err(|e| unreadable(e.to_string()))?;
    if !v.is_object() {
        return Err(unreadable("not a JSON object".into()));
    }
    Ok(v)
}

/// Checks that `event` is the entry `proof` proves, in the ledger `pinned`
/// names (or the proof's own, when none is pinned).
pub fn check_event(
    event: &Value,
    proof: &InclusionProof,
    pinned: Option<&Did>,
) -> Result<EventCheck, ProofError> {
    let checked = check_proof(proof, pinned)?;
    let ledger = pinned.unwrap_or(&proof.ledger);
    let invalid = |m: String| ProofError::Invalid(m);
    // A Splunk HEC envelope carries the event under `event`.
    let event = match event.get("event") {
        Some(inner @ Value::Object(_))
            if event.get("class_uid").is_none() && event.get("sig").is_none() =>
        {
            inner
        }
        _ => event,
    };
    if event.get("class_uid").is_some() {
        let prov = custody_siem::provenance(event).map_err(|e| invalid(e.to_string()))?;
        if &prov.ledger != ledger {
            return Err(invalid(format!(
                "the event is from ledger {}, the proof from {ledger}",
                prov.ledger
            )));
        }
        if prov.seq != proof.seq {
            return Err(invalid(format!(
                "the event is entry {}, the proof is for entry {}",
                prov.seq, proof.seq
            )));
        }
        let hash = entry_hash(proof.entry.as_bytes()).to_hex();
        if prov.hash != hash {
            return Err(invalid(format!(
                "the event names entry hash {}, the ledger's entry {} has {hash}",
                prov.hash, proof.seq
            )));
        }
        let expected = custody_siem::to_ocsf(proof.entry.as_bytes(), ledger, prov.tree_size)
            .map_err(|e| invalid(e.to_string()))?;
        let c = custody_siem::compare(&expected, event);
        if !c.matches() {
            let shown: Vec<&str> = c.differ.iter().take(8).map(String::as_str).collect();
            return Err(invalid(format!(
                "the event differs from entry {}'s in {} field(s): {}",
                proof.seq,
                c.differ.len(),
                shown.join(", ")
            )));
        }
        return Ok(EventCheck {
            form: "ocsf",
            proof: checked,
            added_fields: c.added,
        });
    }
    if event.get("sig").is_some() && event.get("event").is_some() {
        let bytes = to_canonical(event).map_err(|e| invalid(e.to_string()))?;
        if bytes != proof.entry.as_bytes() {
            return Err(invalid(format!(
                "the entry differs from the ledger's entry {}",
                proof.seq
            )));
        }
        return Ok(EventCheck {
            form: "entry",
            proof: checked,
            added_fields: Vec::new(),
        });
    }
    Err(ProofError::Unreadable(
        "neither an OCSF event from custody tail, nor a Splunk HEC envelope of one, nor a ledger entry"
            .into(),
    ))
}
