//! Credentials in OpenBao/Vault: the mint as explicit steps, and the kill
//! switch's revocation of every live token of an identity.
//!
//! A mint is [`authorize`] → [`mint`] → [`record`] → [`hand_out`], each step
//! taking the previous one's value, so a token can only be handed out once
//! it is recorded. What each failure leaves:
//!
//! | step | failure | answer | left behind |
//! |---|---|---|---|
//! | authorize | the rules or the config refuse | 403, recorded `request.denied` | nothing else |
//! | mint | OpenBao refuses or is down | 502 `vault` | nothing |
//! | record | the accessor cannot be kept | 500 | the token revoked in OpenBao, a `credential.revoke` recorded |
//! | record | the ledger refuses or cannot append | 403 / 503 | the token revoked, its accessor forgotten |
//!
//! The token may only leave after the entry recording it and the accessor
//! the kill switch needs are durable; the two are written side by side. A
//! mint holds the mint lock shared from [`authorize`] until [`record`] ends,
//! and a revocation takes it exclusively, so every token is either recorded
//! before a revocation (and revoked by it) or refused after it.
//!
//! With per-session parent tokens ([`crate::parents`]), [`issue`] runs the
//! mint and the record side by side instead: the accessor the kill switch
//! needs is the parent's, durable before the session's first token, so the
//! entry (naming the parent) is made durable while OpenBao creates the child
//! (a batch token, which cannot be revoked alone).
//!
//! | step | failure | answer | left behind |
//! |---|---|---|---|
//! | parent | OpenBao refuses, or its accessor cannot be kept | 502 / 500 | nothing (the parent revoked) |
//! | child + record | OpenBao refuses, the entries were recorded | 502 `vault` | a `credential.revoke` citing the mint: no token was made |
//! | child + record | the ledger refuses or cannot append | 403 / 503 | the parent revoked with every child (the session's next mint makes a new one), recorded if the ledger can |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use custody_identity::{Delegation, Did};
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_ledger::{SignedEvent, Timestamp};
use custody_wire::api::{self, MintRequest};
use custody_wire::error::ErrorCode;
use time::OffsetDateTime;
use tokio::sync::OwnedRwLockReadGuard;

use crate::attest::{MintRecord, RevokeRecord};
use crate::error::{ApiError, ApiResult};
use crate::parents::{AccessorRecord, Parent};
use crate::state::AppState;
use crate::storage::AppendFailure;
use crate::vault::{accessor_hash, MintedToken, Vault};

/// Token revocations in flight at once during a kill switch.
pub const REVOKE_CONCURRENCY: usize = 16;

/// A mint the rules and the configuration allow: this session, this scope,
/// this TTL. Holds the mint lock shared.
pub struct Authorized {
    session: Delegation,
    scope: String,
    policies: Vec<String>,
    ttl: Duration,
    request: SignedEvent,
    _lock: OwnedRwLockReadGuard<()>,
}

/// A token OpenBao created and nobody has received: it must be recorded or
/// revoked.
pub struct Minted {
    authorized: Authorized,
    token: MintedToken,
}

/// A token whose ledger entries and accessor are durable.
pub struct Recorded {
    minted: Minted,
    accessor_sha256: String,
    request_seq: u64,
    mint_seq: u64,
}

