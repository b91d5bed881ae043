//! The `tuwunel` binary itself: configuration errors, signals, startup admin commands,
//! backups and restore, and the development default.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use tuwunel::storage::{EngineOptions, Storage, Table, catalogue::META};

const BINARY: &str = env!("CARGO_BIN_EXE_tuwunel");

fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .current_dir(cwd)
        .env_remove("TUWUNEL_CONFIG")
        .env_remove("CONDUIT_CONFIG")
        .env_remove("CONDUWUIT_CONFIG")
        .output()
        .expect("run tuwunel");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config_file(dir: &Path, database: &str, extra: &str) -> String {
    let path = dir.join(format!("{database}.toml"));
    std::fs::write(
        &path,
        format!(
            "[global]\nserver_name = \"bin.test\"\ndatabase_path = \"{}\"\naddress = \"127.0.0.1\"\nport = 0\n\
             db_cache_capacity_mb = 16\nlog = \"info\"\n{extra}",
            dir.join(database).display()
        ),
    )
    .expect("write config");
    path.to_str().expect("utf8").to_owned()
}

#[test]
fn a_configuration_error_exits_1_with_one_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[global]\nserver_name = \"x.test\"\nport = \"eighty\"\n")
        .expect("write");
    let (code, _, stderr) = run(&["-c", path.to_str().expect("utf8")], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`port`"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");

    let (code, _, stderr) = run(&["-O", "address=\"nowhere\""], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`address`") && stderr.contains("-O"), "{stderr}");

    let path = dir.path().join("noname.toml");
    std::fs::write(&path, "[global]\nport = 8008\n").expect("write");
    let (code, _, stderr) = run(&["-c", path.to_str().expect("utf8")], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("server_name"), "{stderr}");
}

#[test]
fn generate_config_prints_the_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stdout, _) = run(&["--generate-config"], dir.path());
    assert_eq!(code, 0);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuwunel.toml.example"))
            .expect("example");
    assert!(
        stdout == committed,
        "tuwunel.toml.example is stale: run `cargo run -q -- --generate-config > tuwunel.toml.example`"
    );
}

/// A running `tuwunel` process whose log lines are collected.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str], cwd: &Path) -> Self {
        Self::start_with_env(args, cwd, &[])
    }

    /// Starts the binary with extra environment variables.
    pub(crate) fn start_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        command.args(args).current_dir(cwd).env_remove("TUWUNEL_CONFIG");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tuwunel");
        let (sender, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits for a log line containing `needle`, for at most `timeout`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
        }
        None
    }

    pub(crate) fn address(&mut self) -> String {
        let line = self
            .wait_for("listening", Duration::from_secs(60))
            .unwrap_or_else(|| panic!("never listened: {:?}", self.seen));
        let start = line.find("address=").expect("address field") + "address=".len();
        line[start..].split_whitespace().next().expect("address").to_owned()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(line);
                }
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "did not exit in time: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

#[test]
fn sigterm_stops_cleanly_and_the_database_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "db", "");
    for signal in ["-TERM", "-INT"] {
        let mut server = Running::start(&["-c", &config], dir.path());
        let address = server.address();
        assert!(get(&address, "/_matrix/client/versions").starts_with("HTTP/1.1 200"));
        server.signal(signal);
        assert_eq!(server.wait_exit(Duration::from_secs(60)), 0, "{:?}", server.seen);
        assert!(server.seen.iter().any(|line| line.contains("stopped")), "{:?}", server.seen);
    }
    // Closed cleanly: it opens in-process without recovery trouble.
    let (storage, _) =
        Storage::open(&EngineOptions::for_path(dir.path().join("db"))).expect("reopen");
    drop(storage);
}

#[test]
fn without_configuration_it_runs_a_development_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Running::start(&["-O", "port=0"], dir.path());
    let address = server.address();
    assert!(
        server.wait_for("development server", Duration::from_secs(5)).is_some(),
        "{:?}",
        server.seen
    );
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let keys = get(&address, "/_matrix/key/v2/server");
    assert!(keys.contains("\"server_name\":\"localhost\""), "{keys}");
    assert!(dir.path().join("tuwunel_db").join("CURRENT").exists(), "database in ./tuwunel_db");
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), 0);
}

