//! Prometheus exposition: on the main listener, on a separate address, or not at all.

use serde_json::json;

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

/// The value of the series `series` (name and labels exactly as rendered), if present.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn alert_counters_exist_from_the_start_and_refused_logins_are_counted() {
    let mut server = TestServer::with_options(&[
        "metrics_enabled=true",
        "rc_failed_login_per_second=0.001",
        "rc_failed_login_burst_count=2",
    ])
    .await;
    let scrape = || async {
        let response = server.client.get(server.url("/metrics")).send().await.expect("request");
        response.text().await.expect("text")
    };
    let text = scrape().await;
    let failed_logins = "tuwunel_rate_limited_total{action=\"FailedLogin\"}";
    for series in [
        failed_logins,
        "tuwunel_rate_limited_total{action=\"Registration\"}",
        "tuwunel_rate_limited_total{action=\"Login\"}",
        "tuwunel_http_refused_total",
        "tuwunel_http_connections_refused_total",
        "tuwunel_writer_failures_total",
        "tuwunel_task_panics_total{task=\"listener\"}",
        "tuwunel_task_panics_total{task=\"admin_room_command\"}",
    ] {
        assert!(series_value(&text, series).is_some(), "{series} missing from:\n{text}");
    }
    let before = series_value(&text, failed_logins).expect("counted");

    server.register("alice", "pw").await;
    let wrong = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"});
    let mut refused = 0;
    for _ in 0..4 {
        let (status, body) = server
            .request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(wrong.clone()))
            .await;
        match status {
            403 => {}
            429 => {
                assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(refused, 2, "two failures allowed, then refusals");
    let after = series_value(&scrape().await, failed_logins).expect("counted");
    assert!(after >= before + 2.0, "refused logins counted: {before} -> {after}");
    server.stop().await;
}