/// Step 1: may this caller have a token for this scope now?
pub async fn authorize(s: &Arc<AppState>, caller: &Did, req: MintRequest) -> ApiResult<Authorized> {
    let ev = &req.request.event;
    let what = actions::CREDENTIAL_MINT;
    if &ev.actor != caller {
        let why = format!(
            "the request is signed by {caller} but the event's actor is {}",
            ev.actor
        );
        return Err(s.refuse(caller, what, DenialCode::DidMismatch, why).await);
    }
    if ev.action.as_str() != actions::CREDENTIAL_REQUEST {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "the request event's action must be credential.request",
        ));
    }
    let Some(scope_name) = ev.detail_str("scope").map(str::to_string) else {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "credential.request needs details.scope",
        ));
    };
    let Some(scope) = s.cfg.scope(&scope_name).cloned() else {
        let why = format!("scope {scope_name:?} is not defined");
        return Err(s.refuse(caller, what, DenialCode::UnknownScope, why).await);
    };
    if s.vault.is_none() {
        return Err(ApiError::new(
            ErrorCode::NoVault,
            "this broker has no [vault] configured",
        ));
    }
    // Held until the token is recorded, so a revocation waits for us.
    let lock = s.mint_lock.clone().read_owned().await;
    let now = Timestamp::now();
    let grant = s.rules(|a| {
        a.check(&req.request, now)
            .map(|_| a.session(caller).map(|g| g.delegation.clone()))
    });
    let session = match grant {
        Err(d) => return Err(s.refuse(caller, what, d.code, d.message).await),
        Ok(None) => {
            let why = format!("{caller} is not a started session");
            return Err(s.refuse(caller, what, DenialCode::NoSession, why).await);
        }
        Ok(Some(d)) => d,
    };
    if !scope.contexts.iter().any(|c| c.as_str() == session.context) {
        let why = format!(
            "scope {scope_name:?} is not allowed in context {:?}",
            session.context
        );
        return Err(s
            .refuse(caller, what, DenialCode::ContextMismatch, why)
            .await);
    }
    let remaining = session.not_after - OffsetDateTime::now_utc();
    let remaining = Duration::from_secs(remaining.whole_seconds().max(0) as u64);
    let ttl = scope.max_ttl.min(remaining);
    if ttl.as_secs() < 1 {
        let why = "the session has expired".to_string();
        return Err(s.refuse(caller, what, DenialCode::Expired, why).await);
    }
    Ok(Authorized {
        session,
        scope: scope_name,
        policies: scope.policies,
        ttl,
        request: req.request,
        _lock: lock,
    })
}

/// Steps 2 and 3 for this broker's configuration: [`mint`] then [`record`],
/// or both at once under the session's parent token.
pub async fn issue(s: &Arc<AppState>, a: Authorized) -> ApiResult<Recorded> {
    match s.vault.as_ref() {
        Some(v) if v.uses_parents() => issue_under_parent(s, v, a).await,
        _ => record(s, mint(s, a).await?).await,
    }
}

fn vault(s: &AppState) -> ApiResult<&Vault> {
    s.vault
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::NoVault, "this broker has no [vault] configured"))
}

/// Metadata OpenBao keeps with the token, naming the session and the request.
fn token_meta(a: &Authorized) -> HashMap<String, String> {
    HashMap::from([
        (
            "custody_session_did".to_string(),
            a.session.session.to_string(),
        ),
        ("custody_session_id".to_string(), a.session.id.clone()),
        ("custody_scope".to_string(), a.scope.clone()),
        (
            "custody_request_nonce".to_string(),
            a.request.event.nonce.to_hex(),
        ),
    ])
}

/// Step 2: OpenBao creates the token (exactly the scope's policies, no
/// default policy, TTL as authorized).
pub async fn mint(s: &Arc<AppState>, a: Authorized) -> ApiResult<Minted> {
    let vault = vault(s)?;
    let meta = token_meta(&a);
    let token = vault
        .mint(&a.policies, a.ttl, meta, &format!("custody-{}", a.scope))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Vault, e.to_string()))?;
    Ok(Minted {
        authorized: a,
        token,
    })
}

