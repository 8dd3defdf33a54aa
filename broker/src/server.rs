//! `custody serve`: the broker.
//!
//! Every request but health, checkpoint and proofs is signed by its caller's
//! did:key ([`crate::signing`]); the handler then checks what that DID may do.
//! The ledger's [`Authority`] runs as the store's admission gate, so the rules an
//! offline verifier applies are the rules the broker enforced, decided in
//! sequence order. An authenticated request that is refused is itself recorded
//! (`request.denied`, signed by the ledger key): a denied attempt is evidence.
//!
//! Credentials: a mint holds a shared lock from its authorization check until
//! its accessor is recorded; a revocation takes the lock exclusively, appends
//! `identity.revoke` (after which the gate refuses every mint and append by the
//! identity) and then revokes every recorded accessor in Vault. So no token
//! minted before or during a revocation survives it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use custody_identity::cert::SessionCa;
use custody_identity::{Delegation, Did, KeyPair, Revocation};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::export::export_bundle;
use custody_ledger::merkle::hash_to_hex;
use custody_ledger::store::{AppendError, RetentionPolicy, Store, StoreOptions};
use custody_ledger::{actions, ActionType, ActorKind, Event, SignedEvent, Timestamp};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::api::*;
use crate::config::Config;
use crate::signing::{self, RequestAuthError, RequestParts};
use crate::vault::{accessor_hash, Vault};

