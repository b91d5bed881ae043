//! Graceful shutdown: in-flight requests finish, new connections are refused, the database
//! closes so it can be reopened at once.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::TestServer;

#[tokio::test]
async fn in_flight_requests_finish_and_new_ones_are_refused() {
    let mut server = TestServer::start().await;
    let address = server.server().addresses()[0];

    // A request whose body is still arriving when shutdown starts.
    let mut in_flight = TcpStream::connect(address).await.expect("connect");
    in_flight
        .write_all(
            b"GET /_matrix/client/versions HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab",
        )
        .await
        .expect("partial request");
    // Make sure the server has accepted it before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let running = server.server.take().expect("running");
    let handle = running.shutdown_handle();
    let stopping = tokio::spawn(running.stop());
    handle.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stopping.is_finished(), "stop must wait for the in-flight request");

    in_flight.write_all(b"cd").await.expect("rest of body");
    let mut response = Vec::new();
    in_flight.read_to_end(&mut response).await.expect("response");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"versions\""), "{response}");

    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("clean stop");
    assert!(TcpStream::connect(address).await.is_err(), "still accepting connections after stop");

    // The database was closed: the same directory opens again immediately.
    server.restart().await;
    let (status, _) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn admin_shutdown_command_stops_the_server() {
    let server = TestServer::start().await;
    let running = server.server.as_ref().expect("running");
    let output =
        tuwunel::admin::execute(running.services(), "server shutdown").await.expect("command");
    assert!(output.contains("Shutting down"));
    let mut server = server;
    let running = server.server.take().expect("running");
    tokio::time::timeout(Duration::from_secs(30), running.run())
        .await
        .expect("run returns after shutdown")
        .expect("clean");
}

/// A server dropped without `stop()` (what a failing test leaves behind) lets go of its
/// database once its runtime is gone: nothing keeps the storage alive in a reference cycle,
/// so RocksDB is closed before the process exits rather than torn down under it.
#[test]
fn a_dropped_server_releases_its_database_with_its_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let storage = runtime.block_on(async {
        let server = TestServer::start().await;
        let user = server.register("dropped", "a password of some length").await;
        let (status, body) = server
            .post_as(
                &user,
                "/_matrix/client/v3/createRoom",
                serde_json::json!({"name": "left open"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        std::sync::Arc::downgrade(&server.server().services().storage)
    });
    drop(runtime);
    assert!(storage.upgrade().is_none(), "the storage outlived its server and runtime");
}
