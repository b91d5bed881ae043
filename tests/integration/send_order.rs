//! The order a sender sees its own message in: the answer to `PUT /send` is written before
//! the event goes out in a sync of the sender's devices. matrix-js-sdk matches the synced
//! event to its pending send by transaction id and breaks when the sync wins (a thread
//! reply's send never settles and the message queue stalls).
//!
//! The race needs a busy sync: another member talks all the time, so the sender's sync
//! loop answers and asks again constantly, as a real client's does in a lively room. The
//! requests go over raw sockets so the test can look at the moment a sync answer arrives:
//! the answer of every send whose event it carries must already be readable in that send's
//! socket then (on loopback, written bytes are readable at once).

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    common::{TestServer, User, wait_until},
    rooms::create_room,
    sync::sync,
};

/// Sends raced against the syncs; the issue saw the sync win 2 to 9 times in 30.
const ROUNDS: usize = 60;
/// Longest the whole race may take.
const RACE_TIMEOUT: Duration = Duration::from_secs(60);

fn request_bytes(method: &str, path: &str, token: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
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

/// A send in flight: its socket (non-blocking, peeked without consuming) and whether its
/// answer has arrived.
struct InFlight {
    txn: String,
    socket: Arc<TcpStream>,
    answered: Arc<AtomicBool>,
}

impl InFlight {
    fn answer_is_in(&self) -> bool {
        let mut probe = [0_u8; 1];
        self.answered.load(Ordering::SeqCst) || self.socket.peek(&mut probe).is_ok_and(|n| n > 0)
    }
}

/// One sync request over its own connection. When the answer starts to arrive, notes which
/// in-flight sends were answered by then.
async fn sync_once(
    address: SocketAddr,
    user: &User,
    since: &str,
    in_flight: &Mutex<Vec<InFlight>>,
) -> (Value, Vec<(String, bool)>) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let path = format!("/_matrix/client/v3/sync?timeout=5000&since={since}");
    stream.write_all(&request_bytes("GET", &path, &user.token, None)).await.expect("write");
    // Data has arrived (readiness alone can be a false positive).
    let mut probe = [0_u8; 1];
    let arrived = stream.peek(&mut probe).await.expect("peek");
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
    address: SocketAddr,
    user: &User,
    room: &str,
    txn: &str,
    in_flight: &Mutex<Vec<InFlight>>,
) {
    let socket = TcpStream::connect(address).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let peeker = Arc::new(socket.try_clone().expect("clone"));
    let answered = Arc::new(AtomicBool::new(false));
    in_flight.lock().expect("lock").push(InFlight {
        txn: txn.to_owned(),
        socket: Arc::clone(&peeker),
        answered: Arc::clone(&answered),
    });
    let mut stream = tokio::net::TcpStream::from_std(socket).expect("tokio socket");
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let body = json!({"msgtype": "m.text", "body": txn});
    stream.write_all(&request_bytes("PUT", &path, &user.token, Some(&body))).await.expect("send");
    let mut probe = [0_u8; 1];
    loop {
        stream.readable().await.expect("readable");
        if peeker.peek(&mut probe).is_ok_and(|n| n > 0) {
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
    let mut server = TestServer::start().await;
    let address = server.server().addresses()[0];
    let sender = server.register("sender", "sender-password").await;
    let talker = server.register("talker", "talker-password").await;
    let room = create_room(&server, &sender, json!({"preset": "public_chat"})).await;
    let (status, _) =
        server.post_as(&talker, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let since =
        sync(&server, &sender, None, "").await["next_batch"].as_str().expect("token").to_owned();
    let in_flight = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let saw_last = Arc::new(AtomicBool::new(false));
    let last = format!("race-{}", ROUNDS - 1);
    let deadline = Instant::now() + RACE_TIMEOUT;

    // The other member keeps the room busy.
    let talk = tokio::spawn({
        let (client, url, token, done) = (
            server.client.clone(),
            server.url(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/")),
            talker.token.clone(),
            Arc::clone(&done),
        );
        async move {
            let mut count = 0_u64;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                count += 1;
                let response = client
                    .put(format!("{url}talk-{count}"))
                    .bearer_auth(&token)
                    .json(&json!({"msgtype": "m.text", "body": "chatter"}))
                    .send()
                    .await
                    .expect("talk");
                assert_eq!(response.status().as_u16(), 200);
            }
        }
    });
    // The sender's sync loop checks every answer it gets.
    let syncing = tokio::spawn({
        let (sender, room, in_flight, done, saw_last, last) = (
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
                let (body, answered) = sync_once(address, &sender, &since, &in_flight).await;
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
        send_once(address, &sender, &room, &format!("race-{round}"), &in_flight).await;
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
    server.stop().await;
}
