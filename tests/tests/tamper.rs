//! Tamper detection: each kind of damage to a demo bundle makes
//! `custody-verify verify` exit 1 and name the check and the entry; the
//! untouched bundle exits 0.

use std::sync::OnceLock;

use custody_identity::KeyPair;
use custody_ledger::{actions, ActorKind, Entry, Event};
use custody_tests::{
    check_ok, failing_seqs, forge_bundle, read_lines, verify_json, write_lines, DemoRun,
};

fn demo() -> &'static DemoRun {
    static DEMO: OnceLock<DemoRun> = OnceLock::new();
    DEMO.get_or_init(DemoRun::new)
}

/// The last entry that matches: inserting after it shifts no seq an agent's
/// signed event references (approvals, policy decisions), which a forger
/// cannot re-sign, so the only failure is the one the test plants.
fn last(entries: &[Entry], pred: impl Fn(&Entry) -> bool) -> usize {
    entries
        .iter()
        .rposition(pred)
        .expect("scenario has such an entry")
}

fn first(entries: &[Entry], pred: impl Fn(&Entry) -> bool) -> usize {
    entries
        .iter()
        .position(pred)
        .expect("scenario has such an entry")
}

fn is_agent_tool_call(e: &Entry) -> bool {
    e.event.actor_kind == ActorKind::Agent && e.event.action.as_str() == actions::TOOL_CALL
}

#[test]
fn untouched_bundle_is_valid() {
    let (code, v) = verify_json(&demo().bundle());
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["valid"], true);
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c:#}");
    }
}

#[test]
fn edited_field_in_any_entry_is_detected() {
    let d = demo();
    let lines = read_lines(&d.bundle());
    for i in 0..lines.len() {
        let dir = d.copy_bundle(&format!("edit-{i}"));
        let mut ls = lines.clone();
        let mut v: serde_json::Value = serde_json::from_slice(&ls[i]).unwrap();
        // An edit inside the signed event: flip a bit of the nonce.
        let nonce = v["event"]["nonce"].as_str().unwrap().to_string();
        let flipped = if nonce.starts_with('0') { "1" } else { "0" };
        v["event"]["nonce"] = format!("{flipped}{}", &nonce[1..]).into();
        ls[i] = custody_ledger::canonical::to_canonical(&v).unwrap();
        write_lines(&dir, &ls);
        let (code, out) = verify_json(&dir);
        assert_eq!(code, 1, "entry {i}: {out:#}");
        assert!(
            failing_seqs(&out, "signatures").contains(&(i as u64)),
            "entry {i}: {out:#}"
        );
        if i + 1 < lines.len() {
            assert!(failing_seqs(&out, "chain").contains(&(i as u64 + 1)));
        }
        assert!(!check_ok(&out, "manifest"));
    }
}

#[test]
fn edited_receive_time_breaks_the_chain() {
    let d = demo();
    let dir = d.copy_bundle("edit-time");
    let mut ls = read_lines(&dir);
    let i = 3;
    let mut e = Entry::parse_line(&ls[i]).unwrap();
    e.received_at = e.received_at.plus_millis(1);
    ls[i] = e.to_line().unwrap();
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(failing_seqs(&out, "chain"), vec![i as u64 + 1]);
    assert!(!check_ok(&out, "checkpoints"));
}

#[test]
fn deleted_entry_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("delete");
    let mut ls = read_lines(&dir);
    ls.remove(5);
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(failing_seqs(&out, "sequence").contains(&5));
    assert!(failing_seqs(&out, "chain").contains(&5));
    assert!(!check_ok(&out, "checkpoints"));
}

#[test]
fn swapped_entries_are_detected() {
    let d = demo();
    let dir = d.copy_bundle("swap");
    let mut ls = read_lines(&dir);
    ls.swap(4, 6);
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    let seq = failing_seqs(&out, "sequence");
    assert!(seq.contains(&4) && seq.contains(&6), "{out:#}");
    assert!(failing_seqs(&out, "chain").contains(&4));
}

#[test]
fn duplicated_entry_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("dup");
    let mut ls = read_lines(&dir);
    let copy = ls[7].clone();
    ls.insert(8, copy);
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(failing_seqs(&out, "sequence").contains(&8));
    assert!(failing_seqs(&out, "chain").contains(&8));
    assert!(failing_seqs(&out, "authorization").contains(&8), "{out:#}");
}