/// Token revocations in flight at once during a kill switch.
const REVOKE_CONCURRENCY: usize = 16;
/// Refusals of identities the ledger does not know, recorded per minute.
const STRANGER_DENIALS_PER_MINUTE: u32 = 60;
/// How many nonces the replay cache holds before it prunes expired ones.
const NONCE_PRUNE_AT: usize = 100_000;
/// How long a shutdown waits for requests in flight before closing connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, m)
    }
    fn forbidden(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, m)
    }
    fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code.into(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Broker state shared by handlers.
pub struct AppState {
    pub cfg: Config,
    pub store: Arc<Store<Authority>>,
    pub ledger_key: KeyPair,
    pub origin: Origin,
    pub vault: Option<Vault>,
    pub ca: SessionCa,
    /// Accessors (raw, needed to revoke) and ingest tokens (hashed).
    db: crate::brokerdb::BrokerDb,
    nonces: Mutex<HashMap<[u8; 16], i64>>,
    rate: Mutex<HashMap<Did, (Instant, u32)>>,
    stranger_denials: Mutex<(Instant, u32)>,
    mint_lock: tokio::sync::RwLock<()>,
    checkpointed: Mutex<(u64, Instant)>,
    /// The pre-tool policy; `None` when `[policy] enabled = false`.
    policy: Option<crate::policy::Policy>,
}

/// What `custody serve` prints and tests read.
pub struct Running {
    pub addr: SocketAddr,
    pub ledger: Did,
    pub state: Arc<AppState>,
}

fn io_ctx(p: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", p.display())
}

/// Loads the key at `path`, creating it on first start.
fn load_or_create_key(path: &Path) -> anyhow::Result<KeyPair> {
    if path.exists() {
        Ok(KeyPair::load(path)?)
    } else {
        let k = KeyPair::generate();
        k.save(path)?;
        Ok(k)
    }
}

impl AppState {
    /// Opens the data directory: ledger, keys, CA, broker state; writes the
    /// genesis entry or a trust update when the config's trust roots changed.
    pub fn open(cfg: Config, vault: Option<Vault>) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data).map_err(|e| io_ctx(&cfg.data, e))?;
        let ledger_key = load_or_create_key(&cfg.data.join("ledger.key"))?;
        let ca_key = load_or_create_key(&cfg.data.join("ca.key"))?;
        let ca_pem_path = cfg.data.join("ca.pem");
        let ca = if ca_pem_path.exists() {
            let pem = std::fs::read_to_string(&ca_pem_path).map_err(|e| io_ctx(&ca_pem_path, e))?;
            SessionCa::from_key(ca_key, "custody session CA", pem)?
        } else {
            let ca = SessionCa::generate(ca_key, "custody session CA")?;
            std::fs::write(&ca_pem_path, ca.ca_cert_pem()).map_err(|e| io_ctx(&ca_pem_path, e))?;
            ca
        };
        let store = Store::open_with(
            &cfg.data.join("ledger"),
            Authority::new(Some(ledger_key.did())),
            StoreOptions {
                retention: RetentionPolicy {
                    keep_recent: cfg.checkpoint.keep_recent,
                },
                ..StoreOptions::default()
            },
        )?;
        for r in store.recovered() {
            tracing::warn!(
                seq = r.seq,
                bytes = r.bytes,
                segment = %r.segment.display(),
                saved_to = %r.saved_to.display(),
                reason = %r.reason,
                "ledger: cut a torn tail that was never acknowledged (power loss during a write); its bytes are kept"
            );
        }
        let db = crate::brokerdb::BrokerDb::open(&cfg.data.join("broker"))?;
        let origin = Origin::for_ledger(&ledger_key.did());

        let want = TrustRoots {
            admins: cfg.admins.iter().cloned().collect(),
            delegators: cfg.delegators.iter().cloned().collect(),
        };
        if store.is_empty() || store.with_gate(|a| a.trust() != &want) {
            let action = if store.is_empty() {
                actions::GENESIS
            } else {
                actions::TRUST_UPDATE
            };
            let mut e = Event::new(
                ledger_key.did(),
                ActorKind::Service,
                ActionType::new(action)?,
            );
            e.details = want.to_details();
            store
                .append(e.sign(&ledger_key)?)
                .map_err(|e| anyhow::anyhow!("writing {action}: {e}"))?;
        }
        let policy = match (&cfg.policy.enabled, &cfg.policy.file) {
            (false, _) => None,
            (true, None) => Some(crate::policy::Policy::default_set()),
            (true, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| io_ctx(f, e))?;
                Some(
                    crate::policy::Policy::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                )
            }
        };
        let size = store.len();
        Ok(Arc::new(Self {
            policy,
            cfg,
            store: Arc::new(store),
            ledger_key,
            origin,
            vault,
            ca,
            db,
            nonces: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            stranger_denials: Mutex::new((Instant::now(), 0)),
            mint_lock: tokio::sync::RwLock::new(()),
            checkpointed: Mutex::new((size, Instant::now())),
        }))
    }

    /// Checks a signed request: headers, signature, freshness, replay, rate.
    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ApiResult<Did> {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let parts = RequestParts {
            method: method.as_str(),
            path,
            did: h(signing::HEADER_DID),
            timestamp: h(signing::HEADER_TIMESTAMP),
            nonce: h(signing::HEADER_NONCE),
            signature: h(signing::HEADER_SIGNATURE),
            body,
        };
        let skew = self.cfg.limits.clock_skew.as_millis() as i64;
        let now = signing::now_ms();
        let (did, ts, nonce) = signing::verify_request(&parts, now, skew).map_err(|e| {
            let code = match e {
                RequestAuthError::Missing(_) => "unsigned",
                RequestAuthError::Malformed(_) => "malformed_signature",
                RequestAuthError::BadDid(_) => "bad_did",
                RequestAuthError::Stale(..) => "stale_request",
                RequestAuthError::Replayed => "replayed_request",
                RequestAuthError::BadSignature(_) => "bad_signature",
            };
            ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        })?;
        {
            let mut nonces = self.nonces.lock().expect("lock");
            if nonces.len() >= NONCE_PRUNE_AT {
                nonces.retain(|_, exp| *exp > now);
            }
            if nonces.contains_key(&nonce) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "replayed_request",
                    RequestAuthError::Replayed.to_string(),
                ));
            }
            // A nonce only needs remembering while its timestamp is acceptable.
            nonces.insert(nonce, ts + skew + 1);
        }
        {
            let mut rate = self.rate.lock().expect("lock");
            let limit = self.cfg.limits.requests_per_second;
            let entry = rate.entry(did.clone()).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= Duration::from_secs(1) {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
            if entry.1 > limit {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("more than {limit} requests per second from {did}"),
                ));
            }
        }
        Ok(did)
    }

    /// An admin of the ledger's trust state who has not been revoked may
    /// revoke, export and redact. The ledger's state, not the config file,
    /// decides: it is what the rules and the offline verifier hold it to.
    fn check_admin(&self, caller: &Did) -> Result<(), String> {
        let now = Timestamp::now();
        self.store.with_gate(|a| {
            if !a.trust().admins.contains(caller) {
                return Err(format!(
                    "{caller} is not an admin of this ledger ([trust] admins)"
                ));
            }
            match a.revoked_at(caller, now) {
                Some(r) => Err(format!(
                    "{caller} has been revoked (entry {}: {})",
                    r.seq, r.revocation.reason
                )),
                None => Ok(()),
            }
        })
    }

    /// The delegation of a session that may still act now, or why not:
    /// started, not revoked (nor its delegator), inside its validity window
    /// and not ended. The same state the rules hold appends to, so a cached
    /// credential (the OTLP ingest token) dies exactly when appends do.
    fn active_session(&self, did: &Did) -> Result<Delegation, String> {
        let now = Timestamp::now();
        self.store.with_gate(|a| {
            if let Some(r) = a.revoked_at(did, now) {
                return Err(format!("revoked: {}", r.revocation.reason));
            }
            let g = a
                .session(did)
                .ok_or_else(|| "no such session".to_string())?;
            if let Some(end) = g.ended_at {
                return Err(format!("the session ended (entry {end})"));
            }
            g.delegation
                .is_valid_at(now.datetime())
                .map_err(|e| e.to_string())?;
            Ok(g.delegation.clone())
        })
    }

    /// Keeps a body beside the chain under a fresh salt; returns its reference.
    fn put_salted_payload(&self, body: &[u8]) -> ApiResult<custody_ledger::PayloadRef> {
        let (pref, salt) = custody_ledger::bundle::salted_payload_ref(body);
        self.store
            .put_payload(pref.digest, salt, body)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(pref)
    }

    /// A service event by the ledger key about a session's activity.
    fn attested_event(&self, action: &str, d: &Delegation) -> ApiResult<Event> {
        let bad = |e: custody_ledger::LedgerError| ApiError::internal(e.to_string());
        let mut e = Event::new(
            self.ledger_key.did(),
            ActorKind::Service,
            ActionType::new(action).map_err(bad)?,
        );
        e.session = Some(custody_ledger::SessionId::new(d.id.clone()).map_err(bad)?);
        e.context = Some(custody_ledger::Context::new(d.context.clone()).map_err(bad)?);
        e.on_behalf_of = Some(d.issuer.clone());
        e.details
            .insert("session_did".into(), d.session.as_str().into());
        Ok(e)
    }

    /// Appends events on a blocking thread (the store's append waits for fdatasync).
    async fn append_many(
        self: &Arc<Self>,
        events: Vec<SignedEvent>,
    ) -> ApiResult<Vec<Result<custody_ledger::store::Appended, AppendError>>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.append_many(events))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn append_one(
        self: &Arc<Self>,
        event: SignedEvent,
    ) -> ApiResult<custody_ledger::store::Appended> {
        let actor = event.event.actor.clone();
        let action = event.event.action.to_string();
        let r = self
            .append_many(vec![event])
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal("no append result"))?;
        match r {
            Ok(a) => Ok(a),
            Err(AppendError::Rejected(rej)) => {
                self.record_denial(&actor, &action, rej.code.as_str(), &rej.message)
                    .await;
                Err(ApiError::forbidden(rej.code.as_str(), rej.message))
            }
            Err(AppendError::Store(e)) => Err(store_error(e)),
        }
    }

    /// Records a refused request by an authenticated caller.
    async fn record_denial(
        self: &Arc<Self>,
        actor: &Did,
        attempted: &str,
        code: &str,
        reason: &str,
    ) {
        // Keys cost nothing, so refusals of identities the ledger does not know
        // are recorded only up to a global budget: probing is evidence, but a
        // stranger must not be able to grow the ledger without bound.
        let known = self.store.with_gate(|a| a.knows(actor));
        if !known {
            let mut b = self.stranger_denials.lock().expect("lock");
            if b.0.elapsed() >= Duration::from_secs(60) {
                *b = (Instant::now(), 0);
            }
            b.1 += 1;
            if b.1 > STRANGER_DENIALS_PER_MINUTE {
                tracing::warn!(%actor, attempted, code, "refusal not recorded: over the budget for unknown identities");
                return;
            }
        }
        let mut e = match ActionType::new(actions::REQUEST_DENIED) {
            Ok(a) => Event::new(self.ledger_key.did(), ActorKind::Service, a),
            Err(_) => return,
        };
        e.details.insert("actor".into(), actor.as_str().into());
        e.details
            .insert("attempted_action".into(), attempted.into());
        e.details.insert("code".into(), code.into());
        e.details.insert(
            "reason".into(),
            reason.chars().take(500).collect::<String>().into(),
        );
        if let Ok(signed) = e.sign(&self.ledger_key) {
            if let Ok(mut rs) = self.append_many(vec![signed]).await {
                if let Some(Err(err)) = rs.pop() {
                    tracing::error!("recording a denial failed: {err}");
                }
            }
        }
    }

    /// Refuses with 403 and records the refusal.
    async fn deny(
        self: &Arc<Self>,
        actor: &Did,
        attempted: &str,
        code: &'static str,
        message: String,
    ) -> ApiError {
        self.record_denial(actor, attempted, code, &message).await;
        ApiError::forbidden(code, message)
    }

    /// Signs a checkpoint if the policy asks for one (or `force`).
    pub fn maybe_checkpoint(&self, force: bool) -> anyhow::Result<()> {
        let head = self.store.head()?;
        let mut last = self.checkpointed.lock().expect("lock");
        let due = head.size > last.0
            && (force
                || head.size - last.0 >= self.cfg.checkpoint.every_entries
                || last.1.elapsed() >= self.cfg.checkpoint.every);
        if due {
            let cp = SignedCheckpoint::sign(
                &self.ledger_key,
                &self.origin,
                head,
                OffsetDateTime::now_utc(),
            )?;
            self.store.save_checkpoint(head.size, &cp.to_bytes())?;
            *last = (head.size, Instant::now());
        }
        Ok(())
    }
}

