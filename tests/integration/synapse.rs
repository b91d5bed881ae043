//! A real Synapse (the reference homeserver) started by the tests, on loopback only: a
//! temporary directory, a free port, a bounded wait until it answers, and a stop when the
//! value is dropped. Client tests run the same scenario against it and against us; federation
//! tests start it with federation on through the same [`SynapseConfig`].
//!
//! Synapse is installed by `./dev.sh test` (the version pinned in
//! `tests/synapse-requirements.txt`) into a virtual environment under the user's cache
//! directory; `TUWUNEL_TEST_SYNAPSE_PYTHON` names another Python that has it.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// Longest wait for a started Synapse to answer `/versions`.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// What a test wants of its Synapse. Every other setting is fixed in [`SynapseConfig::yaml`]:
/// open registration without verification, no rate limits, SQLite, logs at WARNING.
#[derive(Debug, Clone)]
pub struct SynapseConfig {
    pub server_name: String,
    /// Serve the federation API on the same listener (off: the server federates with no one).
    pub federation: bool,
    /// A certificate and key in PEM files: the listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More `homeserver.yaml`, appended last (a key given here replaces the default's).
    pub extra_yaml: String,
    /// The port to listen on (a free one when `None`): for a server name that holds it.
    pub port: Option<u16>,
}

impl Default for SynapseConfig {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            federation: false,
            tls: None,
            extra_yaml: String::new(),
            port: None,
        }
    }
}

/// Rate limits Synapse treats as "never limit".
const UNLIMITED: &str = "{per_second: 1000000, burst_count: 10000000}";

impl SynapseConfig {
    /// The `homeserver.yaml` for a server in `dir` listening on `port`.
    pub fn yaml(&self, dir: &Path, port: u16) -> String {
        let dir = dir.display();
        let resources = if self.federation { "[client, federation]" } else { "[client]" };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut yaml = format!(
            "server_name: \"{server_name}\"\n\
             public_baseurl: \"{scheme}://127.0.0.1:{port}/\"\n\
             pid_file: \"{dir}/homeserver.pid\"\n\
             signing_key_path: \"{dir}/signing.key\"\n\
             log_config: \"{dir}/log.config\"\n\
             media_store_path: \"{dir}/media\"\n\
             report_stats: false\n\
             enable_metrics: false\n\
             database:\n  name: sqlite3\n  args:\n    database: \"{dir}/homeserver.db\"\n\
             listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    \
             tls: {tls}\n    x_forwarded: false\n    resources:\n      - names: {resources}\n        \
             compress: false\n\
             registration_shared_secret: \"test-registration-secret\"\n\
             macaroon_secret_key: \"test-macaroon-secret\"\n\
             form_secret: \"test-form-secret\"\n\
             enable_registration: true\n\
             enable_registration_without_verification: true\n\
             trusted_key_servers: []\n\
             suppress_key_server_warning: true\n\
             url_preview_enabled: false\n\
             presence:\n  enabled: true\n\
             room_list_publication_rules:\n  - action: allow\n\
             max_upload_size: 50M\n",
            server_name = self.server_name,
            tls = self.tls.is_some(),
        );
        if !self.federation {
            yaml.push_str("federation_domain_whitelist: []\n");
        }
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(yaml, "tls_certificate_path: \"{}\"", cert.display());
            let _ = writeln!(yaml, "tls_private_key_path: \"{}\"", key.display());
        }
        for limiter in [
            "rc_message",
            "rc_registration",
            "rc_registration_token_validity",
            "rc_joins_per_room",
            "rc_third_party_invite",
            "rc_3pid_validation",
            "rc_admin_redaction",
            "rc_key_requests",
            "rc_media_create",
            "rc_delayed_event_mgmt",
            "rc_room_creation",
            "rc_reports",
            "rc_user_directory",
            "rc_profile",
        ] {
            let _ = writeln!(yaml, "{limiter}: {UNLIMITED}");
        }
        let _ = write!(
            yaml,
            "rc_login:\n  address: {UNLIMITED}\n  account: {UNLIMITED}\n  failed_attempts: {UNLIMITED}\n\
             rc_joins:\n  local: {UNLIMITED}\n  remote: {UNLIMITED}\n\
             rc_invites:\n  per_room: {UNLIMITED}\n  per_user: {UNLIMITED}\n  per_issuer: {UNLIMITED}\n\
             rc_presence:\n  per_user: {UNLIMITED}\n\
             rc_federation:\n  window_size: 1000\n  sleep_limit: 1000000\n  sleep_delay: 0\n  \
             reject_limit: 1000000\n  concurrent: 1000000\n"
        );
        yaml.push_str(&self.extra_yaml);
        yaml
    }
}

