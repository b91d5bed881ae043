//! The order a sender sees its own message in: the answer to `PUT /send` is written before
//! the event goes out in a sync of the sender's devices. matrix-js-sdk matches the synced
//! event to its pending send by transaction id and breaks when the sync wins (a thread
//! reply's send never settles and the message queue stalls).
//!
//! The race needs a busy sync: another member talks all the time, so the sender's sync
//! loop answers and asks again constantly, as a real client's does in a lively room. The
//! requests go over raw sockets so the test can look at the moment a sync answer arrives:
//! the answer of every send whose event it carries must already be readable in that send's
//! socket then. The server listens on a UNIX socket for this: a write there is in the
//! peer's receive queue when the call returns, whereas loopback TCP may hand it over later
//! (the kernel defers packet delivery when the machine is busy), and two TCP connections
//! can then see the server's writes in another order than it made them.

use std::{
    mem::MaybeUninit,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{User, start_on_unix_socket, user_from, wait_until};

/// Sends raced against the syncs; the issue saw the sync win 2 to 9 times in 30.
const ROUNDS: usize = 60;
/// Longest the whole race may take.
const RACE_TIMEOUT: Duration = Duration::from_secs(60);

fn request_bytes(method: &str, path: &str, token: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let authorization =
        if token.is_empty() { String::new() } else { format!("authorization: Bearer {token}\r\n") };
    format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\n{authorization}\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status and JSON body of a complete HTTP/1.1 response with a content length.
fn parse_response(bytes: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })?;
    if body.len() < length {
        return None;
    }
    let json = serde_json::from_str(body.get(..length)?).ok()?;
    Some((status, json))
}

/// Whether bytes are waiting in `socket` (non-blocking), without consuming them.
fn has_data(socket: &UnixStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    SockRef::from(socket).peek(&mut probe).is_ok_and(|n| n > 0)
}

/// One request over its own connection to `socket`, answered in full (`token` empty: none).
async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    stream.write_all(&request_bytes(method, path, token, body)).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    parse_response(&response).expect("a complete response")
}

async fn register(socket: &Path, username: &str) -> User {
    let body =
        json!({"username": username, "password": "a-password", "auth": {"type": "m.login.dummy"}});
    let (status, body) = call(socket, "POST", "/_matrix/client/v3/register", "", Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    user_from(&body)
}

/// A send in flight: its socket (non-blocking, peeked without consuming) and whether its
/// answer has arrived.
struct InFlight {
    txn: String,
    socket: Arc<UnixStream>,
    answered: Arc<AtomicBool>,
}

impl InFlight {
    fn answer_is_in(&self) -> bool {
        self.answered.load(Ordering::SeqCst) || has_data(&self.socket)
    }
}

/// One sync request over its own connection. When the answer starts to arrive, notes which
/// in-flight sends were answered by then.
async fn sync_once(
    socket: &Path,
    user: &User,
    since: &str,
    in_flight: &Mutex<Vec<InFlight>>,
) -> (Value, Vec<(String, bool)>) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let path = format!("/_matrix/client/v3/sync?timeout=5000&since={since}");
    stream.write_all(&request_bytes("GET", &path, &user.token, None)).await.expect("write");
    // Data has arrived (readiness alone can be a false positive).
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            stream.readable().await.expect("readable");
            let ready = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut probe = [MaybeUninit::<u8>::uninit(); 1];
                SockRef::from(&stream).peek(&mut probe)
            });
            match ready {
                Ok(n) => break n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("peek: {error}"),
            }
        }
    })
    .await
    .expect("the sync answered");
    assert!(arrived > 0, "the sync connection closed without an answer");
    let answered: Vec<(String, bool)> = in_flight
        .lock()
        .expect("lock")
        .iter()
        .map(|send| (send.txn.clone(), send.answer_is_in()))
        .collect();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("the sync answered")
        .expect("read");
    let (status, body) = parse_response(&response).expect("a complete sync response");
    assert_eq!(status, 200, "{body}");
    (body, answered)
}

