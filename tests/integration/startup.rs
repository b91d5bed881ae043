//! What a server refuses at startup, and what stops it once running: a database of another
//! `server_name`, an unreadable `registration_token_file` or
//! `turn_secret_file`, and a Writer thread that died; and
//! the clock a server is started with.

use std::time::Duration;

use crate::common::{TestServer, start_error};

#[tokio::test]
async fn a_database_of_another_server_name_is_refused_naming_both() {
    let mut server = TestServer::start().await;
    server.register("alice", "pw").await;
    server.stop().await;
    let error = start_error(server.dir.path(), &["server_name=\"renamed.local\""]).await;
    assert!(error.contains("test.local") && error.contains("renamed.local"), "{error}");
    // The database is untouched: its own name still opens it.
    server.restart().await;
    server.login("alice", "pw").await;
    server.stop().await;
}

#[tokio::test]
async fn an_unreadable_registration_token_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-token-file");
    let option = format!("registration_token_file=\"{}\"", missing.display());
    let error = start_error(dir.path(), &[option.as_str()]).await;
    assert!(error.contains("registration_token_file"), "{error}");
    assert!(error.contains("no-such-token-file"), "{error}");
}

#[tokio::test]
async fn an_unreadable_turn_secret_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-turn-secret");
    let option = format!("turn_secret_file=\"{}\"", missing.display());
    let error = start_error(dir.path(), &[option.as_str()]).await;
    assert!(error.contains("turn_secret_file"), "{error}");
    assert!(error.contains("no-such-turn-secret"), "{error}");
}

#[tokio::test]
async fn a_dead_writer_stops_the_server_with_an_error() {
    let mut server = TestServer::start().await;
    let running = server.server.take().expect("running");
    running.services().storage.writer().inject_failure();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running.run())
        .await
        .expect("the server stops by itself");
    let error = outcome.expect_err("and says why");
    assert!(error.to_string().contains("writer"), "{error}");
}

#[tokio::test]
async fn a_database_from_before_the_name_record_is_judged_by_its_accounts() {
    use tuwunel::storage::{Batch, EngineOptions, Storage, Table, catalogue::META};
    const RECORDS: Table<String, Vec<u8>> = Table::new(META);

    let mut server = TestServer::start().await;
    server.register("alice", "pw").await;
    server.stop().await;
    // Remove the record, as a database written before it existed lacks it.
    {
        let (storage, _) =
            Storage::open(&EngineOptions::for_path(server.dir.path().join("db"))).expect("open");
        let mut batch = Batch::new();
        RECORDS.delete(&mut batch, &"server_name".to_owned());
        storage.writer().commit(batch).await.expect("commit");
        storage.close().await;
    }
    let error = start_error(server.dir.path(), &["server_name=\"renamed.local\""]).await;
    assert!(error.contains("`test.local`") && error.contains("`renamed.local`"), "{error}");
    // Its own name opens it, and stamps it.
    server.restart().await;
    server.stop().await;
    let (storage, _) =
        Storage::open(&EngineOptions::for_path(server.dir.path().join("db"))).expect("open");
    let stamped = RECORDS.get(storage.engine(), &"server_name".to_owned()).expect("read");
    assert_eq!(stamped.as_deref(), Some(&b"test.local"[..]));
    storage.close().await;
}

#[tokio::test]
async fn a_server_runs_on_the_clock_it_was_started_with_across_restarts() {
    let (mut server, clock) = TestServer::with_clock(&[]).await;
    let time = &server.server().services().time;
    assert_eq!(time.now_ms(), clock.time().now_ms());
    clock.advance(Duration::from_secs(3600));
    let time = &server.server().services().time;
    assert_eq!(time.now_ms(), clock.time().now_ms());

    server.restart().await;
    let time = &server.server().services().time;
    assert_eq!(time.now_ms(), clock.time().now_ms(), "the restarted server has another clock");
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_appservice_in_the_config_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = start_error(
        dir.path(),
        &[
            "appservice.echo.as_token=\"as-secret\"",
            "appservice.echo.hs_token=\"hs-secret\"",
            "appservice.echo.users=[{exclusive=true, regex='@echo_.*'}, {regex='@(unclosed'}]",
            "appservice.echo.url=\"ftp://127.0.0.1\"",
        ],
    )
    .await;
    assert!(error.contains("`global.appservice.echo.users[1].regex`"), "{error}");
    assert!(error.contains("`global.appservice.echo.url`"), "{error}");

    let error = start_error(
        dir.path(),
        &[
            "appservice.one.as_token=\"same\"",
            "appservice.one.hs_token=\"hs-one\"",
            "appservice.two.as_token=\"same\"",
            "appservice.two.hs_token=\"hs-two\"",
        ],
    )
    .await;
    assert!(error.contains("`global.appservice.two.as_token`"), "{error}");
    assert!(error.contains("`one`"), "{error}");
}
