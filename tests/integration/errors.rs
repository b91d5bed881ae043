//! Matrix error bodies everywhere: unknown paths and methods, oversized and malformed bodies,
//! overload; CORS and request ids on every response.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestServer, assert_error, status_and_json};

#[tokio::test]
async fn unknown_path_is_unrecognized_404() {
    let mut server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/v3/no/such/endpoint").await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = server.get("/").await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    server.stop().await;
}

#[tokio::test]
async fn wrong_method_is_unrecognized_405() {
    let mut server = TestServer::start().await;
    let response =
        server.client.post(server.url("/_matrix/client/versions")).send().await.expect("request");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    let response =
        server.client.delete(server.url("/_tuwunel/server_version")).send().await.expect("request");
    let (status, body) = status_and_json(response).await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_too_large_413() {
    let mut server = TestServer::with_options(&["max_request_size=10000000"]).await;
    // Declared too large: refused without reading.
    let body = vec![b'x'; 10_000_001];
    let response =
        server.client.get(server.url("/_matrix/client/versions")).body(body).send().await;
    match response {
        Ok(response) => {
            let (status, body) = status_and_json(response).await;
            assert_error(status, &body, 413, "M_TOO_LARGE");
        }
        // The server may answer and close before the client finished sending; that is fine
        // as long as it never accepted the body, which the chunked case below checks.
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }

    // Not declared (chunked): refused once the limit is crossed while reading.
    let address = server.server().addresses()[0];
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let head = "GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).expect("head");
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..11 {
            if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || stream.write_all(&chunk).is_err()
                || stream.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = stream.read(&mut buffer) {
            if read == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..read]);
            if response.windows(12).any(|w| w == b"M_TOO_LARGE\"") {
                break;
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .expect("raw client");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("M_TOO_LARGE"), "{answer}");
    server.stop().await;
}

async fn post_login(server: &TestServer, body: &'static str) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(server.url("/_matrix/client/v3/login"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    status_and_json(response).await
}

#[tokio::test]
async fn malformed_json_is_not_json_and_wrong_shape_is_bad_json() {
    let mut server = TestServer::start().await;
    server.register("shape", "p").await;

    let (status, body) = post_login(&server, "{\"type\": \"m.login.password\", oops").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (status, body) = post_login(&server, "not json at all").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (status, body) = post_login(&server, "{\"type\": 5}").await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = post_login(&server, "[1, 2, 3]").await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = post_login(
        &server,
        "{\"type\": \"m.login.password\", \"identifier\": {\"type\": \"m.id.user\", \"user\": \"shape\"}, \"password\": \"p\"}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn responses_carry_cors_and_request_id() {
    let mut server = TestServer::start().await;
    let response =
        server.client.get(server.url("/_matrix/client/versions")).send().await.expect("request");
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-allow-methods"], "GET, POST, PUT, DELETE, OPTIONS");
    assert_eq!(
        headers["access-control-allow-headers"],
        "X-Requested-With, Content-Type, Authorization"
    );
    assert!(!headers["x-request-id"].is_empty());

    // Errors carry them too.
    let response = server
        .client
        .get(server.url("/nope"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");

    // Pre-flight.
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/_matrix/client/v3/login"))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(
        response.headers()["access-control-allow-methods"]
            .to_str()
            .expect("ascii")
            .contains("POST")
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_429() {
    let mut server = TestServer::with_options(&["max_in_flight_requests=1"]).await;
    let address = server.server().addresses()[0];
    // Hold the only permit with a request whose body is still arriving.
    let mut held = tokio::net::TcpStream::connect(address).await.expect("connect");
    held.write_all(
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345",
    )
    .await
    .expect("partial request");
    let mut refused = false;
    for _ in 0..200 {
        let response = server
            .client
            .get(server.url("/_matrix/client/versions"))
            .send()
            .await
            .expect("request");
        if response.status() == 429 {
            let retry_after = response.headers().get("retry-after").cloned();
            let (_, body) = status_and_json(response).await;
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
            assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
            assert!(retry_after.is_some());
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the second concurrent request was not refused");
    // Health checks are exempt: an overloaded server still answers them.
    let (status, _) = server.get("/_tuwunel/server_version").await;
    assert_eq!(status, 200, "health checks must not be refused");
    // Finishing the held request frees the permit.
    held.write_all(b"67890").await.expect("rest of body");
    let mut reply = [0u8; 12];
    held.read_exact(&mut reply).await.expect("reply");
    assert_eq!(&reply, b"HTTP/1.1 200");
    let (status, _) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    server.stop().await;
}
