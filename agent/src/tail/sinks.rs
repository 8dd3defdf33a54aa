//! Where `custody tail` delivers: stdout, a file, Splunk's HTTP Event
//! Collector, an OTLP/HTTP logs endpoint. Each takes a whole page or fails;
//! [`deliver`] retries a failure that may pass (a network error, a busy or
//! failing server) with backoff, for as long as it takes, and stops the tail
//! on one that will not (a refused token, a rejected record): an entry is
//! never skipped.
//!
//! Every event carries its idempotency key, (`seq`, entry hash), where the
//! receiver can index it: HEC indexed fields `custody_seq`/`custody_hash`,
//! OTLP attributes `custody.seq`/`custody.hash` (and, in OCSF form,
//! `unmapped.custody`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{json, Value};

use super::{Format, TailError, FIRST_RETRY, MAX_RETRY};

/// One entry, rendered, with what a receiver indexes it by.
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: u64,
    pub hash: String,
    pub ledger: String,
    /// The smallest tree holding the entry (`seq + 1`).
    pub tree_size: u64,
    /// The ledger's receive time, Unix milliseconds.
    pub received_ms: i64,
    /// A refusal or a revocation (a warning in OTLP's severity).
    pub failure: bool,
    pub format: Format,
    /// The event: an OCSF object or the entry line, one line of JSON.
    pub json: Vec<u8>,
}

/// Why a sink did not take a page.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth another try (the network, a busy or failing server, a full disk).
    #[error("{0}")]
    Retry(String),
    /// Will not pass by retrying (a refused token, a rejected event).
    #[error("{0}")]
    Refused(String),
}

/// A Splunk HEC token, kept out of `Debug` output and messages.
pub struct Token(String);

impl Token {
    /// Reads the token from a file (its first line, trimmed).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = text.lines().next().unwrap_or_default().trim().to_string();
        if t.is_empty() {
            return Err(format!("{}: no token in the file", path.display()));
        }
        Ok(Self(t))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The HEC path custody adds to the collector's base address.
pub const HEC_EVENT_PATH: &str = "/services/collector/event";
/// The OTLP/HTTP logs path added to an OTLP endpoint's base address.
pub const OTLP_LOGS_PATH: &str = "/v1/logs";
/// Most bytes of events in one HEC or OTLP request (HEC's default
/// `max_content_length` is 1 MB on older Splunk versions): a page is split.
pub const MAX_REQUEST_BYTES: usize = 768 * 1024;

pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: std::fs::File,
    },
    Hec {
        url: String,
        token: Token,
        http: reqwest::Client,
    },
    Otlp {
        url: String,
        http: reqwest::Client,
    },
}

impl Sink {
    pub fn file(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Sink::File {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Splunk HEC at `base` (the collector's address, e.g.
    /// `https://splunk:8088`); `ca_pem` adds a trusted root.
    pub fn hec(base: &str, token: Token, ca_pem: Option<&str>) -> Result<Self, String> {
        Ok(Sink::Hec {
            url: join_url(base, HEC_EVENT_PATH)?,
            token,
            http: http_client(ca_pem)?,
        })
    }

    /// An OTLP/HTTP logs receiver at `base` (`…/v1/logs` is added unless
    /// the address already ends with it).
    pub fn otlp(base: &str, ca_pem: Option<&str>) -> Result<Self, String> {
        Ok(Sink::Otlp {
            url: join_url(base, OTLP_LOGS_PATH)?,
            http: http_client(ca_pem)?,
        })
    }

    /// What to call it in messages (never the token).
    pub fn name(&self) -> String {
        match self {
            Sink::Stdout => "stdout".into(),
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Hec { url, .. } => format!("Splunk HEC {url}"),
            Sink::Otlp { url, .. } => format!("OTLP {url}"),
        }
    }

    /// Hands the whole page over once.
    pub async fn send(&mut self, events: &[Event]) -> Result<(), SinkError> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                for e in events {
                    out.write_all(&e.json)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| SinkError::Refused(format!("stdout: {e}")))?;
                }
                out.flush()
                    .map_err(|e| SinkError::Refused(format!("stdout: {e}")))
            }
            Sink::File { file, .. } => {
                let mut buf = Vec::new();
                for e in events {
                    buf.extend_from_slice(&e.json);
                    buf.push(b'\n');
                }
                // On the disk before the state says it was delivered.
                file.write_all(&buf)
                    .and_then(|_| file.sync_data())
                    .map_err(|e| SinkError::Retry(e.to_string()))
            }
            Sink::Hec { url, token, http } => {
                for chunk in chunks(events) {
                    send_hec(http, url, token, chunk).await?;
                }
                Ok(())
            }
            Sink::Otlp { url, http } => {
                for chunk in chunks(events) {
                    send_otlp(http, url, chunk).await?;
                }
                Ok(())
            }
        }
    }
}