/// Step 3: the session's request, the ledger's `credential.mint` and the
/// accessor, durable side by side; on any failure the token is revoked.
pub async fn record(s: &Arc<AppState>, m: Minted) -> ApiResult<Recorded> {
    let a = &m.authorized;
    let session_did = a.session.session.clone();
    let acc_hash = accessor_hash(&m.token.accessor);
    let rec = s.attest.credential_mint(&MintRecord {
        session: &a.session,
        scope: &a.scope,
        policies: &m.token.policies,
        ttl_seconds: m.token.ttl.as_secs(),
        accessor_sha256: Some(&acc_hash),
        parent_accessor_sha256: None,
        request_nonce: a.request.event.nonce.to_hex(),
    });
    let expires = OffsetDateTime::now_utc().unix_timestamp() + m.token.ttl.as_secs() as i64;
    let stored = AccessorRecord::Token(m.token.accessor.clone()).encode();
    let keep_accessor = s.storage.record_accessor(&session_did, &stored, expires);
    let append = append_mint(s, a.request.clone(), rec);
    // With other brokers on the same ledger, the accessor is durable before
    // the entries are appended: a revocation elsewhere reads the accessors
    // once its own entry has committed, so it finds this token if this
    // mint's entries precede it, and if they follow it the rules refuse
    // them (and the token is revoked below).
    let (kept, appended) = if s.storage.shared() {
        let kept = keep_accessor.await;
        if kept.is_ok() {
            (kept, append.await)
        } else {
            (kept, Ok((0, 0)))
        }
    } else {
        tokio::join!(keep_accessor, append)
    };
    if let Err(why) = kept {
        // Not revocable by the kill switch: the token must not live.
        revoke_unrecorded(s, &m, &acc_hash).await;
        let rev = s.attest.credential_revoke(&RevokeRecord {
            subject: &session_did,
            because_seq: None,
            reason: "its accessor could not be recorded",
            sessions: std::slice::from_ref(&session_did),
            accessor_sha256: std::slice::from_ref(&acc_hash),
            tokens_revoked: 1,
            parents_revoked: 0,
            failures: &[],
        });
        let _ = s.append_attested(vec![rev]).await;
        return Err(ApiError::internal(format!(
            "recording the token's accessor failed; token revoked: {why}"
        )));
    }
    match appended {
        Ok((request_seq, mint_seq)) => Ok(Recorded {
            minted: m,
            accessor_sha256: acc_hash,
            request_seq,
            mint_seq,
        }),
        Err(refused) => {
            // Not recorded: the token must not live.
            revoke_unrecorded(s, &m, &acc_hash).await;
            let _ = s
                .storage
                .forget_accessor(
                    &session_did,
                    &AccessorRecord::Token(m.token.accessor.clone()).encode(),
                )
                .await;
            Err(refused.into_error(s, &session_did).await)
        }
    }
}

/// Why the session's request and the ledger's `credential.mint` were not
/// recorded.
enum NotRecorded {
    Api(ApiError),
    Append(AppendFailure),
}

impl NotRecorded {
    async fn into_error(self, s: &Arc<AppState>, session: &Did) -> ApiError {
        match self {
            Self::Api(e) => e,
            Self::Append(AppendFailure::Refused(d)) => {
                s.refuse(session, actions::CREDENTIAL_MINT, d.code, d.message)
                    .await
            }
            Self::Append(e) => e.into(),
        }
    }
}

/// Signs the ledger's `credential.mint` and appends it after the session's
/// request; returns both seqs once durable.
async fn append_mint(
    s: &Arc<AppState>,
    request: SignedEvent,
    rec: custody_ledger::Event,
) -> Result<(u64, u64), NotRecorded> {
    let internal = |e: String| NotRecorded::Api(ApiError::internal(e));
    // One signature (tens of microseconds) on this thread: the hop to the
    // blocking pool and back cost ~200 µs of the mint (p50, measured while
    // OpenBao made the token on the same two cores).
    let rec = rec
        .sign(&s.ledger_key)
        .map_err(|e| internal(e.to_string()))?;
    let mut results = s.append(vec![request, rec]).await.into_iter();
    match (results.next(), results.next()) {
        (Some(Ok(r)), Some(Ok(m))) => Ok((r.seq.0, m.seq.0)),
        (Some(Err(e)), _) | (_, Some(Err(e))) => Err(NotRecorded::Append(e)),
        _ => Err(internal("the mint could not be recorded".into())),
    }
}

/// The session's parent token in this process, made (and its accessor made
/// durable) on the session's first mint here.
async fn parent_for(s: &Arc<AppState>, v: &Vault, a: &Authorized) -> ApiResult<Arc<Parent>> {
    let session = &a.session.session;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Some(p) = s.parents.get(session, now) {
        return Ok(p);
    }
    let _one = s.parents.creating.lock().await;
    if let Some(p) = s.parents.get(session, now) {
        return Ok(p);
    }
    // As long as the session: every child's TTL is within it.
    let life = (a.session.not_after - OffsetDateTime::now_utc()).whole_seconds();
    let ttl = Duration::from_secs(life.max(1) as u64);
    let mut meta = token_meta(a);
    meta.remove("custody_scope");
    meta.remove("custody_request_nonce");
    meta.insert("custody_parent".into(), "true".into());
    let t = v
        .create_parent(ttl, meta)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Vault, e.to_string()))?;
    let expires = now + t.ttl.as_secs() as i64;
    let record = AccessorRecord::Parent(t.accessor.clone()).encode();
    if let Err(why) = s.storage.record_accessor(session, &record, expires).await {
        // Not revocable by the kill switch: it must not live.
        if let Err(e) = v.revoke_accessor(&t.accessor).await {
            tracing::error!(
                accessor_sha256 = accessor_hash(&t.accessor),
                "revoking an unrecorded parent token failed: {e}"
            );
        }
        return Err(ApiError::internal(format!(
            "recording the session's parent token failed; it was revoked: {why}"
        )));
    }
    let p = Arc::new(Parent::new(t.token, t.accessor, expires));
    s.parents.insert(session.clone(), p.clone(), now);
    Ok(p)
}

