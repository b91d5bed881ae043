//! The one error type of the server and its mapping to Matrix `errcode` + HTTP status.
//!
//! Every fallible path that can reach a client ends in [`Error`]. Client mistakes carry the
//! spec's error kind and a message a person can act on; internal failures (storage, I/O, a
//! bug) are logged with their detail and answered as `500 M_UNKNOWN` without leaking it. An
//! internal error keeps the error that caused it, so the log shows the whole chain and callers
//! can inspect it through [`std::error::Error::source`].

use std::{borrow::Cow, error::Error as StdError, fmt, time::Duration};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ruma::api::{
    OutgoingResponseExt,
    error::{
        Error as RumaError, ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter,
        StandardErrorBody, UnknownTokenErrorData, UserLimitExceededErrorData,
    },
};

/// The cause kept by an internal error (shared, so that the error stays `Clone`).
pub type Source = std::sync::Arc<dyn StdError + Send + Sync + 'static>;

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
    Internal { message: Cow<'static, str>, source: Option<Source> },
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

    /// `400 M_UNKNOWN_POS` (MSC4186): the sliding sync `pos` is not one the server keeps (never
    /// issued, expired, evicted, or from before a restart); the client starts the connection anew.
    pub fn unknown_pos(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, ErrorKind::UnknownPos, message)
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
        Self::Internal { message: message.into(), source: None }
    }

    /// An internal error caused by `source`: `message` says what the server was doing.
    pub fn internal_from(
        message: impl Into<Cow<'static, str>>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self::Internal { message: message.into(), source: Some(std::sync::Arc::new(source)) }
    }

    /// Whether this is a failure of the server rather than an answer to the caller.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Internal { .. })
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Matrix { status, .. } | Self::Json { status, .. } => *status,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Matrix `errcode`, for logs and metrics.
    pub fn errcode(&self) -> String {
        match self {
            Self::Matrix { kind, .. } => kind.errcode().to_string(),
            Self::Json { body, .. } => {
                body.get("errcode").and_then(|code| code.as_str()).unwrap_or("M_UNKNOWN").to_owned()
            }
            Self::Internal { .. } => "M_UNKNOWN".to_owned(),
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
            Self::Internal { .. } => {
                // Display walks the whole source chain.
                tracing::error!(detail = %self, "internal error");
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
            Self::Internal { message, source } => {
                write!(f, "internal error: {message}")?;
                // Most log sites print an error with `%error` and nothing more, so the causes
                // are part of its text.
                let mut cause = source.as_deref().map(|source| source as &dyn StdError);
                while let Some(error) = cause {
                    write!(f, ": {error}")?;
                    cause = error.source();
                }
                Ok(())
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Internal { source: Some(source), .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

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

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::internal_from("i/o", error)
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::internal_from("json", error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: Error) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    #[tokio::test]
    async fn internal_errors_keep_their_source_and_answer_the_same() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "disk says no");
        let error = Error::from(io);
        assert!(error.is_internal());
        let source = error.source().expect("the i/o error is kept");
        let io = source.downcast_ref::<std::io::Error>().expect("the source is the i/o error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(error.to_string(), "internal error: i/o: disk says no");

        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({
                "errcode": "M_UNKNOWN",
                "error": "Internal server error; the server log has the details.",
            })
        );
    }

    #[test]
    fn the_display_walks_the_whole_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("reading the catalogue")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let error = Error::internal_from(
            "opening the database",
            Outer(std::io::Error::other("no such file")),
        );
        assert_eq!(
            error.to_string(),
            "internal error: opening the database: reading the catalogue: no such file"
        );
    }

    #[tokio::test]
    async fn an_unknown_sliding_sync_position_is_a_400_m_unknown_pos() {
        let error = Error::unknown_pos("start a new connection");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.errcode(), "M_UNKNOWN_POS");
        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({ "errcode": "M_UNKNOWN_POS", "error": "start a new connection" })
        );
    }

    #[test]
    fn client_errors_are_not_internal() {
        assert!(!Error::forbidden("no").is_internal());
        assert!(Error::forbidden("no").source().is_none());
        assert!(Error::internal("bug").source().is_none());
    }
}
