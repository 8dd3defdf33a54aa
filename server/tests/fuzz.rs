//! Property tests for the broker's parsers of outside input (issue #8):
//! `custody.toml`, OTLP log exports and the pre-tool policy's view of a tool
//! call. Arbitrary input must never panic.

use std::path::Path;

use custody_identity::{Delegation, KeyPair};
use custody_ledger::ActionType;
use custody_server::config::{parse_duration, Config, MAX_SCOPE_TTL};
use custody_server::otlp::{self, Encoding};
use custody_server::policy::{Policy, Query, Resource};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use proptest::prelude::*;
use serde_json::{json, Value};

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

// ---- custody.toml ------------------------------------------------------------------------

fn toml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,20}",
        "[0-9]{1,25} ?(ns|us|ms|s|m|h|d|w|M|y|min|sec|hours|days|)",
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|[0-9.]{1,15}|localhost):[0-9]{0,6}",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp|did:key:z6Mk[1-9A-Za-z]{0,44}",
        "[a-z0-9._-]{1,10}|root|Bad Name",
        "https?://[a-z0-9.:]{1,20}",
    ]
    .prop_map(|s| serde_json::to_string(&s).unwrap())
}

fn toml_value() -> BoxedStrategy<String> {
    let scalar = prop_oneof![
        4 => toml_string(),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => "[0-9]{19,30}",
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        1 => Just("{}".to_string()),
    ];
    prop_oneof![
        3 => scalar.clone(),
        2 => prop::collection::vec(scalar, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
    .boxed()
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A value the key accepts (often) or any TOML value.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let dur = || {
        prop_oneof![
            6 => "[1-9][0-9]{0,2}(s|m)|1h|24h",
            1 => "0s|25h|[0-9]{1,25}(ns|ms|d|y)|forever",
        ]
    };
    let list = |item: BoxedStrategy<String>| {
        prop::collection::vec(item, 0..3)
            .prop_map(|v| {
                format!(
                    "[{}]",
                    v.iter().map(|d| q(d)).collect::<Vec<_>>().join(", ")
                )
            })
            .boxed()
    };
    let good: BoxedStrategy<String> = match key {
        "listen" => "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|10\\.1\\.2\\.3):[0-9]{1,5}"
            .prop_map(|s| q(&s))
            .boxed(),
        "data" | "token_file" | "file" => "[a-z/._-]{1,20}".prop_map(|s| q(&s)).boxed(),
        "addr" => "https?://127\\.0\\.0\\.1:[0-9]{1,5}"
            .prop_map(|s| q(&s))
            .boxed(),
        "role" => "[a-z-]{1,10}".prop_map(|s| q(&s)).boxed(),
        "admins" | "delegators" | "auditors" => prop::collection::vec(
            prop_oneof![
                Just("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp".to_string()),
                Just("did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX".to_string()),
                Just("did:web:example.com".to_string()),
            ],
            0..3,
        )
        .prop_map(|v| {
            format!(
                "[{}]",
                v.iter().map(|d| q(d)).collect::<Vec<_>>().join(", ")
            )
        })
        .boxed(),
        "policies" => list(prop_oneof![8 => "[a-z0-9._-]{1,10}", 1 => "root|a b|"].boxed()),
        "contexts" => list(prop_oneof![8 => "[a-z0-9._-]{1,10}", 1 => "C I|"].boxed()),
        "names" => prop::collection::vec("[a-z0-9.:-]{1,12}", 0..3)
            .prop_map(|v| {
                format!(
                    "[{}]",
                    v.iter().map(|d| q(d)).collect::<Vec<_>>().join(", ")
                )
            })
            .boxed(),
        "max_ttl" | "every" | "clock_skew" => dur().prop_map(|s| q(&s)).boxed(),
        "every_entries" | "requests_per_second" | "keep_recent" => {
            prop_oneof![8 => 0i64..5000, 1 => Just(-1), 1 => Just(i64::MAX)]
                .prop_map(|i| i.to_string())
                .boxed()
        }
        "max_body" => prop_oneof![8 => 0i64..100_000_000, 1 => Just(-1), 1 => Just(i64::MAX)]
            .prop_map(|i| i.to_string())
            .boxed(),
        "enabled" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        _ => toml_value(),
    };
    prop_oneof![20 => good, 1 => toml_value()].boxed()
}

const SECTIONS: &[(&str, &[&str])] = &[
    ("", &["listen", "data"]),
    ("[vault]", &["addr", "token_file", "role", "parent_policy"]),
    ("[trust]", &["admins", "delegators", "auditors"]),
    ("[scopes.ci-read]", &["policies", "max_ttl", "contexts"]),
    (
        "[scopes.\"Bad Scope\"]",
        &["policies", "max_ttl", "contexts"],
    ),
    ("[checkpoint]", &["every_entries", "every", "keep_recent"]),
    (
        "[limits]",
        &["max_body", "clock_skew", "requests_per_second"],
    ),
    ("[tls]", &["enabled", "names"]),
    ("[policy]", &["file", "enabled"]),
];

/// A custody.toml: each section present or not, each key present or not,
/// with a value the key accepts (often) or of any TOML type; sometimes an
/// unknown key.
fn config_text() -> impl Strategy<Value = String> {
    let sections: Vec<BoxedStrategy<String>> = SECTIONS
        .iter()
        .map(|(header, keys)| {
            let values: Vec<BoxedStrategy<Option<String>>> = keys
                .iter()
                .map(|k| {
                    prop::option::weighted(0.8, value_for(k))
                        .prop_map(move |v| v.map(|v| format!("{k} = {v}\n")))
                        .boxed()
                })
                .collect();
            let weight = if header.contains("Bad") { 0.05 } else { 0.6 };
            prop::option::weighted(
                if header.is_empty() { 0.99 } else { weight },
                (values, prop::option::weighted(0.01, Just("bogus = 1\n"))),
            )
            .prop_map(move |sec| match sec {
                None => String::new(),
                Some((lines, bogus)) => {
                    let mut out = String::new();
                    if !header.is_empty() {
                        out.push_str(header);
                        out.push('\n');
                    }
                    for l in lines.into_iter().flatten() {
                        out.push_str(&l);
                    }
                    out.push_str(bogus.unwrap_or(""));
                    out
                }
            })
            .boxed()
        })
        .collect();
    sections.prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn config_parse_never_panics(text in ".{0,300}") {
        let _ = Config::parse(&text, Path::new("/etc/custody/custody.toml"));
    }

    #[test]
    fn structured_config_never_panics(text in config_text()) {
        if let Ok(c) = Config::parse(&text, Path::new("/etc/custody/custody.toml")) {
            // What parsed is what the broker may rely on.
            for s in c.scopes.values() {
                prop_assert!(!s.max_ttl.is_zero() && s.max_ttl <= MAX_SCOPE_TTL);
                prop_assert!(!s.policies.is_empty() && !s.contexts.is_empty());
                prop_assert!(s.policies.iter().all(|p| p != "root"));
            }
            prop_assert!((1024..=64 << 20).contains(&c.limits.max_body));
            prop_assert!(c.checkpoint.every_entries >= 1);
            prop_assert!(c.checkpoint.keep_recent <= custody_ledger::store::MAX_KEEP_RECENT);
            prop_assert!(c.limits.requests_per_second >= 1);
            prop_assert!(c.data.is_absolute());
        }
    }

    #[test]
    fn durations_never_panic(s in ".{0,30}|[0-9]{1,30} ?[a-z]{0,7}( [0-9]{1,20}[a-z]{1,3}){0,3}") {
        let _ = parse_duration(&s);
    }
}

// ---- OTLP log exports and the pre-tool policy -------------------------------------------------

/// An OTLP/JSON logs export with arbitrary values in every slot.
fn otlp_json() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        3 => ".{0,20}|accept|reject|approved|user_temporary|config|guardian_review".prop_map(|s| json!({"stringValue": s})),
        1 => any::<bool>().prop_map(|b| json!({"boolValue": b})),
        1 => any::<i64>().prop_map(|i| json!({"intValue": i.to_string()})),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|d| json!({"doubleValue": d})),
        1 => "([A-Za-z0-9+/]{4}){0,4}".prop_map(|b| json!({"bytesValue": b})),
        1 => any_json(),
    ];
    let any_value = scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| json!({"arrayValue": {"values": v}})),
            prop::collection::vec((".{0,6}", inner), 0..3)
                .prop_map(|kv| json!({"kvlistValue": {"values":
                kv.into_iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()}})),
        ]
    });
    let kv = (
        "event.name|decision|source|tool_name|prompt|.{0,8}",
        any_value.clone(),
    )
        .prop_map(|(k, v)| json!({"key": k, "value": v}));
    let record = (
        prop::collection::vec(kv.clone(), 0..4),
        prop::option::of(
            "(claude_code|codex)?\\.?(user_prompt|tool_decision|tool_result|[a-z_.]{0,12})",
        ),
        prop::option::of(any::<u64>().prop_map(|t| t.to_string())),
        prop::option::of(any_value),
    )
        .prop_map(|(attrs, name, time, body)| {
            let mut r = json!({"attributes": attrs});
            if let Some(n) = name {
                r["eventName"] = n.into();
            }
            if let Some(t) = time {
                r["timeUnixNano"] = t.into();
            }
            if let Some(b) = body {
                r["body"] = b;
            }
            r
        });
    (
        prop::collection::vec(kv, 0..3),
        "com\\.anthropic\\.claude_code\\.events|codex|.{0,10}",
        prop::collection::vec(record, 0..4),
    )
        .prop_map(|(res, scope, records)| {
            json!({"resourceLogs": [{"resource": {"attributes": res},
                   "scopeLogs": [{"scope": {"name": scope}, "logRecords": records}]}]})
        })
}

