//! The client side of the API: what `custody session start`, `token`, `log`,
//! `revoke` and `export` do, and what the demo drives. Every request is signed
//! with the caller's key ([`custody_wire::signing`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use custody_identity::{Delegation, Did, KeyPair, Revocation};
use custody_ledger::{actions, ActionType, ActorKind, Context, Event, SessionId, SignedEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use crate::sessionfile::SessionFile;
use crate::BoxFuture;
use custody_wire::api::*;
use custody_wire::signing;

/// An error answered by the broker, or a failure to reach it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the broker refused ({status} {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the broker at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("unexpected answer from the broker: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The broker's typed code, when it answered with one this build knows.
    pub fn error_code(&self) -> Option<custody_wire::error::ErrorCode> {
        self.code().and_then(custody_wire::error::ErrorCode::parse)
    }
}

/// Makes sure a rustls crypto provider is installed (reqwest and vaultrs are
/// built without one, so custody picks ring, the same as its other TLS users).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A broker's answer: its status and whole body.
struct Reply {
    status: reqwest::StatusCode,
    body: bytes::Bytes,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(base: &str, ca_pem: Option<&str>) -> anyhow::Result<Self> {
        install_crypto_provider();
        let url = url::Url::parse(base).with_context(|| format!("broker URL {base:?}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("broker URL {base:?} must be http:// or https://");
        }
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy();
        // The broker's CA: from the session file, or CUSTODY_CA (a PEM file)
        // for commands that run before there is a session file.
        let env_ca = match std::env::var_os("CUSTODY_CA") {
            Some(p) => Some(
                std::fs::read_to_string(&p)
                    .with_context(|| format!("CUSTODY_CA={}", p.to_string_lossy()))?,
            ),
            None => None,
        };
        // A known CA is the only root the client trusts: the broker's
        // certificate comes from its own CA (README, `[tls]`), and a hook
        // that trusts a hundred public CAs for its broker is weaker and
        // slower (loading the system store was most of a hook's start-up).
        // Without one (a command run before there is a session file), the
        // platform's roots, for a broker behind a publicly certified proxy.
        let pinned = ca_pem
            .into_iter()
            .chain(env_ca.as_deref())
            .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        if !pinned.is_empty() {
            b = b.tls_certs_only(pinned);
        }
        Ok(Self {
            http: b.build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    /// Sends `req` and reads the whole answer. Not generic, and its future is
    /// boxed here: reqwest's send and body futures are compiled once, in this
    /// crate, instead of again in every binary and for every request and
    /// answer type (they were most of a release build of each binary).
    fn exchange(&self, req: reqwest::RequestBuilder) -> BoxFuture<'_, Result<Reply, ClientError>> {
        Box::pin(async move {
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| self.transport(e))?;
            Ok(Reply { status, body })
        })
    }

    /// The answer's JSON body, or the broker's error.
    fn decode<R: DeserializeOwned>(reply: Reply) -> Result<R, ClientError> {
        if !reply.status.is_success() {
            return Err(api_error(reply.status, &reply.body));
        }
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POSTs `body` as JSON, signed by `key`; returns the raw answer.
    async fn post_raw<T: Serialize>(
        &self,
        key: &KeyPair,
        path: &str,
        body: &T,
    ) -> Result<Reply, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.post_bytes(key, path, bytes).await
    }

    /// [`post_raw`](Self::post_raw) once the body is JSON: signs and sends.
    fn post_bytes<'a>(
        &'a self,
        key: &KeyPair,
        path: &str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<Reply, ClientError>> {
        let h = signing::sign_request(key, "POST", path, &bytes);
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header(signing::HEADER_DID, h.did)
            .header(signing::HEADER_TIMESTAMP, h.timestamp)
            .header(signing::HEADER_NONCE, h.nonce)
            .header(signing::HEADER_SIGNATURE, h.signature)
            .body(bytes);
        self.exchange(req)
    }

    pub async fn post<T: Serialize, R: DeserializeOwned>(
        &self,
        key: &KeyPair,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        Self::decode(self.post_raw(key, path, body).await?)
    }

    /// Sends an OTLP/HTTP JSON logs export as the session's agent would
    /// (authenticated by its ingest token, not signed).
    pub async fn otlp_logs_json(
        &self,
        session: &SessionFile,
        export: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .http
            .post(format!("{}{PATH_OTLP_LOGS}", self.base))
            .bearer_auth(session.ingest_token())
            .json(export);
        Self::decode(self.exchange(resp).await?)
    }

    /// Has the broker sign a checkpoint now (admins only); returns the note.
    pub async fn checkpoint_now(&self, admin: &KeyPair) -> Result<String, ClientError> {
        let resp = self
            .post_raw(admin, PATH_CHECKPOINT, &serde_json::json!({}))
            .await?;
        if !resp.status.is_success() {
            return Err(api_error(resp.status, &resp.body));
        }
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let req = self.http.get(format!("{}{path}", self.base));
        Self::decode(self.exchange(req).await?)
    }

    /// One page of the entry feed, as an auditor or admin: a `GET` whose
    /// method, path and query are signed with an empty body.
    pub async fn feed(&self, key: &KeyPair, query: &FeedQuery) -> Result<FeedPage, ClientError> {
        let path = query.path_and_query();
        let h = signing::sign_request(key, "GET", &path, b"");
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(signing::HEADER_DID, h.did)
            .header(signing::HEADER_TIMESTAMP, h.timestamp)
            .header(signing::HEADER_NONCE, h.nonce)
            .header(signing::HEADER_SIGNATURE, h.signature);
        Self::decode(self.exchange(resp).await?)
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get(PATH_HEALTH).await
    }

    /// Creates a session key, has `delegator` sign the delegation, registers it.
    pub async fn start_session(
        &self,
        delegator: &KeyPair,
        agent: &str,
        scopes: &[String],
        context: &str,
        ttl: Duration,
    ) -> anyhow::Result<(SessionFile, u64)> {
        // The session key is made first, so the delegation names a key only
        // the session holds.
        let session = KeyPair::generate();
        let now = OffsetDateTime::now_utc();
        let d = Delegation::new(
            delegator.did(),
            session.did(),
            agent.into(),
            scopes.to_vec(),
            context.into(),
            now - time::Duration::seconds(1),
            now + time::Duration::try_from(ttl).context("TTL out of range")?,
        )?;
        let jws = d.issue(delegator)?;
        let mut ev = Event::new(
            session.did(),
            ActorKind::Agent,
            ActionType::new(actions::SESSION_START)?,
        );
        ev.session = Some(SessionId::new(d.id.clone())?);
        ev.on_behalf_of = Some(delegator.did());
        ev.context = Some(Context::new(context)?);
        ev.details.insert("delegation".into(), jws.clone().into());
        ev.details.insert("agent".into(), agent.into());
        let start = ev.sign(&session)?;
        let r: SessionStarted = self
            .post(
                delegator,
                PATH_SESSIONS,
                &StartSession {
                    delegation: jws,
                    start,
                },
            )
            .await?;
        let file = SessionFile::new(
            &self.base,
            &session,
            d.id,
            delegator.did(),
            agent.into(),
            context.into(),
            scopes.to_vec(),
            r.expires_at,
            r.certificate_pem,
            r.ca_pem,
            r.ingest_token,
        );
        Ok((file, r.seq))
    }

    /// Mints a token for `scope`; the answer holds the token itself.
    pub async fn mint(&self, session: &SessionFile, scope: &str) -> anyhow::Result<Minted> {
        let key = session.key()?;
        let mut ev = session_event(session, "credential.request")?;
        ev.details.insert("scope".into(), scope.into());
        let request = ev.sign(&key)?;
        Ok(self
            .post(&key, PATH_TOKENS, &MintRequest { request })
            .await?)
    }

    /// Appends an event the session signs.
    pub async fn log(
        &self,
        session: &SessionFile,
        event: Event,
    ) -> Result<Appended, anyhow::Error> {
        let key = session.key()?;
        let signed = event.sign(&key)?;
        Ok(self.log_as(&key, signed, None).await?)
    }

    /// Appends an event signed by `key` (a session, a human or CI identity),
    /// with the payload body behind its `payload` digest if any.
    pub async fn log_as(
        &self,
        key: &KeyPair,
        event: SignedEvent,
        payload: Option<PayloadBody>,
    ) -> Result<Appended, ClientError> {
        self.post(key, PATH_EVENTS, &AppendEvent { event, payload })
            .await
    }

    /// Deletes a payload body as an admin; the chain is unchanged.
    pub async fn redact(
        &self,
        admin: &KeyPair,
        digest: &custody_ledger::PayloadDigest,
        reason: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(
            admin,
            PATH_REDACT,
            &RedactRequest {
                digest: digest.to_hex(),
                reason: reason.into(),
            },
        )
        .await
    }

    pub async fn status(&self, session: &SessionFile) -> Result<SessionStatus, anyhow::Error> {
        let key = session.key()?;
        Ok(self.post(&key, PATH_STATUS, &serde_json::json!({})).await?)
    }

    /// Asks the broker's pre-tool policy about a tool call (recorded there).
    pub async fn policy_check(
        &self,
        session: &SessionFile,
        check: &PolicyCheck,
    ) -> Result<PolicyDecision, anyhow::Error> {
        let key = session.key()?;
        Ok(self.post(&key, PATH_POLICY_CHECK, check).await?)
    }

    /// Submits a person's (or a reviewer's) signed `approval` event.
    pub async fn submit_approval(
        &self,
        approver: &KeyPair,
        event: SignedEvent,
    ) -> Result<ApprovalRecorded, ClientError> {
        self.post(approver, PATH_APPROVALS, &SubmitApproval { event })
            .await
    }

    /// The held calls `who` may decide, or the one held at `decision_seq`.
    pub async fn pending(
        &self,
        who: &KeyPair,
        decision_seq: Option<u64>,
    ) -> Result<PendingList, ClientError> {
        self.post(who, PATH_APPROVALS_PENDING, &PendingQuery { decision_seq })
            .await
    }

    /// Whether the session's held call (by action digest) was decided.
    pub async fn approval_status(
        &self,
        session: &SessionFile,
        action_digest: &str,
    ) -> Result<ApprovalStatus, anyhow::Error> {
        let key = session.key()?;
        Ok(self
            .post(
                &key,
                PATH_APPROVAL_STATUS,
                &ApprovalStatusQuery {
                    action_digest: action_digest.into(),
                },
            )
            .await?)
    }

    /// The kill switch: revokes `subject` as `admin`.
    pub async fn revoke(
        &self,
        admin: &KeyPair,
        subject: &Did,
        reason: &str,
    ) -> anyhow::Result<Revoked> {
        let rev = Revocation::new(
            admin.did(),
            subject.clone(),
            reason.into(),
            OffsetDateTime::now_utc(),
        )?;
        let jws = rev.issue(admin)?;
        let mut ev = Event::new(
            admin.did(),
            ActorKind::Human,
            ActionType::new(actions::IDENTITY_REVOKE)?,
        );
        ev.details.insert("subject".into(), subject.as_str().into());
        ev.details.insert("reason".into(), reason.into());
        ev.details.insert("revocation".into(), jws.into());
        let event = ev.sign(admin)?;
        Ok(self
            .post(admin, PATH_REVOKE, &RevokeRequest { event })
            .await?)
    }

    /// Downloads the bundle and unpacks it into `out` (which must not exist or be empty).
    pub async fn export(&self, admin: &KeyPair, out: &Path) -> anyhow::Result<()> {
        if out.exists() && std::fs::read_dir(out)?.next().is_some() {
            bail!("{} is not empty", out.display());
        }
        let resp = self.post_raw(admin, PATH_EXPORT, &ExportRequest {}).await?;
        if !resp.status.is_success() {
            return Err(api_error(resp.status, &resp.body).into());
        }
        let bytes = resp.body;
        let tmp = out.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut ar = tar::Archive::new(std::io::Cursor::new(bytes));
        for item in ar.entries()? {
            let mut item = item?;
            let path = item.path()?.into_owned();
            // Only plain files under bundle/ (no absolute paths, no `..`).
            let rel = path
                .strip_prefix("bundle")
                .map_err(|_| anyhow::anyhow!("unexpected path {} in export", path.display()))?;
            if rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                bail!("unsafe path {} in export", path.display());
            }
            match item.header().entry_type() {
                tar::EntryType::Directory => std::fs::create_dir_all(tmp.join(rel))?,
                tar::EntryType::Regular => {
                    if let Some(p) = tmp.join(rel).parent() {
                        std::fs::create_dir_all(p)?;
                    }
                    item.unpack(tmp.join(rel))?;
                }
                _ => bail!("unexpected entry type for {} in export", path.display()),
            }
        }
        if out.exists() {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out)?;
        Ok(())
    }
}

/// Salts a payload: the digest for the event and the body for the broker.
pub fn salted_payload(body: &[u8]) -> (custody_ledger::PayloadRef, PayloadBody) {
    use base64::Engine;
    let (pref, salt) = custody_ledger::bundle::salted_payload_ref(body);
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    (
        pref,
        PayloadBody {
            salt: e.encode(salt),
            body: e.encode(body),
        },
    )
}

/// An event by the session, with its session id, delegator and context filled in.
pub fn session_event(session: &SessionFile, action: &str) -> anyhow::Result<Event> {
    let mut ev = Event::new(
        session.did.clone(),
        ActorKind::Agent,
        ActionType::new(action)?,
    );
    ev.session = Some(SessionId::new(session.session_id.clone())?);
    ev.on_behalf_of = Some(session.delegator.clone());
    ev.context = Some(Context::new(session.context.clone())?);
    Ok(ev)
}

/// The error a non-2xx answer carries: the broker's `{"error","message"}`
/// body, or the raw text when it is not one.
fn api_error(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: String::from_utf8_lossy(bytes).chars().take(300).collect(),
        },
    }
}
