//! Prometheus exposition: on the main listener, on a separate address, or not at all.

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn metrics_are_exposed_when_enabled() {
    let mut server = TestServer::with_options(&["metrics_enabled=true"]).await;
    // Generate some traffic to be counted.
    let _ = server.get("/_matrix/client/versions").await;
    let _ = server.get("/_matrix/client/nope").await;
    let response = server.client.get(server.url("/metrics")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
    let text = response.text().await.expect("text");
    for name in [
        "tuwunel_http_requests_total",
        "tuwunel_http_request_seconds_bucket",
        "tuwunel_writer_group_size_bucket",
        "tuwunel_writer_commit_seconds_bucket",
        "tuwunel_writer_write_seconds_bucket",
        "tuwunel_database_table_bytes",
        "tuwunel_database_memory_bytes{kind=\"block_cache\"}",
        "tuwunel_database_memory_bytes{kind=\"memtables\"}",
        // jemalloc serves every allocation, in the test process as in the binary.
        "tuwunel_heap_bytes{allocator=\"jemalloc\",kind=\"in_use\"}",
        "tuwunel_heap_bytes{allocator=\"jemalloc\",kind=\"resident\"}",
        "tuwunel_cache_entries{cache=\"events\"}",
        "tuwunel_cache_entries{cache=\"state_lookups\"}",
        "tuwunel_cache_bytes{cache=\"events\"}",
        // Counters that alerts watch exist before their first increment.
        "tuwunel_storage_undecodable_records_total{table=\"pdus\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("route=\"/_matrix/client/versions\""), "{text}");
    assert!(text.contains("status=\"404\""), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    let mut server =
        TestServer::with_options(&["metrics_enabled=true", "metrics_address=\"127.0.0.1:0\""])
            .await;
    let address = server.server().metrics_address().expect("metrics listener");
    let response =
        server.client.get(format!("http://{address}/metrics")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("text").contains("tuwunel_"));
    let (status, body) = server.get("/metrics").await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_absent_by_default() {
    let mut server = TestServer::start().await;
    let (status, body) = server.get("/metrics").await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    server.stop().await;
}
