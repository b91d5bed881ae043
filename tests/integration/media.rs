//! The media repository: uploads (plain and asynchronous), downloads with their headers and
//! byte ranges,
//! thumbnails of real images, decompression bombs, authentication and legacy routes, remote
//! media, URL previews against pages served on loopback (and the SSRF defences that keep
//! previews off internal addresses), the media admin commands, per-user quotas and the
//! retention of unused media.

use std::{
    io::Cursor,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect},
    routing::get,
};
use image::{
    DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage,
    codecs::gif::{GifDecoder, GifEncoder, Repeat},
};
use rand::RngCore;
use serde_json::Value;

use crate::common::{TestServer, User, assert_error, status_and_json, wait_until};

const UPLOAD: &str = "/_matrix/media/v3/upload";
const DOWNLOAD: &str = "/_matrix/client/v1/media/download";
const THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";
const PREVIEW: &str = "/_matrix/client/v1/media/preview_url";

fn random_bytes(length: usize) -> Vec<u8> {
    let mut bytes = vec![0; length];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

/// `server/id` of an `mxc://server/id` URI.
fn mxc_path(mxc: &str) -> &str {
    mxc.strip_prefix("mxc://").expect("an mxc URI")
}

async fn upload_raw(
    server: &TestServer,
    user: &User,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> (u16, Value) {
    let mut request = server
        .client
        .post(server.url(UPLOAD))
        .bearer_auth(&user.token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes);
    if let Some(filename) = filename {
        request = request.query(&[("filename", filename)]);
    }
    status_and_json(request.send().await.expect("upload")).await
}

/// Uploads and returns the `mxc://` URI.
async fn upload(
    server: &TestServer,
    user: &User,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> String {
    let (status, body) = upload_raw(server, user, bytes, content_type, filename).await;
    assert_eq!(status, 200, "upload: {body}");
    let uri = body["content_uri"].as_str().expect("content_uri").to_owned();
    assert!(uri.starts_with("mxc://test.local/"), "{uri}");
    uri
}

async fn send_get(server: &TestServer, user: Option<&User>, path: &str) -> reqwest::Response {
    let mut request = server.client.get(server.url(path));
    if let Some(user) = user {
        request = request.bearer_auth(&user.token);
    }
    request.send().await.expect("request")
}

/// Downloads and returns status, headers and body.
async fn fetch(server: &TestServer, user: Option<&User>, path: &str) -> (u16, HeaderMap, Vec<u8>) {
    let response = send_get(server, user, path).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn media_dir(server: &TestServer) -> std::path::PathBuf {
    server.dir.path().join("db").join("media")
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).expect("encode test image");
    bytes
}

fn gradient(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    }))
}

/// An animated GIF of `frames` frames.
fn animated_gif(width: u32, height: u32, frames: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).expect("repeat");
        for index in 0..frames {
            let frame = RgbaImage::from_fn(width, height, |x, _| {
                Rgba([((x + index * 40) % 256) as u8, (index * 80 % 256) as u8, 0, 255])
            });
            encoder.encode_frame(image::Frame::new(frame)).expect("frame");
        }
    }
    bytes
}

/// A PNG that is only a header claiming `width`x`height`: a decompression bomb's shape.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).expect("short").to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFF_u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    chunk(&mut png, b"IHDR", &header);
    // A few bytes of a zlib stream: the bomb never gets this far.
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test]
async fn uploads_come_back_identical_with_safe_headers() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;

    let bytes = random_bytes(100_000);
    let mxc =
        upload(&server, &alice, bytes.clone(), "application/octet-stream", Some("data.bin")).await;
    let (status, headers, body) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&mxc))).await;
    assert_eq!(status, 200);
    assert!(body == bytes, "downloaded bytes differ");
    assert_eq!(header_text(&headers, "content-type"), "application/octet-stream");
    assert_eq!(header_text(&headers, "content-length"), "100000");
    assert_eq!(header_text(&headers, "content-disposition"), "attachment; filename=data.bin");
    assert_eq!(header_text(&headers, "cache-control"), "private, max-age=31536000, immutable");
    assert!(header_text(&headers, "content-security-policy").starts_with("sandbox;"));
    assert!(header_text(&headers, "content-security-policy").contains("default-src 'none'"));
    assert_eq!(header_text(&headers, "cross-origin-resource-policy"), "cross-origin");
    assert_eq!(header_text(&headers, "x-content-type-options"), "nosniff");

    // The file name in the path overrides the stored one; quoting is done for us.
    let (status, headers, body) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}/other%20name.bin", mxc_path(&mxc)))
            .await;
    assert_eq!(status, 200);
    assert!(body == bytes);
    assert_eq!(
        header_text(&headers, "content-disposition"),
        "attachment; filename=\"other name.bin\""
    );

    // Safe types are inline; HTML is not, whatever it claims to be.
    let png = encode(&gradient(8, 8), ImageFormat::Png);
    let mxc = upload(&server, &alice, png.clone(), "image/png", Some("résumé \"1\".png")).await;
    let (_, headers, body) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&mxc))).await;
    assert!(body == png);
    assert_eq!(header_text(&headers, "content-type"), "image/png");
    assert_eq!(
        header_text(&headers, "content-disposition"),
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9%20%221%22.png"
    );
    let mxc =
        upload(&server, &alice, b"<script>alert(1)</script>".to_vec(), "text/html", None).await;
    let (_, headers, _) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&mxc))).await;
    assert_eq!(header_text(&headers, "content-type"), "text/html");
    assert_eq!(header_text(&headers, "content-disposition"), "attachment");

    // Another user downloads it too, and it survives a restart.
    server.register("bob", "secret-password").await;
    let big = random_bytes(5 * 1024 * 1024 + 123);
    let mxc = upload(&server, &alice, big.clone(), "application/x-big", None).await;
    server.restart().await;
    let bob = server.login("bob", "secret-password").await;
    let (status, headers, body) =
        fetch(&server, Some(&bob), &format!("{DOWNLOAD}/{}", mxc_path(&mxc))).await;
    assert_eq!(status, 200);
    assert!(body == big, "multi-megabyte download differs");
    assert_eq!(header_text(&headers, "content-disposition"), "attachment");

    // Unknown and malformed ids.
    let (status, _, body) =
        fetch(&server, Some(&bob), &format!("{DOWNLOAD}/test.local/doesNotExist")).await;
    assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
    let (status, _, body) =
        fetch(&server, Some(&bob), &format!("{DOWNLOAD}/test.local/bad%2E%2E")).await;
    assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");

    // The configuration tells clients the limit.
    let (status, config) = server.get_as(&bob, "/_matrix/client/v1/media/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["m.upload.size"], 24 * 1024 * 1024);
    server.stop().await;
}

