//! How stored media is answered: to clients as the file itself, with headers that keep
//! hostile content inert in a browser (a sandboxing CSP, `nosniff`, and `inline` only for
//! the spec's list of safe types); to other servers as the `multipart/mixed` body of the
//! federation media endpoints. Both stream from the file, and both honour a single `Range`
//! (`http::range`): the file is opened at the first byte asked for, never read up to it.

use std::io::SeekFrom;

use axum::{
    body::Body,
    http::{
        HeaderMap, HeaderName, HeaderValue, StatusCode,
        header::{
            ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE,
            CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
        },
    },
    response::Response,
};
use rand::{Rng, distributions::Alphanumeric};
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::range::{self, Requested};
use crate::{Error, Result, media::Served};

/// Chunk size of streamed downloads.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// Types served `inline`: the spec's list of types a browser will not run as a document.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The policy the spec recommends for served media: nothing in it can run.
const CONTENT_SECURITY_POLICY_VALUE: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// Media is immutable: an id always names the same bytes.
const CACHE_CONTROL_VALUE: &str = "private, max-age=31536000, immutable";

/// Whether `content_type` may be shown by a browser in place.
pub fn inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// The content type and disposition a stored file is served with.
fn described(
    served: &Served,
    filename: Option<String>,
    thumbnail: bool,
) -> (HeaderValue, HeaderValue) {
    let content_type = served
        .content_type
        .as_deref()
        .and_then(|value| HeaderValue::from_str(value).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    // Thumbnails are always images this server produced (or checked); the spec wants them
    // inline.
    let inline = thumbnail || content_type.to_str().is_ok_and(inline_safe);
    let disposition = ContentDisposition::new(if inline {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    })
    .with_filename(filename.or_else(|| served.filename.clone()));
    let disposition = HeaderValue::from_str(&disposition.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (content_type, disposition)
}

/// A representation made of fixed bytes around a file (the file alone for clients; the
/// `multipart/mixed` framing around it for servers), answered whole or in the one range the
/// request asks for.
struct Pieces {
    head: Vec<u8>,
    file: tokio::fs::File,
    file_length: u64,
    tail: Vec<u8>,
}

impl Pieces {
    fn length(&self) -> u64 {
        self.head.len() as u64 + self.file_length + self.tail.len() as u64
    }

    /// The response for `request`'s `Range`: `200` with everything, `206` with one range
    /// (the file seeked to its first byte), or `416`.
    async fn respond(self, request: &HeaderMap) -> Result<Response> {
        let length = self.length();
        let (start, end, partial) = match Requested::from_headers(request, length) {
            Requested::Full => (0, length, false),
            Requested::Part { start, end } => (start, end + 1, true),
            Requested::Unsatisfiable => return Ok(unsatisfiable(length)),
        };
        let body = self.body(start, end).await?;
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
        headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if partial {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            response
                .headers_mut()
                .insert(CONTENT_RANGE, range::content_range(start, end - 1, length));
        }
        Ok(response)
    }

    /// Bytes `start..end` of the representation, streamed.
    async fn body(mut self, start: u64, end: u64) -> Result<Body> {
        let slice = |bytes: &[u8], offset: u64| -> Vec<u8> {
            let len = bytes.len() as u64;
            let from = start.saturating_sub(offset).min(len);
            let to = end.saturating_sub(offset).min(len);
            bytes.get(from as usize..to as usize).map(<[u8]>::to_vec).unwrap_or_default()
        };
        let head_length = self.head.len() as u64;
        let head = slice(&self.head, 0);
        let tail = slice(&self.tail, head_length + self.file_length);
        let file_start = start.saturating_sub(head_length).min(self.file_length);
        let file_end = end.saturating_sub(head_length).min(self.file_length);
        if file_start > 0 {
            self.file
                .seek(SeekFrom::Start(file_start))
                .await
                .map_err(|error| Error::internal(format!("seeking in a media file: {error}")))?;
        }
        let parts = std::io::Cursor::new(head)
            .chain(self.file.take(file_end - file_start))
            .chain(std::io::Cursor::new(tail));
        Ok(Body::from_stream(ReaderStream::with_capacity(parts, DOWNLOAD_CHUNK)))
    }
}

/// `416 Range Not Satisfiable`, saying how long the representation is.
fn unsatisfiable(length: u64) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_RANGE, range::unsatisfied_range(length));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// The response to a client for a stored file: safe headers, body streamed from disk, the
/// one range `request` asks for if it asks for one.
pub async fn serve(
    served: Served,
    filename: Option<String>,
    thumbnail: bool,
    request: &HeaderMap,
) -> Result<Response> {
    let (content_type, disposition) = described(&served, filename, thumbnail);
    let pieces = Pieces {
        head: Vec::new(),
        file: served.file,
        file_length: served.length,
        tail: Vec::new(),
    };
    let mut response = pieces.respond(request).await?;
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Ok(response);
    }
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_DISPOSITION, disposition);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    headers
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}

