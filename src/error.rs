//! The one error type of the server and its mapping to Matrix `errcode` + HTTP status.
//!
//! Every fallible path that can reach a client ends in [`Error`]. Client mistakes carry the
//! spec's error kind and a message a person can act on; internal failures (storage, I/O, a
//! bug) are logged with their detail and answered as `500 M_UNKNOWN` without leaking it.

use std::{borrow::Cow, fmt, time::Duration};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ruma::api::{
    OutgoingResponseExt,
    error::{
        Error as RumaError, ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter,
        StandardErrorBody, UnknownTokenErrorData, UserLimitExceededErrorData,
    },
};

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error that can be answered to a Matrix client or server. `Clone`, so that callers
/// sharing one piece of work (see `federation::flight`) each get its error.
#[derive(Debug, Clone)]
pub enum Error {
    /// A request the spec has an answer for: status, errcode and a human message.
    Matrix { status: StatusCode, kind: ErrorKind, message: Cow<'static, str> },
    /// A response with a non-standard JSON body (User-Interactive Authentication's 401).
    Json { status: StatusCode, body: serde_json::Value },
    /// Something went wrong inside the server; details are logged, not sent.
    Internal(Cow<'static, str>),
}

impl Error {
    /// An error with an explicit status and kind.
    pub fn matrix(
        status: StatusCode,
        kind: ErrorKind,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::Matrix { status, kind, message: message.into() }
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }

    pub fn not_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }

    pub fn invalid_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }

    pub fn missing_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::MissingParam, message)
    }

    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge, message)
    }

    /// `400 M_TOO_LARGE`: one value of the request is over its bound (the whole request
    /// over `max_request_size` is [`Error::too_large`], 413).
    pub fn field_too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::TooLarge, message)
    }

    pub fn unrecognized(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(status, ErrorKind::Unrecognized, message)
    }

    /// `401 M_UNAUTHORIZED`: a server-server request without a valid `X-Matrix` signature.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, message)
    }

    pub fn missing_token() -> Self {
        Self::matrix(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "Missing access token: send it as 'Authorization: Bearer <token>'.",
        )
    }

    pub fn unknown_token(soft_logout: bool, message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken({
                let mut data = UnknownTokenErrorData::new();
                data.soft_logout = soft_logout;
                data
            }),
            message,
        )
    }

    /// `429 M_LIMIT_EXCEEDED`: the caller should come back after `retry_after`.
    pub fn limit_exceeded(retry_after: Duration) -> Self {
        // Clients sleep for retry_after_ms; never tell them zero.
        let retry_after = retry_after.max(Duration::from_millis(1));
        Self::matrix(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded({
                let mut data = LimitExceededErrorData::new();
                data.retry_after = Some(RetryAfter::Delay(retry_after));
                data
            }),
            "Too many requests; slow down and retry later.",
        )
    }

    /// `400 M_USER_LIMIT_EXCEEDED`: the request would take the caller's account past one of
    /// the bounds in [`crate::limits`]. The spec requires an `info_uri`, which depends on the
    /// server's configuration: the front door that answers fills it in
    /// ([`Error::with_info_uri`]).
    pub fn user_limit(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::UserLimitExceeded(UserLimitExceededErrorData::new(String::new())),
            message,
        )
    }

    /// Gives an `M_USER_LIMIT_EXCEEDED` without an `info_uri` this one.
    pub fn with_info_uri(mut self, uri: impl FnOnce() -> String) -> Self {
        if let Self::Matrix { kind: ErrorKind::UserLimitExceeded(data), .. } = &mut self
            && data.info_uri.is_empty()
        {
            data.info_uri = uri();
        }
        self
    }

    /// An error whose errcode ruma has no kind for (such as `M_INVALID_SIGNATURE`).
    pub fn custom(
        status: StatusCode,
        errcode: &str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let message: Cow<'static, str> = message.into();
        Self::Json { status, body: serde_json::json!({ "errcode": errcode, "error": message }) }
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Internal(message.into())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Matrix { status, .. } | Self::Json { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Matrix `errcode`, for logs and metrics.
    pub fn errcode(&self) -> String {
        match self {
            Self::Matrix { kind, .. } => kind.errcode().to_string(),
            Self::Json { body, .. } => {
                body.get("errcode").and_then(|code| code.as_str()).unwrap_or("M_UNKNOWN").to_owned()
            }
            Self::Internal(_) => "M_UNKNOWN".to_owned(),
        }
    }

    /// The error kind, when this is a standard Matrix error.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Matrix { kind, .. } => Some(kind),
            _ => None,
        }
    }

    fn into_ruma(self) -> RumaError {
        match self {
            Self::Matrix { status, kind, message } => RumaError::new(
                status,
                ErrorBody::Standard(StandardErrorBody::new(kind, message.into_owned())),
            ),
            Self::Json { status, body } => RumaError::new(status, ErrorBody::Json(body)),
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                RumaError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::Standard(StandardErrorBody::new(
                        ErrorKind::Unknown,
                        "Internal server error; the server log has the details.".to_owned(),
                    )),
                )
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Matrix { status, kind, message } => {
                write!(f, "[{} {}] {message}", status.as_u16(), kind.errcode())
            }
            Self::Json { status, body } => write!(f, "[{}] {body}", status.as_u16()),
            Self::Internal(detail) => write!(f, "internal error: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self.into_ruma().try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(axum::body::Body::from),
            Err(error) => {
                tracing::error!(%error, "failed to serialize an error response");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

impl From<rust_rocksdb::Error> for Error {
    fn from(error: rust_rocksdb::Error) -> Self {
        Self::internal(format!("database: {error}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::internal(format!("i/o: {error}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::internal(format!("json: {error}"))
    }
}