/// GETs `path` with a `Range` (and optionally `If-Range`) header.
async fn fetch_range(
    server: &TestServer,
    user: &User,
    path: &str,
    range: &str,
    if_range: bool,
) -> (u16, HeaderMap, Vec<u8>) {
    let mut request =
        server.client.get(server.url(path)).bearer_auth(&user.token).header(header::RANGE, range);
    if if_range {
        request = request.header(header::IF_RANGE, "\"some-etag\"");
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn downloads_answer_single_byte_ranges() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bytes = random_bytes(100_000);
    let mxc = upload(&server, &alice, bytes.clone(), "video/mp4", Some("clip.mp4")).await;
    let path = format!("{DOWNLOAD}/{}", mxc_path(&mxc));

    let (status, headers, body) = fetch(&server, Some(&alice), &path).await;
    assert_eq!(status, 200);
    assert_eq!(header_text(&headers, "accept-ranges"), "bytes");
    assert!(body == bytes);

    for (range, from, to) in [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=-100000", 0, 99_999),
        ("bytes=-250000", 0, 99_999),
        ("bytes=500-99999999", 500, 99_999),
        ("bytes=99999-99999", 99_999, 99_999),
    ] {
        let (status, headers, body) = fetch_range(&server, &alice, &path, range, false).await;
        assert_eq!(status, 206, "{range}");
        assert_eq!(header_text(&headers, "content-range"), format!("bytes {from}-{to}/100000"));
        assert_eq!(header_text(&headers, "content-length"), (to - from + 1).to_string());
        assert_eq!(header_text(&headers, "accept-ranges"), "bytes");
        assert_eq!(header_text(&headers, "content-type"), "video/mp4", "{range}");
        assert!(body == bytes[from..=to], "{range}: the bytes at that place");
    }

    for range in ["bytes=100000-", "bytes=100000-100010", "bytes=-0"] {
        let (status, headers, body) = fetch_range(&server, &alice, &path, range, false).await;
        assert_eq!(status, 416, "{range}");
        assert_eq!(header_text(&headers, "content-range"), "bytes */100000");
        assert!(body.is_empty());
    }

    // Several ranges, malformed ones, other units and If-Range: the whole file, 200.
    for range in ["bytes=0-1,5-6", "bytes=5-2", "bytes=x-y", "lines=1-2"] {
        let (status, headers, body) = fetch_range(&server, &alice, &path, range, false).await;
        assert_eq!(status, 200, "{range}");
        assert!(headers.get("content-range").is_none());
        assert!(body == bytes, "{range}");
    }
    let (status, _, body) = fetch_range(&server, &alice, &path, "bytes=0-9", true).await;
    assert_eq!(status, 200, "If-Range with a validator we never sent");
    assert!(body == bytes);

    // The download under a file name and a thumbnail honour it too.
    let named = format!("{path}/other.mp4");
    let (status, headers, body) = fetch_range(&server, &alice, &named, "bytes=10-19", false).await;
    assert_eq!((status, header_text(&headers, "content-range")), (206, "bytes 10-19/100000"));
    assert!(body == bytes[10..20]);
    let picture = encode(&gradient(300, 200), ImageFormat::Png);
    let mxc = upload(&server, &alice, picture, "image/png", None).await;
    let thumbnail = format!("{THUMBNAIL}/{}?width=32&height=32&method=scale", mxc_path(&mxc));
    let (_, headers, whole) = fetch(&server, Some(&alice), &thumbnail).await;
    let (status, headers_part, body) =
        fetch_range(&server, &alice, &thumbnail, "bytes=-10", false).await;
    assert_eq!(status, 206);
    let length = whole.len();
    assert_eq!(
        header_text(&headers_part, "content-range"),
        format!("bytes {}-{}/{length}", length - 10, length - 1)
    );
    assert_eq!(header_text(&headers, "content-type"), header_text(&headers_part, "content-type"));
    assert!(body == whole[length - 10..]);
    server.stop().await;
}

#[tokio::test]
async fn async_uploads_follow_the_spec_lifecycle() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let bob = server.register("bob", "secret-password").await;

    let (status, created) = server.post_as(&alice, "/_matrix/media/v1/create", Value::Null).await;
    assert_eq!(status, 200, "{created}");
    let mxc = created["content_uri"].as_str().expect("content_uri").to_owned();
    let expires = created["unused_expires_at"].as_u64().expect("unused_expires_at");
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis(),
    )
    .expect("ms");
    assert!(expires > now + 23 * 3600 * 1000, "expiry should be about a day away");
    let path = mxc_path(&mxc).to_owned();

    // Nothing uploaded yet: a short wait ends in 504 M_NOT_YET_UPLOADED.
    let (status, _, body) =
        fetch(&server, Some(&bob), &format!("{DOWNLOAD}/{path}?timeout_ms=100")).await;
    assert_error(status, &json_of(&body), 504, "M_NOT_YET_UPLOADED");

    // Only the creator may upload to it.
    let response = server
        .client
        .put(server.url(&format!("/_matrix/media/v3/upload/{path}")))
        .bearer_auth(&bob.token)
        .body(b"not yours".to_vec())
        .send()
        .await
        .expect("put");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // A download waiting for the upload is woken by it.
    let waiting = {
        let client = server.client.clone();
        let url = server.url(&format!("{DOWNLOAD}/{path}?timeout_ms=20000"));
        let token = bob.token.clone();
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await.expect("download");
            (response.status().as_u16(), response.bytes().await.expect("body").to_vec())
        })
    };
    let bytes = random_bytes(300_000);
    let response = server
        .client
        .put(server.url(&format!("/_matrix/media/v3/upload/{path}")))
        .bearer_auth(&alice.token)
        .header(header::CONTENT_TYPE, "application/x-test")
        .query(&[("filename", "late.bin")])
        .body(bytes.clone())
        .send()
        .await
        .expect("put");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({}));
    let (status, waited) = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("the waiting download finished")
        .expect("task");
    assert_eq!(status, 200);
    assert!(waited == bytes, "the woken download got other bytes");

    let (_, headers, body) = fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{path}")).await;
    assert!(body == bytes);
    assert_eq!(header_text(&headers, "content-type"), "application/x-test");
    assert_eq!(header_text(&headers, "content-disposition"), "attachment; filename=late.bin");

    // A second upload to the same id is refused.
    let response = server
        .client
        .put(server.url(&format!("/_matrix/media/v3/upload/{path}")))
        .bearer_auth(&alice.token)
        .body(b"again".to_vec())
        .send()
        .await
        .expect("put");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 409, "M_CANNOT_OVERWRITE_MEDIA");

    // Ids that were never created.
    for unknown in ["test.local/neverCreated", "other.example/abc", "test.local/..."] {
        let response = server
            .client
            .put(server.url(&format!("/_matrix/media/v3/upload/{unknown}")))
            .bearer_auth(&alice.token)
            .body(b"x".to_vec())
            .send()
            .await
            .expect("put");
        let (status, body) = status_and_json(response).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    server.stop().await;
}

