//! Every route the server mounts, taken from the router's own list (`tuwunel::http::routes`,
//! through which every route is mounted, so a new one cannot be missed), sent malformed,
//! oversized, deeply nested and repeated-key bodies, wrong methods and bad path parameters,
//! with an access token and without: the answer is a Matrix error (a 4xx with an `errcode`)
//! or, where the input is acceptable (including any body sent with `GET`, which is
//! ignored), a success; never a 5xx (but the gateway error for media of a server that
//! cannot be reached), and nothing panics.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, Once},
    time::Duration,
};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tuwunel::http::routes::{BodyKind, Mounted};

use crate::common::{TestServer, status_and_json};

/// The request size limit of the walked server (the smallest allowed): oversized bodies
/// declare one byte more.
const MAX_REQUEST_SIZE: usize = 10_000_000;

/// Panics seen in the whole test binary, by thread name. The walked server runs on the
/// test's own (current-thread) runtime, so its handlers and actors panic on the test thread.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            if let Ok(mut panics) = PANICS.lock() {
                panics.push((thread, info.to_string()));
            }
            previous(info);
        }));
    });
}

fn panics_on(thread: &str) -> Vec<String> {
    PANICS
        .lock()
        .map(|panics| {
            panics.iter().filter(|(name, _)| name == thread).map(|(_, info)| info.clone()).collect()
        })
        .unwrap_or_default()
}

/// `path` with every `{parameter}` replaced by `value`.
fn fill(path: &str, value: &str) -> String {
    let mut filled = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        filled.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |end| start + end + 1);
        filled.push_str(value);
        rest = &rest[end..];
    }
    filled.push_str(rest);
    filled
}

fn nested(depth: usize) -> String {
    format!("{}{}", "{\"a\":".repeat(depth), "1".to_owned() + &"}".repeat(depth))
}

/// Sends a request declaring a body of `MAX_REQUEST_SIZE + 1` bytes but only its first
/// kilobyte, over a raw connection (sending 10 MB to every route would take long); the
/// server must refuse it from the declared length. Returns the status and the body text.
async fn declared_oversized(
    address: std::net::SocketAddr,
    method: &Method,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let authorization =
        token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: walk\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{authorization}Connection: close\r\n\r\n{{\"a\":\"{}",
        MAX_REQUEST_SIZE + 1,
        "x".repeat(1_000),
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => response.extend_from_slice(&buffer[..count]),
            }
            if complete(&response) {
                break;
            }
        }
    })
    .await;
    if read.is_err() && response.is_empty() {
        return Err("no answer within 10 s".to_owned());
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text}"))?;
    Ok((status, text))
}

/// Whether `response` holds a whole response with a `Content-Length` body.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some(end) = text.find("\r\n\r\n") else { return false };
    text[..end]
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| response.len() >= end + 4 + length)
}

/// One request of the walk and what it may answer.
struct Probe {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    /// Whether a success is acceptable (the input may be valid for this route).
    may_succeed: bool,
}

struct Walk<'a> {
    server: &'a TestServer,
    /// The walking user's token; logging out (a valid request) ends it, so it is renewed.
    token: String,
    failures: Vec<String>,
    requests: usize,
}

impl Walk<'_> {
    /// Sends `probe` with the user's token and without one.
    async fn check_both(&mut self, probe: &Probe) {
        let token = self.token.clone();
        let status = self.check(probe, Some(&token)).await;
        if status.is_some_and(|status| (200..300).contains(&status))
            && probe.path.contains("/logout")
        {
            self.token = self.server.login("walker", "p").await.token;
        }
        self.check(probe, None).await;
    }

    async fn check(&mut self, probe: &Probe, token: Option<&str>) -> Option<u16> {
        let mut request =
            self.server.client.request(probe.method.clone(), self.server.url(&probe.path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &probe.body {
            request = request.header("content-type", "application/json").body(body.clone());
        }
        self.requests += 1;
        let who = if token.is_some() { "user" } else { "anonymous" };
        let shown: String = probe.path.chars().take(120).collect();
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.failures.push(format!(
                    "{} {} {shown} ({who}): no answer: {error}",
                    probe.what, probe.method
                ));
                return None;
            }
        };
        let (status, body) = status_and_json(response).await;
        // Media of another server is asked of that server; the walk's made-up server names
        // cannot be reached, which the spec answers with a gateway error.
        let remote_media =
            probe.path.contains("/media/download/x/") || probe.path.contains("/media/thumbnail/x/");
        let is_error = (400..500).contains(&status) || (remote_media && status == 502);
        let acceptable = if is_error {
            // A User-Interactive Authentication challenge is the spec's answer too.
            body["errcode"].as_str().is_some_and(|code| code.starts_with("M_"))
                || (status == 401 && body["flows"].is_array())
        } else {
            probe.may_succeed && (200..300).contains(&status)
        };
        if !acceptable {
            self.failures
                .push(format!("{} {} {shown} ({who}): {status} {body}", probe.what, probe.method));
        }
        Some(status)
    }
}

