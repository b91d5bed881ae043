//! A thin typed wrapper over the Matrix Client-Server API endpoints the scenarios use:
//! registration (UIA with registration token or dummy), login, rooms, messages, /sync,
//! /messages and media. Every request has a timeout; `429 M_LIMIT_EXCEEDED` is retried after
//! `retry_after_ms` a bounded number of times and counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use reqwest::{Method, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Counters shared by every request of one run.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// A Client-Server API client for one homeserver.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    max_retries: u32,
    pub(crate) counters: Arc<Counters>,
}

/// Credentials of a logged-in device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) access_token: String,
    pub(crate) device_id: String,
}

enum Body {
    None,
    Json(Value),
    Raw { data: Bytes, content_type: String },
}

/// One parsed /sync response and its size on the wire.
#[derive(Debug)]
pub(crate) struct Sync {
    pub(crate) json: Value,
    pub(crate) bytes: usize,
}

/// What a scenario needs from one joined room of a /sync response.
#[derive(Debug)]
pub(crate) struct JoinedRoom<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) timeline: &'a [Value],
    pub(crate) state: &'a [Value],
    pub(crate) limited: bool,
    pub(crate) prev_batch: Option<&'a str>,
}

impl Sync {
    pub(crate) fn next_batch(&self) -> Result<String> {
        self.json["next_batch"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("/sync response without next_batch"))
    }

