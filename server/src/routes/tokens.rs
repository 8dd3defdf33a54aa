//! Credentials: a session asks for a token for one of its scopes; the mint
//! runs as the explicit steps of [`crate::credentials`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_wire::api::{MintRequest, Minted, PATH_TOKENS};

use super::Routes;
use crate::auth::Signed;
use crate::credentials;
use crate::error::ApiResult;
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_TOKENS, post(mint))
}

/// `POST /v1/tokens`, signed by the session.
async fn mint(State(s): State<Arc<AppState>>, req: Signed<MintRequest>) -> ApiResult<Json<Minted>> {
    let (caller, req) = req.into_parts();
    let authorized = credentials::authorize(&s, &caller, req).await?;
    let recorded = credentials::issue(&s, authorized).await?;
    Ok(Json(credentials::hand_out(recorded)))
}