/// The response to another server for a stored file: `multipart/mixed` with the metadata
/// (`{}`) and the file, which streams from disk between the two fixed pieces around it. A
/// `Range` applies to that whole body, as HTTP defines it.
pub async fn multipart(served: Served, thumbnail: bool, request: &HeaderMap) -> Result<Response> {
    let (content_type, disposition) = described(&served, None, thumbnail);
    let boundary: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    let mut head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: "
    )
    .into_bytes();
    head.extend_from_slice(content_type.as_bytes());
    head.extend_from_slice(b"\r\nContent-Disposition: ");
    head.extend_from_slice(disposition.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let pieces = Pieces { head, file: served.file, file_length: served.length, tail };
    let mut response = pieces.respond(request).await?;
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Ok(response);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ruma_reads_our_multipart_answers() {
        use ruma::api::{
            IncomingResponse,
            federation::authenticated_media::{FileOrLocation, get_content},
        };
        // What Tuwunel and conduwuit read with: ruma's own multipart parser.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("file");
        let bytes: Vec<u8> = (0..200_000u32).map(|index| (index % 241) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let served = Served {
            content_type: Some("image/png".to_owned()),
            filename: Some("cat picture.png".to_owned()),
            file: tokio::fs::File::open(&path).await.expect("open"),
            length: bytes.len() as u64,
        };
        let response = multipart(served, false, &HeaderMap::new()).await.expect("response");
        let (parts, body) = response.into_parts();
        let length: usize =
            parts.headers[CONTENT_LENGTH].to_str().expect("ascii").parse().expect("number");
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        assert_eq!(body.len(), length, "Content-Length is exact");
        let response = axum::http::Response::from_parts(parts, body.as_ref());
        let parsed = get_content::v1::Response::try_from_http_response_inner(response)
            .expect("ruma reads it");
        let FileOrLocation::File(content) = parsed.content else { panic!("a file") };
        assert!(content.file == bytes);
        assert_eq!(content.content_type.as_deref(), Some("image/png"));
        let filename = content.content_disposition.and_then(|value| value.filename);
        assert_eq!(filename.as_deref(), Some("cat picture.png"));
    }

    #[tokio::test]
    async fn any_range_of_head_file_and_tail_is_their_bytes_there() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("file");
        std::fs::write(&path, b"0123456789").expect("write");
        let whole = b"HEAD0123456789TAIL";
        for start in 0..whole.len() {
            for end in start..whole.len() {
                let pieces = Pieces {
                    head: b"HEAD".to_vec(),
                    file: tokio::fs::File::open(&path).await.expect("open"),
                    file_length: 10,
                    tail: b"TAIL".to_vec(),
                };
                let mut request = HeaderMap::new();
                let value = format!("bytes={start}-{end}");
                request.insert(axum::http::header::RANGE, value.parse().expect("header"));
                let response = pieces.respond(&request).await.expect("response");
                assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
                let expected = format!("bytes {start}-{end}/18");
                assert_eq!(response.headers()[CONTENT_RANGE], expected.as_str());
                let body =
                    axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
                assert_eq!(body.as_ref(), &whole[start..=end], "{value}");
            }
        }
    }

    #[test]
    fn only_listed_types_are_inline() {
        assert!(inline_safe("image/png"));
        assert!(inline_safe("text/plain; charset=utf-8"));
        assert!(inline_safe("IMAGE/JPEG"));
        assert!(!inline_safe("text/html"));
        assert!(!inline_safe("image/svg+xml"));
        assert!(!inline_safe("application/octet-stream"));
        assert!(!inline_safe(""));
    }
}