/// Parses a JSON body with a message that names the problem.
/// A storage failure: 503 when the ledger cannot be written just now (a full
/// disk, a read-only directory: retry later, nothing was stored), 500 otherwise.
fn store_error(e: custody_ledger::store::StoreError) -> ApiError {
    use custody_ledger::store::StoreError;
    match e {
        StoreError::WriteFailed(_) | StoreError::Poisoned(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            format!("ledger: {e}"),
        ),
        e => ApiError::internal(format!("ledger: {e}")),
    }
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.limits.max_body;
    Router::new()
        .route(PATH_HEALTH, get(health))
        .route(PATH_SESSIONS, post(start_session))
        .route(PATH_TOKENS, post(mint))
        .route(PATH_EVENTS, post(append_event))
        .route(PATH_EVENTS_BATCH, post(append_batch))
        .route(PATH_REVOKE, post(revoke))
        .route(PATH_EXPORT, post(export))
        .route(PATH_STATUS, post(session_status))
        .route(PATH_REDACT, post(redact))
        .route(PATH_CHECKPOINT, get(checkpoint))
        .route(PATH_PROOF_INCLUSION, get(inclusion))
        .route(PATH_PROOF_CONSISTENCY, get(consistency))
        .route(PATH_POLICY_CHECK, post(policy_check))
        .route(PATH_COSIGNATURE, post(cosignature))
        .route(
            PATH_OTLP_LOGS,
            post(otlp_logs).layer(tower_http::decompression::RequestDecompressionLayer::new()),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .with_state(state)
}

/// Reads the whole request body, at most `limits.max_body` bytes, within
/// `limits.request_timeout` of the end of its headers, before any handler
/// runs. hyper's header timeout stops where the body starts, and a body
/// trickled a byte at a time (slow-loris) would otherwise hold its connection
/// and task for as long as the client likes; a timeout between reads would
/// not do, since every byte restarts it. Only reading is timed: a handler,
/// once started, is never cut short (a mint or a revocation stopped halfway
/// could leave a live token unrecorded).
async fn read_body_in_time(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody;
    let (parts, mut body) = req.into_parts();
    let (limit, timeout) = (s.cfg.limits.max_body, s.cfg.limits.request_timeout);
    let read = async {
        let mut buf = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame =
                frame.map_err(|e| ApiError::bad_request("malformed_body", e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("the body is larger than limits.max_body ({limit} bytes)"),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(buf)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(buf)))
                .await
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within limits.request_timeout ({}s)",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            // The rest of the body is not read: the connection cannot be reused.
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Json<Health> {
    let vault = match &s.vault {
        None => "not configured".to_string(),
        Some(v) => match v.health().await {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        },
    };
    Json(Health {
        status: "ok".into(),
        ledger: s.ledger_key.did().to_string(),
        entries: s.store.len(),
        vault,
    })
}

async fn start_session(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<SessionStarted>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: StartSession = parse_body(&body)?;
    let what = actions::SESSION_START;
    let d = match Delegation::verify(&req.delegation) {
        Ok(d) => d,
        Err(e) => {
            return Err(s
                .deny(&caller, what, "delegation_invalid", e.to_string())
                .await)
        }
    };
    if d.issuer != caller {
        return Err(s
            .deny(
                &caller,
                what,
                "delegation_invalid",
                format!(
                    "the request is signed by {caller}, not by the delegation's issuer {}",
                    d.issuer
                ),
            )
            .await);
    }
    if !s.cfg.delegators.contains(&caller) {
        return Err(s
            .deny(
                &caller,
                what,
                "not_delegator",
                format!("{caller} is not in [trust] delegators"),
            )
            .await);
    }
    let now = OffsetDateTime::now_utc();
    if d.not_after <= now {
        return Err(s
            .deny(
                &caller,
                what,
                "expired",
                "the delegation has already expired".into(),
            )
            .await);
    }
    if d.scopes.is_empty() {
        return Err(s
            .deny(
                &caller,
                what,
                "out_of_scope",
                "the delegation grants no scope".into(),
            )
            .await);
    }
    let ttl = d.not_after - now.max(d.not_before);
    for name in &d.scopes {
        let Some(sc) = s.cfg.scope(name) else {
            return Err(s
                .deny(
                    &caller,
                    what,
                    "unknown_scope",
                    format!("scope {name:?} is not defined in the broker's config"),
                )
                .await);
        };
        if !sc.contexts.iter().any(|c| c.as_str() == d.context) {
            return Err(s
                .deny(
                    &caller,
                    what,
                    "context_mismatch",
                    format!("scope {name:?} is not allowed in context {:?}", d.context),
                )
                .await);
        }
        if ttl
            > time::Duration::try_from(sc.max_ttl).unwrap_or(time::Duration::MAX)
                + time::Duration::seconds(5)
        {
            return Err(s
                .deny(
                    &caller,
                    what,
                    "ttl_too_long",
                    format!(
                        "session TTL {}s exceeds scope {name:?} max_ttl {}s",
                        ttl.whole_seconds(),
                        sc.max_ttl.as_secs()
                    ),
                )
                .await);
        }
    }
    let start = &req.start.event;
    if start.action.as_str() != actions::SESSION_START
        || start.detail_str("delegation") != Some(req.delegation.as_str())
    {
        return Err(ApiError::bad_request(
            "malformed",
            "`start` must be the session's session.start event carrying the same delegation",
        ));
    }
    let appended = s.append_one(req.start).await?;
    let cert_ttl = Duration::from_secs(ttl.whole_seconds().clamp(1, 24 * 3600) as u64);
    let certificate_pem =
        s.ca.issue_session_cert(&d.session, cert_ttl)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let ingest_token = random_token();
    let hashed = sha256_hex(&ingest_token);
    s.db.with(|t| {
        t.ingest
            .insert(hashed.as_bytes(), d.session.as_str().as_bytes())?;
        t.db.flush().map(|_| ())
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(SessionStarted {
        seq: appended.seq.0,
        session_id: d.id.clone(),
        session_did: d.session.to_string(),
        expires_at: custody_identity::delegation::format_time(d.not_after),
        certificate_pem,
        ca_pem: s.ca.ca_cert_pem().to_string(),
        ingest_token,
    }))
}

/// `POST /v1/logs`: an OTLP export from a session's agent, authenticated by
/// the session's ingest token; see [`crate::otlp`].
async fn otlp_logs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    use crate::otlp::{self, Decider, Encoding};
    let unauth = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "bad_ingest_token", m);
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauth("send the session's ingest token as `Authorization: Bearer <token>`")
        })?;
    let hashed = sha256_hex(token.trim());
    let did =
        s.db.with(|t| t.ingest.get(hashed.as_bytes()))
            .ok()
            .flatten()
            .and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|d| Did::parse(d).ok())
            })
            .ok_or_else(|| unauth("unknown or revoked ingest token"))?;
    let d = s
        .active_session(&did)
        .map_err(|why| unauth(&format!("the ingest token's session may not act: {why}")))?;
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let enc = Encoding::from_content_type(ct).map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    })?;
    let records = otlp::decode(enc, &body)
        .map_err(|e| ApiError::bad_request("malformed_otlp", e.to_string()))?;

    let bad = |e: custody_ledger::LedgerError| ApiError::internal(e.to_string());
    let mut bodies = Vec::with_capacity(records.len());
    let mut events = Vec::with_capacity(records.len());
    for r in &records {
        let c = otlp::classify(r);
        let mut e = s.attested_event(&c.action, &d)?;
        let det = &mut e.details;
        det.insert("attested_by".into(), "broker".into());
        det.insert("source".into(), "otlp".into());
        det.insert("event".into(), r.name.clone().into());
        det.insert("origin".into(), c.origin.into());
        det.insert(
            "agent_time_unix_nano".into(),
            r.time_unix_nano.to_string().into(),
        );
        det.insert("attributes".into(), otlp::ledger_attributes(r).into());
        if let Some(dec) = &c.decision {
            det.insert("decision".into(), dec.clone().into());
        }
        e.approval = match &c.decider {
            // The person at the keyboard of a session is its delegator.
            Some(Decider::User(_)) => Some(custody_ledger::Approval::Human {
                approver: d.issuer.clone(),
            }),
            Some(Decider::Config) => Some(custody_ledger::Approval::Policy {
                policy: "agent-config".into(),
            }),
            Some(Decider::Reviewer(r)) => Some(custody_ledger::Approval::AutoReview {
                reviewer: r.clone(),
            }),
            Some(Decider::Other(_)) | None => None,
        };
        if let Some(Decider::User(src) | Decider::Reviewer(src) | Decider::Other(src)) = &c.decider
        {
            e.details
                .insert("decision_source".into(), src.clone().into());
        }
        let body = otlp::payload_of(r);
        let (pref, salt) = custody_ledger::bundle::salted_payload_ref(&body);
        e.payload = Some(pref.clone());
        bodies.push((pref.digest, salt, body));
        events.push(e.sign(&s.ledger_key).map_err(bad)?);
    }
    // One flush for the whole export, not one per record.
    let items: Vec<_> = bodies
        .iter()
        .map(|(d, salt, b)| (*d, *salt, b.as_slice()))
        .collect();
    s.store
        .put_payloads(&items)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let results = s.append_many(events).await?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let msg = failed.first().cloned().unwrap_or_default();
    Ok((
        [(axum::http::header::CONTENT_TYPE, enc.content_type())],
        otlp::response(enc, failed.len() as i64, msg),
    )
        .into_response())
}

