//! Authentication by type. A route that needs a caller takes a [`Signed<T>`]
//! (a request signed by its caller's did:key, with a JSON body), a
//! [`SignedQuery<Q>`] (a signed `GET`: the signature covers method, path and
//! query and an empty body) or an [`Ingest`] (an OTLP export with a session's
//! bearer token); only this module can build any of them, after the checks
//! below. A route that takes neither is public, and the
//! public routes live together in [`crate::routes::public`]; a test walks
//! every route of the router to hold that.
//!
//! A signed request is checked in this order: headers and signature
//! (`custody_wire::signing`), timestamp within `limits.clock_skew`, the
//! caller's request budget ([`crate::ratelimit`]), then its nonce
//! ([`crate::replay`]) — the budget first, so a flood is refused before it
//! can fill the replay cache. An append request ([`SignedAppend`]) may
//! leave its nonce to the append's own transaction.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use custody_identity::{Delegation, Did};
use custody_ledger::actions::Role;
use custody_wire::error::ErrorCode;
use custody_wire::signing::{self, RequestAuthError, RequestParts};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ratelimit::RateError;
use crate::replay::ReplayError;
use crate::state::AppState;
use crate::storage::RequestNonce;

/// A request signed by its caller, with its JSON body. Only
/// [`FromRequest`] below builds one, after authenticating the request.
pub struct Signed<T> {
    caller: Did,
    roles: Vec<Role>,
    body: T,
}

impl<T> Signed<T> {
    /// The DID whose key signed the request.
    pub fn caller(&self) -> &Did {
        &self.caller
    }

    /// The roles the ledger's state gave the caller when it was
    /// authenticated ([`Role::NewSession`] alone: none).
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn body(&self) -> &T {
        &self.body
    }

    pub fn into_parts(self) -> (Did, T) {
        (self.caller, self.body)
    }
}

fn auth_code(e: &RequestAuthError) -> ErrorCode {
    match e {
        RequestAuthError::Missing(_) => ErrorCode::Unsigned,
        RequestAuthError::Malformed(_) => ErrorCode::MalformedSignature,
        RequestAuthError::BadDid(_) => ErrorCode::BadDid,
        RequestAuthError::Stale(..) => ErrorCode::StaleRequest,
        RequestAuthError::Replayed => ErrorCode::ReplayedRequest,
        RequestAuthError::BadSignature(_) => ErrorCode::BadSignature,
    }
}

/// Checks a signed request: headers, signature, freshness, budget. Returns
/// the caller and the request's nonce, which is not remembered yet: see
/// [`remember`].
async fn authenticate(
    s: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Did, RequestNonce), ApiError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        did: h(signing::HEADER_DID),
        timestamp: h(signing::HEADER_TIMESTAMP),
        nonce: h(signing::HEADER_NONCE),
        signature: h(signing::HEADER_SIGNATURE),
        body,
    };
    let skew = s.cfg.limits.clock_skew.as_millis() as i64;
    let now = signing::now_ms();
    let asked = std::time::Instant::now();
    let (did, ts, nonce) = signing::verify_request(&parts, now, skew)
        .map_err(|e| ApiError::new(auth_code(&e), e.to_string()))?;
    // A caller this broker does not know may be a session another broker
    // sharing the ledger started a moment ago: catch up before it counts as
    // a stranger (its budget, its refusals).
    // One look at the rules' state per request (it takes the gate's lock).
    let mut known = s.knows(&did);
    if !known {
        s.storage.catch_up_since(asked).await?;
        known = s.knows(&did);
    }
    s.rate
        .check(&did, || known)
        .map_err(|e: RateError| ApiError::new(ErrorCode::RateLimited, e.to_string()))?;
    // A nonce only needs remembering while its timestamp is acceptable.
    let forget_at_ms = ts + skew + 1;
    Ok((
        did,
        RequestNonce {
            nonce,
            forget_at_ms,
        },
    ))
}

/// Remembers a signed request's nonce, or refuses the request as a replay.
/// Brokers sharing a ledger share the set (in its database), so a request
/// replayed to another broker is refused too; a broker alone keeps it in
/// memory ([`crate::replay`]).
async fn remember(s: &AppState, n: RequestNonce) -> Result<(), ApiError> {
    let replayed = || {
        ApiError::new(
            ErrorCode::ReplayedRequest,
            ReplayError::Replayed.to_string(),
        )
    };
    match s.storage.remember_request_nonce(n).await {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => Err(replayed()),
        Some(Err(e)) => Err(e.into()),
        None => s
            .nonces
            .insert(n.nonce, n.forget_at_ms, signing::now_ms())
            .map_err(|e| match e {
                ReplayError::Replayed => replayed(),
                ReplayError::Full => ApiError::new(ErrorCode::Busy, e.to_string()),
            }),
    }
}

/// Parses a JSON body with a message that names the problem.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("request body: {e}")))
}

/// Reads the body (within its limits) and authenticates the request; its
/// nonce is not remembered yet.
async fn authenticated(
    req: Request,
    s: &AppState,
) -> Result<(Parts, Did, RequestNonce, axum::body::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    // The whole body was read, within its limits, by the listener
    // (`crate::listener::read_body_in_time`).
    let bytes = axum::body::to_bytes(body, s.cfg.limits.max_body)
        .await
        .map_err(|e| ApiError::new(ErrorCode::MalformedBody, e.to_string()))?;
    let (caller, nonce) =
        authenticate(s, &parts.method, &parts.uri, &parts.headers, &bytes).await?;
    Ok((parts, caller, nonce, bytes))
}

