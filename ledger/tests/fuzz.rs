//! Property tests for every parser in custody-ledger that takes outside input
//! (issue #8): entry lines, the small validated types, timestamps, canonical
//! JSON, checkpoints, Merkle proofs, the bundle reader, and the authorization
//! rules fed arbitrary (correctly signed) events and credentials.
//!
//! Arbitrary input must never panic; valid values must round-trip; whatever a
//! parser accepts must be the one canonical form of what it means.

use std::collections::BTreeMap;
use std::path::Path;

use custody_identity::jws::sign_compact;
use custody_identity::{Did, KeyPair};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::bundle::{
    self, payload_digest, Bundle, CredentialRecord, DidRecord, LineReader, Manifest, PayloadRecord,
};
use custody_ledger::canonical::{is_canonical, to_canonical};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{
    self, hash_from_hex, hash_to_hex, verify_consistency, verify_inclusion, CompactRange, Hash,
    MemoryHashStore, TreeHead,
};
use custody_ledger::{
    actions, entry_hash, ActionType, ActorKind, Approval, Context, Entry, EntryHash, Event, Nonce,
    PayloadDigest, PayloadRef, Scope, Seq, SessionId, SignedEvent, Timestamp,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Largest integer JSON (and so JCS) carries exactly: JCS writes numbers as
/// IEEE doubles, so a bigger `u64` is written rounded (see `big_numbers_…`).
const MAX_EXACT: u64 = 1 << 53;
/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in unix milliseconds.
const MIN_MS: i128 = -62_167_219_200_000;
const MAX_MS: i128 = 253_402_300_799_999;

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i; 32])
}

// ---- strategies -------------------------------------------------------------------

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        1 => Just(MIN_MS),
        1 => Just(MAX_MS),
        8 => MIN_MS..=MAX_MS,
        8 => 1_700_000_000_000i128..1_900_000_000_000,
    ]
    .prop_map(|ms| Timestamp::from_unix_millis(ms).unwrap())
}