/// `POST /v1/policy/check`: the pre-tool policy decides a session's tool
/// call; the decision is recorded (`policy.decision`, by the ledger key) with
/// the ids of the policies that made it.
async fn policy_check(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PolicyDecision>> {
    use crate::policy::{Query, Resource};
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: PolicyCheck = parse_body(&body)?;
    if req.tool.is_empty() || req.tool.len() > 128 {
        return Err(ApiError::bad_request(
            "malformed",
            "`tool` must be 1..128 characters",
        ));
    }
    let d = match s.active_session(&caller) {
        Ok(d) => d,
        Err(why) => {
            return Err(s
                .deny(&caller, actions::POLICY_DECISION, "session_inactive", why)
                .await)
        }
    };
    let resource = Resource::of(&req.tool, &req.input);
    let decision = match &s.policy {
        None => crate::policy::Decision {
            allow: true,
            policies: vec!["policy-disabled".into()],
            errors: Vec::new(),
        },
        Some(p) => p
            .decide(&Query {
                session: &d,
                tool: &req.tool,
                resource: &resource,
                cwd: &req.cwd,
                branch: &req.branch,
            })
            .map_err(|e| ApiError::internal(e.to_string()))?,
    };
    let mut e = s.attested_event(actions::POLICY_DECISION, &d)?;
    e.details.insert("tool".into(), req.tool.clone().into());
    e.details.insert(
        "decision".into(),
        if decision.allow { "allow" } else { "deny" }.into(),
    );
    e.details
        .insert("policies".into(), json!(decision.policies));
    e.details
        .insert("resource_kind".into(), resource.kind.into());
    if !decision.errors.is_empty() {
        e.details.insert("errors".into(), json!(decision.errors));
    }
    // The command or path may hold secrets: a redactable digest, not the text.
    e.payload = Some(s.put_salted_payload(resource.text.as_bytes())?);
    let signed = e
        .sign(&s.ledger_key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let appended = s.append_one(signed).await?;
    Ok(Json(PolicyDecision {
        allow: decision.allow,
        policies: decision.policies,
        seq: appended.seq.0,
    }))
}

/// `POST /v1/checkpoint/cosignature`: a witness (or whoever relays for it)
/// hands back one of our checkpoints with cosignatures. Cosignatures by
/// configured witnesses are verified and kept with the checkpoint, so exports
/// carry them; the event is recorded.
async fn cosignature(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<Json<Cosigned>> {
    use custody_ledger::checkpoint::CheckpointError;
    let posted = SignedCheckpoint::parse(&body)
        .map_err(|e| ApiError::bad_request("malformed_checkpoint", e.to_string()))?;
    let (cosigners, unknown) = posted
        .verify_with_witnesses(&s.ledger_key.public(), &s.cfg.witnesses)
        .map_err(|e| match e {
            CheckpointError::BadCosignature(_) => {
                ApiError::bad_request("bad_cosignature", e.to_string())
            }
            e => ApiError::bad_request("not_our_checkpoint", e.to_string()),
        })?;
    if !unknown.is_empty() {
        return Err(ApiError::forbidden(
            "unknown_witness",
            format!(
                "signatures by {} are not from a witness in [witnesses] keys",
                unknown.join(", ")
            ),
        ));
    }
    if cosigners.is_empty() {
        return Err(ApiError::bad_request(
            "no_cosignature",
            "the checkpoint carries no cosignature by a configured witness",
        ));
    }
    let size = posted.head().size;
    let store = s.store.clone();
    let merged = tokio::task::spawn_blocking(move || -> ApiResult<SignedCheckpoint> {
        let stored = store
            .checkpoint(size)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "not_our_checkpoint",
                    format!("this ledger has no checkpoint at size {size}"),
                )
            })?;
        let mut cp =
            SignedCheckpoint::parse(&stored).map_err(|e| ApiError::internal(e.to_string()))?;
        cp.merge_signatures(&posted).map_err(|_| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_our_checkpoint",
                format!("the checkpoint at size {size} here has another root or time"),
            )
        })?;
        store
            .save_checkpoint(size, &cp.to_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(cp)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let (all, _) = merged
        .verify_with_witnesses(&s.ledger_key.public(), &s.cfg.witnesses)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut e = Event::new(
        s.ledger_key.did(),
        ActorKind::Service,
        ActionType::new("checkpoint.cosigned").map_err(|e| ApiError::internal(e.to_string()))?,
    );
    e.details.insert("size".into(), size.into());
    e.details
        .insert("root".into(), hash_to_hex(&merged.head().root).into());
    e.details.insert("witnesses".into(), json!(cosigners));
    let signed = e
        .sign(&s.ledger_key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let appended = s.append_one(signed).await?;
    Ok(Json(Cosigned {
        size,
        witnesses: all,
        seq: appended.seq.0,
    }))
}

fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

async fn mint(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Minted>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: MintRequest = parse_body(&body)?;
    let ev = &req.request.event;
    let what = actions::CREDENTIAL_MINT;
    if ev.actor != caller {
        return Err(s
            .deny(
                &caller,
                what,
                "did_mismatch",
                format!(
                    "the request is signed by {caller} but the event's actor is {}",
                    ev.actor
                ),
            )
            .await);
    }
    if ev.action.as_str() != "credential.request" {
        return Err(ApiError::bad_request(
            "malformed",
            "the request event's action must be credential.request",
        ));
    }
    let Some(scope_name) = ev.detail_str("scope").map(str::to_string) else {
        return Err(ApiError::bad_request(
            "malformed",
            "credential.request needs details.scope",
        ));
    };
    let Some(scope) = s.cfg.scope(&scope_name).cloned() else {
        return Err(s
            .deny(
                &caller,
                what,
                "unknown_scope",
                format!("scope {scope_name:?} is not defined"),
            )
            .await);
    };
    let Some(vault) = &s.vault else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_vault",
            "this broker has no [vault] configured",
        ));
    };
    // Held until the accessor is recorded, so a revocation waits for us.
    let _mint_guard = s.mint_lock.read().await;
    let now = Timestamp::now();
    let grant = s.store.with_gate(|a| {
        a.check(&req.request, now)
            .map(|_| a.session(&caller).map(|g| g.delegation.clone()))
    });
    let delegation = match grant {
        Err(d) => return Err(s.deny(&caller, what, d.code.as_str(), d.message).await),
        Ok(None) => {
            return Err(s
                .deny(
                    &caller,
                    what,
                    "no_session",
                    format!("{caller} is not a started session"),
                )
                .await)
        }
        Ok(Some(d)) => d,
    };
    if !scope
        .contexts
        .iter()
        .any(|c| c.as_str() == delegation.context)
    {
        return Err(s
            .deny(
                &caller,
                what,
                "context_mismatch",
                format!(
                    "scope {scope_name:?} is not allowed in context {:?}",
                    delegation.context
                ),
            )
            .await);
    }
    let remaining = delegation.not_after - OffsetDateTime::now_utc();
    let remaining = Duration::from_secs(remaining.whole_seconds().max(0) as u64);
    let ttl = scope.max_ttl.min(remaining);
    if ttl.as_secs() < 1 {
        return Err(s
            .deny(&caller, what, "expired", "the session has expired".into())
            .await);
    }
    let meta = HashMap::from([
        ("custody_session_did".to_string(), caller.to_string()),
        ("custody_session_id".to_string(), delegation.id.clone()),
        ("custody_scope".to_string(), scope_name.clone()),
    ]);
    let minted = vault
        .mint(&scope.policies, ttl, meta, &format!("custody-{scope_name}"))
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "vault", e.to_string()))?;
    let acc_hash = accessor_hash(&minted.accessor);
    let mut rec = Event::new(
        s.ledger_key.did(),
        ActorKind::Service,
        ActionType::new(actions::CREDENTIAL_MINT).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    rec.details.insert("subject".into(), caller.as_str().into());
    rec.details
        .insert("session".into(), delegation.id.clone().into());
    rec.details
        .insert("scope".into(), scope_name.clone().into());
    rec.details
        .insert("policies".into(), json!(minted.policies));
    rec.details
        .insert("ttl_seconds".into(), minted.ttl.as_secs().into());
    rec.details
        .insert("accessor_sha256".into(), acc_hash.clone().into());
    rec.details
        .insert("request_nonce".into(), ev.nonce.to_hex().into());
    let rec = rec
        .sign(&s.ledger_key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // The accessor (needed to revoke the token) and the ledger entries are
    // made durable side by side, two syncs at once; the token is handed out
    // only after both. A crash in between leaves at worst a recorded or
    // revocable token that nobody received.
    let exp =
        (OffsetDateTime::now_utc().unix_timestamp() + minted.ttl.as_secs() as i64).to_be_bytes();
    let (s2, key) = (s.clone(), accessor_key(&caller, &minted.accessor));
    let record = tokio::task::spawn_blocking(move || {
        s2.db
            .with(|t| {
                t.accessors.insert(&key, &exp)?;
                t.db.flush().map(|_| ())
            })
            .map_err(|e| e.to_string())
    });
    let (recorded, results) = tokio::join!(record, s.append_many(vec![req.request.clone(), rec]));
    let results = results?;
    if let Err(e) = recorded.map_err(|e| e.to_string()).and_then(|r| r) {
        // Not revocable by the kill switch: the token must not live.
        let _ = vault.revoke_accessor(&minted.accessor).await;
        let mut ev = Event::new(
            s.ledger_key.did(),
            ActorKind::Service,
            ActionType::new(actions::CREDENTIAL_REVOKE)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        );
        ev.details.insert("subject".into(), caller.as_str().into());
        ev.details
            .insert("accessor_sha256".into(), json!([acc_hash]));
        ev.details.insert("tokens_revoked".into(), 1.into());
        ev.details
            .insert("reason".into(), "its accessor could not be recorded".into());
        if let Ok(signed) = ev.sign(&s.ledger_key) {
            let _ = s.append_many(vec![signed]).await;
        }
        return Err(ApiError::internal(format!(
            "recording the token's accessor failed; token revoked: {e}"
        )));
    }
    let mut it = results.into_iter();
    match (it.next(), it.next()) {
        (Some(Ok(r)), Some(Ok(m))) => Ok(Json(Minted {
            token: minted.token.clone(),
            ttl_seconds: minted.ttl.as_secs(),
            policies: minted.policies.clone(),
            accessor_sha256: acc_hash,
            request_seq: r.seq.0,
            mint_seq: m.seq.0,
        })),
        (first, _) => {
            // Not recorded: the token must not live.
            let _ = vault.revoke_accessor(&minted.accessor).await;
            let key = accessor_key(&caller, &minted.accessor);
            let _ = s.db.with(|t| t.accessors.remove(&key));
            match first {
                Some(Err(AppendError::Rejected(rej))) => {
                    Err(s.deny(&caller, what, rej.code.as_str(), rej.message).await)
                }
                Some(Err(AppendError::Store(e))) => Err(store_error(e)),
                _ => Err(ApiError::internal(
                    "the mint could not be recorded; token revoked",
                )),
            }
        }
    }
}

fn accessor_key(did: &Did, accessor: &str) -> Vec<u8> {
    let mut k = did.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(accessor.as_bytes());
    k
}

async fn append_event(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<crate::api::Appended>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: AppendEvent = parse_body(&body)?;
    if req.event.event.actor != caller {
        return Err(s
            .deny(
                &caller,
                req.event.event.action.as_str(),
                "did_mismatch",
                format!(
                    "the request is signed by {caller} but the event's actor is {}",
                    req.event.event.actor
                ),
            )
            .await);
    }
    if let Some(p) = &req.payload {
        let Some(r) = &req.event.event.payload else {
            return Err(ApiError::bad_request(
                "malformed",
                "a payload was sent for an event without `payload`",
            ));
        };
        let dec = |x: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x)
        };
        let (Ok(salt), Ok(body)) = (dec(&p.salt), dec(&p.body)) else {
            return Err(ApiError::bad_request(
                "malformed",
                "payload salt and body must be unpadded base64url",
            ));
        };
        let Ok(salt) = <[u8; 32]>::try_from(salt.as_slice()) else {
            return Err(ApiError::bad_request(
                "malformed",
                "payload salt must be 32 bytes",
            ));
        };
        if body.len() as u64 != r.size {
            return Err(ApiError::bad_request(
                "payload_mismatch",
                "payload size differs from the event's",
            ));
        }
        s.store
            .put_payload(r.digest, salt, &body)
            .map_err(|e| ApiError::bad_request("payload_mismatch", e.to_string()))?;
    }
    let a = s.append_one(req.event).await?;
    Ok(Json(appended_body(&a)))
}