#[tokio::test]
async fn pending_uploads_are_limited_and_expire() {
    let mut server = TestServer::with_options(&[
        "max_pending_media_uploads=2",
        "pending_media_upload_expiration_s=1",
    ])
    .await;
    let alice = server.register("alice", "secret-password").await;
    let mut created = Vec::new();
    for _ in 0..2 {
        let (status, body) = server.post_as(&alice, "/_matrix/media/v1/create", Value::Null).await;
        assert_eq!(status, 200, "{body}");
        created.push(body["content_uri"].as_str().expect("uri").to_owned());
    }
    let (status, body) = server.post_as(&alice, "/_matrix/media/v1/create", Value::Null).await;
    assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms <= 1000), "{body}");

    // Once expired, the ids are gone for downloads and uploads alike...
    let path = mxc_path(&created[0]).to_owned();
    let expired = wait_until(Duration::from_secs(5), || async {
        let (status, _, _) = fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{path}")).await;
        status == 404
    })
    .await;
    assert!(expired, "the pending id never expired");
    let response = server
        .client
        .put(server.url(&format!("/_matrix/media/v3/upload/{path}")))
        .bearer_auth(&alice.token)
        .body(b"too late".to_vec())
        .send()
        .await
        .expect("put");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // ...and no longer count against the limit.
    let (status, body) = server.post_as(&alice, "/_matrix/media/v1/create", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn oversized_uploads_are_refused_and_leave_nothing_behind() {
    let mut server = TestServer::with_options(&["max_request_size=10000000"]).await;
    let alice = server.register("alice", "secret-password").await;

    // Declared too large: refused before the body is read.
    let (status, body) =
        upload_raw(&server, &alice, random_bytes(10_000_001), "application/octet-stream", None)
            .await;
    assert_error(status, &body, 413, "M_TOO_LARGE");

    // Streamed without a length: refused once the limit is crossed.
    let stream = tokio_util::io::ReaderStream::new(Cursor::new(random_bytes(10_500_000)));
    let response = server
        .client
        .post(server.url(UPLOAD))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server may close the connection before the client has sent everything; when the
    // client does see the answer, it is 413.
    match response {
        Ok(response) => {
            let (status, body) = status_and_json(response).await;
            assert_error(status, &body, 413, "M_TOO_LARGE");
        }
        Err(error) => eprintln!("streamed oversized upload: connection closed early ({error})"),
    }
    assert!(
        files_under(&media_dir(&server)).is_empty(),
        "an oversized upload left files: {:?}",
        files_under(&media_dir(&server))
    );
    // Exactly at the limit is fine.
    upload(&server, &alice, random_bytes(10_000_000), "application/octet-stream", None).await;
    server.stop().await;
}

/// Fetches a thumbnail and decodes it, checking the headers a thumbnail must carry.
async fn thumbnail_of(
    server: &TestServer,
    user: &User,
    mxc: &str,
    query: &str,
) -> (String, DynamicImage, Vec<u8>) {
    let (status, headers, body) =
        fetch(server, Some(user), &format!("{THUMBNAIL}/{}?{query}", mxc_path(mxc))).await;
    assert_eq!(status, 200, "thumbnail {query}: {}", String::from_utf8_lossy(&body));
    let content_type = header_text(&headers, "content-type").to_owned();
    assert!(
        header_text(&headers, "content-disposition").starts_with("inline; filename=thumbnail."),
        "{:?}",
        headers.get("content-disposition")
    );
    assert!(header_text(&headers, "content-security-policy").starts_with("sandbox;"));
    let image = image::load_from_memory(&body).expect("the thumbnail decodes");
    (content_type, image, body)
}

fn dimensions(image: &DynamicImage) -> (u32, u32) {
    (image.width(), image.height())
}

#[tokio::test]
async fn thumbnails_of_every_format_and_method() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;

    let png =
        upload(&server, &alice, encode(&gradient(640, 480), ImageFormat::Png), "image/png", None)
            .await;
    let jpeg =
        upload(&server, &alice, encode(&gradient(400, 300), ImageFormat::Jpeg), "image/jpeg", None)
            .await;
    let webp =
        upload(&server, &alice, encode(&gradient(300, 500), ImageFormat::WebP), "image/webp", None)
            .await;
    let gif_bytes = animated_gif(200, 100, 3);
    let gif = upload(&server, &alice, gif_bytes.clone(), "image/gif", None).await;

    // Crop gives exactly the chosen size.
    for (mxc, kind) in [(&png, "image/png"), (&jpeg, "image/jpeg"), (&webp, "image/png")] {
        let (content_type, image, _) =
            thumbnail_of(&server, &alice, mxc, "width=32&height=32&method=crop").await;
        assert_eq!((content_type.as_str(), dimensions(&image)), (kind, (32, 32)));
        let (_, image, _) =
            thumbnail_of(&server, &alice, mxc, "width=50&height=60&method=crop").await;
        assert_eq!(dimensions(&image), (96, 96));
    }
    // Scale keeps the aspect ratio within the smallest box that covers the request.
    let (_, image, _) =
        thumbnail_of(&server, &alice, &png, "width=300&height=200&method=scale").await;
    assert_eq!(dimensions(&image), (320, 240));
    let (_, image, _) = thumbnail_of(&server, &alice, &jpeg, "width=100&height=100").await;
    assert_eq!(dimensions(&image), (320, 240));
    let (_, image, _) =
        thumbnail_of(&server, &alice, &webp, "width=100&height=100&method=scale").await;
    assert_eq!(dimensions(&image), (144, 240));
    // Never upscaled: a request bigger than the image gets the original.
    let (content_type, image, body) =
        thumbnail_of(&server, &alice, &jpeg, "width=640&height=480&method=scale").await;
    assert_eq!((content_type.as_str(), dimensions(&image)), ("image/jpeg", (400, 300)));
    let (_, _, original) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&jpeg))).await;
    assert!(body == original, "a small image should be served as it is");
    // Bigger than every size: the original too.
    let (_, image, _) = thumbnail_of(&server, &alice, &png, "width=1000&height=1000").await;
    assert_eq!(dimensions(&image), (640, 480));

    // GIFs: still unless animation is asked for.
    let (content_type, image, _) =
        thumbnail_of(&server, &alice, &gif, "width=32&height=32&method=crop").await;
    assert_eq!((content_type.as_str(), dimensions(&image)), ("image/png", (32, 32)));
    let (content_type, _, body) =
        thumbnail_of(&server, &alice, &gif, "width=32&height=32&method=crop&animated=true").await;
    assert_eq!(content_type, "image/gif");
    let frames = image::AnimationDecoder::into_frames(
        GifDecoder::new(Cursor::new(body)).expect("gif decodes"),
    )
    .collect_frames()
    .expect("frames");
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|frame| frame.buffer().dimensions() == (32, 32)));
    // A GIF smaller than the box: animated=false must not get the animated original.
    let (content_type, image, _) =
        thumbnail_of(&server, &alice, &gif, "width=640&height=480&method=scale").await;
    assert_eq!((content_type.as_str(), dimensions(&image)), ("image/png", (200, 100)));
    let (content_type, _, body) =
        thumbnail_of(&server, &alice, &gif, "width=640&height=480&animated=true").await;
    assert_eq!(content_type, "image/gif");
    assert!(body == gif_bytes, "an animated request for a small GIF gets the original");

    // Cached: the same bytes again, and still after a restart.
    let (_, _, first) = thumbnail_of(&server, &alice, &png, "width=96&height=96&method=crop").await;
    server.restart().await;
    let alice = server.login("alice", "secret-password").await;
    let (_, _, again) = thumbnail_of(&server, &alice, &png, "width=96&height=96&method=crop").await;
    assert!(first == again);

    // Not an image: no thumbnail. Nonsense sizes: 400.
    let text = upload(&server, &alice, b"just text".to_vec(), "text/plain", None).await;
    let (status, _, body) = fetch(
        &server,
        Some(&alice),
        &format!("{THUMBNAIL}/{}?width=32&height=32", mxc_path(&text)),
    )
    .await;
    assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
    let (status, _, body) =
        fetch(&server, Some(&alice), &format!("{THUMBNAIL}/{}?width=0&height=32", mxc_path(&png)))
            .await;
    assert_error(status, &json_of(&body), 400, "M_INVALID_PARAM");
    let (status, _, body) = fetch(
        &server,
        Some(&alice),
        &format!("{THUMBNAIL}/{}?width=32&height=32&method=stretch", mxc_path(&png)),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // A corrupt file claiming to be an image.
    let corrupt =
        upload(&server, &alice, b"\x89PNG\r\n\x1a\nnope".to_vec(), "image/png", None).await;
    let (status, _, body) = fetch(
        &server,
        Some(&alice),
        &format!("{THUMBNAIL}/{}?width=32&height=32", mxc_path(&corrupt)),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    server.stop().await;
}

#[tokio::test]
async fn decompression_bombs_are_refused_before_decoding() {
    let mut server = TestServer::with_options(&["media_thumbnail_max_pixels=1000000"]).await;
    let alice = server.register("alice", "secret-password").await;

    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 100);
    let mxc = upload(&server, &alice, bomb, "image/png", None).await;
    let (status, _, body) =
        fetch(&server, Some(&alice), &format!("{THUMBNAIL}/{}?width=32&height=32", mxc_path(&mxc)))
            .await;
    assert_error(status, &json_of(&body), 413, "M_TOO_LARGE");
    assert!(json_of(&body)["error"].as_str().is_some_and(|error| error.contains("100000x100000")));

    // A real image just over the configured limit is refused the same way.
    let large =
        upload(&server, &alice, encode(&gradient(1001, 1000), ImageFormat::Png), "image/png", None)
            .await;
    let (status, _, body) = fetch(
        &server,
        Some(&alice),
        &format!("{THUMBNAIL}/{}?width=32&height=32", mxc_path(&large)),
    )
    .await;
    assert_error(status, &json_of(&body), 413, "M_TOO_LARGE");
    // The original itself can still be downloaded.
    let (status, _, _) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&large))).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn authenticated_media_requires_a_token() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let mxc = upload(&server, &alice, b"hello".to_vec(), "text/plain", None).await;
    let path = mxc_path(&mxc);
    for url in [
        format!("{DOWNLOAD}/{path}"),
        format!("{DOWNLOAD}/{path}/name.txt"),
        format!("{THUMBNAIL}/{path}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
        format!("{PREVIEW}?url=https://example.org/"),
    ] {
        let (status, _, body) = fetch(&server, None, &url).await;
        assert_error(status, &json_of(&body), 401, "M_MISSING_TOKEN");
    }
    let response = server
        .client
        .post(server.url(UPLOAD))
        .body(b"anonymous".to_vec())
        .send()
        .await
        .expect("post");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) =
        server.request(reqwest::Method::POST, "/_matrix/media/v1/create", None, None).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let response = server
        .client
        .post(server.url(UPLOAD))
        .bearer_auth("not-a-token")
        .body(b"x".to_vec())
        .send()
        .await
        .expect("post");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    server.stop().await;
}

