//! Media of other servers, fetched for our clients: the [`RemoteMedia`] source the media
//! repository asks when a client wants `mxc://other.server/...` that is not cached yet.
//!
//! The authenticated endpoint (`GET /_matrix/federation/v1/media/download/{mediaId}`,
//! signed) is asked first; its `multipart/mixed` answer streams into the staging file the
//! repository gave ([`super::multipart`]), or, when it names a `Location`, that URL is
//! fetched instead. A server that does not know the endpoint (`404 M_UNRECOGNIZED`) is
//! asked at the deprecated `/_matrix/media/v3/download/{serverName}/{mediaId}` with
//! `allow_remote=false`, as the spec says, but only with `request_legacy_media` (as in
//! Tuwunel). Every request goes through the federation client: the server name lists,
//! `ip_range_denylist` and `federation_timeout` apply.

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use ruma::{
    ServerName,
    api::{error::ErrorKind, federation::authenticated_media::get_content},
    http_headers::ContentDisposition,
};

use super::{
    client::{FederationClient, OutboundError},
    multipart::{MediaPart, MultipartReader},
};
use crate::{
    Error, Result,
    media::{BoxFuture, RemoteMedia, owner::Described, store::Staging},
};

/// Fetches media from the servers that host it.
pub struct FederatedMedia {
    client: Arc<FederationClient>,
    /// `request_legacy_media`.
    request_legacy: bool,
}

impl FederatedMedia {
    pub fn new(client: Arc<FederationClient>, request_legacy: bool) -> Self {
        Self { client, request_legacy }
    }

    async fn fetch_media(
        &self,
        server_name: &ServerName,
        media_id: &str,
        wait: Duration,
        into: &mut Staging,
    ) -> Result<Described> {
        // The origin may wait `wait` for a pending upload before it sends anything.
        let timeout = self.client.timeout() + wait;
        let mut request = get_content::v1::Request::new(media_id.to_owned());
        request.timeout_ms = wait;
        match self.client.open(server_name, request, timeout).await {
            Ok(response) => self.receive_multipart(server_name, response, into, timeout).await,
            Err(OutboundError::Remote { status: 400 | 404 | 405, errcode, .. })
                if errcode == "M_UNRECOGNIZED" && self.request_legacy =>
            {
                self.fetch_legacy(server_name, media_id, wait, into, timeout).await
            }
            Err(error) => Err(fetch_error(server_name, error)),
        }
    }

    async fn receive_multipart(
        &self,
        server_name: &ServerName,
        mut response: reqwest::Response,
        into: &mut Staging,
        timeout: Duration,
    ) -> Result<Described> {
        let bad = |why: String| fetch_error(server_name, OutboundError::BadResponse(why));
        let content_type = header_text(&response, CONTENT_TYPE).unwrap_or_default();
        let mut reader = MultipartReader::new(&content_type).map_err(|error| bad(error.0))?;
        let mut part: Option<MediaPart> = None;
        while let Some(chunk) = next_chunk(server_name, &mut response).await? {
            let fed = reader.feed(&chunk).map_err(|error| bad(error.0))?;
            if let Some(headers) = fed.part {
                if let Some(location) = &headers.location {
                    // The bytes live elsewhere; what is left of this answer does not matter.
                    return self.fetch_location(server_name, location, into, timeout).await;
                }
                part = Some(headers);
            }
            into.write(&fed.content).await?;
            if fed.done {
                break;
            }
        }
        reader.finish().map_err(|error| bad(error.0))?;
        let part = part.unwrap_or_default();
        Ok(described(part.content_type, part.content_disposition))
    }

    /// Fetches media from the URL a server's answer pointed to.
    async fn fetch_location(
        &self,
        server_name: &ServerName,
        location: &str,
        into: &mut Staging,
        timeout: Duration,
    ) -> Result<Described> {
        let response = self
            .client
            .open_url(location, timeout)
            .await
            .map_err(|error| fetch_error(server_name, error))?;
        receive_plain(server_name, response, into).await
    }

    async fn fetch_legacy(
        &self,
        server_name: &ServerName,
        media_id: &str,
        wait: Duration,
        into: &mut Staging,
        timeout: Duration,
    ) -> Result<Described> {
        // Brackets of an IPv6 literal are not path characters; the rest of a server name
        // and a media id (checked before any fetch) are.
        let server = server_name.as_str().replace('[', "%5B").replace(']', "%5D");
        let path = format!(
            "/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false&timeout_ms={}",
            wait.as_millis()
        );
        let response = self
            .client
            .open_unsigned(server_name, &path, timeout)
            .await
            .map_err(|error| fetch_error(server_name, error))?;
        receive_plain(server_name, response, into).await
    }
}

impl RemoteMedia for FederatedMedia {
    fn fetch<'a>(
        &'a self,
        server_name: &'a ServerName,
        media_id: &'a str,
        wait: Duration,
        into: &'a mut Staging,
    ) -> BoxFuture<'a, Result<Described>> {
        Box::pin(self.fetch_media(server_name, media_id, wait, into))
    }
}

fn header_text(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

async fn next_chunk(
    server_name: &ServerName,
    response: &mut reqwest::Response,
) -> Result<Option<bytes::Bytes>> {
    response.chunk().await.map_err(|error| {
        fetch_error(server_name, OutboundError::Unreachable(format!("reading the media: {error}")))
    })
}

/// Streams a plain answer (a `Location`'s, a legacy download's) into `into`.
async fn receive_plain(
    server_name: &ServerName,
    mut response: reqwest::Response,
    into: &mut Staging,
) -> Result<Described> {
    let content_type = header_text(&response, CONTENT_TYPE);
    let disposition = response
        .headers()
        .get(CONTENT_DISPOSITION)
        .and_then(|value| ContentDisposition::try_from(value.as_bytes()).ok());
    while let Some(chunk) = next_chunk(server_name, &mut response).await? {
        into.write(&chunk).await?;
    }
    Ok(described(content_type, disposition))
}

fn described(content_type: Option<String>, disposition: Option<ContentDisposition>) -> Described {
    Described { content_type, filename: disposition.and_then(|disposition| disposition.filename) }
}

/// What a client is told when the media's server did not hand it over: its own `404`, `504
/// M_NOT_YET_UPLOADED` and `502 M_TOO_LARGE` pass through; media of a server this one does
/// not talk to is `404`; the rest is `502`.
fn fetch_error(server_name: &ServerName, error: OutboundError) -> Error {
    match error {
        OutboundError::Refused(why) => {
            Error::not_found(format!("Media of {server_name} is not available here: {why}"))
        }
        OutboundError::Remote { status: 404, message, .. } => {
            Error::not_found(format!("{server_name} has no such media: {message}"))
        }
        OutboundError::Remote { status: 504, errcode, message }
            if errcode == "M_NOT_YET_UPLOADED" =>
        {
            Error::matrix(StatusCode::GATEWAY_TIMEOUT, ErrorKind::NotYetUploaded, message)
        }
        OutboundError::Remote { errcode, message, .. } if errcode == "M_TOO_LARGE" => {
            Error::matrix(StatusCode::BAD_GATEWAY, ErrorKind::TooLarge, message)
        }
        other => Error::matrix(
            StatusCode::BAD_GATEWAY,
            ErrorKind::Unknown,
            format!("Media of {server_name} could not be fetched: {other}"),
        ),
    }
}