/// Authenticates a request with a JSON body and parses the body. Its nonce
/// is remembered now, unless `with_append` and the backend keeps it with
/// the append ([`SignedAppend`]); then it comes back unspent. A body that
/// does not parse is refused before anything is done for the request, so
/// a nonce left for the append need not be kept for it.
async fn signed_json<T: DeserializeOwned>(
    req: Request,
    s: &AppState,
    with_append: bool,
) -> Result<(Did, T, UnspentNonce), ApiError> {
    let (_, caller, nonce, bytes) = authenticated(req, s).await?;
    let nonce = if with_append && s.storage.nonce_with_append() {
        UnspentNonce(Some(nonce))
    } else {
        remember(s, nonce).await?;
        UnspentNonce(None)
    };
    Ok((caller, parse_body(&bytes)?, nonce))
}

impl<T> FromRequest<Arc<AppState>> for Signed<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (caller, body, _remembered) = signed_json(req, s, false).await?;
        let roles = s.rules(|a| a.roles_of(&caller));
        Ok(Signed {
            caller,
            roles,
            body,
        })
    }
}

/// A signed request to append events (the `/v1/events` routes). It is
/// authenticated like a [`Signed`], except that on a backend that can
/// ([`Storage::nonce_with_append`]) its nonce is remembered in the
/// transaction that appends its events, so an append request costs the
/// ledger database one transaction instead of two. The handler gets the
/// nonce back as an [`UnspentNonce`] and must either append with it
/// ([`AppState::append_for_request`]) or [`spend`](UnspentNonce::spend) it
/// before doing anything else for the request (refusing it, recording the
/// refusal): a replayed request is then refused as a replay, whatever path
/// it would have taken.
///
/// [`Storage::nonce_with_append`]: crate::storage::Storage::nonce_with_append
/// [`AppState::append_for_request`]: crate::state::AppState::append_for_request
pub struct SignedAppend<T> {
    caller: Did,
    nonce: UnspentNonce,
    body: T,
}

impl<T> SignedAppend<T> {
    pub fn into_parts(self) -> (Did, T, UnspentNonce) {
        (self.caller, self.body, self.nonce)
    }
}

/// A signed append request's nonce, when the backend remembers it with the
/// append (`None`: it was remembered when the request was authenticated).
/// Only this module builds one.
#[must_use = "an append request's nonce must be appended with its events or spent"]
pub struct UnspentNonce(Option<RequestNonce>);

impl UnspentNonce {
    /// Remembers the nonce now (refusing a replay), for a request that will
    /// not append with it.
    pub async fn spend(self, s: &AppState) -> Result<(), ApiError> {
        match self.0 {
            Some(n) => remember(s, n).await,
            None => Ok(()),
        }
    }

    /// The nonce to remember with the append, if it was not remembered yet.
    pub(crate) fn take(self) -> Option<RequestNonce> {
        self.0
    }
}

impl<T> FromRequest<Arc<AppState>> for SignedAppend<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (caller, body, nonce) = signed_json(req, s, true).await?;
        Ok(SignedAppend {
            caller,
            nonce,
            body,
        })
    }
}

/// A signed request without a body (a `GET`): the caller signed its method,
/// path and query and the empty body, so the query it carries is the one it
/// signed. Only [`FromRequest`] below builds one; the query is parsed only
/// once the caller is authenticated, so an unsigned request learns nothing
/// about what a well-formed query looks like.
pub struct SignedQuery<Q> {
    caller: Did,
    query: Q,
}

impl<Q> SignedQuery<Q> {
    /// The DID whose key signed the request.
    pub fn caller(&self) -> &Did {
        &self.caller
    }

    pub fn query(&self) -> &Q {
        &self.query
    }
}

impl<Q> FromRequest<Arc<AppState>> for SignedQuery<Q>
where
    Q: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (parts, caller, nonce, bytes) = authenticated(req, s).await?;
        remember(s, nonce).await?;
        if !bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MalformedBody,
                "this request takes no body (sign the empty body)",
            ));
        }
        let query = axum::extract::Query::<Q>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("query: {}", e.body_text())))?
            .0;
        Ok(SignedQuery { caller, query })
    }
}

/// An OTLP export authenticated by a session's ingest token
/// (`Authorization: Bearer …`), whose session may act now. Only
/// [`FromRequestParts`] below builds one.
pub struct Ingest {
    session: Delegation,
}

impl Ingest {
    /// The delegation of the session the token belongs to.
    pub fn session(&self) -> &Delegation {
        &self.session
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl FromRequestParts<Arc<AppState>> for Ingest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<AppState>) -> Result<Self, ApiError> {
        let asked = std::time::Instant::now();
        let unauth = |m: String| ApiError::new(ErrorCode::BadIngestToken, m);
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauth("send the session's ingest token as `Authorization: Bearer <token>`".into())
            })?;
        let did = s
            .storage
            .ingest_session(&sha256_hex(token.trim()))
            .await?
            .ok_or_else(|| unauth("unknown or revoked ingest token".into()))?;
        // The same state the rules hold appends to: revoked, expired or
        // ended sessions are refused whatever the side table still holds
        // (after catching up, for a session another broker just started).
        if s.active_session(&did).is_err() {
            s.storage.catch_up_since(asked).await?;
        }
        let session = s
            .active_session(&did)
            .map_err(|why| unauth(format!("the ingest token's session may not act: {why}")))?;
        Ok(Ingest { session })
    }
}
