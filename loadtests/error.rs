//! The harness's one error type: a message, plus the HTTP status and Matrix `errcode` when
//! the failure was a server's answer.

use std::fmt;

#[derive(Debug, Clone)]
pub(crate) struct Error {
    pub(crate) message: String,
    pub(crate) status: Option<u16>,
    pub(crate) errcode: Option<String>,
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), status: None, errcode: None }
    }

    pub(crate) fn http(status: u16, errcode: Option<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), status: Some(status), errcode }
    }

    /// The same error with `context: ` in front of its message.
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub(crate) fn is_errcode(&self, errcode: &str) -> bool {
        self.errcode.as_deref() == Some(errcode)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.status, &self.errcode) {
            (Some(status), Some(errcode)) => write!(f, "HTTP {status} {errcode}: {}", self.message),
            (Some(status), None) => write!(f, "HTTP {status}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<reqwest::Error> for Error {
    fn from(error: reqwest::Error) -> Self {
        // The source chain says why a connection failed ("Connection refused", "Too many open
        // files"); reqwest's own message alone does not.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(message)
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::new(format!("JSON: {error}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::new(format!("I/O: {error}"))
    }
}
