//! The broker's error answers: an HTTP status, a typed code
//! ([`custody_wire::error::ErrorCode`]) and a message that names the problem.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custody_ledger::authority::Denial;
use custody_wire::api::ErrorBody;
use custody_wire::error::ErrorCode;

use crate::storage::{AppendFailure, StorageError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// `code` with its usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
        }
    }

    /// `code` with another status than its usual one.
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        Self::new(ErrorCode::Denied(d.code), d.message)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(m) => Self::new(ErrorCode::LedgerUnavailable, m),
            StorageError::Failed(m) => Self::internal(m),
        }
    }
}

impl From<AppendFailure> for ApiError {
    fn from(e: AppendFailure) -> Self {
        match e {
            AppendFailure::Refused(d) => d.into(),
            AppendFailure::Storage(e) => e.into(),
            e @ AppendFailure::ReplayedRequest => {
                Self::new(ErrorCode::ReplayedRequest, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code.as_str().into(),
                message: self.message,
            }),
        )
            .into_response()
    }
}