#[test]
fn duplicate_consistently_rechained_is_caught_by_nonce() {
    // Even a forger with the ledger key who re-links and re-signs everything
    // cannot replay an actor's event: its nonce was used.
    let d = demo();
    let mut entries = d.entries();
    let i = last(&entries, is_agent_tool_call);
    let copy = entries[i].clone();
    entries.insert(i + 1, copy);
    let dir = d.dir.path().join("dup-forged");
    forge_bundle(&d.bundle(), entries, &d.key("ledger"), &dir);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        failing_seqs(&out, "authorization"),
        vec![i as u64 + 1],
        "{out:#}"
    );
    assert!(check_ok(&out, "chain") && check_ok(&out, "checkpoints"));
}

#[test]
fn truncation_after_a_checkpoint_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("truncate");
    let b = custody_ledger::bundle::Bundle::open(&dir).unwrap();
    assert!(
        b.checkpoints.len() >= 2,
        "the demo signs a checkpoint mid-way"
    );
    let first_size = b.checkpoints[0].0 as usize;
    let mut ls = read_lines(&dir);
    ls.truncate(first_size + 1);
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(!check_ok(&out, "checkpoints"), "{out:#}");
    assert!(failing_seqs(&out, "checkpoints").contains(&(first_size as u64 + 1)));
    assert!(!check_ok(&out, "merkle"));
}

#[test]
fn signature_moved_from_another_entry_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("sig-move");
    let mut ls = read_lines(&dir);
    let a = Entry::parse_line(&ls[3]).unwrap();
    let mut b = Entry::parse_line(&ls[4]).unwrap();
    b.sig = a.sig;
    ls[4] = b.to_line().unwrap();
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(failing_seqs(&out, "signatures"), vec![4]);
}

#[test]
fn entry_signed_by_an_undelegated_key_is_detected() {
    let d = demo();
    let mut entries = d.entries();
    let i = last(&entries, is_agent_tool_call);
    // A well-formed agent event, correctly signed — by a key nobody delegated.
    let rogue = KeyPair::generate();
    let mut ev = entries[i].event.clone();
    ev.actor = rogue.did();
    ev.nonce = custody_ledger::Nonce::random();
    let signed = ev.sign(&rogue).unwrap();
    let mut e = entries[i].clone();
    e.event = signed.event;
    e.sig = signed.sig;
    entries.insert(i + 1, e);
    let dir = d.dir.path().join("undelegated");
    forge_bundle(&d.bundle(), entries, &d.key("ledger"), &dir);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        failing_seqs(&out, "authorization"),
        vec![i as u64 + 1],
        "{out:#}"
    );
    assert!(check_ok(&out, "signatures") && check_ok(&out, "checkpoints"));
}

