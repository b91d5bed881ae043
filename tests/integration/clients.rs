//! Real client libraries against our server.

use std::process::Command;

use crate::common::TestServer;

/// Runs a Python client script with the server's URL; it prints OK when every step passed.
async fn run_python(script: &str, args: &[&str]) {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        move || Command::new("python3").arg(&path).args(&args).output()
    })
    .await
    .expect("task")
    .expect("python3 runs (./dev.sh test installs the client libraries)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "{script} failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_logs_in_and_manages_its_account() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"nio-token\"",
    ])
    .await;
    let url = server.url("");
    run_python("nio_accounts.py", &[&url, "nio-token"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_creates_joins_sends_and_paginates() {
    let mut server = TestServer::start().await;
    let url = server.url("");
    run_python("nio_rooms.py", &[&url]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_sync_loop_follows_a_conversation() {
    let mut server = TestServer::start().await;
    let url = server.url("");
    run_python("nio_sync_loop.py", &[&url]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_decrypts_a_message_sent_through_our_server() {
    let mut server = TestServer::start().await;
    let url = server.url("");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let scratch_path = scratch.path().to_string_lossy().into_owned();
    run_python("nio_e2ee.py", &[&url, &scratch_path]).await;
    server.stop().await;
}
