//! The load-test harness (`tuwunel-loadtest`) against a test server: every scenario runs at
//! tiny sizes, verifies that no acknowledged event is missing, and writes a report that
//! parses; `--compare` reads two reports; URLs that are not loopback are refused.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::common::TestServer;

const HARNESS: &str = env!("CARGO_BIN_EXE_tuwunel-loadtest");

/// Runs the harness off the async runtime (the server lives in this process).
async fn harness(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(HARNESS)
            .args(&args)
            .env_remove("LOADTEST_REGISTRATION_TOKEN")
            .output()
            .expect("run tuwunel-loadtest");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("harness thread")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Runs one scenario with a report and checks the common invariants; returns the report.
async fn scenario(server: &TestServer, dir: &Path, tag: &str, name: &str, flags: &[&str]) -> Value {
    let report = dir.join(format!("{tag}.json"));
    let mut args = strings(&[
        "--url",
        &server.base,
        "--registration-token",
        "loadtest",
        "--world-dir",
        dir.join("world").to_str().expect("utf8"),
        "--server-pid",
        &std::process::id().to_string(),
        "--report",
        report.to_str().expect("utf8"),
        "--svg-dir",
        dir.join("svg").to_str().expect("utf8"),
        "--max-duration",
        "60",
        name,
    ]);
    args.extend(strings(flags));
    let (code, stdout, stderr) = harness(args).await;
    assert_eq!(code, 0, "{name} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&report).expect("report written");
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    let result = &report["scenarios"][0];
    assert_eq!(result["name"], name, "{report}");
    assert_eq!(result["missed_deliveries"], 0, "{name}: {stdout}");
    assert_eq!(result["verification"]["missing"], 0, "{name}: {stdout}");
    assert_eq!(result["verification"]["check_errors"], 0, "{name}: {stdout}");
    assert_eq!(result["errors"], 0, "{name}: {stdout}");
    assert!(result["resources"]["rss_peak_mb"].as_f64().is_some_and(|mb| mb > 0.0), "{report}");
    assert!(report["server"]["versions"].as_array().is_some_and(|v| !v.is_empty()), "{report}");
    for measurement in result["measurements"].as_array().expect("measurements") {
        assert!(
            measurement["count"].as_u64().is_some_and(|count| count > 0),
            "{name}: {measurement}"
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_small_and_loses_nothing() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"loadtest\"",
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    let first = scenario(
        &server,
        dir,
        "send-closed",
        "send",
        &[
            "--rooms",
            "4",
            "--users",
            "4",
            "--members-per-room",
            "2",
            "--messages",
            "40",
            "--concurrency",
            "4",
        ],
    )
    .await;
    let send = &first["scenarios"][0];
    assert_eq!(send["measurements"][0]["count"], 40, "{first}");
    // Each of the 40 messages must be found by both members of its room.
    assert_eq!(send["verification"]["expected"], 80, "{first}");
    assert!(dir.join("svg/send-send.svg").exists());

    // Open loop, reusing the saved world (same users and rooms).
    let world_before = std::fs::read_dir(dir.join("world")).expect("world dir").count();
    scenario(
        &server,
        dir,
        "send-open",
        "send",
        &[
            "--rooms",
            "4",
            "--users",
            "4",
            "--members-per-room",
            "2",
            "--messages",
            "20",
            "--rate",
            "100",
        ],
    )
    .await;
    assert_eq!(std::fs::read_dir(dir.join("world")).expect("world dir").count(), world_before);

    let fanout = scenario(
        &server,
        dir,
        "fanout",
        "fanout",
        &[
            "--members",
            "3",
            "--rooms",
            "2",
            "--users",
            "4",
            "--rate",
            "20",
            "--messages",
            "10",
            "--settle-seconds",
            "0.3",
            "--drain-seconds",
            "10",
            "--sync-timeout",
            "10000",
        ],
    )
    .await;
    let delivery = &fanout["scenarios"][0]["measurements"][1];
    assert_eq!(delivery["name"], "delivery");
    // 10 messages over 2 rooms of 3 followers each.
    assert_eq!(delivery["count"], 30, "{fanout}");

    scenario(
        &server,
        dir,
        "many-rooms",
        "many-rooms",
        &[
            "--rooms",
            "20",
            "--users",
            "6",
            "--members-per-room",
            "2",
            "--active-fraction",
            "0.25",
            "--rounds",
            "2",
            "--messages-per-room",
            "1",
            "--syncers",
            "3",
            "--settle-seconds",
            "0.2",
            "--drain-seconds",
            "10",
            "--sync-timeout",
            "10000",
        ],
    )
    .await;

    let initial = scenario(
        &server,
        dir,
        "initial-sync",
        "initial-sync",
        &["--rooms", "5", "--history", "3", "--repeats", "2", "--timeline-limit", "2"],
    )
    .await;
    assert_eq!(initial["scenarios"][0]["verification"]["expected"], 20, "{initial}");

    let join = scenario(
        &server,
        dir,
        "join",
        "join",
        &["--users", "5", "--rooms", "5", "--concurrency", "4"],
    )
    .await;
    assert_eq!(join["scenarios"][0]["verification"]["expected"], 10, "{join}");

    scenario(
        &server,
        dir,
        "create-rooms",
        "create-rooms",
        &["--count", "6", "--concurrency", "3", "--users", "2"],
    )
    .await;

    let media = scenario(
        &server,
        dir,
        "media",
        "media",
        &["--count", "3", "--size", "200000", "--concurrency", "2", "--users", "2"],
    )
    .await;
    let upload = &media["scenarios"][0]["measurements"][0];
    assert!(upload["extra"]["mb_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{media}");

    let idle = scenario(
        &server,
        dir,
        "idle-polls",
        "idle-polls",
        &[
            "--polls",
            "40",
            "--users",
            "4",
            "--hold-seconds",
            "1",
            "--sync-timeout",
            "20000",
            "--ramp-timeout",
            "5",
            "--settle-seconds",
            "0.2",
            "--drain-seconds",
            "10",
        ],
    )
    .await;
    let measurements = &idle["scenarios"][0]["measurements"];
    assert_eq!(measurements[2]["name"], "wake");
    assert_eq!(measurements[2]["count"], 40, "{idle}");
    assert!(measurements[1]["extra"]["server_cpu_s"].as_f64().is_some(), "{idle}");

    // --compare reads two reports.
    let (code, stdout, stderr) = harness(strings(&[
        "--compare",
        dir.join("send-closed.json").to_str().expect("utf8"),
        dir.join("send-open.json").to_str().expect("utf8"),
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("send/send/p99_ms") && stdout.contains("B/A"), "{stdout}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_uses_the_dummy_stage() {
    let mut server = TestServer::start().await;
    let (code, stdout, stderr) =
        harness(strings(&["--url", &server.base, "create-rooms", "--count", "3", "--users", "1"]))
            .await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verification: OK"), "{stdout}");
    server.stop().await;
}

#[tokio::test]
async fn refuses_urls_that_are_not_loopback() {
    for url in ["http://192.0.2.1:8008", "https://matrix.example.org"] {
        let (code, _, stderr) = harness(strings(&["--url", url, "send"])).await;
        assert_eq!(code, 1, "{url}: {stderr}");
        assert!(stderr.contains("not a loopback address"), "{url}: {stderr}");
    }
}
