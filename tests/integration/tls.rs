//! TLS on our own listeners (`[global.tls]`): every port with only `certs` and `key`, only
//! the `tls.port` ones otherwise, both protocols on one port with `dual_protocol`, HTTP/2 by
//! ALPN, a handshake that never finishes cut off by the header timeout, and federation with
//! a server that serves TLS itself instead of behind the test bed's front.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    common::TestServer,
    testbed::{Ca, FedServer, free_port},
};

/// The TLS options for a certificate valid for localhost and 127.0.0.1, its files in `dir`.
fn tls_options(ca: &Ca, dir: &std::path::Path) -> (String, String) {
    let (certs, key) = ca.leaf_pem_files(&["localhost", "127.0.0.1"], dir);
    (format!("tls.certs=\"{}\"", certs.display()), format!("tls.key=\"{}\"", key.display()))
}

async fn versions(client: &reqwest::Client, url: &str) -> Result<(u16, reqwest::Version), String> {
    let response = client
        .get(format!("{url}/_matrix/client/versions"))
        .send()
        .await
        .map_err(|error| format!("{error:?}"))?;
    let version = response.version();
    let status = response.status().as_u16();
    let body: Value = response.json().await.map_err(|error| error.to_string())?;
    assert!(body["versions"].is_array(), "{body}");
    Ok((status, version))
}

#[tokio::test]
async fn only_the_tls_ports_speak_tls() {
    let ca = Ca::new();
    let files = tempfile::tempdir().expect("dir");
    let (certs, key) = tls_options(&ca, files.path());
    let (plain, secure) = (free_port(), free_port());
    let ports = format!("port=[{plain},{secure}]");
    let tls_port = format!("tls.port=[{secure}]");
    let server = TestServer::with_options(&[&ports, &certs, &key, &tls_port]).await;
    assert_eq!(server.server().tls_addresses().len(), 1);
    assert_eq!(server.server().tls_addresses()[0].port(), secure);

    let https = ca.client();
    let (status, version) =
        versions(&https, &format!("https://localhost:{secure}")).await.expect("https");
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2), "HTTP/2 by ALPN");
    let (status, _) = versions(&crate::common::client(), &format!("http://127.0.0.1:{plain}"))
        .await
        .expect("plain http on the other port");
    assert_eq!(status, 200);
    // Each port speaks only its own protocol.
    assert!(
        versions(&crate::common::client(), &format!("http://127.0.0.1:{secure}")).await.is_err()
    );
    assert!(versions(&https, &format!("https://localhost:{plain}")).await.is_err());
    // A client that does not trust the CA is refused by its own verification.
    let untrusting = crate::common::client();
    let refused = versions(&untrusting, &format!("https://localhost:{secure}")).await;
    assert!(
        refused.is_err_and(|error| error.contains("certificate") || error.contains("Certificate"))
    );
}

#[tokio::test]
async fn with_only_certs_and_key_every_port_speaks_tls_and_dual_protocol_takes_both() {
    let ca = Ca::new();
    let files = tempfile::tempdir().expect("dir");
    let (certs, key) = tls_options(&ca, files.path());
    let server = TestServer::with_options(&[&certs, &key, "client_header_timeout=1"]).await;
    let port = server.server().addresses()[0].port();
    assert_eq!(server.server().tls_addresses(), server.server().addresses());
    let (status, _) =
        versions(&ca.client(), &format!("https://localhost:{port}")).await.expect("https");
    assert_eq!(status, 200);
    assert!(versions(&crate::common::client(), &format!("http://127.0.0.1:{port}")).await.is_err());

    // A connection that starts a handshake and never finishes it is closed after the
    // header timeout (1 s), not held.
    let address = server.server().addresses()[0];
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(&[0x16, 0x03]).expect("half a record");
        let started = Instant::now();
        let mut buffer = [0u8; 64];
        let closed = matches!(stream.read(&mut buffer), Ok(0) | Err(_));
        (closed, started.elapsed())
    })
    .await
    .expect("client");
    assert!(closed_after.0, "the connection was closed");
    assert!(closed_after.1 < Duration::from_secs(5), "after {:?}", closed_after.1);

    let dual = TestServer::with_options(&[&certs, &key, "tls.dual_protocol=true"]).await;
    let port = dual.server().addresses()[0].port();
    let (status, _) =
        versions(&ca.client(), &format!("https://localhost:{port}")).await.expect("https");
    assert_eq!(status, 200);
    let (status, _) = versions(&crate::common::client(), &format!("http://127.0.0.1:{port}"))
        .await
        .expect("plain http on the same port");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unusable_tls_settings_stop_the_start() {
    let ca = Ca::new();
    let files = tempfile::tempdir().expect("dir");
    let (certs, key) = tls_options(&ca, files.path());
    let dir = tempfile::tempdir().expect("dir");
    let missing = format!("tls.key=\"{}\"", files.path().join("missing.pem").display());
    let options = vec![certs.clone(), missing];
    let config = tuwunel::Config::load(&tuwunel::config::Inputs {
        files: vec![crate::common::write_config(dir.path())],
        env: Vec::new(),
        options,
    })
    .expect("the keys are valid; the file is not");
    let error = tuwunel::Server::start(config).await.err().expect("refused");
    assert!(error.to_string().contains("tls.key"), "{error}");

    for (options, key_named) in [
        (vec![certs.clone()], "tls.key"),
        (vec![key.clone()], "tls.certs"),
        (vec!["tls.port=[8448]".to_owned()], "tls.port"),
        (vec![certs.clone(), key.clone(), "tls.port=[1]".to_owned()], "tls.port"),
    ] {
        let error = tuwunel::Config::load(&tuwunel::config::Inputs {
            files: vec![crate::common::write_config(dir.path())],
            env: Vec::new(),
            options,
        })
        .expect_err("refused");
        assert!(error.to_string().contains(key_named), "{key_named}: {error}");
    }
}

#[tokio::test]
async fn federation_reaches_a_server_that_serves_tls_itself() {
    let ca = Ca::new();
    let files = tempfile::tempdir().expect("dir");
    let (certs, key) = tls_options(&ca, files.path());
    let (plain, secure) = (free_port(), free_port());
    let name = format!("localhost:{secure}");
    let server_name = format!("server_name=\"{name}\"");
    let ports = format!("port=[{plain},{secure}]");
    let tls_port = format!("tls.port=[{secure}]");
    let ca_file = format!("tls.ca_file=\"{}\"", ca.pem_path.display());
    let denylist = crate::testbed::denylist_without_loopback();
    let own = TestServer::with_options(&[
        &server_name,
        &ports,
        &certs,
        &key,
        &tls_port,
        &ca_file,
        &denylist,
    ])
    .await;
    let other = FedServer::start(&ca, &[]).await;
    let alice = own.register("alice", "pw").await;
    let bob = other.server.register("bob", "pw").await;
    // The other server asks ours (over our TLS port) and ours asks it.
    let (status, body) =
        other.server.get_as(&bob, &format!("/_matrix/client/v3/profile/{}", alice.user_id)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        own.get_as(&alice, &format!("/_matrix/client/v3/profile/{}", bob.user_id)).await;
    assert_eq!(status, 200, "{body}");
}
