//! The control plane's errors, mapped once to Trove's fault JSON
//! (`{"itemNotFound": {"code": 404, "message": ...}}`, `trove/common/wsgi.py:Fault`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What a control-plane operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TroveError {
    /// 400: the request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or a bad token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: not allowed for this token.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object (also for names: the CLI then lists and matches).
    #[error("{0}")]
    NotFound(String),
    /// 409: the object is busy or in the wrong state.
    #[error("{0}")]
    Conflict(String),
    /// 413: over quota.
    #[error("{0}")]
    OverLimit(String),
    /// 422: understood but not possible.
    #[error("{0}")]
    Unprocessable(String),
    /// 500: our fault.
    #[error("{0}")]
    Internal(String),
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
}

/// Results of this crate.
pub type TroveResult<T> = Result<T, TroveError>;

impl TroveError {
    /// Trove's fault name and the status code.
    pub fn fault(&self) -> (&'static str, StatusCode) {
        match self {
            TroveError::BadRequest(_) => ("badRequest", StatusCode::BAD_REQUEST),
            TroveError::Unauthorized(_) => ("unauthorized", StatusCode::UNAUTHORIZED),
            TroveError::Forbidden(_) => ("forbidden", StatusCode::FORBIDDEN),
            TroveError::NotFound(_) => ("itemNotFound", StatusCode::NOT_FOUND),
            TroveError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
            TroveError::OverLimit(_) => ("overLimit", StatusCode::PAYLOAD_TOO_LARGE),
            TroveError::Unprocessable(_) => {
                ("unprocessableEntity", StatusCode::UNPROCESSABLE_ENTITY)
            }
            TroveError::Internal(_) => ("instanceFault", StatusCode::INTERNAL_SERVER_ERROR),
            TroveError::Unavailable(_) => ("serviceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

impl IntoResponse for TroveError {
    fn into_response(self) -> Response {
        let (name, code) = self.fault();
        if code.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body =
            serde_json::json!({ name: { "code": code.as_u16(), "message": self.to_string() } });
        (code, axum::Json(body)).into_response()
    }
}

impl From<sqlx::Error> for TroveError {
    fn from(e: sqlx::Error) -> TroveError {
        TroveError::Internal(format!("database: {e}"))
    }
}

impl From<k2hr3_client::Error> for TroveError {
    fn from(e: k2hr3_client::Error) -> TroveError {
        TroveError::Unavailable(format!("K2HR3: {e}"))
    }
}