async fn redact(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: RedactRequest = parse_body(&body)?;
    if let Err(why) = s.check_admin(&caller) {
        return Err(s.deny(&caller, "payload.redact", "not_admin", why).await);
    }
    let digest = custody_ledger::PayloadDigest::from_hex(&req.digest)
        .map_err(|e| ApiError::bad_request("malformed", e.to_string()))?;
    let had = s
        .store
        .redact(&digest)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // The redaction itself is on the record, with who asked and why.
    let mut e = Event::new(
        s.ledger_key.did(),
        ActorKind::Service,
        ActionType::new("payload.redact").map_err(|e| ApiError::internal(e.to_string()))?,
    );
    e.details.insert("digest".into(), digest.to_hex().into());
    e.details
        .insert("requested_by".into(), caller.as_str().into());
    e.details.insert(
        "reason".into(),
        req.reason.chars().take(500).collect::<String>().into(),
    );
    e.details.insert("existed".into(), had.into());
    let signed = e
        .sign(&s.ledger_key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let a = s.append_one(signed).await?;
    Ok(Json(json!({"redacted": had, "seq": a.seq.0})))
}

fn appended_body(a: &custody_ledger::store::Appended) -> crate::api::Appended {
    crate::api::Appended {
        seq: a.seq.0,
        hash: a.hash.to_hex(),
        received_at: a.entry.received_at.to_string(),
    }
}

async fn append_batch(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<BatchResult>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: AppendBatch = parse_body(&body)?;
    if req.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::bad_request(
            "too_many_events",
            format!("at most {MAX_BATCH_EVENTS} events per batch"),
        ));
    }
    if let Some(e) = req.events.iter().find(|e| e.event.actor != caller) {
        return Err(s
            .deny(
                &caller,
                e.event.action.as_str(),
                "did_mismatch",
                format!(
                    "the request is signed by {caller} but an event's actor is {}",
                    e.event.actor
                ),
            )
            .await);
    }
    let actions_: Vec<String> = req
        .events
        .iter()
        .map(|e| e.event.action.to_string())
        .collect();
    let results = s.append_many(req.events).await?;
    let mut out = Vec::with_capacity(results.len());
    for (r, action) in results.into_iter().zip(actions_) {
        out.push(match r {
            Ok(a) => BatchItem::Ok(appended_body(&a)),
            Err(AppendError::Rejected(rej)) => {
                s.record_denial(&caller, &action, rej.code.as_str(), &rej.message)
                    .await;
                BatchItem::Err(ErrorBody {
                    error: rej.code.as_str().into(),
                    message: rej.message,
                })
            }
            Err(AppendError::Store(e)) => {
                let e = store_error(e);
                BatchItem::Err(ErrorBody {
                    error: e.code.into(),
                    message: e.message,
                })
            }
        });
    }
    Ok(Json(BatchResult { results: out }))
}