/// Delivers a page to `sink`, retrying with backoff until it is taken; a
/// refusal stops the tail.
pub async fn deliver(sink: &mut Sink, events: &[Event]) -> Result<(), TailError> {
    let mut wait = FIRST_RETRY;
    loop {
        match sink.send(events).await {
            Ok(()) => return Ok(()),
            Err(SinkError::Retry(m)) => {
                eprintln!(
                    "custody tail: {}: {m}; retrying entries {}.. in {wait:?}",
                    sink.name(),
                    events.first().map(|e| e.seq).unwrap_or_default()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
            Err(SinkError::Refused(message)) => {
                return Err(TailError::Sink {
                    sink: sink.name(),
                    message,
                })
            }
        }
    }
}

fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    crate::client::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy();
    if let Some(pem) = ca_pem {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

fn join_url(base: &str, path: &str) -> Result<String, String> {
    let u = url::Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{base:?} must be http:// or https://"));
    }
    let base = base.trim_end_matches('/');
    Ok(if base.ends_with(path) {
        base.to_string()
    } else {
        format!("{base}{path}")
    })
}

/// Splits a page into requests of at most [`MAX_REQUEST_BYTES`] (one event
/// at least).
fn chunks(events: &[Event]) -> Vec<&[Event]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        if i > start && bytes + e.json.len() > MAX_REQUEST_BYTES {
            out.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += e.json.len();
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// 408, 429 and 5xx may pass on another try; other answers will not.
fn status_error(status: reqwest::StatusCode, what: String) -> SinkError {
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        SinkError::Retry(what)
    } else {
        SinkError::Refused(what)
    }
}

fn transport(e: reqwest::Error) -> SinkError {
    SinkError::Retry(e.to_string())
}

/// The HEC event envelope: `time` (epoch seconds), `source`, `sourcetype`,
/// the event, and indexed `fields` with the idempotency key.
pub fn hec_envelope(e: &Event) -> Result<Value, SinkError> {
    let event: Value = serde_json::from_slice(&e.json)
        .map_err(|x| SinkError::Refused(format!("entry {}: {x}", e.seq)))?;
    Ok(json!({
        "time": e.received_ms as f64 / 1000.0,
        "source": "custody",
        "sourcetype": match e.format { Format::Ocsf => "custody:ocsf", Format::Jsonl => "custody:entry" },
        "event": event,
        "fields": {
            "custody_ledger": e.ledger,
            "custody_seq": e.seq.to_string(),
            "custody_hash": e.hash,
        },
    }))
}

/// `POST …/services/collector/event` with `Authorization: Splunk <token>`:
/// the events back to back (HEC's batch form). HEC answers
/// `{"text":"Success","code":0}`; anything else is an error it names.
async fn send_hec(
    http: &reqwest::Client,
    url: &str,
    token: &Token,
    events: &[Event],
) -> Result<(), SinkError> {
    let mut body = Vec::new();
    for e in events {
        serde_json::to_writer(&mut body, &hec_envelope(e)?)
            .map_err(|x| SinkError::Refused(x.to_string()))?;
        body.push(b'\n');
    }
    let resp = http
        .post(url)
        .header("authorization", format!("Splunk {}", token.0))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(transport)?;
    let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
    let code = answer.as_ref().and_then(|v| v["code"].as_i64());
    let text = answer
        .as_ref()
        .and_then(|v| v["text"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    if status.is_success() && code == Some(0) {
        return Ok(());
    }
    Err(status_error(
        status,
        format!(
            "HTTP {status}: {text} (HEC code {})",
            code.map(|c| c.to_string()).unwrap_or("-".into())
        ),
    ))
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

/// The events as an OTLP `ExportLogsServiceRequest`: one log record each,
/// the event as its body (a string of JSON), the idempotency key and ledger
/// as attributes, the ledger's receive time as the record's time.
pub fn otlp_request(events: &[Event]) -> ExportLogsServiceRequest {
    use any_value::Value as V;
    let ledger = events.first().map(|e| e.ledger.clone()).unwrap_or_default();
    let records = events
        .iter()
        .map(|e| {
            let t = u64::try_from(e.received_ms).unwrap_or(0) * 1_000_000;
            let (severity_number, severity_text) =
                if e.failure { (13, "WARN") } else { (9, "INFO") };
            LogRecord {
                time_unix_nano: t,
                observed_time_unix_nano: t,
                severity_number,
                severity_text: severity_text.into(),
                event_name: match e.format {
                    Format::Ocsf => "custody.ocsf".into(),
                    Format::Jsonl => "custody.entry".into(),
                },
                body: Some(AnyValue {
                    value: Some(V::StringValue(
                        String::from_utf8_lossy(&e.json).into_owned(),
                    )),
                }),
                attributes: vec![
                    kv("custody.ledger", V::StringValue(e.ledger.clone())),
                    kv(
                        "custody.seq",
                        V::IntValue(i64::try_from(e.seq).unwrap_or(i64::MAX)),
                    ),
                    kv("custody.hash", V::StringValue(e.hash.clone())),
                    kv(
                        "custody.tree_size",
                        V::IntValue(i64::try_from(e.tree_size).unwrap_or(i64::MAX)),
                    ),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", V::StringValue("custody".into())),
                    kv("custody.ledger", V::StringValue(ledger)),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "custody.tail".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `POST …/v1/logs`, `application/x-protobuf`. Retried as the OTLP/HTTP
/// specification says (429, 502, 503, 504; and transport failures); a
/// `partial_success` that rejected records is a refusal.
async fn send_otlp(http: &reqwest::Client, url: &str, events: &[Event]) -> Result<(), SinkError> {
    let body = otlp_request(events).encode_to_vec();
    let resp = http
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        let what = format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(200)
                .collect::<String>()
        );
        return Err(match status.as_u16() {
            429 | 502 | 503 | 504 => SinkError::Retry(what),
            _ => SinkError::Refused(what),
        });
    }
    // An empty body is a full success; otherwise a response that may carry
    // a partial success.
    if bytes.is_empty() {
        return Ok(());
    }
    let answer = ExportLogsServiceResponse::decode(bytes.as_ref())
        .map_err(|e| SinkError::Refused(format!("the answer is not an OTLP response: {e}")))?;
    match answer.partial_success {
        Some(p) if p.rejected_log_records > 0 => Err(SinkError::Refused(format!(
            "the receiver rejected {} of {} records: {}",
            p.rejected_log_records,
            events.len(),
            p.error_message
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, n: usize) -> Event {
        Event {
            seq,
            hash: "00".repeat(32),
            ledger: "did:key:z6Mk".into(),
            tree_size: seq + 1,
            received_ms: 1_700_000_000_123,
            failure: false,
            format: Format::Ocsf,
            json: vec![b'1'; n],
        }
    }

    #[test]
    fn pages_split_into_requests_within_the_limit() {
        let events: Vec<Event> = (0..10).map(|i| ev(i, MAX_REQUEST_BYTES / 3)).collect();
        let c = chunks(&events);
        assert_eq!(c.iter().map(|c| c.len()).sum::<usize>(), 10);
        assert!(c.iter().all(|c| c.len() <= 3));
        let big = vec![ev(0, MAX_REQUEST_BYTES * 2)];
        assert_eq!(chunks(&big).len(), 1);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn urls_get_the_protocol_path_once() {
        assert_eq!(
            join_url("http://h:8088/", HEC_EVENT_PATH).unwrap(),
            "http://h:8088/services/collector/event"
        );
        assert_eq!(
            join_url("http://h:4318/v1/logs", OTLP_LOGS_PATH).unwrap(),
            "http://h:4318/v1/logs"
        );
        assert!(join_url("ftp://h", OTLP_LOGS_PATH).is_err());
    }

    #[test]
    fn hec_time_is_epoch_seconds_and_the_key_is_indexed() {
        let mut e = ev(7, 0);
        e.json = b"{\"a\":1}".to_vec();
        let v = hec_envelope(&e).unwrap();
        assert_eq!(v["time"].to_string(), "1700000000.123");
        assert_eq!(v["fields"]["custody_seq"], "7");
        assert_eq!(v["event"]["a"], 1);
    }

    #[test]
    fn the_token_never_prints() {
        let t = Token("s3cr3t-token".into());
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }
}