const SIGNING_KEY_VERSION: Table<String, Vec<u8>> = Table::new(META);

fn signing_key_version(database: &Path) -> Vec<u8> {
    let (storage, _) = Storage::open(&EngineOptions::for_path(database)).expect("open");
    let version =
        SIGNING_KEY_VERSION.get(storage.engine(), &"signing_key_version".to_owned()).expect("read");
    version.expect("a signing key was generated")
}

#[test]
fn execute_takes_a_backup_and_restore_backup_brings_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    let extra =
        format!("database_backup_path = \"{}\"\ndatabase_backups_to_keep = 2\n", backups.display());
    let original = config_file(dir.path(), "original", &extra);

    let (code, stdout, stderr) = run(
        &["-c", &original, "--execute", "server backup-database", "--execute", "server shutdown"],
        dir.path(),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("Backup 1 complete"), "{stdout}");

    let (code, stdout, _) = run(
        &[
            "-c",
            &original,
            "--execute",
            "server backup-database",
            "--execute",
            "server backup-database",
            "--execute",
            "server list-backups",
            "--execute",
            "server shutdown",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("| 2 |") && stdout.contains("| 3 |") && !stdout.contains("| 1 |"),
        "keeps two: {stdout}"
    );

    // Restore into a fresh directory and find the same server identity there.
    let restored = config_file(dir.path(), "restored", &extra);
    let (code, stdout, stderr) =
        run(&["-c", &restored, "--restore-backup", "--execute", "server shutdown"], dir.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("restored the database"), "{stdout}");
    assert_eq!(
        signing_key_version(&dir.path().join("restored")),
        signing_key_version(&dir.path().join("original"))
    );

    // Restoring over an existing database is refused.
    let (code, _, stderr) = run(&["-c", &restored, "--restore-backup=2"], dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("move it aside"), "{stderr}");
}

#[test]
fn a_failing_startup_command_stops_the_server_with_status_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "db", "");
    let (code, stdout, stderr) =
        run(&["-c", &config, "--execute", "server no-such-command"], dir.path());
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("no-such-command"), "{stderr}");

    let (code, stdout, _) = run(
        &[
            "-c",
            &config,
            "-O",
            "admin_execute_errors_ignore=true",
            "--execute",
            "server no-such-command",
            "--execute",
            "debug echo still here",
            "--execute",
            "server shutdown",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("still here"), "{stdout}");
}

