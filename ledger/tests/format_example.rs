//! The worked example in docs/FORMAT.md §10, recomputed: every value printed
//! there must come out of the code byte for byte. Run with
//! `FORMAT_EXAMPLE_PRINT=1 cargo test -p custody-ledger --test format_example -- --nocapture`
//! to print the values.

use custody_identity::KeyPair;
use custody_ledger::authority::TrustRoots;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::{
    actions, entry_hash, ActionType, ActorKind, Entry, EntryHash, Event, Nonce, Seq, Timestamp,
};

const DOC: &str = include_str!("../../docs/FORMAT.md");

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

#[test]
fn worked_example_matches_format_md() {
    let ledger = KeyPair::from_seed(&[1u8; 32]);
    let human = KeyPair::from_seed(&[2u8; 32]);

    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS).unwrap(),
    );
    g.details = TrustRoots {
        admins: [human.did()].into(),
        delegators: [human.did()].into(),
        ..Default::default()
    }
    .to_details();
    g.client_time = ts("2026-11-24T19:20:00.000Z");
    g.nonce = Nonce([0x11; 16]);
    let g_input = g.signing_input().unwrap();
    let g = g.sign(&ledger).unwrap();
    let e0 = Entry::new(Seq(0), EntryHash::ZERO, ts("2026-11-24T19:20:00.002Z"), g);
    let l0 = e0.to_line().unwrap();
    let h0 = entry_hash(&l0);

    let mut p = Event::new(
        human.did(),
        ActorKind::Human,
        ActionType::new("prompt").unwrap(),
    );
    p.details
        .insert("summary".into(), "fix the flaky test".into());
    p.client_time = ts("2026-11-24T19:20:05.000Z");
    p.nonce = Nonce([0x22; 16]);
    let p = p.sign(&human).unwrap();
    let e1 = Entry::new(Seq(1), h0, ts("2026-11-24T19:20:05.004Z"), p);
    let l1 = e1.to_line().unwrap();
    let h1 = entry_hash(&l1);

    let mut range = CompactRange::new();
    range.push(Hash(h0.0));
    range.push(Hash(h1.0));
    let origin = Origin::for_ledger(&ledger.did());
    let cp = SignedCheckpoint::sign(
        &ledger,
        &origin,
        TreeHead {
            size: 2,
            root: range.root(),
        },
        time::macros::datetime!(2026-11-24 19:20:10 UTC),
    )
    .unwrap();

    let values = [
        ("ledger DID", ledger.did().to_string()),
        ("human DID", human.did().to_string()),
        (
            "genesis signing input",
            String::from_utf8(g_input).unwrap().replace('\n', "\\n"),
        ),
        ("entry 0 line", String::from_utf8(l0).unwrap()),
        ("entry 0 hash", h0.to_hex()),
        ("entry 1 line", String::from_utf8(l1).unwrap()),
        ("entry 1 hash", h1.to_hex()),
        ("root", hash_to_hex(&range.root())),
        ("checkpoint", String::from_utf8(cp.to_bytes()).unwrap()),
    ];
    if std::env::var_os("FORMAT_EXAMPLE_PRINT").is_some() {
        for (k, v) in &values {
            println!("--- {k}\n{v}");
        }
    }
    for (name, v) in &values {
        for line in v.lines() {
            assert!(
                DOC.contains(line),
                "docs/FORMAT.md §10 lacks the {name}: {line}"
            );
        }
    }
}
