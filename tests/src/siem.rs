//! The SIEM side of the tests: HTTP receivers that speak Splunk's HTTP Event
//! Collector protocol and OTLP/HTTP logs as their documentation specifies,
//! keep what they accept, and can be made to fail now and then (503) so a
//! forwarder's retries are exercised; and the OCSF schema check.
//!
//! HEC (`POST /services/collector/event`): `Authorization: Splunk <token>`
//! (401 `{"text":"Token is required","code":2}` without, 403
//! `{"text":"Invalid token","code":4}` for another); the body is one or more
//! JSON event envelopes back to back, each with an `event` (400 `{"text":"No
//! data","code":5}`, `{"text":"Invalid data format","code":6}`, `{"text":"Event
//! field is required","code":12}`); busy is 503 `{"text":"Server is
//! busy","code":9}`; success `{"text":"Success","code":0}`.
//!
//! OTLP/HTTP (`POST /v1/logs`): an `ExportLogsServiceRequest` in protobuf
//! (`application/x-protobuf`) or JSON (`application/json`), decoded with the
//! OpenTelemetry protocol's own types; answered with an
//! `ExportLogsServiceResponse` in the same encoding; 415 for another type.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{json, Value};

/// One event a receiver accepted, with its idempotency key.
#[derive(Clone, Debug)]
pub struct Received {
    pub seq: u64,
    pub hash: String,
    /// The event (HEC: the envelope's `event`; OTLP: the record's body).
    pub event: Value,
    /// HEC: the whole envelope; OTLP: the record's attributes.
    pub envelope: Value,
}

#[derive(Default)]
struct Shared {
    token: String,
    fail_every: usize,
    requests: AtomicUsize,
    refused: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

impl Shared {
    /// Whether this request is one the receiver answers 503 to.
    fn busy(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let busy = self.fail_every > 0 && n % self.fail_every == self.fail_every - 1;
        if busy {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        busy
    }
}

/// A receiver on a loopback port, stopped when dropped.
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Receiver {
    /// A Splunk HEC endpoint accepting `token`; every `fail_every`-th
    /// request (0: none) is answered 503 busy and keeps nothing.
    pub async fn splunk_hec(token: &str, fail_every: usize) -> Self {
        let shared = Arc::new(Shared {
            token: token.into(),
            fail_every,
            ..Default::default()
        });
        let app = Router::new()
            .route("/services/collector/event", post(hec))
            .with_state(shared.clone());
        Self::serve(app, shared).await
    }

    /// An OTLP/HTTP logs endpoint; every `fail_every`-th request is 503.
    pub async fn otlp(fail_every: usize) -> Self {
        let shared = Arc::new(Shared {
            fail_every,
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/logs", post(otlp))
            .with_state(shared.clone());
        Self::serve(app, shared).await
    }

    async fn serve(app: Router, shared: Arc<Shared>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            stop: Some(tx),
        }
    }

    /// Everything accepted, in the order it arrived (duplicates included).
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests answered 503 on purpose.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn hec_answer(status: StatusCode, text: &str, code: u32) -> Response {
    (status, axum::Json(json!({"text": text, "code": code}))).into_response()
}

async fn hec(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Splunk ")) {
        None => return hec_answer(StatusCode::UNAUTHORIZED, "Token is required", 2),
        Some(t) if t != s.token => return hec_answer(StatusCode::FORBIDDEN, "Invalid token", 4),
        Some(_) => {}
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return hec_answer(StatusCode::BAD_REQUEST, "No data", 5);
    }
    if s.busy() {
        return hec_answer(StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9);
    }
    let mut batch = Vec::new();
    for v in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(envelope) = v else {
            return hec_answer(StatusCode::BAD_REQUEST, "Invalid data format", 6);
        };
        let Some(event) = envelope.get("event").cloned() else {
            return hec_answer(StatusCode::BAD_REQUEST, "Event field is required", 12);
        };
        let f = &envelope["fields"];
        let (Some(seq), Some(hash)) = (
            f["custody_seq"].as_str().and_then(|s| s.parse().ok()),
            f["custody_hash"].as_str(),
        ) else {
            return hec_answer(StatusCode::BAD_REQUEST, "Invalid data format", 6);
        };
        batch.push(Received {
            seq,
            hash: hash.into(),
            event,
            envelope: envelope.clone(),
        });
    }
    s.received.lock().unwrap().extend(batch);
    hec_answer(StatusCode::OK, "Success", 0)
}

async fn otlp(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let json = ct.starts_with("application/json");
    let req: ExportLogsServiceRequest = if json {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    } else if ct.starts_with("application/x-protobuf") {
        match ExportLogsServiceRequest::decode(body.as_ref()) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    } else {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    };
    if s.busy() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut batch = Vec::new();
    for r in req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
    {
        let attr = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.clone())
        };
        let (Some(any_value::Value::IntValue(seq)), Some(any_value::Value::StringValue(hash))) =
            (attr("custody.seq"), attr("custody.hash"))
        else {
            return (StatusCode::BAD_REQUEST, "a record without its key").into_response();
        };
        let Some(any_value::Value::StringValue(body)) =
            r.body.as_ref().and_then(|b| b.value.clone())
        else {
            return (StatusCode::BAD_REQUEST, "a record without a string body").into_response();
        };
        let Ok(event) = serde_json::from_str::<Value>(&body) else {
            return (StatusCode::BAD_REQUEST, "a body that is not JSON").into_response();
        };
        let envelope = Value::Array(
            r.attributes
                .iter()
                .map(|a| json!({"key": a.key, "value": format!("{:?}", a.value)}))
                .collect(),
        );
        batch.push(Received {
            seq: seq as u64,
            hash,
            event,
            envelope,
        });
    }
    s.received.lock().unwrap().extend(batch);
    let answer = ExportLogsServiceResponse {
        partial_success: None,
    };
    if json {
        axum::Json(serde_json::to_value(&answer).unwrap()).into_response()
    } else {
        (
            [("content-type", "application/x-protobuf")],
            answer.encode_to_vec(),
        )
            .into_response()
    }
}