/// `path` with each parameter given a value of the right form, so that requests get past
/// the path and reach the body's parser.
fn plausible(path: &str, user_id: &str) -> String {
    let mut filled = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        filled.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |end| start + end + 1);
        let value = match &rest[start + 1..end - 1] {
            "room_id" | "room_id_or_alias" => "!walk:test.local",
            "room_alias" | "alias" => "%23walk:test.local",
            "user_id" => user_id,
            "event_id" => "$walk",
            "server_name" => "test.local",
            "kind" => "override",
            _ => "walk",
        };
        filled.push_str(value);
        rest = &rest[end..];
    }
    filled.push_str(rest);
    filled
}

#[tokio::test]
async fn every_route_answers_bad_input_with_a_matrix_error() {
    record_panics();
    let mut server = TestServer::with_options(&[
        &format!("max_request_size={MAX_REQUEST_SIZE}"),
        "metrics_enabled=true",
    ])
    .await;
    let user = server.register("walker", "p").await;
    let routes: Vec<Mounted> = tuwunel::http::routes(server.server().services()).mounted().to_vec();
    assert!(routes.len() > 200, "only {} routes listed", routes.len());
    for expected in [
        "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}",
        "/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}",
        "/_matrix/media/v3/upload",
        "/_tuwunel/server_version",
        "/metrics",
    ] {
        assert!(routes.iter().any(|route| route.path == expected), "{expected} is not listed");
    }

    let malformed = b"{\"not\": json".to_vec();
    let deep = nested(65).into_bytes();
    let too_deep_to_parse = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).into_bytes();
    let repeated = b"{\"a\":1,\"a\":2}".to_vec();

    let mut probes = Vec::new();
    for route in &routes {
        let path = fill(&route.path, "x");
        let json = route.body == BodyKind::Json;
        for (what, body, may_succeed) in [
            ("malformed", &malformed, !json),
            ("deep", &deep, !json),
            ("unparsable", &too_deep_to_parse, !json),
            ("repeated key", &repeated, !json),
        ] {
            probes.push(Probe {
                what,
                method: route.method.clone(),
                path: path.clone(),
                body: Some(body.clone()),
                may_succeed,
            });
        }
        // JSON of every shape but the right one, where the path is right: ruma's parsers
        // (and the handlers behind them) get to see it.
        let plausible = plausible(&route.path, &user.user_id);
        for body in ["{}", "[]", "null", "\"text\"", "-1", "{\"auth\":{},\"type\":7}"] {
            probes.push(Probe {
                what: "wrong shape",
                method: route.method.clone(),
                path: plausible.clone(),
                body: Some(body.as_bytes().to_vec()),
                may_succeed: true,
            });
        }
        // Bad path parameters, with a harmless body: the route may find nothing or refuse.
        if route.path.contains('{') {
            let body = matches!(route.method, Method::POST | Method::PUT).then(|| b"{}".to_vec());
            for value in ["%FF%FE", &"x".repeat(5_000), "%00", "..%2F..%2Fetc"] {
                probes.push(Probe {
                    what: "bad parameter",
                    method: route.method.clone(),
                    path: fill(&route.path, value),
                    body: body.clone(),
                    may_succeed: true,
                });
            }
        }
    }
    // Wrong methods on every path.
    let mut methods: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for route in &routes {
        methods.entry(route.path.as_ref()).or_default().insert(route.method.to_string());
    }
    for (path, mounted) in &methods {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            if !mounted.contains(method.as_str()) {
                probes.push(Probe {
                    what: "wrong method",
                    method,
                    path: fill(path, "x"),
                    body: None,
                    may_succeed: false,
                });
            }
        }
    }

    let mut walk =
        Walk { server: &server, token: user.token.clone(), failures: Vec::new(), requests: 0 };
    for probe in &probes {
        walk.check_both(probe).await;
    }
    let (mut requests, mut failures, token) = (walk.requests, walk.failures, walk.token);

    // Oversized bodies: refused from the declared length (the chunked case, read until the
    // limit, is in `errors.rs`).
    let address = server.server().addresses()[0];
    for route in &routes {
        for token in [Some(token.as_str()), None] {
            requests += 1;
            let path = fill(&route.path, "x");
            let who = if token.is_some() { "user" } else { "anonymous" };
            match declared_oversized(address, &route.method, &path, token).await {
                Ok((status, text)) => {
                    let refused = (400..500).contains(&status) && text.contains("\"errcode\":\"M_");
                    let ignored = route.body == BodyKind::Ignored && status == 200;
                    if !refused && !ignored {
                        failures.push(format!("oversized {} {path} ({who}): {text}", route.method));
                    }
                }
                Err(error) => {
                    failures.push(format!("oversized {} {path} ({who}): {error}", route.method))
                }
            }
        }
    }
    eprintln!("route walk: {} routes, {requests} requests", routes.len());
    assert!(
        failures.is_empty(),
        "{} of {requests} answers were wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The user and the server are still fine.
    let walker = crate::common::User { token, ..user };
    let (status, body) = server.get_as(&walker, "/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200, "{body}");
    let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
    let panics = panics_on(&thread);
    assert!(panics.is_empty(), "the walk panicked:\n{}", panics.join("\n"));
    server.stop().await;
}