/// JSON whose numbers survive JCS exactly (integers within ±2^53).
fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0..=MAX_EXACT).prop_map(Value::from),
        (-(MAX_EXACT as i64)..=0).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(".{0,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any JSON, including floats and integers JCS cannot write exactly.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(".{0,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn details(json: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,10}|.{0,6}", json, 0..5)
        .prop_map(|m| m.into_iter().collect())
}

fn approval() -> impl Strategy<Value = Option<Approval>> {
    prop_oneof![
        Just(None),
        Just(Some(Approval::None)),
        (0u8..4, prop::option::of(0u64..8)).prop_map(|(i, seq)| Some(Approval::Human {
            approver: key(i).did(),
            seq,
        })),
        (".{0,20}", prop::option::of(0u64..8))
            .prop_map(|(p, seq)| Some(Approval::Policy { policy: p, seq })),
        (".{0,20}", prop::option::of(0u64..8))
            .prop_map(|(r, seq)| Some(Approval::AutoReview { reviewer: r, seq })),
    ]
}

prop_compose! {
    fn event_with(json: BoxedStrategy<Value>)(
        actor in 0u8..4,
        kind in prop_oneof![Just(ActorKind::Agent), Just(ActorKind::Human), Just(ActorKind::Service)],
        session in prop::option::of("[A-Za-z0-9:._-]{1,40}"),
        on_behalf_of in prop::option::of(0u8..4),
        context in prop::option::of("[a-z0-9._-]{1,20}"),
        action in "[a-z0-9._]{1,30}",
        details in details(json),
        approval in approval(),
        payload in prop::option::of((any::<[u8; 32]>(), 0..=MAX_EXACT)),
        client_time in timestamp(),
        nonce in any::<[u8; 16]>(),
    ) -> (Event, KeyPair) {
        let k = key(actor);
        let mut e = Event::new(k.did(), kind, ActionType::new(action).unwrap());
        e.session = session.map(|s| SessionId::new(s).unwrap());
        e.on_behalf_of = on_behalf_of.map(|i| key(i).did());
        e.context = context.map(|c| Context::new(c).unwrap());
        e.details = details;
        e.approval = approval;
        e.payload = payload.map(|(d, size)| PayloadRef { digest: PayloadDigest(d), size });
        e.client_time = client_time;
        e.nonce = Nonce(nonce);
        (e, k)
    }
}

prop_compose! {
    fn entry_with(json: BoxedStrategy<Value>)(
        (event, k) in event_with(json),
        seq in 0..=MAX_EXACT,
        prev in any::<[u8; 32]>(),
        received_at in timestamp(),
    ) -> Entry {
        Entry::new(Seq(seq), EntryHash(prev), received_at, event.sign(&k).unwrap())
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    entry_with(exact_json().boxed())
}

/// A byte-level change: replace, insert or delete at a position.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        // Bytes JSON gives meaning to, so edits often still parse.
        2 => (any::<usize>(), prop::sample::select(b"0123456789abcdef\"\\:,{}[] \n.-_zZ".to_vec()))
            .prop_map(|(p, b)| Edit::Set(p, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        1 => any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply(bytes: &[u8], e: &Edit) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match *e {
        Edit::Set(p, x) if !b.is_empty() => {
            let i = p % b.len();
            b[i] = x;
        }
        Edit::Insert(p, x) => b.insert(p % (b.len() + 1), x),
        Edit::Delete(p) if !b.is_empty() => {
            b.remove(p % b.len());
        }
        _ => {}
    }
    b
}

// ---- entries --------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_line_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(e) = Entry::parse_line(&line) {
            prop_assert_eq!(e.to_line().unwrap(), line);
        }
    }

    #[test]
    fn parse_line_never_panics_on_json(v in any_json(), canonical in any::<bool>()) {
        let line = if canonical { to_canonical(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
        prop_assert!(Entry::parse_line(&line).is_err());
    }

    /// Entry-shaped JSON with one member replaced by arbitrary JSON.
    #[test]
    fn parse_line_never_panics_on_entry_shaped_json(e in entry(), field in 0usize..12, v in any_json()) {
        let mut j = serde_json::to_value(&e).unwrap();
        let names = ["v", "seq", "prev", "received_at", "sig", "event"];
        let ev = ["actor", "actor_kind", "action", "details", "nonce", "payload"];
        if field < 6 {
            j[names[field]] = v;
        } else {
            j["event"][ev[field - 6]] = v;
        }
        let line = to_canonical(&j).unwrap();
        if let Ok(back) = Entry::parse_line(&line) {
            prop_assert_eq!(back.to_line().unwrap(), line);
        }
    }

    #[test]
    fn entries_round_trip(e in entry()) {
        let line = e.to_line().unwrap();
        prop_assert!(is_canonical(&line));
        let back = Entry::parse_line(&line).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert!(back.verify_signature().is_ok());
        prop_assert_eq!(entry_hash(&line), entry_hash(&back.to_line().unwrap()));
    }

    /// With numbers JCS cannot write exactly the parsed entry may differ from
    /// the one in memory, but its line is stable and the signature (over the
    /// same JCS bytes) still verifies.
    #[test]
    fn entries_with_any_numbers_are_stable(e in entry_with(any_json().boxed())) {
        let line = e.to_line().unwrap();
        let back = Entry::parse_line(&line).unwrap();
        prop_assert_eq!(back.to_line().unwrap(), line);
        prop_assert!(back.verify_signature().is_ok());
    }

    /// Any byte edit of a valid line: refused, or a canonical entry whose
    /// signature fails if the signed part (event or signature) changed.
    #[test]
    fn edited_lines_never_verify_as_the_same_actor(e in entry(), edits in prop::collection::vec(edit(), 1..4)) {
        let line = e.to_line().unwrap();
        let mut bad = line.clone();
        for ed in &edits {
            bad = apply(&bad, ed);
        }
        if let Ok(m) = Entry::parse_line(&bad) {
            prop_assert_eq!(m.to_line().unwrap(), bad.clone());
            if m.event != e.event || m.sig != e.sig {
                prop_assert!(m.verify_signature().is_err(), "{}", String::from_utf8_lossy(&bad));
            }
            if bad != line {
                prop_assert_ne!(&m, &e);
                prop_assert_ne!(entry_hash(&bad), entry_hash(&line));
            }
        }
    }

    #[test]
    fn signed_events_from_json_never_panic(v in any_json()) {
        if let Ok(s) = serde_json::from_value::<SignedEvent>(v.clone()) {
            let _ = s.verify();
        }
        let _ = serde_json::from_value::<Event>(v.clone());
        let _ = serde_json::from_value::<Approval>(v.clone());
        let _ = serde_json::from_value::<PayloadRef>(v.clone());
        let _ = serde_json::from_value::<ActorKind>(v);
    }

    #[test]
    fn signed_event_edits_fail_verification((ev, k) in event_with(exact_json().boxed()), edits in prop::collection::vec(edit(), 1..3)) {
        let signed = ev.sign(&k).unwrap();
        let text = serde_json::to_vec(&signed).unwrap();
        let mut bad = text.clone();
        for ed in &edits {
            bad = apply(&bad, ed);
        }
        if let Ok(m) = serde_json::from_slice::<SignedEvent>(&bad) {
            // This JSON is not checked for canonical form; what is signed is
            // the JCS of the event, so `5` and `5.0` or `/` and `\/` mean the same.
            // An edit can also produce a number JCS cannot write (an
            // overflowing float): such an event cannot verify either.
            if to_canonical(&m).ok() != Some(to_canonical(&signed).unwrap()) {
                prop_assert!(m.verify().is_err(), "{}", String::from_utf8_lossy(&bad));
            } else {
                prop_assert!(m.verify().is_ok());
            }
        }
    }
}

// ---- small types -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn seq_json_never_panics(s in ".{0,30}|-?[0-9]{1,25}(\\.[0-9]{0,3})?(e[+-]?[0-9]{1,3})?") {
        if let Ok(q) = serde_json::from_str::<Seq>(&s) {
            prop_assert_eq!(serde_json::to_string(&q).unwrap().parse::<u64>().unwrap(), q.0);
        }
    }

    #[test]
    fn seq_round_trips(n in 0..=MAX_EXACT) {
        let j = to_canonical(&Seq(n)).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Seq>(&j).unwrap(), Seq(n));
        prop_assert_eq!(Seq(n).next().0, n + 1);
    }

    #[test]
    fn hex_types_never_panic(s in ".{0,70}|[0-9a-fA-F]{30,66}") {
        if let Ok(n) = Nonce::from_hex(&s) {
            prop_assert_eq!(n.to_hex(), s.clone());
        }
        if let Ok(h) = EntryHash::from_hex(&s) {
            prop_assert_eq!(h.to_hex(), s.clone());
        }
        if let Ok(h) = PayloadDigest::from_hex(&s) {
            prop_assert_eq!(h.to_hex(), s.clone());
        }
        if let Ok(h) = hash_from_hex(&s) {
            prop_assert_eq!(hash_to_hex(&h), s.clone());
        }
        let _ = serde_json::from_value::<Nonce>(Value::from(s.clone()));
        let _ = serde_json::from_value::<EntryHash>(Value::from(s));
    }

    #[test]
    fn hex_types_round_trip(b in any::<[u8; 32]>()) {
        let h = EntryHash(b);
        prop_assert_eq!(EntryHash::from_hex(&h.to_hex()).unwrap(), h);
        let d = PayloadDigest(b);
        prop_assert_eq!(serde_json::from_str::<PayloadDigest>(&serde_json::to_string(&d).unwrap()).unwrap(), d);
        let mut n = [0u8; 16];
        n.copy_from_slice(&b[..16]);
        prop_assert_eq!(Nonce::from_hex(&Nonce(n).to_hex()).unwrap(), Nonce(n));
        prop_assert_eq!(hash_from_hex(&hash_to_hex(&Hash(b))).unwrap(), Hash(b));
        // Upper case is another spelling of the same bytes: refused.
        let upper = h.to_hex().to_uppercase();
        prop_assert_eq!(EntryHash::from_hex(&upper).is_ok(), upper == h.to_hex());
    }

    #[test]
    fn name_types_never_panic(s in ".{0,140}|[a-z0-9._:-]{0,70}") {
        let ok = |c: &dyn Fn(char) -> bool, max: usize| !s.is_empty() && s.len() <= max && s.chars().all(c);
        let a = ActionType::new(s.clone());
        prop_assert_eq!(a.is_ok(), ok(&|c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_', 64));
        let i = SessionId::new(s.clone());
        prop_assert_eq!(i.is_ok(), ok(&|c: char| c.is_ascii_alphanumeric() || ":-._".contains(c), 128));
        let c = Context::new(s.clone());
        prop_assert_eq!(c.is_ok(), ok(&|c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c), 64));
        let sc = Scope::new(s.clone());
        prop_assert_eq!(sc.is_ok(), ok(&|c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:".contains(c), 64));
        if let Ok(a) = a {
            prop_assert_eq!(a.as_str(), s.as_str());
            let j = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<ActionType>(&j).unwrap(), a);
        }
        if let Ok(sc) = sc {
            prop_assert_eq!(s.parse::<Scope>().unwrap(), sc);
        }
        let v = Value::from(s);
        let _ = serde_json::from_value::<ActionType>(v.clone());
        let _ = serde_json::from_value::<SessionId>(v.clone());
        let _ = serde_json::from_value::<Context>(v.clone());
        let _ = serde_json::from_value::<Scope>(v);
    }

    #[test]
    fn timestamp_parse_never_panics(s in ".{0,30}") {
        if let Ok(t) = Timestamp::parse(&s) {
            prop_assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn timestamp_shaped_strings_parse_canonically(
        s in "[+-]?[0-9]{4,6}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
    ) {
        if let Ok(t) = Timestamp::parse(&s) {
            prop_assert_eq!(t.to_string(), s.clone());
            let j = serde_json::to_string(&t).unwrap();
            prop_assert_eq!(serde_json::from_str::<Timestamp>(&j).unwrap(), t);
        }
    }

    #[test]
    fn timestamps_round_trip(t in timestamp()) {
        let s = t.to_string();
        prop_assert_eq!(s.len(), 24);
        prop_assert_eq!(Timestamp::parse(&s).unwrap(), t);
        prop_assert_eq!(Timestamp::from_unix_millis(t.unix_millis()).unwrap(), t);
    }

    #[test]
    fn timestamp_from_unix_millis_never_panics(ms in any::<i128>()) {
        if let Ok(t) = Timestamp::from_unix_millis(ms) {
            prop_assert_eq!(t.unix_millis(), ms);
        }
    }

    #[test]
    fn canonical_check_never_panics(b in prop::collection::vec(any::<u8>(), 0..200), v in any_json()) {
        let _ = is_canonical(&b);
        let c = to_canonical(&v).unwrap();
        prop_assert!(is_canonical(&c));
        // JCS of the parsed JCS is the same bytes.
        let back: Value = serde_json::from_slice(&c).unwrap();
        prop_assert_eq!(to_canonical(&back).unwrap(), c);
    }
}

/// JCS writes every number as an IEEE double (RFC 8785 §3.2.2.3): integers
/// beyond 2^53 are rounded. A `seq` or payload `size` that large cannot be
/// written exactly — harmless (no ledger gets near 2^53 entries or bytes),
/// but it is why the strategies above stay below it.
#[test]
fn big_numbers_are_written_as_doubles() {
    assert_eq!(
        to_canonical(&Seq((1 << 53) + 1)).unwrap(),
        b"9007199254740992".to_vec()
    );
    assert_eq!(
        to_canonical(&Seq(1 << 53)).unwrap(),
        b"9007199254740992".to_vec()
    );
}

// ---- checkpoints ---------------------------------------------------------------------

fn checkpoint_time() -> impl Strategy<Value = time::OffsetDateTime> {
    (0i64..253_402_300_799).prop_map(|s| time::OffsetDateTime::from_unix_timestamp(s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn checkpoint_parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(cp) = SignedCheckpoint::parse(&b) {
            prop_assert_eq!(cp.to_bytes(), b);
        }
    }

    #[test]
    fn checkpoint_shaped_text_never_panics(
        origin in "[!-~]{0,20}|custody/z6Mk[1-9A-Za-z]{0,44}",
        size in "[0-9]{1,22}|-1|",
        root in "[A-Za-z0-9+/=]{0,48}",
        time in "time [0-9:TZ-]{0,24}|[a-z ]{0,10}",
        sig_name in "[!-~]{0,20}",
        sig in "[A-Za-z0-9+/=]{0,100}",
        extra in "(\n[ -~]{0,20}){0,2}",
    ) {
        let text = format!("{origin}\n{size}\n{root}\n{time}\n\n\u{2014} {sig_name} {sig}\n{extra}");
        if let Ok(cp) = SignedCheckpoint::parse(text.as_bytes()) {
            prop_assert_eq!(cp.to_bytes(), text.as_bytes().to_vec());
            let _ = cp.verify(&key(1).public());
        }
    }

    #[test]
    fn checkpoints_round_trip_and_any_changed_byte_fails(
        seed in any::<u8>(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        t in checkpoint_time(),
        pos in any::<usize>(),
        new in any::<u8>(),
    ) {
        let k = key(seed);
        let origin = Origin::for_ledger(&k.did());
        let head = TreeHead { size, root: Hash(root) };
        let cp = SignedCheckpoint::sign(&k, &origin, head, t).unwrap();
        let bytes = cp.to_bytes();
        let back = SignedCheckpoint::parse(&bytes).unwrap();
        prop_assert_eq!(back.head(), head);
        prop_assert_eq!(back.time(), t);
        prop_assert_eq!(back.origin(), &origin);
        prop_assert!(back.verify(&k.public()).is_ok());
        prop_assert!(back.verify(&key(seed.wrapping_add(1)).public()).is_err());

        let mut b = bytes.clone();
        let i = pos % b.len();
        if b[i] != new {
            b[i] = new;
            let ok = SignedCheckpoint::parse(&b).map(|c| c.verify(&k.public()).is_ok()).unwrap_or(false);
            prop_assert!(!ok, "byte {} set to {:#04x} and still verified", i, new);
        }
    }

    #[test]
    fn checkpoint_edits_never_verify_another_head(seed in any::<u8>(), size in 0u64..1_000_000, t in checkpoint_time(), edits in prop::collection::vec(edit(), 1..4)) {
        let k = key(seed);
        let origin = Origin::for_ledger(&k.did());
        let head = TreeHead { size, root: merkle::leaf_hash(&size.to_be_bytes()) };
        let bytes = SignedCheckpoint::sign(&k, &origin, head, t).unwrap().to_bytes();
        let mut b = bytes.clone();
        for e in &edits {
            b = apply(&b, e);
        }
        if let Ok(cp) = SignedCheckpoint::parse(&b) {
            if cp.verify(&k.public()).is_ok() {
                prop_assert_eq!(cp.head(), head);
                prop_assert_eq!(cp.time(), t);
            }
        }
    }

    #[test]
    fn origin_never_panics(s in ".{0,300}") {
        if let Ok(o) = Origin::new(&s) {
            prop_assert_eq!(o.as_str(), s.as_str());
        }
    }
}

// ---- Merkle proofs ----------------------------------------------------------------------

fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..70,
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 63)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn proof_checks_never_panic(
        proof in prop::collection::vec(any::<[u8; 32]>().prop_map(Hash), 0..70),
        a in sizes(),
        b in sizes(),
        r1 in any::<[u8; 32]>(),
        r2 in any::<[u8; 32]>(),
    ) {
        let _ = verify_inclusion(&proof, a, Hash(r1), b, Hash(r2));
        let _ = verify_consistency(&proof, a, Hash(r1), b, Hash(r2));
    }

    #[test]
    fn proofs_round_trip_and_edits_fail(n in 1u64..70, i in any::<u64>(), m in any::<u64>(), pos in any::<usize>(), x in 1u8..=255) {
        let leaves: Vec<Hash> = (0..n).map(|j| merkle::leaf_hash(&j.to_be_bytes())).collect();
        let mut store = MemoryHashStore::new();
        let mut range = CompactRange::new();
        for l in &leaves {
            store.append(*l);
            range.push(*l);
        }
        let root = store.root();
        prop_assert_eq!(range.root(), root);
        let i = i % n;
        let p = merkle::inclusion_proof(&store, n, i).unwrap();
        prop_assert!(verify_inclusion(&p, n, root, i, leaves[i as usize]).is_ok());
        prop_assert!(verify_inclusion(&p, n, root, i, merkle::leaf_hash(b"other")).is_err());
        if !p.is_empty() {
            let mut q = p.clone();
            let k = pos % q.len();
            q[k].0[pos % 32] ^= x;
            prop_assert!(verify_inclusion(&q, n, root, i, leaves[i as usize]).is_err());
        }
        let old = 1 + m % n;
        let c = merkle::consistency_proof(&store, n, old).unwrap();
        let old_root = store.root_at(old).unwrap();
        prop_assert!(verify_consistency(&c, n, root, old, old_root).is_ok());
        if !c.is_empty() {
            let mut q = c.clone();
            let k = pos % q.len();
            q[k].0[pos % 32] ^= x;
            prop_assert!(verify_consistency(&q, n, root, old, old_root).is_err());
        }
    }
}

// ---- bundle reader ------------------------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, bytes).unwrap();
}

/// A manifest for `dir` as the writer would make it (digests of what is there).
fn manifest_json(ledger: &Did, files: &[(&str, &[u8])]) -> Value {
    let mut m = BTreeMap::new();
    for (name, bytes) in files {
        m.insert(
            name.to_string(),
            json!({"bytes": bytes.len(), "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))}),
        );
    }
    json!({
        "format": bundle::BUNDLE_FORMAT, "version": 1, "ledger": ledger.to_string(),
        "origin": Origin::for_ledger(ledger).as_str(), "tree_size": 0,
        "root": hash_to_hex(&merkle::EMPTY_HASH), "created_at": "2026-11-24T19:20:00.000Z",
        "files": m,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bundle_open_never_panics_on_manifests(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        field in 0usize..9,
        v in any_json(),
        as_json in any::<bool>(),
    ) {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), bundle::ENTRIES, b"");
        let manifest = if as_json {
            let mut m = manifest_json(&key(1).did(), &[]);
            let names = ["format", "version", "ledger", "origin", "tree_size", "root", "created_at", "files", "extra"];
            m[names[field]] = v;
            to_canonical(&m).unwrap()
        } else {
            bytes
        };
        write(t.path(), bundle::MANIFEST, &manifest);
        if let Ok(b) = Bundle::open(t.path()) {
            prop_assert_eq!(b.manifest.format.as_str(), bundle::BUNDLE_FORMAT);
            prop_assert_eq!(b.manifest.version, bundle::BUNDLE_VERSION);
            let _ = b.credentials();
            let _ = b.dids();
        }
    }

    #[test]
    fn bundle_open_never_panics_on_checkpoint_names(
        names in prop::collection::vec("[0-9]{0,22}|[a-z0-9.+-]{1,12}", 0..4),
        notes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 4),
    ) {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), bundle::ENTRIES, b"");
        let m = manifest_json(&key(1).did(), &[]);
        write(t.path(), bundle::MANIFEST, &to_canonical(&m).unwrap());
        for (n, note) in names.iter().zip(&notes) {
            write(t.path(), &format!("{}/{n}.checkpoint", bundle::CHECKPOINTS_DIR), note);
        }
        if let Ok(b) = Bundle::open(t.path()) {
            prop_assert!(b.checkpoints.windows(2).all(|w| w[0].0 <= w[1].0));
            for (size, note, rel) in &b.checkpoints {
                let name = rel.strip_prefix("checkpoints/").unwrap().strip_suffix(".checkpoint").unwrap();
                prop_assert_eq!(name.parse::<u64>().unwrap(), *size);
                prop_assert_eq!(std::fs::read(t.path().join(rel)).unwrap(), note.clone());
            }
        }
    }

    #[test]
    fn small_jsonl_files_never_panic(
        creds in prop::collection::vec(any::<u8>(), 0..200),
        dids in prop::collection::vec(any::<u8>(), 0..200),
        payloads in prop::collection::vec(any::<u8>(), 0..200),
        json_lines in prop::collection::vec(any_json(), 0..4),
    ) {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), bundle::ENTRIES, b"");
        write(t.path(), bundle::MANIFEST, &to_canonical(&manifest_json(&key(1).did(), &[])).unwrap());
        let mut lines = Vec::new();
        for v in &json_lines {
            lines.extend(to_canonical(v).unwrap());
            lines.push(b'\n');
        }
        for (name, body) in [(bundle::CREDENTIALS, &creds), (bundle::DIDS, &dids), (bundle::PAYLOADS, &payloads)] {
            write(t.path(), name, body);
            let b = Bundle::open(t.path()).unwrap();
            let _ = b.credentials();
            let _ = b.dids();
            if let Some(r) = b.payload_lines().unwrap() {
                for (_, line) in r.flatten() {
                    if let Ok(p) = serde_json::from_slice::<PayloadRecord>(&line) {
                        let _ = p.open();
                    }
                }
            }
            write(t.path(), name, &lines);
            let _ = b.credentials();
            let _ = b.dids();
        }
    }

    #[test]
    fn line_reader_never_panics_and_loses_nothing(content in prop::collection::vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\n')], 0..300), max in 0usize..40) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, &content).unwrap();
        let mut rebuilt = Vec::new();
        let mut expect_n = 0u64;
        let mut failed = false;
        for item in LineReader::open(&p, max).unwrap() {
            prop_assert!(!failed, "items after an error");
            match item {
                Ok((n, line)) => {
                    prop_assert_eq!(n, expect_n);
                    prop_assert!(line.len() <= max);
                    prop_assert!(!line.contains(&b'\n'));
                    rebuilt.extend(&line);
                    rebuilt.push(b'\n');
                    expect_n += 1;
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            // Refused only for a missing final newline or an over-long line.
            let over_long = content.split(|&b| b == b'\n').any(|l| l.len() > max);
            prop_assert!(over_long || content.last() != Some(&b'\n'));
            prop_assert!(content.starts_with(&rebuilt));
        } else {
            prop_assert_eq!(rebuilt, content);
        }
    }

    #[test]
    fn payload_records_round_trip(seq in 0..=MAX_EXACT, salt in any::<[u8; 32]>(), body in prop::collection::vec(any::<u8>(), 0..100), pos in any::<usize>(), x in 1u8..=255) {
        let d = payload_digest(&salt, &body);
        let rec = PayloadRecord::new(Seq(seq), d, &salt, &body);
        prop_assert_eq!(rec.open().unwrap(), body.clone());
        let j = to_canonical(&rec).unwrap();
        let back: PayloadRecord = serde_json::from_slice(&j).unwrap();
        prop_assert_eq!(&back, &rec);
        // A changed body, salt or digest no longer opens.
        let mut b2 = body.clone();
        b2.push(x);
        prop_assert!(PayloadRecord::new(Seq(seq), d, &salt, &b2).open().is_err());
        let mut s2 = salt;
        s2[pos % 32] ^= x;
        prop_assert!(PayloadRecord::new(Seq(seq), d, &s2, &body).open().is_err());
        let mut d2 = d;
        d2.0[pos % 32] ^= x;
        prop_assert!(PayloadRecord::new(Seq(seq), d2, &salt, &body).open().is_err());
    }

    #[test]
    fn payload_record_fields_never_panic(salt in ".{0,60}|[A-Za-z0-9_-]{40,46}", body in ".{0,60}", d in any::<[u8; 32]>()) {
        let rec = PayloadRecord { seq: Seq(0), digest: PayloadDigest(d), salt, body };
        let _ = rec.open();
    }

    #[test]
    fn bundle_records_from_json_never_panic(v in any_json()) {
        let _ = serde_json::from_value::<Manifest>(v.clone());
        let _ = serde_json::from_value::<CredentialRecord>(v.clone());
        let _ = serde_json::from_value::<DidRecord>(v.clone());
        let _ = serde_json::from_value::<PayloadRecord>(v);
    }
}

// ---- authorization rules ---------------------------------------------------------------------

/// RFC 3339 times, many at the edges `time` can represent.
fn rfc3339() -> impl Strategy<Value = String> {
    let date = prop_oneof![
        Just((0u32, 1u32, 1u32)),
        Just((9999, 12, 31)),
        (
            prop_oneof![Just(0u32), 1970u32..2100, Just(9999)],
            1u32..=12,
            1u32..=28
        ),
    ];
    (
        date,
        0u32..=23,
        0u32..=59,
        0u32..=59,
        prop_oneof![
            Just("Z".to_string()),
            (any::<bool>(), 0u32..=23, 0u32..=59)
                .prop_map(|(n, h, m)| format!("{}{h:02}:{m:02}", if n { '-' } else { '+' }))
        ],
    )
        .prop_map(|((y, mo, d), h, mi, s, off)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{off}")
        })
}

