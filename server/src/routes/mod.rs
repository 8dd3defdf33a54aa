//! The HTTP API (docs/API.md), one module per resource. The router is built
//! only through [`Routes`], which records for every route how it is
//! authenticated; [`table`] lists them, and a test sends each route that is
//! not public a request with no credentials and expects 401.
//!
//! | module | routes | caller |
//! |---|---|---|
//! | [`public`] | health, latest checkpoint, proofs, witness cosignatures | anyone |
//! | [`sessions`] | start a session, a session's status | delegator / session |
//! | [`tokens`] | mint a credential | session |
//! | [`events`] | append one event, a batch; a session's end | the events' actor |
//! | [`revocation`] | the kill switch | admin |
//! | [`export`] | the bundle, payload redaction | admin |
//! | [`checkpoints`] | sign a checkpoint now | admin |
//! | [`entries`] | the entry feed (follow mode by long poll) | auditor / admin |
//! | [`policy`] | the pre-tool policy's decision | session |
//! | [`approvals`] | submit an approval, held calls to decide, a held call's status | approver / session |
//! | [`otlp`] | OTLP/HTTP logs | a session's ingest token |

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;

use crate::state::AppState;

mod approvals;
mod checkpoints;
mod entries;
mod events;
mod export;
mod otlp;
mod policy;
pub mod public;
mod revocation;
mod sessions;
mod tokens;

/// How a route knows who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nobody in particular: only in [`public`].
    Public,
    /// A request signed by its caller ([`crate::auth::Signed`], or
    /// [`crate::auth::SignedQuery`] for a `GET`).
    Signed,
    /// A session's OTLP ingest token ([`crate::auth::Ingest`]).
    Ingest,
}

#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// The router under construction, and what each route requires.
pub struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<RouteInfo>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add(
        mut self,
        access: Access,
        method: Method,
        path: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.table.push(RouteInfo {
            method,
            path,
            access,
        });
        self.router = self.router.route(path, handler);
        self
    }

    /// A route whose handler takes a [`crate::auth::Signed`] body or a
    /// [`crate::auth::SignedQuery`].
    fn signed(
        self,
        method: Method,
        path: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.add(Access::Signed, method, path, handler)
    }

    /// A route whose handler takes an [`crate::auth::Ingest`].
    fn ingest(
        self,
        method: Method,
        path: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.add(Access::Ingest, method, path, handler)
    }
}

fn routes() -> Routes {
    let r = public::routes(Routes::new());
    let r = sessions::routes(r);
    let r = tokens::routes(r);
    let r = events::routes(r);
    let r = revocation::routes(r);
    let r = export::routes(r);
    let r = checkpoints::routes(r);
    let r = entries::routes(r);
    let r = policy::routes(r);
    let r = approvals::routes(r);
    otlp::routes(r)
}

/// Every route of the router with how it is authenticated.
pub fn table() -> Vec<RouteInfo> {
    routes().table
}

/// The broker's router: every route, the body limit, and the listener's
/// deadline for reading bodies ([`crate::listener::read_body_in_time`]).
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.limits.max_body;
    routes()
        .router
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::listener::read_body_in_time,
        ))
        .with_state(state)
}
