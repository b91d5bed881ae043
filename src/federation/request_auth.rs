//! Authenticating requests from other servers: the `Authorization: X-Matrix` header names
//! the origin, the destination and a key; its signature covers the method, the URI (path
//! and query), origin, destination and the JSON body. Anything missing, malformed, meant for
//! another server, or not signed by a current key of the origin is `401 M_UNAUTHORIZED`; a
//! denied origin is `403 M_FORBIDDEN`.
//!
//! Replays: the spec puts no timestamp or nonce in the header, so a captured request can be
//! sent again (only over TLS, which makes capturing it hard). Endpoints whose effect must
//! happen once guard themselves: transactions by their id per origin.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri, header::AUTHORIZATION};
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{XMatrix, XMatrixVerificationError},
};

use super::{keys::ServerKeys, policy::ServerPolicy};
use crate::{Error, Result};

/// Checks a request's `X-Matrix` authorization and returns the authenticated origin.
/// `body` is the request body exactly as received.
pub async fn authenticate(
    keys: &ServerKeys,
    policy: &ServerPolicy,
    own: &ServerName,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OwnedServerName> {
    let header = parse_header(headers)?;
    if let Some(destination) = &header.destination
        && destination != own
    {
        return Err(Error::unauthorized(format!(
            "This request is addressed to {destination}, not to this server ({own})."
        )));
    }
    policy.check(&header.origin)?;
    let key = keys.current_key(&header.origin, &header.key).await.map_err(|error| {
        tracing::debug!(origin = %header.origin, key = %header.key, %error, "no key to check a request");
        Error::unauthorized(format!(
            "The signing key {} of {} could not be obtained: {error}",
            header.key, header.origin
        ))
    })?;
    let path_and_query = uri.path_and_query().map_or_else(|| uri.path(), |value| value.as_str());
    let request = axum::http::Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .body(body)
        .map_err(|error| Error::bad_json(format!("Unusable request: {error}")))?;
    let keys = BTreeMap::from([(
        header.origin.to_string(),
        BTreeMap::from([(header.key.to_string(), key)]),
    )]);
    match header.verify_http_request(&request, own, &keys) {
        Ok(()) => Ok(header.origin),
        Err(XMatrixVerificationError::DestinationMismatch) => {
            Err(Error::unauthorized("The request is addressed to another server."))
        }
        Err(XMatrixVerificationError::Signature(ruma::signatures::VerificationError::Json(
            error,
        ))) => {
            if !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                Err(Error::not_json("Request body is not valid JSON."))
            } else {
                Err(Error::bad_json(format!("Request body is not canonical JSON: {error}")))
            }
        }
        Err(error) => {
            tracing::debug!(origin = %header.origin, %error, "refused a request signature");
            Err(Error::unauthorized(format!(
                "The X-Matrix signature of {} does not match the request.",
                header.origin
            )))
        }
    }
}

/// The parsed `Authorization: X-Matrix` header.
pub fn parse_header(headers: &HeaderMap) -> Result<XMatrix> {
    let value = headers.get(AUTHORIZATION).ok_or_else(|| {
        Error::unauthorized(
            "Missing 'Authorization: X-Matrix' header; federation requests must be signed.",
        )
    })?;
    XMatrix::try_from(value)
        .map_err(|error| Error::unauthorized(format!("Malformed X-Matrix authorization: {error}")))
}