#[tokio::test]
async fn legacy_media_routes_follow_allow_legacy_media() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let mxc = upload(&server, &alice, b"legacy bytes".to_vec(), "text/plain", None).await;
    let path = mxc_path(&mxc);
    // The legacy upload path is not legacy-gated (it is the current upload endpoint).
    let response = server
        .client
        .post(server.url("/_matrix/media/r0/upload"))
        .bearer_auth(&alice.token)
        .body(b"r0".to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    for url in [
        format!("/_matrix/media/v3/download/{path}"),
        format!("/_matrix/media/r0/download/{path}/name.txt"),
        format!("/_matrix/media/v3/thumbnail/{path}?width=32&height=32"),
        "/_matrix/media/v3/config".to_owned(),
        "/_matrix/media/v3/preview_url?url=https://example.org/".to_owned(),
    ] {
        for user in [None, Some(&alice)] {
            let (status, _, body) = fetch(&server, user, &url).await;
            assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
        }
    }
    server.stop().await;

    let mut server = TestServer::with_options(&["allow_legacy_media=true"]).await;
    let alice = server.register("alice", "secret-password").await;
    let mxc = upload(&server, &alice, b"legacy bytes".to_vec(), "text/plain", Some("a.txt")).await;
    let path = mxc_path(&mxc);
    let (status, headers, body) =
        fetch(&server, None, &format!("/_matrix/media/v3/download/{path}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"legacy bytes");
    assert_eq!(header_text(&headers, "content-disposition"), "inline; filename=a.txt");
    let (status, _, body) =
        fetch(&server, None, &format!("/_matrix/media/v3/download/{path}/b.txt")).await;
    assert_eq!((status, body.as_slice()), (200, b"legacy bytes".as_slice()));
    let (status, config) = server.get_as(&alice, "/_matrix/media/v3/config").await;
    assert_eq!(status, 200);
    assert!(config["m.upload.size"].is_u64());
    server.stop().await;
}

#[tokio::test]
async fn unreachable_and_blocked_remote_media_is_answered_without_waiting() {
    let mut server =
        TestServer::with_options(&["prevent_media_downloads_from=[\"evil\\\\.example$\"]"]).await;
    let alice = server.register("alice", "secret-password").await;
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    // A server that does not exist is asked (federation_media.rs has servers that do) and
    // cannot be reached; a blocked one is not even asked.
    for (url, status, errcode) in [
        (format!("{DOWNLOAD}/other.example/someMedia"), 502, "M_UNKNOWN"),
        (format!("{DOWNLOAD}/other.example/someMedia?timeout_ms=60000"), 502, "M_UNKNOWN"),
        (format!("{THUMBNAIL}/other.example/someMedia?width=32&height=32"), 502, "M_UNKNOWN"),
        (format!("{DOWNLOAD}/evil.example/someMedia"), 404, "M_NOT_FOUND"),
        (format!("{DOWNLOAD}/evil.example:8448/someMedia"), 404, "M_NOT_FOUND"),
    ] {
        let response = client
            .get(server.url(&url))
            .bearer_auth(&alice.token)
            .send()
            .await
            .expect("an answer well within 5 s");
        let (got, body) = status_and_json(response).await;
        assert_error(got, &body, status, errcode);
    }
    server.stop().await;
}

// ----- URL previews ---------------------------------------------------------------------

/// A web server on loopback for preview tests, counting the requests it gets.
struct Site {
    address: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    async fn start(ip: &str, routes: Router) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = routes.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind test site");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A site that must never be reached.
async fn secret_site(ip: &str) -> Site {
    Site::start(ip, Router::new().fallback(|| async { "internal secrets" })).await
}

/// Whether a refusal names the address check (not, say, the allowlists).
fn denied_by_address(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|error| error.contains("ip_range_denylist"))
}

async fn preview(server: &TestServer, user: &User, url: &str) -> (u16, Value) {
    let response = server
        .client
        .get(server.url(PREVIEW))
        .query(&[("url", url)])
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("preview");
    status_and_json(response).await
}

#[tokio::test]
async fn previews_are_off_until_allowed() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let (status, body) = preview(&server, &alice, "https://example.org/").await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    server.stop().await;

    let mut server =
        TestServer::with_options(&["url_preview_domain_explicit_allowlist=[\"example.org\"]"])
            .await;
    let alice = server.register("alice", "secret-password").await;
    let (status, body) = preview(&server, &alice, "https://example.com/").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = preview(&server, &alice, "not a url").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn previews_cannot_reach_internal_addresses_by_default() {
    let secret = secret_site("127.0.0.1").await;
    // Everything is allowed by the allowlists: only the default ip_range_denylist stands
    // between a user and the server's own network.
    let mut server =
        TestServer::with_options(&["url_preview_domain_contains_allowlist=[\"*\"]"]).await;
    let alice = server.register("alice", "secret-password").await;
    let port = secret.address.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://169.254.169.254:{port}/latest/meta-data/"),
    ] {
        let (status, body) = preview(&server, &alice, &url).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        assert!(denied_by_address(&body), "{url}: {body}");
    }
    let (status, body) = preview(&server, &alice, "file:///etc/passwd").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(secret.hits(), 0, "a preview reached the internal site");
    server.stop().await;
}

const PAGE: &str = r#"<!doctype html><html><head>
<title>Fallback title</title>
<meta property="og:title" content="Fish &amp; Chips">
<meta property="og:description" content="The best in town.">
<meta property="og:image" content="/picture.png">
</head><body>hello</body></html>"#;

fn html(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body)
}