/// Keys: 0 ledger, 1 human (admin + delegator), 2 and 3 sessions, 4 stranger.
#[derive(Clone, Debug)]
struct Step {
    actor: u8,
    kind: ActorKind,
    action: &'static str,
    /// Signer of the credential the event carries, and its subject.
    cred_signer: u8,
    cred_subject: u8,
    times: (String, String),
    scopes: Vec<String>,
    session_id: Option<&'static str>,
    on_behalf_of: Option<u8>,
    context: Option<&'static str>,
    scope: Option<&'static str>,
    received_at: Timestamp,
}

fn step() -> impl Strategy<Value = Step> {
    (
        (
            0u8..5,
            prop_oneof![
                Just(ActorKind::Agent),
                Just(ActorKind::Human),
                Just(ActorKind::Service)
            ],
            prop::sample::select(vec![
                actions::GENESIS,
                actions::TRUST_UPDATE,
                actions::SESSION_START,
                actions::IDENTITY_REVOKE,
                actions::TOOL_CALL,
                actions::PROMPT,
            ]),
            0u8..5,
            0u8..5,
            (rfc3339(), rfc3339()),
        ),
        (
            prop::collection::vec("[a-z]{1,3}", 0..3),
            prop::option::of(prop::sample::select(vec!["urn:uuid:1", "urn:uuid:2"])),
            prop::option::of(0u8..5),
            prop::option::of(prop::sample::select(vec!["ci", "chat"])),
            prop::option::of(prop::sample::select(vec!["a", "b", "ab"])),
            timestamp(),
        ),
    )
        .prop_map(
            |(
                (actor, kind, action, cred_signer, cred_subject, times),
                (scopes, session_id, on_behalf_of, context, scope, received_at),
            )| Step {
                actor,
                kind,
                action,
                cred_signer,
                cred_subject,
                times,
                scopes,
                session_id,
                on_behalf_of,
                context,
                scope,
                received_at,
            },
        )
}