/// Runs a command (`argv[2:]`) and stops it, removing the directory `argv[1]` and those listed
/// in its file `remove-on-exit`, when the watchdog's standard input closes: when the owner
/// drops the [`Child`] (or closes its input), and also when the test process exits without
/// dropping it (what a module's tests share lives in a static, which is never dropped). Exits
/// with the command's status if the command stops first.
const WATCHDOG: &str = "\
import os, shutil, subprocess, sys, threading
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL)
closing = threading.Event()
def exit_with_child():
    code = child.wait()
    if not closing.is_set():
        os._exit(code if code >= 0 else 128 - code)
threading.Thread(target=exit_with_child, daemon=True).start()
sys.stdin.read()
closing.set()
child.kill()
child.wait()
listed = os.path.join(sys.argv[1], 'remove-on-exit')
paths = open(listed).read().splitlines() if os.path.exists(listed) else []
for path in paths + [sys.argv[1]]:
    shutil.rmtree(path, ignore_errors=True)
";

/// `program` with `args` under the [`WATCHDOG`], which removes `dir` when it stops; its
/// standard input is the watchdog's (keep the [`Child`], or its `stdin`, for as long as the
/// program should run).
pub fn watched(
    dir: &Path,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&std::ffi::OsStr],
) -> Command {
    let mut command = Command::new(python());
    command.args(["-c", WATCHDOG]).arg(dir).arg(program).args(args).stdin(Stdio::piped());
    command
}

/// A running Synapse; stopped (and its directory removed) when dropped.
pub struct Synapse {
    child: Option<Child>,
    pub dir: TempDir,
    pub port: u16,
    pub server_name: String,
    tls: bool,
    /// How long it took to answer after being started.
    pub startup: Duration,
}

/// The Python that has Synapse installed.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("TUWUNEL_TEST_SYNAPSE_PYTHON") {
        return PathBuf::from(python);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
    });
    cache.join("tuwunel-tests/synapse-venv/bin/python")
}

pub fn free_port() -> u16 {
    // Bound and released: another process could take it in between, which a failed start
    // reports.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Synapse {
    /// Starts Synapse and waits until it answers; panics with its log when it does not.
    pub async fn start(config: SynapseConfig) -> Self {
        let python = python();
        assert!(
            python.exists(),
            "Synapse is not installed at {} (./dev.sh test installs it; or set \
             TUWUNEL_TEST_SYNAPSE_PYTHON)",
            python.display()
        );
        let dir = tempfile::tempdir().expect("synapse directory");
        let port = config.port.unwrap_or_else(free_port);
        let config_path = dir.path().join("homeserver.yaml");
        std::fs::write(&config_path, config.yaml(dir.path(), port)).expect("homeserver.yaml");
        std::fs::write(
            dir.path().join("log.config"),
            format!(
                "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
                 handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    \
                 filename: {}/homeserver.log\nroot:\n  level: WARNING\n  handlers: [file]\n\
                 disable_existing_loggers: false\n",
                dir.path().display()
            ),
        )
        .expect("log.config");
        let started = Instant::now();
        let keys = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config_path)
            .arg("--generate-keys")
            .output()
            .expect("python runs");
        assert!(
            keys.status.success(),
            "synapse --generate-keys failed: {}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let output = dir.path().join("stdout.log");
        let log = std::fs::File::create(&output).expect("synapse output file");
        let child = watched(
            dir.path(),
            &python,
            &[
                "-m".as_ref(),
                "synapse.app.homeserver".as_ref(),
                "-c".as_ref(),
                config_path.as_os_str(),
            ],
        )
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("synapse starts");
        let mut synapse = Self {
            child: Some(child),
            dir,
            port,
            server_name: config.server_name,
            tls: config.tls.is_some(),
            startup: Duration::ZERO,
        };
        tuwunel::net::outbound::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .danger_accept_invalid_certs(config.tls.is_some())
            .build()
            .expect("http client");
        let versions = synapse.url("/_matrix/client/versions");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = synapse.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "synapse exited during startup ({status}):\n{}\n{}",
                    tail(&output),
                    tail(&synapse.dir.path().join("homeserver.log"))
                );
            }
            if client
                .get(&versions)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not answer within {START_TIMEOUT:?}:\n{}",
                tail(&output)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        synapse.startup = started.elapsed();
        synapse
    }

    /// Has the directory `path` removed when Synapse stops: for what lives as long as a
    /// shared Synapse, in a static that is never dropped.
    pub fn remove_on_exit(&self, path: &Path) {
        let listed = self.dir.path().join("remove-on-exit");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(listed)
            .expect("open remove-on-exit");
        writeln!(file, "{}", path.display()).expect("write remove-on-exit");
    }

    /// The last lines of Synapse's log (WARNING and above), for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("homeserver.log"))
    }

    /// `path` on this server (`https` when it speaks TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing the watchdog's input stops Synapse; the watchdog then exits.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}
