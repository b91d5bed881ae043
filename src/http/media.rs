//! How stored media is answered: to clients as the file itself, with headers that keep
//! hostile content inert in a browser (a sandboxing CSP, `nosniff`, and `inline` only for
//! the spec's list of safe types); to other servers as the `multipart/mixed` body of the
//! federation media endpoints. Both stream from the file.

use axum::{
    body::Body,
    http::{
        HeaderName, HeaderValue,
        header::{
            CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY,
            CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
        },
    },
    response::Response,
};
use rand::{Rng, distributions::Alphanumeric};
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::media::Served;

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

/// The response to a client for a stored file: safe headers, body streamed from disk.
pub fn serve(served: Served, filename: Option<String>, thumbnail: bool) -> Response {
    let (content_type, disposition) = described(&served, filename, thumbnail);
    let body = Body::from_stream(ReaderStream::with_capacity(served.file, DOWNLOAD_CHUNK));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(served.length));
    headers.insert(CONTENT_DISPOSITION, disposition);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    headers
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The response to another server for a stored file: `multipart/mixed` with the metadata
/// (`{}`) and the file, which streams from disk between the two fixed pieces around it.
pub fn multipart(served: Served, thumbnail: bool) -> Response {
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
    let length = head.len() as u64 + served.length + tail.len() as u64;
    let parts = std::io::Cursor::new(head).chain(served.file).chain(std::io::Cursor::new(tail));
    let body = Body::from_stream(ReaderStream::with_capacity(parts, DOWNLOAD_CHUNK));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        headers.insert(CONTENT_TYPE, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
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
        let response = multipart(served, false);
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