/// What a receiver holds, by idempotency key, checked against the ledger's
/// `(seq, hash)` list: every entry present, none that is not the ledger's,
/// one event per key (a redelivery is the same event), first arrivals in
/// `seq` order. Returns how many deliveries were repeats.
pub fn exactly_once_by_key(name: &str, got: &[Received], ledger: &[(u64, String)]) -> usize {
    use std::collections::HashMap;
    let mut first: HashMap<(u64, String), &Received> = HashMap::new();
    let mut order = Vec::new();
    let mut repeats = 0;
    for r in got {
        let key = (r.seq, r.hash.clone());
        match first.get(&key) {
            Some(f) => {
                assert_eq!(
                    f.event, r.event,
                    "{name}: entry {} delivered twice with different events",
                    r.seq
                );
                repeats += 1;
            }
            None => {
                first.insert(key, r);
                order.push(r.seq);
            }
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{name}: first deliveries out of seq order: {order:?}"
    );
    let want: std::collections::BTreeSet<(u64, String)> = ledger.iter().cloned().collect();
    let have: std::collections::BTreeSet<(u64, String)> = first.keys().cloned().collect();
    let missing: Vec<u64> = want.difference(&have).map(|k| k.0).collect();
    let foreign: Vec<u64> = have.difference(&want).map(|k| k.0).collect();
    assert!(
        missing.is_empty() && foreign.is_empty(),
        "{name}: missing entries {missing:?}, entries the ledger does not hold {foreign:?}"
    );
    repeats
}

/// The project's Python (`.venv`, made by scripts/setup).
pub fn venv_python() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Validates OCSF events against the OCSF JSON schema (the `ocsf-json-schema`
/// package's schemas, checked with `jsonschema`; tests/ocsf/validate.py).
/// Panics naming every violation.
pub fn validate_ocsf(events: &[Value]) {
    assert!(!events.is_empty(), "no OCSF events to validate");
    let py = venv_python();
    let probe = std::process::Command::new(&py)
        .args(["-c", "import jsonschema, ocsf_json_schema"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "the OCSF schema check needs {} with the ocsf-json-schema and jsonschema packages: run scripts/setup ({other:?})",
            py.display()
        ),
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ocsf/validate.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(&file)
        .output()
        .expect("run the OCSF validator");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "OCSF schema violations:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", report.trim());
}
