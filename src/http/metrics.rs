//! Prometheus exposition at `/metrics`, on the main listeners or on `metrics_address`.
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder), installed the
//! first time a server with `metrics_enabled` starts. Histograms are drained into their
//! buckets by a housekeeping thread so samples never pile up when nobody scrapes.

use std::{sync::OnceLock, time::Duration};

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Bucket bounds for latencies, in seconds.
const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Bucket bounds for counts (group sizes, queue depths).
const COUNTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the global recorder once; returns its handle (None if another recorder owns the
/// process, which only happens when tuwunel is embedded in something else).
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_size".to_owned()), COUNTS)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_depth".to_owned()), COUNTS)
                })
                .map(PrometheusBuilder::build_recorder)
                .ok()?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            register_alerting_counters();
            let upkeep = handle.clone();
            let _ =
                std::thread::Builder::new().name("tuwunel-metrics".to_owned()).spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        // Without upkeep, histogram samples pile up: survive a panic in it.
                        let run = std::panic::AssertUnwindSafe(|| upkeep.run_upkeep());
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!("metrics upkeep panicked");
                        }
                    }
                });
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "tuwunel_http_requests_total",
        "HTTP requests by method, route and status"
    );
    metrics::describe_histogram!(
        "tuwunel_http_request_seconds",
        "HTTP request latency by method, route and status"
    );
    metrics::describe_counter!(
        "tuwunel_http_refused_total",
        "Requests refused because too many were in flight"
    );
    metrics::describe_counter!(
        "tuwunel_http_connections_refused_total",
        "Connections closed on arrival because their address had too many open"
    );
    metrics::describe_counter!(
        "tuwunel_http_timeouts_total",
        "Connections and requests ended by a client timeout, by kind"
    );
    metrics::describe_counter!(
        "tuwunel_rate_limited_total",
        "Requests refused by a rate limit, by action"
    );
    metrics::describe_counter!(
        "tuwunel_database_wal_syncs_total",
        "Write-ahead log syncs since the database was opened"
    );
    metrics::describe_gauge!("tuwunel_actors_live", "Live actors by kind");
    metrics::describe_counter!("tuwunel_actor_spawns_total", "Actors spawned by kind");
    metrics::describe_counter!(
        "tuwunel_actor_passivations_total",
        "Idle actors passivated by kind"
    );
    metrics::describe_counter!(
        "tuwunel_actor_failures_total",
        "Actors that failed (error or panic) by kind"
    );
    metrics::describe_counter!(
        "tuwunel_actor_restarts_total",
        "Failed actors restarted by their supervisor"
    );
    metrics::describe_counter!(
        "tuwunel_actor_refused_total",
        "Messages refused because an actor's queue was full"
    );
    metrics::describe_gauge!(
        "tuwunel_actor_queued_messages",
        "Messages waiting in actor mailboxes by kind"
    );
    metrics::describe_histogram!(
        "tuwunel_actor_mailbox_depth",
        "An actor's queue depth when a message was added"
    );
    metrics::describe_histogram!(
        "tuwunel_actor_start_seconds",
        "Time to build an actor's state when it spawns"
    );
    metrics::describe_histogram!(
        "tuwunel_writer_group_size",
        "Batches committed together in one write"
    );
    metrics::describe_histogram!(
        "tuwunel_writer_commit_seconds",
        "Time to assemble and durably write a group"
    );
    metrics::describe_histogram!(
        "tuwunel_writer_write_seconds",
        "Time of a group's durable RocksDB write alone (part of the commit time)"
    );
    metrics::describe_histogram!(
        "tuwunel_writer_queue_wait_seconds",
        "Time a batch waited for the writer"
    );
    metrics::describe_gauge!("tuwunel_writer_queue_depth", "Batches waiting for the writer");
    metrics::describe_counter!("tuwunel_writer_groups_total", "Write groups committed");
    metrics::describe_counter!("tuwunel_writer_batches_total", "Batches committed");
    metrics::describe_counter!("tuwunel_writer_failures_total", "Write groups that failed");
    metrics::describe_counter!(
        "tuwunel_task_panics_total",
        "Panics of background tasks (accept loops, connections, admin commands, periodic work)"
    );
    metrics::describe_gauge!(
        "tuwunel_database_table_bytes",
        "Approximate on-disk size of each table"
    );
}

/// Creates, at 0, the counters that docs/deployment.md suggests alerting on: a counter that
/// only appears with its first increment makes `rate()` and `increase()` miss that first
/// event, and an alert on a missing series cannot tell "nothing happened" from "not scraped".
fn register_alerting_counters() {
    for action in crate::accounts::rate_limit::Action::ALL {
        metrics::counter!("tuwunel_rate_limited_total", "action" => action.label()).increment(0);
    }
    for name in [
        "tuwunel_http_refused_total",
        "tuwunel_http_connections_refused_total",
        "tuwunel_writer_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["header", "receive", "request", "response"] {
        metrics::counter!("tuwunel_http_timeouts_total", "kind" => kind).increment(0);
    }
    for task in crate::actors::tasks::NAMES {
        metrics::counter!("tuwunel_task_panics_total", "task" => task).increment(0);
    }
}

/// Renders the current metrics in Prometheus text format.
pub fn render(handle: &PrometheusHandle) -> Response {
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