    pub(crate) fn joined(&self) -> Vec<JoinedRoom<'_>> {
        let Some(rooms) = self.json["rooms"]["join"].as_object() else {
            return Vec::new();
        };
        rooms
            .iter()
            .map(|(room_id, room)| JoinedRoom {
                room_id,
                timeline: room["timeline"]["events"].as_array().map_or(&[], Vec::as_slice),
                state: room["state"]["events"].as_array().map_or(&[], Vec::as_slice),
                limited: room["timeline"]["limited"].as_bool().unwrap_or(false),
                prev_batch: room["timeline"]["prev_batch"].as_str(),
            })
            .collect()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Api {
    pub(crate) fn new(base: &str, timeout: Duration, max_retries: u32) -> Result<Self> {
        // reqwest is built with rustls but without a bundled crypto provider; plain http
        // does not use it, https does. Installing twice is harmless.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            http: http_client()?,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            max_retries,
            counters: Arc::default(),
        })
    }

    /// The same server and counters, with a connection pool of its own (so its requests
    /// open connections that can be counted).
    pub(crate) fn with_own_pool(&self) -> Result<Self> {
        Ok(Self { http: http_client()?, ..self.clone() })
    }

    /// Sends a request, retrying after 429s; returns the final status and body.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
        timeout: Duration,
    ) -> Result<(u16, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let mut request = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request = match &body {
                Body::None => request,
                Body::Json(value) => request.json(value),
                Body::Raw { data, content_type } => {
                    request.header(header::CONTENT_TYPE, content_type).body(data.clone())
                }
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::from(error).context(format!("{method} {path}")));
                }
            };
            let status = response.status().as_u16();
            let retry_after_header = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(|seconds| seconds.saturating_mul(1000));
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::from(error).context(format!("{method} {path} (body)")));
                }
            };
            if status == 429 && attempt < self.max_retries {
                attempt += 1;
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let from_body = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|body| body["retry_after_ms"].as_u64());
                let wait = from_body.or(retry_after_header).unwrap_or(1000).clamp(10, 60_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            if !(200..300).contains(&status) && status != 401 {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            return Ok((status, bytes));
        }
    }

    /// A JSON request that must succeed (2xx).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Result<Value> {
        let (status, bytes) = self.raw(method.clone(), path, token, body, self.timeout).await?;
        let json = parse_body(status, &bytes, &method, path)?;
        Ok(json)
    }

    pub(crate) async fn versions(&self) -> Result<Value> {
        self.call(Method::GET, "/_matrix/client/versions", None, Body::None).await
    }

    pub(crate) async fn federation_version(&self) -> Result<Value> {
        self.call(Method::GET, "/_matrix/federation/v1/version", None, Body::None).await
    }

    /// Registers through User-Interactive Authentication: `m.login.registration_token` when
    /// a token is given, `m.login.dummy` stages otherwise.
    pub(crate) async fn register(
        &self,
        username: &str,
        password: &str,
        registration_token: Option<&str>,
    ) -> Result<Session> {
        let path = "/_matrix/client/v3/register";
        let mut request = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "tuwunel-loadtest",
        });
        // Each round either succeeds, or answers 401 with the flows and what is completed.
        for _ in 0..6 {
            let (status, bytes) = self
                .raw(Method::POST, path, None, Body::Json(request.clone()), self.timeout)
                .await?;
            if status != 401 {
                let body = parse_body(status, &bytes, &Method::POST, path)?;
                return session_from(&body);
            }
            let uia: Value = serde_json::from_slice(&bytes)?;
            if uia.get("errcode").is_some() && uia.get("flows").is_none() {
                return Err(api_error(status, &uia, "registration"));
            }
            let session = uia["session"].as_str().map(str::to_owned);
            let completed: Vec<&str> = uia["completed"]
                .as_array()
                .map(|stages| stages.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let stage =
                next_stage(&uia, &completed, registration_token.is_some()).ok_or_else(|| {
                    Error::new(format!(
                        "registration: no flow this harness can complete (flows: {}); \
                         give --registration-token if the server wants one",
                        uia["flows"]
                    ))
                })?;
            let mut auth = json!({ "type": stage });
            if let Some(session) = session {
                auth["session"] = json!(session);
            }
            if stage == "m.login.registration_token" {
                auth["token"] = json!(registration_token.unwrap_or_default());
            }
            request["auth"] = auth;
        }
        Err(Error::new("registration: too many User-Interactive Authentication rounds"))
    }

    pub(crate) async fn login(&self, user: &str, password: &str) -> Result<Session> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
            "initial_device_display_name": "tuwunel-loadtest",
        });
        let response =
            self.call(Method::POST, "/_matrix/client/v3/login", None, Body::Json(body)).await?;
        session_from(&response)
    }

    pub(crate) async fn whoami(&self, token: &str) -> Result<String> {
        let body = self
            .call(Method::GET, "/_matrix/client/v3/account/whoami", Some(token), Body::None)
            .await?;
        body["user_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("whoami response without user_id"))
    }

    pub(crate) async fn create_room(&self, token: &str, body: Value) -> Result<String> {
        let response = self
            .call(Method::POST, "/_matrix/client/v3/createRoom", Some(token), Body::Json(body))
            .await?;
        response["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("createRoom response without room_id"))
    }

    pub(crate) async fn join(&self, token: &str, room: &str) -> Result<String> {
        let path = format!("/_matrix/client/v3/join/{}", encode(room));
        let response = self.call(Method::POST, &path, Some(token), Body::Json(json!({}))).await?;
        response["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("join response without room_id"))
    }

    /// Sends an `m.room.message`; returns its event ID.
    pub(crate) async fn send_message(
        &self,
        token: &str,
        room: &str,
        txn: &str,
        content: &Value,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(room),
            encode(txn)
        );
        let response =
            self.call(Method::PUT, &path, Some(token), Body::Json(content.clone())).await?;
        response["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("send response without event_id"))
    }

    /// `GET /sync`. `filter` is inline filter JSON; `timeout_ms` is the long-poll timeout.
    pub(crate) async fn sync(
        &self,
        token: &str,
        since: Option<&str>,
        filter: &str,
        timeout_ms: u64,
    ) -> Result<Sync> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&encode(since));
        }
        if !filter.is_empty() {
            path.push_str("&filter=");
            path.push_str(&encode(filter));
        }
        let timeout = self.timeout + Duration::from_millis(timeout_ms);
        let (status, bytes) =
            self.raw(Method::GET, &path, Some(token), Body::None, timeout).await?;
        let json = parse_body(status, &bytes, &Method::GET, "/_matrix/client/v3/sync")?;
        Ok(Sync { json, bytes: bytes.len() })
    }

    /// `GET /rooms/{roomId}/messages`, backwards from `from`.
    pub(crate) async fn messages_backwards(
        &self,
        token: &str,
        room: &str,
        from: &str,
        limit: usize,
    ) -> Result<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}&from={}",
            encode(room),
            encode(from)
        );
        self.call(Method::GET, &path, Some(token), Body::None).await
    }

    /// Uploads a file; returns its `mxc://` URI.
    pub(crate) async fn upload(
        &self,
        token: &str,
        data: Bytes,
        content_type: &str,
        filename: &str,
    ) -> Result<String> {
        let path = format!("/_matrix/media/v3/upload?filename={}", encode(filename));
        let body = Body::Raw { data, content_type: content_type.to_owned() };
        let response = self.call(Method::POST, &path, Some(token), body).await?;
        response["content_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new("upload response without content_uri"))
    }

    /// Authenticated download of an `mxc://server/id` URI.
    pub(crate) async fn download(&self, token: &str, mxc: &str) -> Result<Bytes> {
        let (server, media_id) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| Error::new(format!("not an mxc URI: {mxc}")))?;
        let path =
            format!("/_matrix/client/v1/media/download/{}/{}", encode(server), encode(media_id));
        let (status, bytes) =
            self.raw(Method::GET, &path, Some(token), Body::None, self.timeout).await?;
        if !(200..300).contains(&status) {
            let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, &body, "GET /_matrix/client/v1/media/download"));
        }
        Ok(bytes)
    }
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(50))
        .build()?)
}

