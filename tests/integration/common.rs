//! The test server and helpers every integration test uses.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;
use tuwunel::{
    Config, Server,
    config::Inputs,
    time::{ManualClock, Time},
};

/// Installs logging once for the whole test binary (quiet unless TUWUNEL_TEST_LOG is set).
pub fn init_logging() {
    let filter = std::env::var("TUWUNEL_TEST_LOG").unwrap_or_else(|_| "error".to_owned());
    tuwunel::logging::init(&filter);
}

/// A server on an ephemeral loopback port with its own temporary database.
pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    options: Vec<String>,
    /// The server's clock, kept across restarts.
    time: Time,
}

impl TestServer {
    /// A server with the defaults below.
    pub async fn start() -> Self {
        Self::with_options(&[]).await
    }

    /// A server with extra `-O key=value` options.
    pub async fn with_options(options: &[&str]) -> Self {
        Self::with_time(options, Time::system()).await
    }

    /// A server whose clock stands still until the test advances it: what it dates, expires
    /// or times out follows the clock (its own housekeeping, such as passivating idle actors,
    /// still runs in real time).
    pub async fn with_clock(options: &[&str]) -> (Self, Arc<ManualClock>) {
        let clock = ManualClock::new();
        (Self::with_time(options, clock.time()).await, clock)
    }

    async fn with_time(options: &[&str], time: Time) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options: Vec<String> = options.iter().map(|option| (*option).to_owned()).collect();
        let server = start_in(dir.path(), &options, time.clone()).await;
        let base = format!("http://{}", server.addresses()[0]);
        Self { server: Some(server), base, client: client(), dir, options, time }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("request");
        status_and_json(response).await
    }

    /// Stops the server cleanly and waits until the database is closed.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }

    /// Stops and starts again on the same database (the port changes).
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = start_in(self.dir.path(), &self.options, self.time.clone()).await;
        self.base = format!("http://{}", server.addresses()[0]);
        self.server = Some(server);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that failed before stop(): trigger shutdown so background tasks end.
        if let Some(server) = &self.server {
            server.shutdown_handle().trigger();
        }
    }
}

/// Rate limits high enough that only the rate-limit tests meet them.
const GENEROUS_LIMITS: &str = "rc_registration_per_second = 1000.0\nrc_registration_burst_count = 1000\n\
    rc_login_per_second = 1000.0\nrc_login_burst_count = 1000\nrc_failed_login_per_second = 1000.0\n\
    rc_failed_login_burst_count = 1000\nrc_message_per_second = 1000.0\nrc_message_burst_count = 1000\n\
    rc_joins_per_second = 1000.0\nrc_joins_burst_count = 1000\nrc_invites_per_second = 1000.0\n\
    rc_invites_burst_count = 1000\n";