#[tokio::test]
async fn redirects_to_internal_addresses_are_refused() {
    let secret = secret_site("127.0.0.1").await;
    let secret_url = secret.url("/");
    let secret_by_name = format!("http://localhost:{}/", secret.address.port());
    let image_page = format!(
        "<html><head><meta property=\"og:title\" content=\"Sneaky\">\
         <meta property=\"og:image\" content=\"{secret_url}img.png\"></head></html>"
    );
    let routes = Router::new()
        .route("/to-ip", get(move || async move { Redirect::temporary(&secret_url) }))
        .route("/to-name", get(move || async move { Redirect::permanent(&secret_by_name) }))
        .route("/image-inside", get(move || async move { html(image_page) }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }));
    // The page lives on 127.0.0.2, which this server may reach; 127.0.0.1 and ::1 stay
    // denied, so the redirect itself is what must be caught.
    let page = Site::start("127.0.0.2", routes).await;
    let mut server = TestServer::with_options(&[
        "url_preview_domain_explicit_allowlist=[\"127.0.0.2\"]",
        "ip_range_denylist=[\"127.0.0.1/32\", \"::1/128\"]",
    ])
    .await;
    let alice = server.register("alice", "secret-password").await;

    let (status, body) = preview(&server, &alice, &page.url("/to-ip")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(denied_by_address(&body), "{body}");
    let (status, body) = preview(&server, &alice, &page.url("/to-name")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(denied_by_address(&body), "{body}");
    // An image on an internal address is left out; the rest of the preview stands.
    let (status, body) = preview(&server, &alice, &page.url("/image-inside")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:title"], "Sneaky");
    assert!(body.get("og:image").is_none(), "{body}");
    // Redirect loops end.
    let (status, body) = preview(&server, &alice, &page.url("/loop")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(body["error"].as_str().is_some_and(|error| error.contains("redirects")), "{body}");

    assert!(page.hits() >= 3, "the allowed page should have been fetched");
    assert_eq!(secret.hits(), 0, "a redirect reached the internal site");
    server.stop().await;
}

#[tokio::test]
async fn previews_of_allowed_pages_carry_opengraph_and_image() {
    let picture = encode(&gradient(64, 48), ImageFormat::Png);
    let served_picture = picture.clone();
    let routes = Router::new()
        .route("/article", get(|| async { html(PAGE.to_owned()) }))
        .route(
            "/untitled",
            get(|| async {
                html("<html><head><title> Just a\n title </title></head></html>".to_owned())
            }),
        )
        .route(
            "/picture.png",
            get(move || {
                let picture = served_picture.clone();
                async move { ([(header::CONTENT_TYPE, "image/png")], picture) }
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }));
    let site = Site::start("127.0.0.1", routes).await;
    // This server may reach loopback (test-only override) and allows exactly the site.
    let mut server = TestServer::with_options(&[
        "ip_range_denylist=[]",
        "url_preview_domain_explicit_allowlist=[\"127.0.0.1\"]",
    ])
    .await;
    let alice = server.register("alice", "secret-password").await;

    let (status, body) = preview(&server, &alice, &site.url("/article")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:title"], "Fish & Chips");
    assert_eq!(body["og:description"], "The best in town.");
    assert_eq!(body["og:image:type"], "image/png");
    assert_eq!(body["og:image:width"], 64);
    assert_eq!(body["og:image:height"], 48);
    assert_eq!(body["matrix:image:size"], picture.len());
    let image = body["og:image"].as_str().expect("og:image is an mxc URI");
    let (status, _, bytes) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(image))).await;
    assert_eq!(status, 200);
    assert!(bytes == picture, "the stored preview image differs");
    let fetched = site.hits();
    assert_eq!(fetched, 2, "page and image");

    // Cached: no new fetch.
    let (status, again) = preview(&server, &alice, &site.url("/article")).await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(site.hits(), fetched);

    // A direct link to an image previews as that image.
    let (status, body) = preview(&server, &alice, &site.url("/picture.png")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:image:width"], 64);

    let (status, body) = preview(&server, &alice, &site.url("/untitled")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:title"], "Just a title");
    let (status, body) = preview(&server, &alice, &site.url("/missing")).await;
    assert_eq!(status, 502, "{body}");

    // Other hosts are not in the allowlist, even on the same machine.
    let (status, body) =
        preview(&server, &alice, &format!("http://localhost:{}/article", site.address.port()))
            .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

// ----- admin -----------------------------------------------------------------------------

#[tokio::test]
async fn admin_commands_show_usage_and_delete_media() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let bob = server.register("bob", "secret-password").await;
    let services = server.server().services().clone();

    let png =
        upload(&server, &alice, encode(&gradient(200, 200), ImageFormat::Png), "image/png", None)
            .await;
    let png_size = encode(&gradient(200, 200), ImageFormat::Png).len();
    let other = upload(&server, &alice, random_bytes(1000), "application/octet-stream", None).await;
    upload(&server, &bob, random_bytes(10), "application/octet-stream", None).await;
    // A thumbnail, to be deleted along with its image.
    thumbnail_of(&server, &alice, &png, "width=32&height=32&method=crop").await;

    let usage = tuwunel::admin::execute(&services, "media usage").await.expect("usage");
    let total = png_size + 1000 + 10;
    assert!(usage.contains(&format!("3 files, {total} bytes")), "{usage}");
    assert!(
        usage.contains(&format!("@alice:test.local: 2 files, {} bytes", png_size + 1000)),
        "{usage}"
    );
    assert!(usage.contains("@bob:test.local: 1 files, 10 bytes"), "{usage}");

    let info = tuwunel::admin::execute(&services, &format!("media get-file-info --mxc {png}"))
        .await
        .expect("info");
    assert!(info.contains("owner @alice:test.local") && info.contains("image/png"), "{info}");

    let files_before = files_under(&media_dir(&server)).len();
    let deleted = tuwunel::admin::execute(&services, &format!("media delete --mxc {png}"))
        .await
        .expect("delete");
    assert!(deleted.contains("Deleted"), "{deleted}");
    assert_eq!(files_under(&media_dir(&server)).len(), files_before - 2, "image and thumbnail");
    for url in [
        format!("{DOWNLOAD}/{}", mxc_path(&png)),
        format!("{THUMBNAIL}/{}?width=32&height=32&method=crop", mxc_path(&png)),
    ] {
        let (status, _, body) = fetch(&server, Some(&alice), &url).await;
        assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
    }
    let usage = tuwunel::admin::execute(&services, "media usage").await.expect("usage");
    assert!(usage.contains("@alice:test.local: 1 files, 1000 bytes"), "{usage}");

    let deleted = tuwunel::admin::execute(&services, "media delete-all-from-user alice")
        .await
        .expect("delete all");
    assert!(deleted.contains("Deleted 1 media items (1000 bytes)"), "{deleted}");
    let (status, _, _) =
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&other))).await;
    assert_eq!(status, 404);
    let usage = tuwunel::admin::execute(&services, "media usage").await.expect("usage");
    assert!(usage.contains("1 files, 10 bytes, of 1 owners"), "{usage}");
    assert!(
        tuwunel::admin::execute(&services, &format!("media delete --mxc {png}")).await.is_err(),
        "deleting twice fails"
    );
    server.stop().await;
}

#[tokio::test]
async fn uploads_stop_exactly_at_the_quota() {
    let mut server = TestServer::with_options(&[
        "media_quota_per_user=1000",
        r#"well_known.support_email="admin@test.local""#,
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    upload(&server, &alice, random_bytes(600), "application/octet-stream", None).await;
    // Exactly at the quota is allowed; one byte over is not.
    let last = upload(&server, &alice, random_bytes(400), "application/octet-stream", None).await;
    let (status, body) = upload_raw(&server, &alice, random_bytes(1), "text/plain", None).await;
    assert_error(status, &body, 403, "M_RESOURCE_LIMIT_EXCEEDED");
    assert_eq!(body["admin_contact"], "mailto:admin@test.local");
    // An upload to a /create'd id counts the same.
    let (status, created) =
        server.post_as(&alice, "/_matrix/media/v1/create", serde_json::json!({})).await;
    assert_eq!(status, 200, "{created}");
    let reserved = created["content_uri"].as_str().expect("uri").to_owned();
    let put = server
        .client
        .put(server.url(&format!("/_matrix/media/v3/upload/{}", mxc_path(&reserved))))
        .bearer_auth(&alice.token)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(vec![b'x'; 5]);
    let (status, body) = status_and_json(put.send().await.expect("put")).await;
    assert_error(status, &body, 403, "M_RESOURCE_LIMIT_EXCEEDED");
    // Other users have their own quota.
    upload(&server, &bob, random_bytes(1000), "application/octet-stream", None).await;

    let services = server.server().services().clone();
    let usage = tuwunel::admin::execute(&services, "media usage").await.expect("usage");
    assert!(usage.contains("Quota per local user: 1000 bytes"), "{usage}");
    assert!(
        usage.contains("@alice:test.local: 2 files, 1000 bytes (100% of the quota)"),
        "{usage}"
    );

    // Deleting makes room again.
    tuwunel::admin::execute(&services, &format!("media delete --mxc {last}"))
        .await
        .expect("delete");
    upload(&server, &alice, random_bytes(400), "application/octet-stream", None).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_cannot_pass_the_quota_together() {
    let mut server = TestServer::with_options(&["media_quota_per_user=1000"]).await;
    let alice = server.register("alice", "pw").await;
    let uploads: Vec<_> = (0..10)
        .map(|_| {
            let request = server
                .client
                .post(server.url(UPLOAD))
                .bearer_auth(&alice.token)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(random_bytes(300));
            tokio::spawn(async move { request.send().await.expect("upload").status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for upload in uploads {
        statuses.push(upload.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 403, 403, 403, 403, 403, 403, 403]);
    let services = server.server().services().clone();
    let usage = services.media.usage().expect("usage");
    assert_eq!(usage[0].1.bytes, 900, "{usage:?}");
    server.stop().await;
}

#[tokio::test]
async fn unused_media_is_deleted_after_the_retention_days() {
    const DAY: Duration = Duration::from_secs(86_400);
    let (mut server, clock) = TestServer::with_clock(&["media_retention_local_days=30"]).await;
    let alice = server.register("alice", "pw").await;
    let services = server.server().services().clone();
    let unused = upload(&server, &alice, random_bytes(100), "text/plain", None).await;
    let used = upload(&server, &alice, random_bytes(200), "text/plain", None).await;
    let download = |mxc: &str| format!("{DOWNLOAD}/{}", mxc_path(mxc));
    let retention = |command: &'static str| {
        let services = services.clone();
        async move { tuwunel::admin::execute(&services, command).await.expect("retention") }
    };

    // 30 days minus a millisecond after the upload: both are kept.
    clock.advance(DAY * 29);
    assert_eq!(fetch(&server, Some(&alice), &download(&used)).await.0, 200);
    // The download is recorded by the owner's actor, after the answer.
    let used_id = mxc_path(&used).split_once('/').expect("server/id").1.to_owned();
    let recorded = wait_until(Duration::from_secs(10), || {
        let services = services.clone();
        let used_id = used_id.clone();
        async move {
            let record = services.media.stored("test.local", &used_id).expect("read");
            record.is_some_and(|record| record.accessed_day.is_some())
        }
    })
    .await;
    assert!(recorded, "the download day is recorded");
    clock.advance(DAY - Duration::from_millis(1));
    let report = retention("media retention").await;
    assert!(report.contains("would delete 0 media items"), "{report}");
    assert!(retention("media retention --apply").await.contains("Deleted 0"));

    // Exactly 30 days: the never-downloaded one goes; the one downloaded a day ago stays.
    clock.advance(Duration::from_millis(1));
    let report = retention("media retention").await;
    assert!(report.contains("would delete 1 media items (100 bytes)"), "{report}");
    assert!(report.contains(unused.as_str()), "{report}");
    let applied = retention("media retention --apply").await;
    assert!(applied.contains("Deleted 1 unused media items (100 bytes)"), "{applied}");
    assert_eq!(fetch(&server, Some(&alice), &download(&unused)).await.0, 404);
    assert_eq!(fetch(&server, Some(&alice), &download(&used)).await.0, 200, "downloaded again");

    // Downloads are recorded once a day: many downloads today, one record.
    for _ in 0..5 {
        assert_eq!(fetch(&server, Some(&alice), &download(&used)).await.0, 200);
    }
    // 29 days after its last download it stays; 31 days after, it goes.
    clock.advance(DAY * 29);
    assert!(retention("media retention --apply").await.contains("Deleted 0"));
    clock.advance(DAY * 2);
    assert!(retention("media retention --apply").await.contains("Deleted 1"));
    assert_eq!(fetch(&server, Some(&alice), &download(&used)).await.0, 404);
    let usage = tuwunel::admin::execute(&services, "media usage").await.expect("usage");
    assert!(usage.contains("0 files, 0 bytes"), "{usage}");
    server.stop().await;
}

#[tokio::test]
async fn retention_is_off_by_default() {
    let (mut server, clock) = TestServer::with_clock(&[]).await;
    let alice = server.register("alice", "pw").await;
    let services = server.server().services().clone();
    let mxc = upload(&server, &alice, random_bytes(10), "text/plain", None).await;
    clock.advance(Duration::from_secs(86_400 * 3_650));
    let report = tuwunel::admin::execute(&services, "media retention --apply").await.expect("ok");
    assert!(report.contains("No media retention is configured"), "{report}");
    assert_eq!(services.media.apply_retention().await.expect("retention"), (0, 0));
    assert_eq!(
        fetch(&server, Some(&alice), &format!("{DOWNLOAD}/{}", mxc_path(&mxc))).await.0,
        200
    );
    server.stop().await;
}

/// A panic in the image decoders (injected: fuzzing found no file that makes them panic) costs
/// that thumbnail a 400, not the server a 500; the decoder pool and the cache go on working.
#[tokio::test]
async fn a_panicking_image_decoder_is_a_refused_thumbnail() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "secret-password").await;
    let png =
        upload(&server, &alice, encode(&gradient(640, 480), ImageFormat::Png), "image/png", None)
            .await;
    let path = format!("{THUMBNAIL}/{}?width=32&height=32&method=crop", mxc_path(&png));
    server.server().services().media.inject_decoder_panic();
    let (status, _, body) = fetch(&server, Some(&alice), &path).await;
    assert_error(status, &json_of(&body), 400, "M_UNKNOWN");
    // Nothing half-made was cached: the same thumbnail is made properly next time.
    let (_, image, _) = thumbnail_of(&server, &alice, &png, "width=32&height=32&method=crop").await;
    assert_eq!(dimensions(&image), (32, 32));
    server.stop().await;
}