fn check_records(records: &[otlp::Record]) -> Result<(), TestCaseError> {
    for r in records {
        let c = otlp::classify(r);
        prop_assert!(ActionType::new(c.action.clone()).is_ok(), "{}", c.action);
        let _ = otlp::ledger_attributes(r);
        let _ = otlp::payload_of(r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn otlp_protobuf_never_panics(body in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(records) = otlp::decode(Encoding::Protobuf, &body) {
            check_records(&records)?;
        }
    }

    /// Valid protobuf exports (encoded from the JSON form) with bytes changed.
    #[test]
    fn otlp_protobuf_edited_never_panics(v in otlp_json(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3)) {
        use prost::Message;
        let Ok(req) = serde_json::from_value::<ExportLogsServiceRequest>(v) else {
            return Ok(());
        };
        let mut bytes = req.encode_to_vec();
        if edits.is_empty() {
            let records = otlp::decode(Encoding::Protobuf, &bytes).unwrap();
            let n: usize = req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
            prop_assert_eq!(records.len(), n);
        }
        for (pos, x) in edits {
            if !bytes.is_empty() {
                let i = pos % bytes.len();
                bytes[i] = x;
            }
        }
        if let Ok(records) = otlp::decode(Encoding::Protobuf, &bytes) {
            check_records(&records)?;
        }
    }

    #[test]
    fn otlp_json_never_panics(v in otlp_json(), raw in prop::collection::vec(any::<u8>(), 0..100)) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Ok(records) = otlp::decode(Encoding::Json, &body) {
            check_records(&records)?;
        }
        let _ = otlp::decode(Encoding::Json, &raw);
    }

    #[test]
    fn otlp_content_types_never_panic(ct in prop::option::of(".{0,40}")) {
        let _ = Encoding::from_content_type(ct.as_deref());
    }

    /// The policy's view of a tool call and its decision, for whatever tool
    /// name, input, directory and branch an agent sends.
    #[test]
    fn policy_decides_any_tool_call(
        tool in "Bash|Read|Write|Edit|WebFetch|exec_command|.{0,12}",
        input in any_json(),
        cwd in ".{0,20}",
        branch in ".{0,20}|main|master",
        scopes in prop::collection::vec("[a-z0-9][a-z0-9._:-]{0,10}", 0..3),
        agent in "[!-~]{1,20}",
        context in "[!-~]{1,20}",
    ) {
        let r = Resource::of(&tool, &input);
        prop_assert!(["command", "path", "url", "input"].contains(&r.kind));
        let now = time::OffsetDateTime::now_utc();
        let d = Delegation::new(key(1).did(), key(2).did(), agent, scopes, context,
                                now, now + time::Duration::hours(1)).unwrap();
        let policy = default_policy();
        let q = Query { session: &d, tool: &tool, resource: &r, cwd: &cwd, branch: &branch };
        let _ = policy.decide(&q);
    }

    #[test]
    fn policy_parse_never_panics(text in ".{0,200}|@id\\(\".{0,10}\"\\)\\s*(permit|forbid)\\s*\\(principal, action, resource\\)( when \\{.{0,30}\\})?;") {
        let _ = Policy::parse(&text);
    }
}

fn default_policy() -> &'static Policy {
    static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    P.get_or_init(Policy::default_set)
}