async fn session_status(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<SessionStatus>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let expires_at = s.store.with_gate(|a| {
        a.session(&caller)
            .map(|g| custody_identity::delegation::format_time(g.delegation.not_after))
    });
    Ok(Json(match s.active_session(&caller) {
        Ok(_) => SessionStatus {
            active: true,
            reason: None,
            expires_at,
        },
        Err(why) => SessionStatus {
            active: false,
            reason: Some(why),
            expires_at,
        },
    }))
}

async fn revoke(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Revoked>> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    let req: RevokeRequest = parse_body(&body)?;
    let what = actions::IDENTITY_REVOKE;
    if let Err(why) = s.check_admin(&caller) {
        return Err(s.deny(&caller, what, "not_admin", why).await);
    }
    if req.event.event.actor != caller
        || req.event.event.action.as_str() != actions::IDENTITY_REVOKE
    {
        return Err(ApiError::bad_request(
            "malformed",
            "the body must be the caller's own identity.revoke event",
        ));
    }
    let rev = req
        .event
        .event
        .detail_str("revocation")
        .ok_or_else(|| {
            ApiError::bad_request("malformed", "identity.revoke needs details.revocation")
        })
        .and_then(|j| {
            Revocation::verify(j).map_err(|e| ApiError::bad_request("malformed", e.to_string()))
        })?;
    // Exclusive: in-flight mints finish (and record their accessors) first;
    // once the revocation is appended the gate refuses new ones.
    let _guard = s.mint_lock.write().await;
    let appended = s.append_one(req.event).await?;
    let subject = rev.subject.clone();
    let mut targets = vec![subject.clone()];
    s.store.with_gate(|a| {
        for (did, g) in a.sessions() {
            if g.delegation.issuer == subject {
                targets.push(did.clone());
            }
        }
    });
    let mut revoked = 0u64;
    let mut hashes = Vec::new();
    let mut failures = Vec::new();
    // Every recorded accessor of every target, revoked REVOKE_CONCURRENCY at
    // a time: each is one OpenBao round trip, and the kill switch's latency
    // is their sum otherwise.
    let mut pending = Vec::new();
    for did in &targets {
        let mut prefix = did.as_str().as_bytes().to_vec();
        prefix.push(0);
        let keys =
            s.db.with(|t| {
                t.accessors
                    .scan_prefix(&prefix)
                    .map(|kv| kv.map(|(k, _)| k))
                    .collect::<sled::Result<Vec<_>>>()
            })
            .unwrap_or_else(|e| {
                failures.push(format!("reading recorded accessors: {e}"));
                Vec::new()
            });
        for k in keys {
            let accessor = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            pending.push((k, accessor));
        }
    }
    if s.vault.is_none() && !pending.is_empty() {
        failures.push("no vault configured".to_string());
        pending.clear();
    }
    for chunk in pending.chunks(REVOKE_CONCURRENCY) {
        let mut set = tokio::task::JoinSet::new();
        for (k, accessor) in chunk.iter().cloned() {
            let s2 = s.clone();
            set.spawn(async move {
                let r = match &s2.vault {
                    Some(v) => v
                        .revoke_accessor(&accessor)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("no vault configured".to_string()),
                };
                (k, accessor, r)
            });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok((k, accessor, Ok(()))) => {
                    revoked += 1;
                    hashes.push(accessor_hash(&accessor));
                    let _ = s.db.with(|t| t.accessors.remove(&k));
                }
                Ok((_, _, Err(e))) => failures.push(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    hashes.sort();
    for did in &targets {
        // The session's ingest tokens die with it.
        let _ = s.db.with(|t| {
            for kv in t.ingest.iter() {
                let (k, v) = kv?;
                if v.as_ref() == did.as_str().as_bytes() {
                    t.ingest.remove(k)?;
                }
            }
            Ok(())
        });
    }
    let _ = s.db.flush();
    let mut rec = Event::new(
        s.ledger_key.did(),
        ActorKind::Service,
        ActionType::new(actions::CREDENTIAL_REVOKE)
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    rec.details
        .insert("subject".into(), subject.as_str().into());
    rec.details
        .insert("revocation_seq".into(), appended.seq.0.into());
    rec.details.insert(
        "sessions".into(),
        json!(targets.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
    );
    rec.details.insert("accessor_sha256".into(), json!(hashes));
    rec.details.insert("tokens_revoked".into(), revoked.into());
    if !failures.is_empty() {
        rec.details.insert("failures".into(), json!(failures));
    }
    if let Ok(signed) = rec.sign(&s.ledger_key) {
        let _ = s.append_many(vec![signed]).await;
    }
    if !failures.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "vault",
            format!(
                "revocation recorded (seq {}), but {} token(s) could not be revoked: {}",
                appended.seq,
                failures.len(),
                failures.join("; ")
            ),
        ));
    }
    Ok(Json(Revoked {
        seq: appended.seq.0,
        subject: subject.to_string(),
        sessions: targets.iter().map(|d| d.to_string()).collect(),
        tokens_revoked: revoked,
    }))
}

async fn export(
    State(s): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let caller = s.authenticate(&method, &uri, &headers, &body)?;
    if let Err(why) = s.check_admin(&caller) {
        return Err(s.deny(&caller, "ledger.export", "not_admin", why).await);
    }
    let s2 = s.clone();
    let tar = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let dir = s2.cfg.data.join("exports").join(format!(
            "export-{}",
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))?;
        export_bundle(&s2.store, &s2.ledger_key, &s2.origin, &dir)?;
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all("bundle", &dir)?;
        let out = b.into_inner()?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("export: {e}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Body::from(tar),
    )
        .into_response())
}

async fn checkpoint(State(s): State<Arc<AppState>>) -> ApiResult<Response> {
    s.maybe_checkpoint(true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match s
        .store
        .latest_checkpoint()
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        Some((_, note)) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_checkpoint",
            "no checkpoint yet",
        )),
    }
}

