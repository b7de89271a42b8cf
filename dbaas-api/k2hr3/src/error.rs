//! The service's errors, and their one mapping to K2HR3's wire form: an HTTP status with
//! `{"result": false, "message": "..."}`. Storage failures are logged and answered with a
//! generic 500 message (never the SQL text).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum R3Error {
    /// Malformed or missing input.
    #[error("{0}")]
    BadRequest(String),
    /// No token, or a token that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid caller without the right to this object.
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already / conflicts.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else inside the service.
    #[error("internal: {0}")]
    Internal(String),
}

/// Results of the service.
pub type R3Result<T> = Result<T, R3Error>;

impl R3Error {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            R3Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            R3Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            R3Error::Forbidden(_) => StatusCode::FORBIDDEN,
            R3Error::NotFound(_) => StatusCode::NOT_FOUND,
            R3Error::Conflict(_) => StatusCode::CONFLICT,
            R3Error::Db(_) | R3Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message sent to the caller.
    pub fn message(&self) -> String {
        match self {
            R3Error::Db(_) | R3Error::Internal(_) => "internal error of the K2HR3 service".into(),
            e => e.to_string(),
        }
    }
}

/// Shorthand for a 400.
pub fn bad(m: impl Into<String>) -> R3Error {
    R3Error::BadRequest(m.into())
}

impl IntoResponse for R3Error {
    fn into_response(self) -> Response {
        if matches!(self, R3Error::Db(_) | R3Error::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let body = serde_json::json!({"result": false, "message": self.message()});
        (self.status(), axum::Json(body)).into_response()
    }
}
