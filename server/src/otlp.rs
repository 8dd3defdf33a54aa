//! The OTLP/HTTP logs receiver (`POST /v1/logs`): coding agents' own
//! telemetry, recorded as broker-attested evidence.
//!
//! Claude Code and Codex export their events (prompts, tool decisions, tool
//! results, API requests) as OpenTelemetry log records. The exporter is
//! pointed at the broker with the session's ingest token as a bearer token
//! (`OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer <token>"`); the token
//! names the session, so every record is attributed to it.
//!
//! The agent does not sign its telemetry, so the ledger must not say it did:
//! each record becomes one `telemetry.<event>` entry signed by the *ledger
//! key* (actor kind `service`, `details.attested_by = "broker"`), carrying the
//! session it was attributed to, who the record says acted (`details.origin`:
//! `human` for a prompt or a user's permission decision, `agent` otherwise)
//! and, for tool decisions, the approval: a user's decision is a human
//! approval (by the session's delegator, the person running the agent),
//! `config` is policy, a reviewer is auto-review. Only short, allow-listed
//! attributes go into the entry; the whole record (which may hold prompt text
//! or tool arguments) is kept as a salted, redactable payload.
//!
//! Both OTLP encodings are accepted: binary protobuf (Codex's default) and
//! JSON, optionally gzip-compressed; the answer is an
//! `ExportLogsServiceResponse` in the request's encoding.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde_json::{json, Map, Value};

/// Records per export request: the OTLP SDKs batch 512 by default.
pub const MAX_RECORDS: usize = 2048;
/// Longest attribute value copied into a ledger entry (the full record is in
/// the payload).
pub const MAX_ATTR_CHARS: usize = 256;
/// Attributes short and safe enough to sit in the chain itself. Everything
/// else (prompt text, tool arguments and outputs, e-mail addresses) is only in
/// the salted payload.
const LEDGER_ATTRIBUTES: &[&str] = &[
    "session.id",
    "conversation.id",
    "prompt.id",
    "event.sequence",
    "event.timestamp",
    "tool_name",
    "tool.name",
    "call_id",
    "decision",
    "source",
    "success",
    "duration_ms",
    "error",
    "status_code",
    "model",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "prompt_length",
    "app.version",
    "terminal.type",
];

/// Why an export was refused.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    ContentType(String),
    #[error("the body is not a valid OTLP ExportLogsServiceRequest ({encoding}): {reason}")]
    Decode {
        encoding: &'static str,
        reason: String,
    },
    #[error("{0} log records in one export; at most {MAX_RECORDS} are accepted")]
    TooMany(usize),
}

/// The two OTLP/HTTP encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a `Content-Type` header (parameters such as `charset` ignored).
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, OtlpError> {
        let base = ct
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(OtlpError::ContentType(base)),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
        }
    }
}

/// One log record, flattened: the event name, when the agent says it
/// happened, and its attributes as JSON (resource attributes under
/// `resource.`).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: BTreeMap<String, Value>,
    pub body: Option<Value>,
}

/// Decodes an export request into records.
pub fn decode(enc: Encoding, body: &[u8]) -> Result<Vec<Record>, OtlpError> {
    let req: ExportLogsServiceRequest = match enc {
        Encoding::Protobuf => {
            ExportLogsServiceRequest::decode(body).map_err(|e| OtlpError::Decode {
                encoding: enc.name(),
                reason: e.to_string(),
            })?
        }
        Encoding::Json => serde_json::from_slice(body).map_err(|e| OtlpError::Decode {
            encoding: enc.name(),
            reason: e.to_string(),
        })?,
    };
    let total: usize = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    if total > MAX_RECORDS {
        return Err(OtlpError::TooMany(total));
    }
    let mut out = Vec::with_capacity(total);
    for rl in &req.resource_logs {
        let resource: Vec<(String, Value)> = rl
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| (format!("resource.{}", kv.key), kv_value(kv)))
            .collect();
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            for lr in &sl.log_records {
                let mut attributes: BTreeMap<String, Value> = resource.iter().cloned().collect();
                for kv in &lr.attributes {
                    attributes.insert(kv.key.clone(), kv_value(kv));
                }
                let raw_name = if !lr.event_name.is_empty() {
                    lr.event_name.clone()
                } else {
                    attributes
                        .get("event.name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let name = qualify(&raw_name, scope, &attributes);
                let time = if lr.time_unix_nano != 0 {
                    lr.time_unix_nano
                } else {
                    lr.observed_time_unix_nano
                };
                out.push(Record {
                    name,
                    time_unix_nano: time,
                    attributes,
                    body: lr.body.as_ref().map(any_to_json),
                });
            }
        }
    }
    Ok(out)
}