/// Sends one message over a raw socket registered in `in_flight` before it goes out.
async fn send_once(
    socket_path: &Path,
    user: &User,
    room: &str,
    txn: &str,
    in_flight: &Mutex<Vec<InFlight>>,
) {
    let socket = UnixStream::connect(socket_path).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let peeker = Arc::new(socket.try_clone().expect("clone"));
    let answered = Arc::new(AtomicBool::new(false));
    in_flight.lock().expect("lock").push(InFlight {
        txn: txn.to_owned(),
        socket: Arc::clone(&peeker),
        answered: Arc::clone(&answered),
    });
    let mut stream = tokio::net::UnixStream::from_std(socket).expect("tokio socket");
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let body = json!({"msgtype": "m.text", "body": txn});
    stream.write_all(&request_bytes("PUT", &path, &user.token, Some(&body))).await.expect("send");
    loop {
        stream.readable().await.expect("readable");
        if has_data(&peeker) {
            break;
        }
    }
    answered.store(true, Ordering::SeqCst);
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("the send's answer");
    let (status, sent) = parse_response(&response).expect("a complete send response");
    assert_eq!(status, 200, "{sent}");
}

fn sender_transactions(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["unsigned"]["transaction_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_send_answer_is_out_before_the_senders_syncs_see_the_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("tuwunel.sock");
    let server = start_on_unix_socket(dir.path(), &socket).await;
    let sender = register(&socket, "sender").await;
    let talker = register(&socket, "talker").await;
    let body = json!({"preset": "public_chat"});
    let (status, created) =
        call(&socket, "POST", "/_matrix/client/v3/createRoom", &sender.token, Some(&body)).await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().expect("room_id").to_owned();
    let join = format!("/_matrix/client/v3/join/{room}");
    let (status, joined) = call(&socket, "POST", &join, &talker.token, Some(&json!({}))).await;
    assert_eq!(status, 200, "{joined}");
    let (status, first) =
        call(&socket, "GET", "/_matrix/client/v3/sync", &sender.token, None).await;
    assert_eq!(status, 200, "{first}");
    let since = first["next_batch"].as_str().expect("token").to_owned();
    let in_flight = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let saw_last = Arc::new(AtomicBool::new(false));
    let last = format!("race-{}", ROUNDS - 1);
    let deadline = Instant::now() + RACE_TIMEOUT;

    // The other member keeps the room busy.
    let talk = tokio::spawn({
        let (socket, url, token, done) = (
            socket.clone(),
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/"),
            talker.token.clone(),
            Arc::clone(&done),
        );
        async move {
            let mut count = 0_u64;
            let body = json!({"msgtype": "m.text", "body": "chatter"});
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                count += 1;
                let path = format!("{url}talk-{count}");
                let (status, answer) = call(&socket, "PUT", &path, &token, Some(&body)).await;
                assert_eq!(status, 200, "{answer}");
            }
        }
    });
    // The sender's sync loop checks every answer it gets.
    let syncing = tokio::spawn({
        let (socket, sender, room, in_flight, done, saw_last, last) = (
            socket.clone(),
            sender.clone(),
            room.clone(),
            Arc::clone(&in_flight),
            Arc::clone(&done),
            Arc::clone(&saw_last),
            last.clone(),
        );
        async move {
            let mut since = since;
            let mut overtaken = Vec::new();
            let mut seen = 0_usize;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                let (body, answered) = sync_once(&socket, &sender, &since, &in_flight).await;
                for txn in sender_transactions(&body, &room) {
                    seen += 1;
                    if txn == last {
                        saw_last.store(true, Ordering::SeqCst);
                    }
                    if answered.iter().any(|(sent, answered)| *sent == txn && !answered) {
                        overtaken.push(txn);
                    }
                }
                since = body["next_batch"].as_str().expect("next_batch").to_owned();
            }
            (overtaken, seen)
        }
    });
    for round in 0..ROUNDS {
        send_once(&socket, &sender, &room, &format!("race-{round}"), &in_flight).await;
    }
    // Let the sync loop catch the last send, then stop everything.
    let caught_up =
        wait_until(Duration::from_secs(20), || async { saw_last.load(Ordering::SeqCst) }).await;
    done.store(true, Ordering::SeqCst);
    talk.await.expect("talker");
    let (overtaken, seen) = syncing.await.expect("sync loop");
    assert!(caught_up, "the sync loop never saw {last}");
    assert!(
        overtaken.is_empty(),
        "syncs that carried the event before its send was answered: {overtaken:?}"
    );
    assert!(seen >= ROUNDS / 2, "the sync loop saw only {seen} of {ROUNDS} sends");
    server.stop().await.expect("clean stop");
}