fn event_for(s: &Step) -> SignedEvent {
    let k = key(s.actor);
    let mut e = Event::new(k.did(), s.kind, ActionType::new(s.action).unwrap());
    e.session = s.session_id.map(|x| SessionId::new(x).unwrap());
    e.on_behalf_of = s.on_behalf_of.map(|i| key(i).did());
    e.context = s.context.map(|c| Context::new(c).unwrap());
    if let Some(sc) = s.scope {
        e.details.insert("scope".into(), sc.into());
    }
    let signer = key(s.cred_signer);
    match s.action {
        actions::GENESIS | actions::TRUST_UPDATE => {
            e.details = TrustRoots {
                admins: [key(1).did()].into(),
                delegators: [key(1).did()].into(),
                ..Default::default()
            }
            .to_details();
        }
        actions::SESSION_START => {
            let payload = json!({
                "@context": ["https://www.w3.org/ns/credentials/v2"],
                "type": ["VerifiableCredential", "CustodyDelegation"],
                "id": s.session_id.unwrap_or("urn:uuid:1"),
                "issuer": signer.did().to_string(),
                "validFrom": s.times.0, "validUntil": s.times.1,
                "credentialSubject": {"id": key(s.cred_subject).did().to_string(), "agent": "a",
                                      "scopes": s.scopes, "context": s.context.unwrap_or("ci")},
            });
            let jws = sign_compact(&signer, "vc+jwt", &payload).unwrap();
            e.details.insert("delegation".into(), jws.into());
        }
        actions::IDENTITY_REVOKE => {
            let payload = json!({
                "type": "CustodyRevocation", "issuer": signer.did().to_string(),
                "subject": key(s.cred_subject).did().to_string(), "reason": "r",
                "effective_at": s.times.0,
            });
            let jws = sign_compact(&signer, "custody-revocation+jwt", &payload).unwrap();
            e.details.insert("revocation".into(), jws.into());
        }
        _ => {}
    }
    e.sign(&k).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The rules, fed sequences of correctly signed events whose credentials
    /// carry arbitrary (and extreme) times, subjects and signers, decide every
    /// event without panicking — the verifier applies them to untrusted bundles.
    #[test]
    fn authority_never_panics(steps in prop::collection::vec(step(), 1..12), pinned in any::<bool>()) {
        let mut a = Authority::new(pinned.then(|| key(0).did()));
        let mut prev = EntryHash::ZERO;
        for (n, s) in steps.iter().enumerate() {
            // Mostly start with a genesis, so later rules are reached.
            let s = if n == 0 && s.actor != 4 {
                Step { actor: 0, kind: ActorKind::Service, action: actions::GENESIS, ..s.clone() }
            } else {
                s.clone()
            };
            let signed = event_for(&s);
            let verdict = a.check(&signed, s.received_at);
            if n == 0 && verdict.is_ok() {
                prop_assert_eq!(signed.event.action.as_str(), actions::GENESIS);
            }
            let entry = Entry::new(Seq(n as u64), prev, s.received_at, signed);
            let line = entry.to_line().unwrap();
            prop_assert_eq!(&Entry::parse_line(&line).unwrap(), &entry);
            prev = entry_hash(&line);
            match verdict {
                Ok(admitted) => a.apply(&entry, admitted),
                Err(_) => a.skip(),
            }
            prop_assert_eq!(a.next_seq(), Seq(n as u64 + 1));
            for (did, _) in a.sessions() {
                let _ = a.revoked_at(did, s.received_at);
            }
        }
    }

    #[test]
    fn trust_roots_never_panic(v in prop::collection::btree_map("admins|delegators|x", any_json(), 0..3)) {
        let m: Map<String, Value> = v.into_iter().collect();
        if let Ok(t) = TrustRoots::from_details(&m) {
            prop_assert_eq!(TrustRoots::from_details(&t.to_details()).unwrap(), t);
        }
    }
}
