//! The outbound federation client: the one way domain code talks to another server.
//!
//! [`FederationClient::send`] takes any ruma federation request, checks the operator's
//! policy, resolves the destination ([`super::discovery`]), signs the request with
//! `Authorization: X-Matrix` when its endpoint requires it, and sends it over a shared
//! reqwest client: rustls with certificates verified against the system's roots (which
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` replace) plus `[global.tls] ca_file`, HTTP/2 when the
//! server offers it, pooled connections, a timeout per request (`federation_timeout`), and
//! every address checked against `ip_range_denylist`.

use std::{sync::Arc, time::Duration};

use reqwest::header::{self, HeaderValue};
use ruma::{
    OwnedServerName, ServerName,
    api::{
        IncomingResponse, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::{AuthScheme, NoAuthentication},
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
    },
    signatures::Ed25519KeyPair,
};

use super::{
    SigningKey,
    discovery::{Destination, Discovery},
    policy::ServerPolicy,
};
use crate::{
    Error,
    net::ssrf::{self, IpDenylist},
};

/// Redirects followed from a `Location` another server gave.
const MAX_REDIRECTS: usize = 5;
/// Bytes of an error answer read for its `errcode` and `error`.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a request to another server did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// This server's own rules forbid it (`allow_federation`, the server name lists,
    /// `ip_range_denylist`).
    Refused(String),
    /// The server could not be reached: discovery, connection, TLS or timeout.
    Unreachable(String),
    /// The server answered with a Matrix error.
    Remote { status: u16, errcode: String, message: String },
    /// The server answered something that is not the endpoint's response.
    BadResponse(String),
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) => write!(f, "refused: {why}"),
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::Remote { status, errcode, message } => write!(f, "{status} {errcode}: {message}"),
            Self::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

impl std::error::Error for OutboundError {}

impl OutboundError {
    /// The error a client of ours gets when its request needed this one: the remote's own
    /// `404`/`403` pass through, everything else is `502` (unreachable or a bad answer) or
    /// `403` (our policy).
    pub fn into_client_error(self, what: &str) -> Error {
        use axum::http::StatusCode;
        match self {
            Self::Refused(why) => Error::forbidden(format!("{what}: {why}")),
            Self::Remote { status: 404, message, .. } => {
                Error::not_found(format!("{what}: {message}"))
            }
            Self::Remote { status: 403, message, .. } => {
                Error::forbidden(format!("{what}: {message}"))
            }
            other => Error::matrix(
                StatusCode::BAD_GATEWAY,
                ruma::api::error::ErrorKind::Unknown,
                format!("{what}: {other}"),
            ),
        }
    }
}

/// The authentication schemes a federation request can have, and what signing them takes.
pub trait FederationAuth: AuthScheme {
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        key: &'a Ed25519KeyPair,
    ) -> Self::Input<'a>;
}

impl FederationAuth for ServerSignatures {
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        key: &'a Ed25519KeyPair,
    ) -> XMatrixSigningInput<'a> {
        XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key)
    }
}

impl FederationAuth for NoAuthentication {
    fn input(_origin: &ServerName, _destination: &ServerName, _key: &Ed25519KeyPair) {}
}

/// Settings of the client, from the configuration.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub timeout: Duration,
    /// Largest response body read.
    pub max_response: usize,
}

/// Sends requests to other servers.
pub struct FederationClient {
    origin: OwnedServerName,
    signing_key: Arc<SigningKey>,
    policy: Arc<ServerPolicy>,
    discovery: Arc<Discovery>,
    denylist: Arc<IpDenylist>,
    http: reqwest::Client,
    settings: ClientSettings,
}

impl FederationClient {
    /// `http` must verify certificates and resolve names through the discovery's connect
    /// targets and `denylist` (see [`super::dns::ConnectResolver`]).
    pub fn new(
        origin: OwnedServerName,
        signing_key: Arc<SigningKey>,
        policy: Arc<ServerPolicy>,
        discovery: Arc<Discovery>,
        denylist: Arc<IpDenylist>,
        http: reqwest::Client,
        settings: ClientSettings,
    ) -> Self {
        Self { origin, signing_key, policy, discovery, denylist, http, settings }
    }

    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    pub fn discovery(&self) -> &Arc<Discovery> {
        &self.discovery
    }

    pub fn policy(&self) -> &Arc<ServerPolicy> {
        &self.policy
    }

    /// How long one request may take (`federation_timeout`).
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Sends `request` to `destination` and parses its answer.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, OutboundError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath> + Send,
        R::Authentication: FederationAuth,
    {
        self.send_with_timeout(destination, request, self.settings.timeout).await
    }

    /// [`Self::send`] with a timeout of its own (shorter lookups such as key fetches).
    pub async fn send_with_timeout<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
    ) -> Result<R::IncomingResponse, OutboundError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath> + Send,
        R::Authentication: FederationAuth,
    {
        self.send_limited(destination, request, timeout, self.settings.max_response).await
    }

    /// [`Self::send`] for an answer that may be larger than usual (a `send_join` answer
    /// holds a room's whole state): read up to `max_response` bytes, parsed only once read.
    pub async fn send_limited<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
        max_response: usize,
    ) -> Result<R::IncomingResponse, OutboundError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath> + Send,
        R::Authentication: FederationAuth,
    {
        let response = self.open(destination, request, timeout).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response, max_response).await?;
        let mut response = axum::http::Response::builder().status(status);
        if let Some(response_headers) = response.headers_mut() {
            *response_headers = headers;
        }
        let response = response
            .body(body.as_slice())
            .map_err(|error| OutboundError::BadResponse(error.to_string()))?;
        R::IncomingResponse::try_from_http_response_inner(response)
            .map_err(|error| OutboundError::BadResponse(error.to_string()))
    }

    /// Sends `request` to `destination` and hands back the answer with its body still to
    /// read, for answers that are streamed rather than parsed (media). An error status is
    /// [`OutboundError::Remote`].
    pub async fn open<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
    ) -> Result<reqwest::Response, OutboundError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath> + Send,
        R::Authentication: FederationAuth,
    {
        let target = self.resolve(destination).await?;
        let auth = R::Authentication::input(&self.origin, destination, self.signing_key.pair());
        let http_request =
            request.try_into_http_request::<Vec<u8>>(&target.base_url(), auth, ()).map_err(
                |error| OutboundError::Refused(format!("cannot build the request: {error}")),
            )?;
        let outgoing = reqwest::Request::try_from(http_request).map_err(|error| {
            OutboundError::Refused(format!("cannot build the request: {error}"))
        })?;
        self.dispatch(destination, &target, outgoing, timeout).await
    }

    /// An unsigned `GET` of `path_and_query` on `destination`: the deprecated endpoints that
    /// servers once shared with clients (`/_matrix/media/v3/download`), which ruma declares
    /// for clients only.
    pub async fn open_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, OutboundError> {
        let target = self.resolve(destination).await?;
        let url = format!("{}{path_and_query}", target.base_url())
            .parse()
            .map_err(|error| OutboundError::Refused(format!("cannot build the URL: {error}")))?;
        let outgoing = reqwest::Request::new(reqwest::Method::GET, url);
        self.dispatch(destination, &target, outgoing, timeout).await
    }

    /// A `GET` of `url`, where another server said its media is (a `Location`): no
    /// signature, at most [`MAX_REDIRECTS`] redirects, every address checked against
    /// `ip_range_denylist`, the whole exchange within `timeout`.
    pub async fn open_url(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, OutboundError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut url: reqwest::Url = url.parse().map_err(|error| {
            OutboundError::BadResponse(format!("invalid location {url}: {error}"))
        })?;
        for _ in 0..=MAX_REDIRECTS {
            ssrf::check_url(&url, &self.denylist)
                .map_err(|refused| OutboundError::Refused(refused.0))?;
            let mut outgoing = reqwest::Request::new(reqwest::Method::GET, url.clone());
            *outgoing.timeout_mut() =
                Some(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let response = self.execute(outgoing).await?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| OutboundError::BadResponse("a redirect without Location".into()))?;
            url = url.join(location).map_err(|error| {
                OutboundError::BadResponse(format!("invalid redirect {location}: {error}"))
            })?;
        }
        Err(OutboundError::BadResponse(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Where requests for `destination` go, once the operator's rules allow it.
    async fn resolve(&self, destination: &ServerName) -> Result<Destination, OutboundError> {
        if destination == self.origin {
            return Err(OutboundError::Refused(
                "this server does not send federation requests to itself".to_owned(),
            ));
        }
        if !self.policy.allows(destination) {
            return Err(OutboundError::Refused(format!(
                "federation with {destination} is not allowed by this server's configuration"
            )));
        }
        self.discovery
            .resolve(destination)
            .await
            .map_err(|error| OutboundError::Unreachable(error.0))
    }

    /// Sends a built request to a resolved destination and counts the outcome.
    async fn dispatch(
        &self,
        destination: &ServerName,
        target: &Destination,
        mut outgoing: reqwest::Request,
        timeout: Duration,
    ) -> Result<reqwest::Response, OutboundError> {
        ssrf::check_url(outgoing.url(), &self.denylist)
            .map_err(|refused| OutboundError::Refused(refused.0))?;
        if let Ok(host) = HeaderValue::from_str(&target.host_header) {
            outgoing.headers_mut().insert(header::HOST, host);
        }
        *outgoing.timeout_mut() = Some(timeout);
        let method = outgoing.method().clone();
        let path = outgoing.url().path().to_owned();
        let started = std::time::Instant::now();
        let result = self.execute(outgoing).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(OutboundError::Remote { .. }) => "remote_error",
            Err(OutboundError::Refused(_)) => "refused",
            Err(OutboundError::Unreachable(_)) => "unreachable",
            Err(OutboundError::BadResponse(_)) => "bad_response",
        };
        metrics::counter!("tuwunel_federation_requests_total", "outcome" => outcome).increment(1);
        metrics::histogram!("tuwunel_federation_request_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(%destination, %method, %path, route = %target.route, outcome, "federation request");
        result
    }

    /// Sends a built request; an error status becomes [`OutboundError::Remote`].
    async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, OutboundError> {
        let response =
            self.http.execute(request).await.map_err(|error| match ssrf::refusal(&error) {
                Some(refused) => OutboundError::Refused(refused.0.clone()),
                None => OutboundError::Unreachable(error_chain(&error)),
            })?;
        let status = response.status().as_u16();
        if status >= 400 {
            // Only the error object is wanted; a huge error body is cut short.
            let body = read_limited(response, MAX_ERROR_BODY).await.unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let text =
                |field: &str| json.get(field).and_then(|value| value.as_str()).map(str::to_owned);
            return Err(OutboundError::Remote {
                status,
                errcode: text("errcode").unwrap_or_else(|| "M_UNKNOWN".to_owned()),
                message: text("error").unwrap_or_else(|| format!("HTTP {status}")),
            });
        }
        Ok(response)
    }
}

/// Reads a whole answer body of at most `limit` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, OutboundError> {
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|error| OutboundError::Unreachable(error_chain(&error)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(OutboundError::BadResponse(format!(
                "the answer is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its sources, which is where reqwest keeps the useful part.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // Bounded: chains are short; this only guards against a cycle.
    for _ in 0..8 {
        let Some(next) = source else { break };
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