/// Revokes a session's parent (and so every token under it) outside a kill
/// switch: a child exists that must not live. Recorded as a
/// `credential.revoke` when the ledger can take it.
async fn drop_parent(s: &Arc<AppState>, v: &Vault, parent: &Parent, session: &Did) {
    s.parents.take(std::slice::from_ref(session));
    let failures: Vec<String> = match v.revoke_accessor(&parent.accessor).await {
        Ok(()) => {
            let stored = AccessorRecord::Parent(parent.accessor.clone()).encode();
            let _ = s.storage.forget_accessor(session, &stored).await;
            Vec::new()
        }
        Err(e) => {
            tracing::error!(
                accessor_sha256 = parent.accessor_sha256,
                "revoking a session's parent token failed: {e}"
            );
            vec![e.to_string()]
        }
    };
    let rev = s.attest.credential_revoke(&RevokeRecord {
        subject: session,
        because_seq: None,
        reason: "a token under this parent could not be recorded",
        sessions: std::slice::from_ref(session),
        accessor_sha256: std::slice::from_ref(&parent.accessor_sha256),
        tokens_revoked: parent.children(),
        parents_revoked: u64::from(failures.is_empty()),
        failures: &failures,
    });
    let _ = s.append_attested(vec![rev]).await;
}

/// Steps 2 and 3 at once under the session's parent: the entries naming the
/// parent are made durable while OpenBao creates the child.
async fn issue_under_parent(s: &Arc<AppState>, v: &Vault, a: Authorized) -> ApiResult<Recorded> {
    let parent = parent_for(s, v, &a).await?;
    let session_did = a.session.session.clone();
    let rec = s.attest.credential_mint(&MintRecord {
        session: &a.session,
        scope: &a.scope,
        policies: &a.policies,
        ttl_seconds: a.ttl.as_secs(),
        accessor_sha256: None,
        parent_accessor_sha256: Some(&parent.accessor_sha256),
        request_nonce: a.request.event.nonce.to_hex(),
    });
    let display = format!("custody-{}", a.scope);
    let create = v.mint_child(parent.token(), &a.policies, a.ttl, token_meta(&a), &display);
    let append = append_mint(s, a.request.clone(), rec);
    let (created, appended) = tokio::join!(create, append);
    match (created, appended) {
        (Ok(token), Ok((request_seq, mint_seq))) => {
            parent.add_child();
            Ok(Recorded {
                minted: Minted {
                    authorized: a,
                    token,
                },
                // A batch token has no accessor: the one that reaches it.
                accessor_sha256: parent.accessor_sha256.clone(),
                request_seq,
                mint_seq,
            })
        }
        (Ok(_unrecorded), Err(refused)) => {
            // Not recorded: the token must not live, and only its parent
            // can take it down — with the session's other tokens.
            drop_parent(s, v, &parent, &session_did).await;
            Err(refused.into_error(s, &session_did).await)
        }
        (Err(e), Ok((_, mint_seq))) => {
            if matches!(e, crate::vault::VaultError::WrongPolicies { .. }) {
                // OpenBao made a token unlike the one asked for.
                drop_parent(s, v, &parent, &session_did).await;
            }
            // Recorded, never made: the ledger says so.
            let why = format!("OpenBao did not create the token: {e}");
            let rev = s.attest.credential_revoke(&RevokeRecord {
                subject: &session_did,
                because_seq: Some(mint_seq),
                reason: &why,
                sessions: std::slice::from_ref(&session_did),
                accessor_sha256: &[],
                tokens_revoked: 0,
                parents_revoked: 0,
                failures: &[],
            });
            let _ = s.append_attested(vec![rev]).await;
            Err(ApiError::new(ErrorCode::Vault, e.to_string()))
        }
        (Err(e), Err(refused)) => {
            tracing::warn!("OpenBao refused a mint the ledger also refused: {e}");
            Err(refused.into_error(s, &session_did).await)
        }
    }
}