#[derive(Deserialize)]
struct InclusionQuery {
    seq: u64,
}

async fn inclusion(
    State(s): State<Arc<AppState>>,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<InclusionProofBody>> {
    s.maybe_checkpoint(true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (size, note) = s
        .store
        .latest_checkpoint()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "no_checkpoint", "no checkpoint yet")
        })?;
    if q.seq >= size {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_entry",
            format!(
                "seq {} is not covered by the latest checkpoint (size {size})",
                q.seq
            ),
        ));
    }
    let path = s
        .store
        .inclusion_proof(q.seq, size)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let entry = s
        .store
        .line(q.seq)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(InclusionProofBody {
        seq: q.seq,
        tree_size: size,
        entry: String::from_utf8_lossy(&entry).into_owned(),
        path: path.iter().map(hash_to_hex).collect(),
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
    }))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

async fn consistency(
    State(s): State<Arc<AppState>>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyProofBody>> {
    if q.old == 0 || q.old > q.new || q.new > s.store.len() {
        return Err(ApiError::bad_request(
            "bad_sizes",
            format!("need 1 <= old <= new <= {}", s.store.len()),
        ));
    }
    let path = s
        .store
        .consistency_proof(q.old, q.new)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(ConsistencyProofBody {
        old_size: q.old,
        new_size: q.new,
        path: path.iter().map(hash_to_hex).collect(),
    }))
}

