//! The listeners' limits through a whole server: slow headers are cut off, a stalled body
//! is answered 408 and gives back its in-flight permit, a request past its deadline is
//! answered 408, and a `/sync` long poll outlives the short connection timeouts.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::common::{TestServer, assert_error, wait_until};

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    stream
}

/// Everything the server sends until it closes the connection (or the read timeout).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_in_flight_permits() {
    let mut server = TestServer::with_options(&[
        "max_in_flight_requests=4",
        "client_header_timeout=1",
        "client_receive_timeout=1",
    ])
    .await;
    let address = server.server().addresses()[0];
    let services = std::sync::Arc::clone(server.server().services());

    // Many sockets from one address sending half a header, and as many requests as there
    // are permits announcing a body that never comes.
    let (half_headers, stalled_bodies) = tokio::task::spawn_blocking(move || {
        let half_headers: Vec<TcpStream> = (0..40)
            .map(|_| {
                let mut stream = connect(address);
                stream
                    .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: t\r\nX-Sl")
                    .expect("half");
                stream
            })
            .collect();
        let stalled_bodies: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut stream = connect(address);
                stream
                    .write_all(
                        b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: t\r\n\
                          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
                    )
                    .expect("head");
                stream
            })
            .collect();
        (half_headers, stalled_bodies)
    })
    .await
    .expect("sockets");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            services.in_flight.available_permits() == 0
        })
        .await,
        "the stalled bodies took the permits"
    );

    // Each stalled body is answered 408 once it has not moved for a second, and the
    // half-headers are closed: their permits come back.
    let started = Instant::now();
    let (answers, closed) = tokio::task::spawn_blocking(move || {
        let answers: Vec<String> =
            stalled_bodies.into_iter().map(|mut stream| read_until_closed(&mut stream)).collect();
        let closed = half_headers
            .into_iter()
            .filter(|stream| {
                let mut stream = stream.try_clone().expect("clone");
                read_until_closed(&mut stream).is_empty()
            })
            .count();
        (answers, closed)
    })
    .await
    .expect("reads");
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("M_UNKNOWN"), "{answer}");
    }
    assert_eq!(closed, 40, "every half header was cut off without an answer");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(
        wait_until(Duration::from_secs(5), || async {
            services.in_flight.available_permits() == 4
        })
        .await,
        "the permits were not given back"
    );
    let (status, _) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200, "other clients are served");
    drop(services);
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_outlives_the_connection_timeouts() {
    let mut server = TestServer::with_options(&[
        "client_header_timeout=1",
        "client_idle_timeout=1",
        "client_receive_timeout=1",
        "client_sync_timeout_min=0",
        "client_sync_timeout_max=3000",
        "client_request_timeout=15",
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let (status, first) = server.get_as(&alice, "/_matrix/client/v3/sync").await;
    assert_eq!(status, 200);
    let since = first["next_batch"].as_str().expect("next_batch");
    let started = Instant::now();
    let (status, body) =
        server.get_as(&alice, &format!("/_matrix/client/v3/sync?since={since}&timeout=3000")).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(2900), "{:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_is_answered_408_and_releases_its_permit() {
    let mut server = TestServer::with_options(&[
        "client_sync_timeout_min=0",
        "client_sync_timeout_max=1000",
        "client_request_timeout=6",
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let services = std::sync::Arc::clone(server.server().services());
    let permits = services.in_flight.available_permits();
    // A download that waits for an upload that never comes (up to a minute).
    let (status, created) =
        server.post_as(&alice, "/_matrix/media/v1/create", serde_json::Value::Null).await;
    assert_eq!(status, 200, "{created}");
    let mxc = created["content_uri"].as_str().expect("content_uri");
    let path = mxc.strip_prefix("mxc://").expect("mxc");
    let started = Instant::now();
    let (status, body) = server
        .get_as(&alice, &format!("/_matrix/client/v1/media/download/{path}?timeout_ms=60000"))
        .await;
    assert_error(status, &body, 408, "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(
        wait_until(Duration::from_secs(5), || async {
            services.in_flight.available_permits() == permits
        })
        .await
    );
    let (status, _) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/profile/@alice:test.local/displayname",
            json!({"displayname": "A"}),
        )
        .await;
    assert_eq!(status, 200);
    drop(services);
    server.stop().await;
}

#[tokio::test]
async fn the_unix_socket_listener_has_the_same_limits_and_is_removed_on_stop() {
    use std::os::unix::{fs::PermissionsExt, net::UnixStream};

    crate::common::init_logging();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run").join("tuwunel.sock");
    let config = dir.path().join("tuwunel.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nserver_name = \"test.local\"\ndatabase_path = \"{}\"\n\
             unix_socket_path = \"{}\"\nunix_socket_perms = 660\ndb_cache_capacity_mb = 16\n\
             log = \"error\"\nclient_header_timeout = 1\nclient_max_connections_per_ip = 1\n",
            dir.path().join("db").display(),
            socket.display()
        ),
    )
    .expect("config");
    let inputs = tuwunel::config::Inputs { files: vec![config], env: Vec::new(), options: vec![] };
    let server = tuwunel::Server::start(tuwunel::Config::load(&inputs).expect("config"))
        .await
        .expect("starts");
    let mode = std::fs::metadata(&socket).expect("socket exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    let path = socket.clone();
    let (answers, half_closed) = tokio::task::spawn_blocking(move || {
        let open = |path: &std::path::Path| {
            let stream = UnixStream::connect(path).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
            stream
        };
        // The per-address limit does not apply to the socket: three at once are served.
        let mut streams: Vec<UnixStream> = (0..3).map(|_| open(&path)).collect();
        let mut answers = Vec::new();
        for stream in &mut streams {
            stream
                .write_all(b"GET /_tuwunel/server_version HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("request");
        }
        for stream in &mut streams {
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answers.push(answer);
        }
        // Half a header is cut off here too.
        let mut half = open(&path);
        half.write_all(b"GET /_tuwunel/server_version HTTP/1.1\r\nHo").expect("half");
        let mut rest = Vec::new();
        let started = Instant::now();
        let closed = half.read_to_end(&mut rest).is_ok() && rest.is_empty();
        (answers, closed && started.elapsed() < Duration::from_secs(10))
    })
    .await
    .expect("client");
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(half_closed, "half a header over the socket was not cut off");
    server.stop().await.expect("stop");
    assert!(!socket.exists(), "the socket file is removed on stop");
}
