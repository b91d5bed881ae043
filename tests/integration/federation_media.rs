//! Media over federation: our servers serving `multipart/mixed` media and thumbnails to
//! other servers (signed requests only), a client of one server downloading media and
//! thumbnails uploaded on another (fetched once, then served from the cache even when the
//! origin is gone), `prevent_media_downloads_from`, the size limit, `Location` answers and
//! the legacy fallback of `request_legacy_media`.

use std::{
    io::Cursor,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use reqwest::Method;
use serde_json::Value;

use crate::{
    common::{User, assert_error},
    federation::send,
    testbed::{Ca, FakeServer, FedServer, new_pair},
};

const DOWNLOAD: &str = "/_matrix/client/v1/media/download";
const THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";

pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 255 / width.max(1)) as u8, (y * 255 / height.max(1)) as u8, 128])
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .expect("encode");
    bytes
}

/// Uploads `bytes` to `server` as `user`; returns `(server name, media id)`.
async fn upload(
    server: &FedServer,
    user: &User,
    bytes: Vec<u8>,
    content_type: &str,
    filename: &str,
) -> (String, String) {
    let response = server
        .server
        .client
        .post(server.server.url("/_matrix/media/v3/upload"))
        .query(&[("filename", filename)])
        .bearer_auth(&user.token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let uri = body["content_uri"].as_str().expect("content_uri");
    let (name, id) = uri.strip_prefix("mxc://").and_then(|rest| rest.split_once('/')).expect("mxc");
    (name.to_owned(), id.to_owned())
}

/// GETs `path` on `server` as `user`: status, headers, body.
async fn fetch(server: &FedServer, user: &User, path: &str) -> (u16, HeaderMap, Vec<u8>) {
    let response = server
        .server
        .client
        .get(server.server.url(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("an image");
    (image.width(), image.height())
}

/// One part of a `multipart/mixed` body: its headers (lower-case names) and bytes.
type Part = (Vec<(String, String)>, Vec<u8>);

/// Splits a `multipart/mixed` body into its parts (a reader written apart from the server's).
fn parts(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type
        .split(';')
        .find_map(|parameter| parameter.trim().strip_prefix("boundary="))
        .expect("a boundary")
        .trim_matches('"');
    let opening = format!("--{boundary}\r\n");
    assert!(body.starts_with(opening.as_bytes()), "starts with the first delimiter");
    let delimiter = format!("\r\n--{boundary}");
    let mut rest = &body[opening.len()..];
    let mut found = Vec::new();
    loop {
        let end = rest
            .windows(delimiter.len())
            .position(|window| window == delimiter.as_bytes())
            .expect("a closing delimiter");
        let part = &rest[..end];
        let split = part.windows(4).position(|window| window == b"\r\n\r\n").expect("headers");
        let headers = String::from_utf8_lossy(&part[..split])
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        found.push((headers, part[split + 4..].to_vec()));
        rest = &rest[end + delimiter.len()..];
        if rest.starts_with(b"--") {
            return found;
        }
        rest = rest.strip_prefix(b"\r\n").expect("a line break after a delimiter");
    }
}

fn part_header<'a>(part: &'a Part, name: &str) -> &'a str {
    part.0.iter().find(|(header, _)| header == name).map_or("", |(_, value)| value.as_str())
}

#[tokio::test]
async fn media_of_one_server_reaches_clients_of_another_and_stays_cached() {
    let ca = Ca::new();
    let mut a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let picture = png(640, 480);
    let (origin, picture_id) =
        upload(&a, &alice, picture.clone(), "image/png", "holiday photo.png").await;
    assert_eq!(origin, a.name);
    let text = b"plain text, not an image".to_vec();
    let (_, text_id) = upload(&a, &alice, text.clone(), "text/html", "page.html").await;
    let (_, thumbnailed_id) = upload(&a, &alice, png(300, 300), "image/png", "square.png").await;

    // The bytes, type and file name the uploader gave, through B.
    let (status, headers, body) =
        fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/{picture_id}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == picture, "the same bytes");
    assert_eq!(header_text(&headers, "content-type"), "image/png");
    assert_eq!(
        header_text(&headers, "content-disposition"),
        "inline; filename=\"holiday photo.png\""
    );
    // B serves another server's HTML as safely as its own.
    let (status, headers, body) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/{text_id}")).await;
    assert_eq!((status, body), (200, text));
    assert!(header_text(&headers, "content-disposition").starts_with("attachment"));
    assert!(header_text(&headers, "content-security-policy").contains("sandbox"));
    // A thumbnail of media B has not fetched yet: fetched, then thumbnailed at B.
    let (status, headers, body) = fetch(
        &b,
        &bob,
        &format!("{THUMBNAIL}/{origin}/{thumbnailed_id}?width=32&height=32&method=crop"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header_text(&headers, "content-type"), "image/png");
    assert_eq!(dimensions(&body), (32, 32));
    // Unknown media of A: A's 404 passes through.
    let (status, _, body) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/NoSuchMedia")).await;
    assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");

    // B keeps the media as A's, with A's description.
    let stored = b.server.server().services().media.stored(&origin, &picture_id).expect("read");
    let stored = stored.expect("cached at B");
    assert_eq!(stored.owner, origin);
    assert_eq!(stored.filename.as_deref(), Some("holiday photo.png"));

    // With A gone, B still serves what it fetched, thumbnails of other sizes included.
    a.server.stop().await;
    let (status, _, body) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/{picture_id}")).await;
    assert_eq!(status, 200, "served from B's cache: {}", String::from_utf8_lossy(&body));
    assert!(body == picture);
    let (status, _, body) = fetch(
        &b,
        &bob,
        &format!("{THUMBNAIL}/{origin}/{picture_id}?width=320&height=240&method=scale"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(dimensions(&body), (320, 240));
    let (status, _, body) =
        fetch(&b, &bob, &format!("{THUMBNAIL}/{origin}/{thumbnailed_id}?width=96&height=96")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Media B never fetched is now unreachable: a gateway error, not a hang.
    let (status, _, body) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/SomethingElse")).await;
    assert_error(status, &json_of(&body), 502, "M_UNKNOWN");
}

#[tokio::test]
async fn concurrent_downloads_of_new_remote_media_share_one_fetch() {
    let ca = Ca::new();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    let content: Vec<u8> = (0..300_000u32).map(|index| (index % 253) as u8).collect();
    let served = content.clone();
    let routes = Router::new().route(
        "/_matrix/federation/v1/media/download/{id}",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let served = served.clone();
            async move {
                // Slow enough that every download below arrives while this one runs.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut body = b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\
                    Content-Type: application/octet-stream\r\n\r\n"
                    .to_vec();
                body.extend_from_slice(&served);
                body.extend_from_slice(b"\r\n--b--\r\n");
                ([(header::CONTENT_TYPE, "multipart/mixed; boundary=b")], body)
            }
        }),
    );
    let remote = FakeServer::serving(&ca, routes).await;
    let b = FedServer::start(&ca, &[]).await;
    let bob = b.server.register("bob", "pw").await;
    let path = format!("{DOWNLOAD}/{}/shared", remote.name);
    let downloads: Vec<_> = (0..6)
        .map(|_| {
            let url = b.server.url(&path);
            let token = bob.token.clone();
            tokio::spawn(async move {
                let response = crate::common::client()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request");
                (response.status().as_u16(), response.bytes().await.expect("body"))
            })
        })
        .collect();
    for download in downloads {
        let (status, body) = download.await.expect("task");
        assert_eq!(status, 200);
        assert!(body == content, "every client gets the whole file");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "six downloads, one fetch");
}

#[tokio::test]
async fn other_servers_get_multipart_media_and_thumbnails_when_signed() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let origin = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let picture = png(200, 100);
    let (_, id) = upload(&a, &alice, picture.clone(), "image/png", "wide.png").await;

    let signed_get = |path: String| {
        let header = origin.authorization("GET", &path, &a.name, None, None);
        let url = a.server.url(&path);
        async move {
            let response = crate::common::client()
                .get(url)
                .header("authorization", header)
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let content_type = header_text(response.headers(), "content-type").to_owned();
            (status, content_type, response.bytes().await.expect("body").to_vec())
        }
    };
    let (status, content_type, body) =
        signed_get(format!("/_matrix/federation/v1/media/download/{id}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(content_type.starts_with("multipart/mixed; boundary="), "{content_type}");
    let found = parts(&content_type, &body);
    assert_eq!(found.len(), 2, "exactly two parts");
    assert_eq!(part_header(&found[0], "content-type"), "application/json");
    assert_eq!(json_of(&found[0].1), serde_json::json!({}));
    assert_eq!(part_header(&found[1], "content-type"), "image/png");
    assert_eq!(part_header(&found[1], "content-disposition"), "inline; filename=wide.png");
    assert!(found[1].1 == picture, "the uploaded bytes");

    // A range of the multipart body: exactly the file's bytes inside it (the closing
    // delimiter after them is CRLF, "--", 32 boundary characters, "--", CRLF).
    let path = format!("/_matrix/federation/v1/media/download/{id}");
    let (length, file) = (body.len(), picture.len());
    let (from, to) = (length - 40 - file, length - 41);
    let authorization = origin.authorization("GET", &path, &a.name, None, None);
    let response = crate::common::client()
        .get(a.server.url(&path))
        .header("authorization", authorization)
        .header("range", format!("bytes={from}-{to}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(
        header_text(response.headers(), "content-range"),
        format!("bytes {from}-{to}/{length}")
    );
    assert!(response.bytes().await.expect("body") == picture, "the file's bytes");

    let (status, content_type, body) = signed_get(format!(
        "/_matrix/federation/v1/media/thumbnail/{id}?width=32&height=32&method=crop"
    ))
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let found = parts(&content_type, &body);
    assert_eq!(part_header(&found[1], "content-type"), "image/png");
    assert_eq!(dimensions(&found[1].1), (32, 32));

    // Unknown, absurd and path-like ids.
    for bad in ["NoSuchMedia".to_owned(), "x".repeat(5000), "..%2Fetc".to_owned()] {
        let (status, _, body) =
            signed_get(format!("/_matrix/federation/v1/media/download/{bad}")).await;
        assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
    }
    let (status, _, body) = signed_get(format!(
        "/_matrix/federation/v1/media/thumbnail/{id}?width=32&height=32&method=stretch"
    ))
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) =
        signed_get(format!("/_matrix/federation/v1/media/thumbnail/{id}?width=32")).await;
    assert_eq!(status, 400, "a missing height: {}", String::from_utf8_lossy(&body));

    // Unsigned, and signed with a key that is not the origin's.
    let path = format!("/_matrix/federation/v1/media/download/{id}");
    let (status, body) = send(&a, Method::GET, &path, None, None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    let forged = origin.authorization("GET", &path, &a.name, None, Some(&new_pair("fake1")));
    let (status, body) = send(&a, Method::GET, &path, Some(forged), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn cached_remote_media_is_not_served_to_other_servers() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let origin = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let (name, id) = upload(&a, &alice, b"abc".to_vec(), "text/plain", "a.txt").await;
    let (status, _, _) = fetch(&b, &bob, &format!("{DOWNLOAD}/{name}/{id}")).await;
    assert_eq!(status, 200);
    // B holds A's media, but asked for it, B only answers for its own.
    let path = format!("/_matrix/federation/v1/media/download/{id}");
    let header = origin.authorization("GET", &path, &b.name, None, None);
    let (status, body) = send(&b, Method::GET, &path, Some(header), None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn blocked_and_forbidden_servers_media_is_never_fetched() {
    let ca = Ca::new();
    let a = FedServer::start_as(&ca, "media-origin", &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let (origin, id) = upload(&a, &alice, png(64, 64), "image/png", "p.png").await;
    let pattern = format!("^{}$", a.host().replace('.', "\\\\."));
    let blocked = format!("prevent_media_downloads_from=[\"{pattern}\"]");
    let forbidden = format!("forbidden_remote_server_names=[\"{pattern}\"]");
    for option in [blocked.as_str(), forbidden.as_str()] {
        let b = FedServer::start(&ca, &[option]).await;
        let bob = b.server.register("bob", "pw").await;
        let before = a.front().connections.load(Ordering::SeqCst);
        for path in [
            format!("{DOWNLOAD}/{origin}/{id}"),
            format!("{THUMBNAIL}/{origin}/{id}?width=32&height=32"),
        ] {
            let (status, _, body) = fetch(&b, &bob, &path).await;
            assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
        }
        assert_eq!(a.front().connections.load(Ordering::SeqCst), before, "{option}: A not asked");
        assert!(b.server.server().services().media.stored(&origin, &id).expect("read").is_none());
    }
    // Without the rule the same media comes through.
    let b = FedServer::start(&ca, &[]).await;
    let bob = b.server.register("bob", "pw").await;
    let (status, _, _) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/{id}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn remote_media_over_the_size_limit_is_refused_and_not_kept() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &["max_request_size=10000000"]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let big = vec![7u8; 10_000_001];
    let (origin, id) = upload(&a, &alice, big, "application/octet-stream", "big.bin").await;
    let (status, _, body) = fetch(&b, &bob, &format!("{DOWNLOAD}/{origin}/{id}")).await;
    assert_error(status, &json_of(&body), 502, "M_TOO_LARGE");
    assert!(b.server.server().services().media.stored(&origin, &id).expect("read").is_none());
    let staging = b.server.dir.path().join("db/media/tmp");
    let leftovers = std::fs::read_dir(&staging).map(|dir| dir.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "the partial file is gone");
}

/// The fake server's authenticated download: a `Location` for `elsewhere`, an answer cut
/// short for `truncated`, and `404 M_UNRECOGNIZED` (an old server) for anything else.
async fn fake_download(
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    let host = header_text(&headers, "host").to_owned();
    let boundary = "fakeBoundary";
    let metadata = format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n");
    let body = match id.as_str() {
        "elsewhere" => format!(
            "{metadata}--{boundary}\r\nLocation: https://{host}/cdn/file\r\n\r\n\r\n\
             --{boundary}--\r\n"
        ),
        "truncated" => {
            format!("{metadata}--{boundary}\r\nContent-Type: text/plain\r\n\r\nthe first half")
        }
        _ => {
            let error = r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#;
            return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/json")], error)
                .into_response();
        }
    };
    let content_type = format!("multipart/mixed; boundary={boundary}");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A remote server (faked) whose media answers are chosen by the test: a `Location`
/// answer, a `404 M_UNRECOGNIZED` for the authenticated endpoint with a legacy endpoint
/// that works, and a multipart answer cut short.
async fn fake_media_server(ca: &Ca, legacy_requests: Arc<AtomicUsize>) -> FakeServer {
    let routes = Router::new()
        .route("/_matrix/federation/v1/media/download/{id}", get(fake_download))
        .route(
            "/cdn/file",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/plain"),
                        (header::CONTENT_DISPOSITION, "inline; filename=\"cdn.txt\""),
                    ],
                    "bytes from the CDN",
                )
            }),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{id}",
            get(
                move |axum::extract::Query(query): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| {
                    let counter = Arc::clone(&legacy_requests);
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if query.get("allow_remote").map(String::as_str) != Some("false") {
                            return (StatusCode::BAD_REQUEST, "allow_remote must be false")
                                .into_response();
                        }
                        ([(header::CONTENT_TYPE, "text/plain")], "legacy bytes").into_response()
                    }
                },
            ),
        );
    FakeServer::serving(ca, routes).await
}

#[tokio::test]
async fn locations_legacy_servers_and_broken_answers() {
    let ca = Ca::new();
    let legacy_requests = Arc::new(AtomicUsize::new(0));
    let remote = fake_media_server(&ca, Arc::clone(&legacy_requests)).await;
    let without = FedServer::start(&ca, &[]).await;
    let with = FedServer::start(&ca, &["request_legacy_media=true"]).await;
    let bob = without.server.register("bob", "pw").await;
    let carol = with.server.register("carol", "pw").await;
    let name = remote.name.to_string();

    // A `Location` answer is followed.
    let (status, headers, body) =
        fetch(&without, &bob, &format!("{DOWNLOAD}/{name}/elsewhere")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"bytes from the CDN");
    assert_eq!(header_text(&headers, "content-disposition"), "inline; filename=cdn.txt");
    // An answer that stops inside the media: refused, nothing kept.
    let (status, _, body) = fetch(&without, &bob, &format!("{DOWNLOAD}/{name}/truncated")).await;
    assert_error(status, &json_of(&body), 502, "M_UNKNOWN");
    let media = &without.server.server().services().media;
    assert!(media.stored(&name, "truncated").expect("read").is_none());

    // No authenticated media there: only with request_legacy_media is the old endpoint
    // asked (with allow_remote=false).
    let (status, _, body) = fetch(&without, &bob, &format!("{DOWNLOAD}/{name}/old")).await;
    assert_error(status, &json_of(&body), 404, "M_NOT_FOUND");
    assert_eq!(legacy_requests.load(Ordering::SeqCst), 0);
    let (status, _, body) = fetch(&with, &carol, &format!("{DOWNLOAD}/{name}/old")).await;
    assert_eq!((status, body.as_slice()), (200, b"legacy bytes".as_slice()));
    assert_eq!(legacy_requests.load(Ordering::SeqCst), 1);
    // Kept like any other: asked once.
    let (status, _, _) = fetch(&with, &carol, &format!("{DOWNLOAD}/{name}/old")).await;
    assert_eq!(status, 200);
    assert_eq!(legacy_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_remote_server_that_never_answers_is_given_up_on() {
    // A server whose media never comes: the client is answered once `federation_timeout`
    // (plus the wait the client allowed the origin) has passed.
    let ca = Ca::new();
    let routes = Router::new().route(
        "/_matrix/federation/v1/media/download/{id}",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    );
    let remote = FakeServer::serving(&ca, routes).await;
    let b = FedServer::start(&ca, &["federation_timeout=2"]).await;
    let bob = b.server.register("bob", "pw").await;
    let started = std::time::Instant::now();
    let (status, _, body) =
        fetch(&b, &bob, &format!("{DOWNLOAD}/{}/slow?timeout_ms=1000", remote.name)).await;
    assert_error(status, &json_of(&body), 502, "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}