/// Where the broker's own Vault token comes from.
pub fn vault_from_config(cfg: &Config) -> anyhow::Result<Option<Vault>> {
    let Some(v) = &cfg.vault else { return Ok(None) };
    let token = match &v.token_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| io_ctx(p, e))?
            .trim()
            .to_string(),
        None => std::env::var("VAULT_TOKEN")
            .map_err(|_| anyhow::anyhow!("[vault] needs token_file or VAULT_TOKEN"))?,
    };
    Ok(Some(Vault::new(&v.addr, &token, v.role.clone())?))
}

/// The rustls config for HTTPS: a server certificate from the broker's CA for
/// the configured names (plus the listen address and `localhost`), with an
/// Ed25519 key kept in `data/server.key`.
async fn tls_config(
    state: &AppState,
    addr: SocketAddr,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = load_or_create_key(&state.cfg.data.join("server.key"))?;
    let mut names = state.cfg.tls.names.clone();
    names.push("localhost".into());
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.sort();
    names.dedup();
    let cert = state.ca.issue_server_cert(&names, &key)?;
    let der = key
        .dalek()
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the TLS key: {e}"))?;
    let cert_der = rustls_pki_der(&cert)?;
    Ok(
        axum_server::tls_rustls::RustlsConfig::from_der(vec![cert_der], der.as_bytes().to_vec())
            .await?,
    )
}

fn rustls_pki_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// Binds, serves until `shutdown` resolves, then flushes: a final checkpoint
/// and a clean store close. Serves HTTPS when `[tls]` says so (by default,
/// whenever the listen address is not loopback).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ticker_state = state.clone();
    let ticker = tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_millis(500));
        loop {
            iv.tick().await;
            let s = ticker_state.clone();
            let _ = tokio::task::spawn_blocking(move || s.maybe_checkpoint(false)).await;
        }
    });
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let app = router(state.clone()).into_make_service();
    let timeout = state.cfg.limits.request_timeout;
    // Both listeners go through axum-server because it lets us give hyper a
    // timer: without one hyper enforces no header read timeout at all, and a
    // client sending its headers a byte at a time (slow-loris) would hold its
    // connection forever. The body has its own deadline (`read_body_in_time`).
    if state.cfg.tls.enabled {
        crate::client::install_crypto_provider();
        let addr = listener.local_addr()?;
        let config = tls_config(&state, addr).await?;
        let mut server = axum_server::from_tcp_rustls(listener.into_std()?, config)
            .handle(handle)
            .map(|inner| FirstBytesAcceptor { inner, timeout });
        limit_header_time(server.http_builder(), timeout);
        server.serve(app).await?;
    } else {
        let mut server = axum_server::from_tcp(listener.into_std()?)
            .handle(handle)
            .map(|inner| FirstBytesAcceptor { inner, timeout });
        limit_header_time(server.http_builder(), timeout);
        server.serve(app).await?;
    }
    ticker.abort();
    let s = state.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        s.maybe_checkpoint(true)?;
        s.store.close()?;
        s.db.flush()?;
        Ok(())
    })
    .await??;
    Ok(())
}

/// HTTP/1 connections must deliver each request's headers within `timeout`
/// (hyper then closes them without an answer); that also bounds how long an
/// idle keep-alive connection is kept. HTTP/2 has no such timeout in hyper:
/// there, a peer that does not answer a ping within `timeout` is dropped.
fn limit_header_time(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
}

/// How many bytes hyper-util reads from a new connection to tell HTTP/2 (its
/// 24-byte preface) from HTTP/1, before any hyper timeout applies.
const PROTOCOL_SNIFF_BYTES: usize = 24;

/// Gives every accepted connection (after TLS, when there is TLS) `timeout`
/// to send its first [`PROTOCOL_SNIFF_BYTES`] bytes. hyper-util waits for them
/// without limit before hyper's header timeout starts, so a client that
/// connects and stays silent, or trickles an HTTP/2 preface, would otherwise
/// hold its connection forever.
#[derive(Clone)]
struct FirstBytesAcceptor<A> {
    inner: A,
    timeout: Duration,
}

impl<A, I, S> axum_server::accept::Accept<I, S> for FirstBytesAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = FirstBytes<A::Stream>;
    type Service = A::Service;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let timeout = self.timeout;
        Box::pin(async move {
            let (inner, service) = accepted.await?;
            let deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            Ok((
                FirstBytes {
                    inner,
                    seen: 0,
                    deadline,
                },
                service,
            ))
        })
    }
}

/// A connection whose reads fail once its deadline has passed, until it has
/// delivered [`PROTOCOL_SNIFF_BYTES`] bytes; after that, a plain connection.
struct FirstBytes<S> {
    inner: S,
    seen: usize,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.seen += buf.filled().len() - before;
                if this.seen >= PROTOCOL_SNIFF_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match &mut this.deadline {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent too little within limits.request_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            failed => failed,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