/// Claude Code names its events without a prefix (`user_prompt`) under the
/// scope `com.anthropic.claude_code.events`; Codex uses `codex.user_prompt`.
/// The recorded name is always prefixed with the agent.
fn qualify(raw: &str, scope: &str, attrs: &BTreeMap<String, Value>) -> String {
    let raw = if raw.is_empty() { "log" } else { raw };
    if raw.contains('.') {
        return raw.to_string();
    }
    let service = attrs
        .get("resource.service.name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let prefix = if scope.contains("claude_code") || service.contains("claude") {
        "claude_code"
    } else if scope.contains("codex") || service.contains("codex") {
        "codex"
    } else {
        "otel"
    };
    format!("{prefix}.{raw}")
}

fn kv_value(kv: &KeyValue) -> Value {
    kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null)
}

fn any_to_json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv_value(kv)))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
    }
}

/// Who a telemetry record says acted, and for a tool decision who decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// `telemetry.<name>`, a valid action type.
    pub action: String,
    /// `human` or `agent`.
    pub origin: &'static str,
    /// For a tool decision: `approve`, `deny` or the agent's own word.
    pub decision: Option<String>,
    pub decider: Option<Decider>,
}

/// Who made a tool decision, from the record's `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decider {
    /// The person at the keyboard (`user_*`, `user`, `approved`/`denied` by a user).
    User(String),
    /// The agent's configured permission rules (`config`).
    Config,
    /// An automated reviewer (a guardian model, an auto-review mode).
    Reviewer(String),
    /// A source custody does not know; recorded as it is.
    Other(String),
}

fn attr_str<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
    r.attributes.get(k).and_then(Value::as_str)
}

/// Classifies a record by its event name and attributes.
pub fn classify(r: &Record) -> Classified {
    let event = r.name.rsplit('.').next().unwrap_or("");
    let mut c = Classified {
        action: action_for(&r.name),
        origin: "agent",
        decision: None,
        decider: None,
    };
    match event {
        "user_prompt" => c.origin = "human",
        "tool_decision" => {
            let decision = attr_str(r, "decision").unwrap_or("").to_ascii_lowercase();
            let source = attr_str(r, "source").unwrap_or("").to_ascii_lowercase();
            c.decision = Some(
                match decision.as_str() {
                    "accept" | "approved" | "approved_for_session" | "allow" | "yes" => "approve",
                    "reject" | "denied" | "deny" | "abort" | "no" => "deny",
                    other => other,
                }
                .to_string(),
            );
            let decider =
                if source.starts_with("user") || source == "approved" || source == "denied" {
                    Decider::User(source)
                } else if source == "config" || source.is_empty() && decision == "approved" {
                    Decider::Config
                } else if source.contains("review") || source.contains("guardian") {
                    Decider::Reviewer(source)
                } else {
                    Decider::Other(source)
                };
            if matches!(decider, Decider::User(_)) {
                c.origin = "human";
            }
            c.decider = Some(decider);
        }
        _ => {}
    }
    c
}

