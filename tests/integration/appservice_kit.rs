//! A fake application service for the appservice tests: an HTTP server on loopback that
//! records every request the homeserver makes (path, query, `Authorization`, body), answers
//! like a well-behaved service by default, and fails, hangs or answers otherwise on demand.
//! Real frameworks (mautrix, matrix-appservice) drive the end-to-end scenarios; this one
//! lets the tests see and break every request.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{OriginalUri, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One request the homeserver made to the fake.
#[derive(Debug, Clone)]
pub struct AppserviceRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// The JSON body (`Null` when there was none or it was not JSON).
    pub body: Value,
}

impl AppserviceRequest {
    /// The transaction id of a `PUT /_matrix/app/v1/transactions/{txnId}`.
    pub fn txn_id(&self) -> Option<&str> {
        self.path.strip_prefix("/_matrix/app/v1/transactions/")
    }
}

/// How the fake answers requests whose path starts with a prefix.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Status(u16, Value),
    /// Never answer (until the homeserver gives up).
    Hang,
}

struct FakeState {
    hs_token: String,
    /// Every request, in arrival order, answered or not.
    requests: Mutex<Vec<AppserviceRequest>>,
    /// (path prefix, answer), the first match wins; later `answer` calls go first.
    answers: Mutex<Vec<(String, Answer)>>,
    /// Transactions accepted, by id, as a real service dedupes them.
    accepted: Mutex<Vec<(String, Value)>>,
    seen: Mutex<HashSet<String>>,
}