/// The first stage this harness can do next, of a flow made only of stages it can do.
fn next_stage<'a>(uia: &'a Value, completed: &[&str], have_token: bool) -> Option<&'a str> {
    let doable = |stage: &str| {
        stage == "m.login.dummy" || (have_token && stage == "m.login.registration_token")
    };
    let flows = uia["flows"].as_array()?;
    flows
        .iter()
        .filter_map(|flow| flow["stages"].as_array())
        .filter(|stages| stages.iter().all(|stage| stage.as_str().is_some_and(doable)))
        // With a token, prefer the flow that uses it.
        .max_by_key(|stages| {
            stages.iter().any(|stage| stage.as_str() == Some("m.login.registration_token"))
                == have_token
        })
        .and_then(|stages| {
            stages.iter().filter_map(Value::as_str).find(|stage| !completed.contains(stage))
        })
}

fn parse_body(status: u16, bytes: &[u8], method: &Method, path: &str) -> Result<Value> {
    let json = serde_json::from_slice::<Value>(bytes);
    if !(200..300).contains(&status) {
        let body = json.unwrap_or(Value::Null);
        return Err(api_error(status, &body, &format!("{method} {path}")));
    }
    json.map_err(|error| Error::new(format!("{method} {path}: body is not JSON: {error}")))
}

fn api_error(status: u16, body: &Value, what: &str) -> Error {
    let errcode = body["errcode"].as_str().map(str::to_owned);
    let message = body["error"].as_str().unwrap_or("no error message");
    Error::http(status, errcode, format!("{what}: {message}"))
}

fn session_from(body: &Value) -> Result<Session> {
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new(format!("response without {name}: {body}")))
    };
    Ok(Session {
        user_id: field("user_id")?,
        access_token: field("access_token")?,
        device_id: field("device_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_doable_stages() {
        let uia = json!({"flows": [
            {"stages": ["m.login.recaptcha"]},
            {"stages": ["m.login.registration_token", "m.login.dummy"]},
            {"stages": ["m.login.dummy"]},
        ]});
        assert_eq!(next_stage(&uia, &[], false), Some("m.login.dummy"));
        assert_eq!(next_stage(&uia, &[], true), Some("m.login.registration_token"));
        assert_eq!(next_stage(&uia, &["m.login.registration_token"], true), Some("m.login.dummy"));
        let only_captcha = json!({"flows": [{"stages": ["m.login.recaptcha"]}]});
        assert_eq!(next_stage(&only_captcha, &[], true), None);
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("!abc:localhost"), "%21abc%3Alocalhost");
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }
}