/// `telemetry.` + the event name, reduced to the action-type alphabet.
fn action_for(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|ch| {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '.' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let mut a = format!("telemetry.{cleaned}");
    a.truncate(custody_ledger::ActionType::MAX_LEN);
    a
}

/// The short attributes that go into the ledger entry itself.
pub fn ledger_attributes(r: &Record) -> Map<String, Value> {
    let mut m = Map::new();
    for k in LEDGER_ATTRIBUTES {
        let Some(v) = r.attributes.get(*k) else {
            continue;
        };
        let v = match v {
            Value::String(s) => Value::String(s.chars().take(MAX_ATTR_CHARS).collect()),
            Value::Bool(_) | Value::Number(_) => v.clone(),
            _ => continue,
        };
        m.insert((*k).to_string(), v);
    }
    m
}

/// The record as the payload body kept beside the chain.
pub fn payload_of(r: &Record) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": r.name,
        "time_unix_nano": r.time_unix_nano.to_string(),
        "attributes": r.attributes,
        "body": r.body,
    }))
    .unwrap_or_default()
}

/// The export response in the request's encoding.
pub fn response(enc: Encoding, rejected: i64, message: String) -> Vec<u8> {
    let resp = ExportLogsServiceResponse {
        partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: message,
        }),
    };
    match enc {
        Encoding::Protobuf => resp.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    fn claude_decision(source: &str, decision: &str) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "com.anthropic.claude_code.events".into(),
                        ..Default::default()
                    }),
                    log_records: vec![LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000,
                        attributes: vec![
                            kv("event.name", "tool_decision"),
                            kv("tool_name", "Bash"),
                            kv("decision", decision),
                            kv("source", source),
                            kv("tool_parameters", "{\"command\":\"cat secret\"}"),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn protobuf_and_json_decode_to_the_same_records() {
        let req = claude_decision("user_temporary", "accept");
        let pb = decode(Encoding::Protobuf, &req.encode_to_vec()).unwrap();
        let js = decode(Encoding::Json, &serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(pb, js);
        assert_eq!(pb[0].name, "claude_code.tool_decision");
    }

    #[test]
    fn user_decisions_are_human_config_is_policy() {
        for (source, decision, origin, want) in [
            ("user_temporary", "accept", "human", "approve"),
            ("user_reject", "reject", "human", "deny"),
            ("user_abort", "reject", "human", "deny"),
            ("config", "accept", "agent", "approve"),
        ] {
            let r = &decode(
                Encoding::Protobuf,
                &claude_decision(source, decision).encode_to_vec(),
            )
            .unwrap()[0];
            let c = classify(r);
            assert_eq!(c.origin, origin, "{source}");
            assert_eq!(c.decision.as_deref(), Some(want));
            assert_eq!(c.action, "telemetry.claude_code.tool_decision");
        }
        let r = &decode(
            Encoding::Protobuf,
            &claude_decision("config", "accept").encode_to_vec(),
        )
        .unwrap()[0];
        assert_eq!(classify(r).decider, Some(Decider::Config));
    }

    #[test]
    fn tool_arguments_stay_out_of_the_entry() {
        let r = &decode(
            Encoding::Protobuf,
            &claude_decision("config", "accept").encode_to_vec(),
        )
        .unwrap()[0];
        let m = ledger_attributes(r);
        assert_eq!(m["tool_name"], "Bash");
        assert!(!m.contains_key("tool_parameters"));
        assert!(String::from_utf8(payload_of(r))
            .unwrap()
            .contains("cat secret"));
    }

    #[test]
    fn bad_bodies_are_named() {
        assert!(matches!(
            decode(Encoding::Protobuf, b"\xff\xff\xff"),
            Err(OtlpError::Decode { .. })
        ));
        assert!(matches!(
            decode(Encoding::Json, b"{not json"),
            Err(OtlpError::Decode { .. })
        ));
        assert!(matches!(
            Encoding::from_content_type(Some("text/plain")),
            Err(OtlpError::ContentType(_))
        ));
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
    }

    #[test]
    fn names_become_valid_action_types() {
        assert_eq!(
            action_for("Codex.Tool-Result"),
            "telemetry.codex.tool_result"
        );
        assert!(custody_ledger::ActionType::new(action_for(&"x".repeat(300))).is_ok());
    }
}