/// The configuration file every test server starts from. It trusts no notary and asks only
/// the test bed's DNS server, which knows nothing but the names tests register: a test
/// server never reaches the network.
pub fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("tuwunel.toml");
    let text = format!(
        "[global]\nserver_name = \"test.local\"\ndatabase_path = \"{}\"\naddress = \"127.0.0.1\"\nport = 0\n\
         allow_registration = true\nyes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse = true\n\
         db_cache_capacity_mb = 16\nlog = \"error\"\n{GENEROUS_LIMITS}\
         trusted_servers = []\ndns_nameservers = [\"{}\"]\ndns_min_ttl = 0\ndns_min_ttl_nxdomain = 0\n\
         dns_timeout = 2\ndns_attempts = 2\n",
        dir.join("db").display(),
        crate::testbed::dns_address(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub async fn start_in(dir: &Path, options: &[String], time: Time) -> Server {
    init_logging();
    let file = write_config(dir);
    let inputs = Inputs { files: vec![file], env: Vec::new(), options: options.to_vec() };
    let config = Config::load(&inputs).expect("test configuration is valid");
    Server::start_with(config, time).await.expect("server starts")
}

/// The configuration of a test server in `dir` with extra `-O` options.
pub fn config_in(dir: &Path, options: &[&str]) -> Config {
    init_logging();
    let file = write_config(dir);
    let options = options.iter().map(|option| (*option).to_owned()).collect();
    Config::load(&Inputs { files: vec![file], env: Vec::new(), options }).expect("config")
}

/// Why a server in `dir` with extra `-O` options refuses to start (the test fails if it
/// starts).
pub async fn start_error(dir: &Path, options: &[&str]) -> String {
    match Server::start(config_in(dir, options)).await {
        Ok(server) => {
            server.stop().await.expect("stop");
            panic!("the server started with {options:?}");
        }
        Err(error) => error.to_string(),
    }
}

/// A server in `dir` listening on the UNIX socket `socket` only (no TCP port).
pub async fn start_on_unix_socket(dir: &Path, socket: &Path) -> Server {
    init_logging();
    let file = write_config(dir);
    let tcp = "address = \"127.0.0.1\"\nport = 0\n";
    let text = std::fs::read_to_string(&file).expect("read config");
    assert!(text.contains(tcp), "the test configuration names its TCP listener as expected");
    let unix = format!("unix_socket_path = \"{}\"\n", socket.display());
    std::fs::write(&file, text.replace(tcp, &unix)).expect("write config");
    let inputs = Inputs { files: vec![file], env: Vec::new(), options: Vec::new() };
    let config = Config::load(&inputs).expect("test configuration is valid");
    Server::start(config).await.expect("server starts")
}

pub fn client() -> reqwest::Client {
    // reqwest is built without a bundled TLS provider; the server installs one.
    tuwunel::net::outbound::install_tls_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}

pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

/// Waits until `condition` holds, checking every 10 ms, for at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts a Matrix error response.
pub fn assert_error(status: u16, body: &Value, expected_status: u16, errcode: &str) {
    assert_eq!(status, expected_status, "unexpected status; body: {body}");
    assert_eq!(body["errcode"], errcode, "unexpected errcode; body: {body}");
    assert!(body["error"].is_string(), "error message missing; body: {body}");
}

/// A logged-in user of a test server.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

impl User {
    /// The user id as ruma's type, for reading the tables keyed by it.
    pub fn id(&self) -> ruma::OwnedUserId {
        ruma::OwnedUserId::try_from(self.user_id.as_str()).expect("a registered user's id")
    }

    /// The device id as ruma's type.
    pub fn device(&self) -> ruma::OwnedDeviceId {
        self.device_id.as_str().into()
    }
}

impl TestServer {
    /// Sends a request with an optional access token and JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        status_and_json(request.send().await.expect("request")).await
    }

    pub async fn get_as(&self, user: &User, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(&user.token), None).await
    }

    pub async fn put_as(&self, user: &User, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(&user.token), Some(body)).await
    }

    pub async fn post_as(&self, user: &User, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(&user.token), Some(body)).await
    }

    pub async fn delete_as(&self, user: &User, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, Some(&user.token), Some(body)).await
    }

    /// Registers `username` through the dummy UIA stage (open registration) and logs in.
    pub async fn register(&self, username: &str, password: &str) -> User {
        let body = serde_json::json!({
            "username": username,
            "password": password,
            "auth": { "type": "m.login.dummy" },
        });
        let (status, body) = self
            .request(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(body))
            .await;
        assert_eq!(status, 200, "registering {username}: {body}");
        user_from(&body)
    }

    /// Logs in with a password.
    pub async fn login(&self, username: &str, password: &str) -> User {
        let body = serde_json::json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": username },
            "password": password,
        });
        let (status, body) =
            self.request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(body)).await;
        assert_eq!(status, 200, "logging in {username}: {body}");
        user_from(&body)
    }
}

pub fn user_from(body: &Value) -> User {
    User {
        user_id: body["user_id"].as_str().expect("user_id").to_owned(),
        token: body["access_token"].as_str().expect("access_token").to_owned(),
        device_id: body["device_id"].as_str().expect("device_id").to_owned(),
    }
}
