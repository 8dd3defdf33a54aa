//! Property test for the hook adapters (issue #8): whatever the agent
//! writes on stdin, the hook never panics, and what it spools is a correctly
//! signed event.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custody_agent::hook::{self, Agent};
use custody_agent::sessionfile::SessionFile;
use custody_identity::KeyPair;
use custody_ledger::SignedEvent;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::Value;

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i; 32])
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        "git push.{0,10}|rm -rf .{0,5}|[a-z/._-]{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                "command|file_path|path|url|notebook_path|success|is_error|.{0,8}",
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---- hook input --------------------------------------------------------------------------------

const HOOK_EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "Stop",
    "SubagentStop",
    "SessionEnd",
    "Notification",
];

fn hook_input() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("session_id"),
        Just("tool_name"),
        Just("tool_input"),
        Just("tool_response"),
        Just("tool_use_id"),
        Just("prompt"),
        Just("message"),
        Just("cwd"),
        Just("permission_mode"),
        Just("source"),
        Just("reason"),
        Just("transcript_path"),
    ];
    let object = (
        prop_oneof![
            4 => prop::sample::select(HOOK_EVENTS).prop_map(Value::from),
            1 => any_json(),
        ],
        prop::collection::btree_map(field, any_json(), 0..6),
    )
        .prop_map(|(name, fields)| {
            let mut m: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            m.insert("hook_event_name".into(), name);
            serde_json::to_vec(&Value::Object(m)).unwrap()
        });
    prop_oneof![
        6 => object,
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

/// Whatever the agent writes on stdin, with the broker unreachable: the hook
/// never panics, and what it spools for later delivery is an event signed by
/// the session key whose payload (if any) matches its digest.
#[test]
fn hook_input_never_panics_and_spools_signed_events() {
    let t = tempfile::tempdir().unwrap();
    let session_key = key(5);
    let ca = custody_identity::cert::SessionCa::generate(key(7), "custody fuzz CA").unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sf = SessionFile::new(
        &format!("http://127.0.0.1:{port}"),
        &session_key,
        "urn:uuid:6b1f7a2e-0000-4000-8000-000000000001".into(),
        key(6).did(),
        "claude-code".into(),
        "chat".into(),
        vec!["repo-read".into()],
        "2099-01-01T00:00:00Z".into(),
        String::new(),
        ca.ca_cert_pem().to_string(),
        "ingest".into(),
    );
    let path = t.path().join("session.json");
    sf.save(&path).unwrap();
    let spool = t.path().join("session.json.spool.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let cases = 200;
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&(hook_input(), any::<bool>()), |(input, codex)| {
        let _ = std::fs::remove_file(&spool);
        let agent = if codex {
            Agent::Codex
        } else {
            Agent::ClaudeCode
        };
        let out = rt.block_on(hook::run(agent, &path, &input));
        let parsed: Option<Value> = serde_json::from_slice(&input).ok();
        let name = parsed
            .as_ref()
            .and_then(|v| v.get("hook_event_name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        // Every hook event is recorded, an unknown one (or one without a
        // name) as `agent.event`: any JSON input is evidence.
        let recorded = parsed.is_some();
        match &out {
            Err(e) => prop_assert!(
                parsed.is_none() || !recorded,
                "hook failed on a recorded event: {:#}",
                e
            ),
            Ok(o) => prop_assert_eq!(o.exit_code, 0),
        }
        if recorded && out.is_ok() {
            let text = std::fs::read_to_string(&spool).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            // The event, and a permission-mode change when the input names a
            // mode other than the last one seen.
            prop_assert!(
                (1..=2).contains(&lines.len()),
                "{} spooled events for {}",
                lines.len(),
                name
            );
            for line in lines {
                let v: Value = serde_json::from_str(line).unwrap();
                let ev: SignedEvent = serde_json::from_value(v["event"].clone()).unwrap();
                prop_assert!(ev.verify().is_ok());
                prop_assert_eq!(&ev.event.actor, &session_key.did());
                match (&ev.event.payload, v.get("payload").filter(|p| !p.is_null())) {
                    (None, None) => {}
                    (Some(r), Some(p)) => {
                        let salt = URL_SAFE_NO_PAD.decode(p["salt"].as_str().unwrap()).unwrap();
                        let body = URL_SAFE_NO_PAD.decode(p["body"].as_str().unwrap()).unwrap();
                        prop_assert_eq!(
                            custody_ledger::bundle::payload_digest(&salt, &body),
                            r.digest
                        );
                        prop_assert_eq!(body.len() as u64, r.size);
                    }
                    (a, b) => prop_assert!(false, "payload ref {:?} but body {:?}", a, b),
                }
            }
        } else {
            prop_assert!(!spool.exists(), "spooled an event for {:?}", name);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