/// A fake application service listening on 127.0.0.1.
pub struct FakeAppservice {
    pub address: SocketAddr,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAppservice {
    /// Starts a fake that expects `hs_token` from the homeserver.
    pub async fn start(hs_token: &str) -> Self {
        let state = Arc::new(FakeState {
            hs_token: hs_token.to_owned(),
            requests: Mutex::default(),
            answers: Mutex::default(),
            accepted: Mutex::default(),
            seen: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake appservice");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Answers requests under `path_prefix` with `answer` from now on.
    pub fn answer(&self, path_prefix: &str, answer: Answer) {
        self.state.answers.lock().expect("answers").insert(0, (path_prefix.to_owned(), answer));
    }

    /// Back to the default answers.
    pub fn reset_answers(&self) {
        self.state.answers.lock().expect("answers").clear();
    }

    pub fn requests(&self) -> Vec<AppserviceRequest> {
        self.state.requests.lock().expect("requests").clone()
    }

    /// Transactions accepted (answered 200), once per id, in order: `(txnId, body)`.
    pub fn transactions(&self) -> Vec<(String, Value)> {
        self.state.accepted.lock().expect("accepted").clone()
    }

    /// The events of every accepted transaction, in order.
    pub fn events(&self) -> Vec<Value> {
        self.transactions()
            .into_iter()
            .flat_map(|(_, body)| body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `count` requests have arrived, up to `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        crate::common::wait_until(timeout, || async { self.requests().len() >= count }).await
    }
}

impl Drop for FakeAppservice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = AppserviceRequest {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    state.requests.lock().expect("requests").push(request.clone());

    // The spec's answers to a missing or wrong hs_token.
    let expected = format!("Bearer {}", state.hs_token);
    match request.authorization.as_deref() {
        None => return error(401, "M_UNAUTHORIZED", "no token"),
        Some(given) if given != expected => return error(403, "M_FORBIDDEN", "wrong hs_token"),
        Some(_) => {}
    }

    let answer = state
        .answers
        .lock()
        .expect("answers")
        .iter()
        .find(|(prefix, _)| request.path.starts_with(prefix.as_str()))
        .map(|(_, answer)| answer.clone());
    match answer {
        Some(Answer::Hang) => std::future::pending().await,
        Some(Answer::Status(status, body)) => {
            let status = StatusCode::from_u16(status).expect("status");
            if status.is_success() {
                accept(&state, &request);
            }
            (status, Json(body)).into_response()
        }
        None if request.path.starts_with("/_matrix/app/v1/transactions/")
            || request.path == "/_matrix/app/v1/ping" =>
        {
            accept(&state, &request);
            Json(json!({})).into_response()
        }
        None => error(404, "M_NOT_FOUND", "the fake knows nothing of this"),
    }
}

/// Records an accepted transaction once per id, as a service that dedupes does.
fn accept(state: &FakeState, request: &AppserviceRequest) {
    if let Some(txn_id) = request.txn_id()
        && state.seen.lock().expect("seen").insert(txn_id.to_owned())
    {
        state.accepted.lock().expect("accepted").push((txn_id.to_owned(), request.body.clone()));
    }
}

fn error(status: u16, errcode: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (status, Json(json!({"errcode": errcode, "error": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::{FrontMode, TcpFront};

    fn put_transaction(
        client: &reqwest::Client,
        base: &str,
        txn: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        client
            .put(format!("{base}/_matrix/app/v1/transactions/{txn}"))
            .bearer_auth(token)
            .json(&json!({"events": [{"event_id": format!("$e{txn}")}]}))
    }

    #[tokio::test]
    async fn the_fake_records_dedupes_checks_the_token_and_fails_on_demand() {
        let fake = FakeAppservice::start("hs-secret").await;
        let client = crate::common::client();
        let base = fake.url();
        let status = |response: reqwest::Response| response.status().as_u16();

        let sent = put_transaction(&client, &base, "1", "hs-secret").send().await.expect("send");
        assert_eq!(status(sent), 200);
        let again = put_transaction(&client, &base, "1", "hs-secret").send().await.expect("send");
        assert_eq!(status(again), 200, "a repeated id is answered");
        assert_eq!(fake.transactions().len(), 1, "and accepted once");
        assert_eq!(fake.events()[0]["event_id"], "$e1");

        let wrong = put_transaction(&client, &base, "2", "other").send().await.expect("send");
        assert_eq!(status(wrong), 403);
        let none = client.post(format!("{base}/_matrix/app/v1/ping")).send().await.expect("send");
        assert_eq!(status(none), 401);

        fake.answer("/_matrix/app/v1/transactions/", Answer::Status(500, json!({})));
        let failed = put_transaction(&client, &base, "3", "hs-secret").send().await.expect("send");
        assert_eq!(status(failed), 500);
        fake.answer("/_matrix/app/v1/transactions/", Answer::Hang);
        let hung = put_transaction(&client, &base, "4", "hs-secret")
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(hung.expect_err("hangs").is_timeout());
        fake.reset_answers();
        let users = client
            .get(format!("{base}/_matrix/app/v1/users/@x:test.local"))
            .bearer_auth("hs-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(status(users), 404);

        assert_eq!(fake.transactions().len(), 1);
        assert!(fake.wait_for_requests(7, Duration::from_secs(5)).await);
        let requests = fake.requests();
        assert_eq!(requests.len(), 7);
        assert_eq!(requests[0].method, Method::PUT);
        assert_eq!(requests[0].query, None);
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer hs-secret"));
        assert_eq!(requests[0].txn_id(), Some("1"));
        assert_eq!(requests[6].path, "/_matrix/app/v1/users/@x:test.local");
    }

    #[tokio::test]
    async fn the_front_forwards_refuses_hangs_and_drops_answers() {
        let fake = FakeAppservice::start("hs-secret").await;
        let front = TcpFront::forwarding_to(fake.address).await;
        // No pooling: each request meets the front's current mode on a new connection.
        tuwunel::net::outbound::install_tls_provider();
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
        let base = front.url();

        let forwarded = put_transaction(&client, &base, "1", "hs-secret").send().await;
        assert_eq!(forwarded.expect("forwarded").status().as_u16(), 200);

        front.set(FrontMode::Nowhere);
        let refused = put_transaction(&client, &base, "2", "hs-secret").send().await;
        assert!(refused.is_err(), "a front forwarding nowhere answers nothing");

        front.set(FrontMode::Hang);
        let hung = put_transaction(&client, &base, "3", "hs-secret")
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(hung.expect_err("hangs").is_timeout());

        front.set(FrontMode::DropResponses(fake.address));
        let lost = put_transaction(&client, &base, "4", "hs-secret").send().await;
        assert!(lost.is_err(), "the answer is lost");
        assert!(
            fake.transactions().iter().any(|(txn, _)| txn == "4"),
            "but the service handled the request"
        );

        // A backend that moved: the same front address reaches it again.
        let moved = FakeAppservice::start("hs-secret").await;
        front.forward_to(moved.address);
        let again = put_transaction(&client, &base, "5", "hs-secret").send().await;
        assert_eq!(again.expect("forwarded").status().as_u16(), 200);
        assert_eq!(moved.transactions().len(), 1);
        assert_eq!(fake.requests().len(), 2, "the hung and refused requests never arrived");
        assert!(front.connections.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    }
}