/// The review's attack, as a bundle: an agent session signs, with its own
/// key, an `identity.revoke` of the admin (the statement issued by itself),
/// and the ledger around it is re-chained and re-signed with the ledger key.
/// Only admins may revoke, so the verifier fails `authorization` at that seq,
/// and the forged revocation builds no state: the admin's later entries and
/// the real revocation still verify.
#[test]
fn an_agent_signed_revocation_of_the_admin_is_detected() {
    let d = demo();
    let mut entries = d.entries();
    let key = d.key("session-chat");
    let admin = d.key("admin").did();
    let j = last(&entries, |e| {
        e.event.actor == key.did() && e.event.action.as_str() == actions::TOOL_CALL
    });
    let statement = custody_identity::Revocation::new(
        key.did(),
        admin.clone(),
        "pwned".into(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .issue(&key)
    .unwrap();
    let mut ev: Event = entries[j].event.clone();
    ev.action = custody_ledger::ActionType::new(actions::IDENTITY_REVOKE).unwrap();
    ev.details = serde_json::Map::new();
    ev.details.insert("revocation".into(), statement.into());
    ev.details.insert("subject".into(), admin.as_str().into());
    ev.payload = None;
    ev.approval = None;
    ev.nonce = custody_ledger::Nonce::random();
    let signed = ev.sign(&key).unwrap();
    let mut e = entries[j].clone();
    e.event = signed.event;
    e.sig = signed.sig;
    entries.insert(j + 1, e);
    let dir = d.dir.path().join("agent-revokes-admin");
    forge_bundle(&d.bundle(), entries, &d.key("ledger"), &dir);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1, "{out:#}");
    assert_eq!(
        failing_seqs(&out, "authorization"),
        vec![j as u64 + 1],
        "{out:#}"
    );
    let msg = out["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "authorization")
        .unwrap()["failures"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("not_admin"), "{msg}");
    for check in [
        "signatures",
        "checkpoints",
        "chain",
        "encoding",
        "credentials",
    ] {
        assert!(check_ok(&out, check), "{check}: {out:#}");
    }
}

#[test]
fn entry_by_revoked_identity_after_revocation_is_detected() {
    let d = demo();
    let mut entries = d.entries();
    let r = first(&entries, |e| {
        e.event.action.as_str() == actions::IDENTITY_REVOKE
    });
    let revoked = entries[r].event.detail_str("subject").unwrap().to_string();
    let key = d.key("session-ci");
    assert_eq!(key.did().as_str(), revoked);
    // The revoked session's own earlier event, re-issued after the revocation.
    let j = last(&entries, |e| {
        e.event.actor == key.did() && e.event.action.as_str() == actions::TOOL_CALL
    });
    let mut ev: Event = entries[j].event.clone();
    ev.nonce = custody_ledger::Nonce::random();
    let signed = ev.sign(&key).unwrap();
    let mut e = entries[r].clone();
    e.event = signed.event;
    e.sig = signed.sig;
    entries.insert(r + 1, e);
    let dir = d.dir.path().join("after-revoke");
    forge_bundle(&d.bundle(), entries, &d.key("ledger"), &dir);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        failing_seqs(&out, "authorization"),
        vec![r as u64 + 1],
        "{out:#}"
    );
    let msg = out["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "authorization")
        .unwrap()["failures"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("revoked"), "{msg}");
}

#[test]
fn actor_kind_changed_from_agent_to_human_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("kind");
    let entries = d.entries();
    let i = first(&entries, is_agent_tool_call);
    let mut ls = read_lines(&dir);
    let mut e = entries[i].clone();
    e.event.actor_kind = ActorKind::Human;
    ls[i] = e.to_line().unwrap();
    write_lines(&dir, &ls);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(failing_seqs(&out, "signatures"), vec![i as u64]);

    // Re-signed by the session key itself: the signature holds, but a session
    // may only act as an agent.
    let mut entries = entries;
    let key = d.key("session-chat");
    let mut ev = entries[i].event.clone();
    assert_eq!(ev.actor, key.did());
    ev.actor_kind = ActorKind::Human;
    let s = ev.sign(&key).unwrap();
    entries[i].event = s.event;
    entries[i].sig = s.sig;
    let dir = d.dir.path().join("kind-resigned");
    forge_bundle(&d.bundle(), entries, &d.key("ledger"), &dir);
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(failing_seqs(&out, "authorization"), vec![i as u64]);
}

#[test]
fn checkpoint_with_wrong_signature_is_detected() {
    let d = demo();
    let dir = d.copy_bundle("cp-sig");
    let b = custody_ledger::bundle::Bundle::open(&dir).unwrap();
    let (_, note, rel) = b.checkpoints.last().unwrap().clone();
    let mut text = String::from_utf8(note).unwrap();
    // Change one character of the base64 signature.
    let pos = text.rfind(' ').unwrap() + 5;
    let c = text.as_bytes()[pos];
    let repl = if c == b'A' { "B" } else { "A" };
    text.replace_range(pos..pos + 1, repl);
    std::fs::write(dir.join(&rel), text).unwrap();
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(!check_ok(&out, "checkpoints"), "{out:#}");
}

#[test]
fn checkpoint_with_wrong_root_is_detected() {
    // Signed by the real ledger key, but over a root that is not the entries'.
    let d = demo();
    let dir = d.copy_bundle("cp-root");
    let b = custody_ledger::bundle::Bundle::open(&dir).unwrap();
    let (size, note, rel) = b.checkpoints.last().unwrap().clone();
    let cp = custody_ledger::checkpoint::SignedCheckpoint::parse(&note).unwrap();
    let mut head = cp.head();
    head.root.0[0] ^= 1;
    let forged = custody_ledger::checkpoint::SignedCheckpoint::sign(
        &d.key("ledger"),
        cp.origin(),
        head,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    std::fs::write(dir.join(&rel), forged.to_bytes()).unwrap();
    let (code, out) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(
        failing_seqs(&out, "checkpoints").contains(&(size - 1)),
        "{out:#}"
    );
}

#[test]
fn checkpoint_by_another_key_is_refused_when_pinned() {
    let d = demo();
    let mut entries = d.entries();
    entries.truncate(entries.len());
    let dir = d.dir.path().join("other-ledger");
    // Whole ledger re-signed by a different key: fails against the pinned DID.
    let other = KeyPair::generate();
    forge_bundle(&d.bundle(), entries, &other, &dir);
    let pinned = d.key("ledger").did();
    let out = custody_tests::run(
        "custody-verify",
        &[
            "verify",
            dir.to_str().unwrap(),
            "--ledger-key",
            pinned.as_str(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}