#[test]
fn sighup_is_survived_and_sigusr2_runs_the_signal_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    let extra = format!(
        "database_backup_path = \"{}\"\nadmin_signal_execute = [\"server backup-database\"]\n",
        backups.display()
    );
    let config = config_file(dir.path(), "db", &extra);
    let mut server = Running::start(&["-c", &config], dir.path());
    let address = server.address();
    server.signal("-HUP");
    assert!(
        server.wait_for("SIGHUP received", Duration::from_secs(10)).is_some(),
        "{:?}",
        server.seen
    );
    assert!(
        get(&address, "/_tuwunel/server_version").starts_with("HTTP/1.1 200"),
        "still serving after SIGHUP"
    );
    server.signal("-USR2");
    assert!(
        server.wait_for("Backup 1 complete", Duration::from_secs(30)).is_some(),
        "{:?}",
        server.seen
    );
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn ipv4_and_ipv6_listeners_share_a_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr")
        .port();
    let config = config_file(dir.path(), "db", "");
    let mut server = Running::start(
        &["-c", &config, "-O", "address=[\"127.0.0.1\", \"::1\"]", "-O", &format!("port={port}")],
        dir.path(),
    );
    server.address();
    assert!(
        server.wait_for(&format!("[::1]:{port}"), Duration::from_secs(10)).is_some(),
        "{:?}",
        server.seen
    );
    assert!(
        get(&format!("127.0.0.1:{port}"), "/_tuwunel/server_version").starts_with("HTTP/1.1 200")
    );
    assert!(get(&format!("[::1]:{port}"), "/_tuwunel/server_version").starts_with("HTTP/1.1 200"));
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn a_database_of_another_server_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("db");
    {
        // A RocksDB database with another server's tables, as Tuwunel or conduwuit leave.
        let mut options = rust_rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rust_rocksdb::DB::open_cf(&options, &foreign, ["global", "userid_password"])
            .expect("create");
        drop(db);
    }
    let config = config_file(dir.path(), "db", "");
    let (code, stdout, stderr) = run(&["-c", &config], dir.path());
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("not created by this tuwunel"), "{stderr}");
    let families =
        rust_rocksdb::DB::list_cf(&rust_rocksdb::Options::default(), &foreign).expect("list");
    assert!(
        !families.iter().any(|family| family == "meta"),
        "the foreign database was modified: {families:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_event() {
    use serde_json::{Value, json};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "db",
        "allow_registration = true\nyes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse = true\n\
         rc_message_per_second = 10000.0\nrc_message_burst_count = 10000\n",
    );
    let client = crate::common::client();
    let mut server = Running::start(&["-c", &config], dir.path());
    let base = format!("http://{}", server.address());
    let register: Value = client
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({"username": "writer", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let token = register["access_token"].as_str().expect("token").to_owned();
    let room: Value = client
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let room = room["room_id"].as_str().expect("room").to_owned();

    // Four writers send until killed; only answered sends count as acknowledged.
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, base, token, room, acks) =
            (client.clone(), base.clone(), token.clone(), room.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            for index in 0..10_000 {
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/w{writer}-{index}"
                );
                let Ok(response) = client
                    .put(url)
                    .bearer_auth(&token)
                    .json(&json!({"msgtype": "m.text", "body": "x"}))
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(body) = response.json::<Value>().await else { return };
                if let Some(id) = body["event_id"].as_str() {
                    let _ = acks.send(id.to_owned());
                }
            }
        }));
    }
    drop(acks);
    let mut acknowledged = std::collections::HashSet::new();
    while acknowledged.len() < 150 {
        match tokio::time::timeout(Duration::from_secs(60), acked.recv()).await {
            Ok(Some(id)) => {
                acknowledged.insert(id);
            }
            _ => panic!("the server stopped acknowledging after {}", acknowledged.len()),
        }
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    for writer in writers {
        let _ = writer.await;
    }
    while let Ok(id) = acked.try_recv() {
        acknowledged.insert(id);
    }

    let mut server = Running::start(&["-c", &config], dir.path());
    let base = format!("http://{}", server.address());
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..1000 {
        let mut url = format!("{base}/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100");
        if let Some(from) = &from {
            url.push_str(&format!("&from={from}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("messages")
            .json()
            .await
            .expect("json");
        for event in page["chunk"].as_array().expect("chunk") {
            if event["type"] == "m.room.message" {
                seen.push(event["event_id"].as_str().expect("id").to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an event appears twice in the timeline");
    let missing: Vec<_> = acknowledged.iter().filter(|id| !unique.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing after SIGKILL: {missing:?}",
        missing.len()
    );
    // And the room keeps working on the recovered head.
    let response = client
        .put(format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/after"))
        .bearer_auth(&token)
        .json(&json!({"msgtype": "m.text", "body": "after the crash"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), 0);
}

/// Resident memory of a process, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).expect("value").parse().expect("number");
    kib * 1024
}

/// Password hashes use 19 MiB each; glibc's malloc used to raise its mmap threshold after
/// freeing one, after which the heap held on to everything (460 MB after 100 registrations
/// in the load test). jemalloc now serves every allocation (src/memory.rs) and must not
/// regress to that either.
#[tokio::test]
async fn password_hashing_does_not_leave_the_heap_swollen() {
    use serde_json::json;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "db",
        "allow_registration = true\nyes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse = true\n\
         rc_registration_per_second = 10000.0\nrc_registration_burst_count = 10000\n",
    );
    let client = crate::common::client();
    let mut server = Running::start(&["-c", &config], dir.path());
    let base = format!("http://{}", server.address());
    let mut tasks = Vec::new();
    for user in 0..60 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(format!("{base}/_matrix/client/v3/register"))
                .json(&json!({"username": format!("u{user}"), "password": "pw", "auth": {"type": "m.login.dummy"}}))
                .send()
                .await
                .expect("register");
            assert_eq!(response.status(), 200);
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let resident = resident_bytes(server.child.id());
    assert!(resident < 160 << 20, "{} MiB resident after 60 registrations", resident >> 20);
}

#[test]
fn a_closed_log_pipe_neither_panics_nor_deafens_the_server_to_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "db", "");
    let mut child = Command::new(BINARY)
        .args(["-c", &config])
        .current_dir(dir.path())
        .env_remove("TUWUNEL_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tuwunel");
    // Read the log until the server listens, then close both pipes, as `| head` does.
    let mut address = None;
    {
        let stdout = child.stdout.take().expect("stdout");
        drop(child.stderr.take());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(start) = line.find("address=") {
                let rest = &line[start + "address=".len()..];
                address = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
    }
    let address = address.expect("the server listened");
    // Every log line now fails to write; SIGHUP logs one from the signal handler.
    for _ in 0..3 {
        let status =
            Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(get(&address, "/_tuwunel/server_version").starts_with("HTTP/1.1 200"), "still serving");
    let status =
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM was ignored once the log pipe had closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_as_documented_brings_back_the_media() {
    use serde_json::{Value, json};

    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    let extra = format!(
        "allow_registration = true\nyes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse = true\n\
         database_backup_path = \"{}\"\nadmin_signal_execute = [\"server backup-database\"]\n",
        backups.display()
    );
    let config = config_file(dir.path(), "db", &extra);
    let client = crate::common::client();
    let mut server = Running::start(&["-c", &config], dir.path());
    let base = format!("http://{}", server.address());
    let register: Value = client
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({"username": "keeper", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let token = register["access_token"].as_str().expect("token").to_owned();
    let bytes: Vec<u8> = (0..200_000_u32).map(|index| (index * 7 % 251) as u8).collect();
    let uploaded: Value = client
        .post(format!("{base}/_matrix/media/v3/upload?filename=kept.bin"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let mxc = uploaded["content_uri"].as_str().expect("content_uri").to_owned();
    let path = mxc.strip_prefix("mxc://").expect("mxc").to_owned();

    // An online backup by signal, as docs/backups.md sets it up.
    server.signal("-USR2");
    let line = server
        .wait_for("Backup 1 complete", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no backup: {:?}", server.seen));
    assert!(line.contains("1 media files"), "{line}");
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), 0);

    // docs/backups.md, "Step by step": move the damaged database aside, recreate the
    // directory empty, restore with --restore-backup and a shutdown, start again.
    std::fs::rename(dir.path().join("db"), dir.path().join("db.damaged")).expect("move aside");
    std::fs::create_dir(dir.path().join("db")).expect("empty directory");
    let (code, stdout, stderr) =
        run(&["-c", &config, "--restore-backup", "--execute", "server shutdown"], dir.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("restored the database"), "{stdout}");
    assert!(stdout.contains("restored media files"), "{stdout}");

    let mut restored = Running::start(&["-c", &config], dir.path());
    let base = format!("http://{}", restored.address());
    let login: Value = client
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "keeper"}, "password": "pw"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["access_token"].as_str().expect("the account came back").to_owned();
    let response = client
        .get(format!("{base}/_matrix/client/v1/media/download/{path}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let downloaded = response.bytes().await.expect("bytes");
    assert!(downloaded == bytes, "the restored file differs");
    restored.signal("-TERM");
    assert_eq!(restored.wait_exit(Duration::from_secs(60)), 0);
}