/// Revokes a token nobody received.
async fn revoke_unrecorded(s: &Arc<AppState>, m: &Minted, acc_hash: &str) {
    if let Some(v) = &s.vault {
        if let Err(e) = v.revoke_accessor(&m.token.accessor).await {
            tracing::error!(
                accessor_sha256 = acc_hash,
                "revoking an unrecorded token failed: {e}"
            );
        }
    }
}

/// Step 4: the token leaves, in this answer only.
pub fn hand_out(r: Recorded) -> api::Minted {
    let Recorded {
        minted,
        accessor_sha256,
        request_seq,
        mint_seq,
    } = r;
    api::Minted {
        token: minted.token.token,
        ttl_seconds: minted.token.ttl.as_secs(),
        policies: minted.token.policies,
        accessor_sha256,
        request_seq,
        mint_seq,
    }
}

/// What [`kill`] did.
pub struct Killed {
    /// Tokens revoked: those recorded one by one, and the children this
    /// process minted under the parents it revoked.
    pub revoked: u64,
    /// Parent tokens revoked (each with all its children, including any a
    /// restarted or other broker process minted).
    pub parents: u64,
    pub failures: Vec<String>,
}

/// Revokes in OpenBao every recorded token of `targets`, tidies their ingest
/// credentials, and records a `credential.revoke` for `subject` citing the
/// entry at `because_seq` (a revocation, or a session's end). Callers hold
/// the mint lock exclusively.
pub async fn kill(
    s: &Arc<AppState>,
    subject: &Did,
    targets: &[Did],
    because_seq: u64,
    reason: &str,
) -> Killed {
    let mut failures = Vec::new();
    let pending = s.storage.accessors_of(targets).await.unwrap_or_else(|e| {
        failures.push(format!("reading recorded accessors: {e}"));
        Vec::new()
    });
    let mut revoked = 0u64;
    let mut parents = 0u64;
    let mut hashes = Vec::new();
    match &s.vault {
        None if !pending.is_empty() => failures.push("no vault configured".to_string()),
        None => {}
        // REVOKE_CONCURRENCY at a time: each is one OpenBao round trip, and
        // the kill switch's latency is their sum otherwise.
        Some(_) => {
            for chunk in pending.chunks(REVOKE_CONCURRENCY) {
                let mut set = tokio::task::JoinSet::new();
                for (did, stored) in chunk.iter().cloned() {
                    let s2 = s.clone();
                    set.spawn(async move {
                        let record = AccessorRecord::decode(&stored);
                        let r = match &s2.vault {
                            Some(v) => v
                                .revoke_accessor(record.accessor())
                                .await
                                .map_err(|e| e.to_string()),
                            None => Err("no vault configured".to_string()),
                        };
                        (did, stored, record, r)
                    });
                }
                while let Some(done) = set.join_next().await {
                    match done {
                        Ok((did, stored, record, Ok(()))) => {
                            match record {
                                AccessorRecord::Token(_) => revoked += 1,
                                AccessorRecord::Parent(_) => parents += 1,
                            }
                            hashes.push(accessor_hash(record.accessor()));
                            let _ = s.storage.forget_accessor(&did, &stored).await;
                        }
                        Ok((_, _, _, Err(e))) => failures.push(e),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
        }
    }
    // The children of the parents just revoked are revoked with them; those
    // this process minted are counted.
    for p in s.parents.take(targets) {
        revoked += p.children();
    }
    hashes.sort();
    // The targets' ingest credentials are refused from now on by the
    // ledger's state; dropping them here only tidies the table.
    let _ = s.storage.forget_ingest_of(targets).await;
    let rec = s.attest.credential_revoke(&RevokeRecord {
        subject,
        because_seq: Some(because_seq),
        reason,
        sessions: targets,
        accessor_sha256: &hashes,
        tokens_revoked: revoked,
        parents_revoked: parents,
        failures: &failures,
    });
    let _ = s.append_attested(vec![rec]).await;
    Killed {
        revoked,
        parents,
        failures,
    }
}
