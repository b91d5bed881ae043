//! Micro-benchmarks of the send path's hot spots: storage key codecs, the request body check,
//! PDU hashing, signing and verification, the auth checks an event goes through, state
//! snapshot reads, the room activity row each commit writes, and handing a commit to its
//! listeners.
//!
//! `cargo bench --bench hot_paths [filter]` prints the median time per operation over
//! repeated batches. A small timing loop instead of a benchmark framework keeps the build
//! light on a 2-core machine; the numbers are medians of at least 20 batches, so one noisy
//! batch does not move them.

use std::{
    collections::HashMap,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomVersionId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
};
use tuwunel::{
    federation::SigningKey,
    rooms::{
        builder::{self, Position, Template},
        commits::{CommitListener, CommitListeners, CommittedEvent, Pending, RoomCommit, done},
        pdu::Pdu,
        state::{self, StateMap},
        state_res::ResEvent,
    },
    storage::{
        Batch, EngineOptions, Storage,
        codec::{Key, Value},
    },
    sync::hub::SyncHub,
};

/// Time spent measuring each benchmark (after a short warm-up).
const MEASURE: Duration = Duration::from_millis(1500);
const MIN_BATCHES: usize = 20;

/// Runs `operation` in batches sized to take about a millisecond each and prints the median
/// time per call.
fn bench<T>(filter: Option<&str>, name: &str, mut operation: impl FnMut() -> T) {
    if filter.is_some_and(|filter| !name.contains(filter)) {
        return;
    }
    let started = Instant::now();
    let mut batch = 1_u64;
    while started.elapsed() < Duration::from_millis(100) {
        let begin = Instant::now();
        for _ in 0..batch {
            black_box(operation());
        }
        if begin.elapsed() < Duration::from_millis(1) {
            batch = batch.saturating_mul(2);
        }
    }
    let mut per_call = Vec::new();
    let measuring = Instant::now();
    while per_call.len() < MIN_BATCHES || measuring.elapsed() < MEASURE {
        let begin = Instant::now();
        for _ in 0..batch {
            black_box(operation());
        }
        per_call.push(begin.elapsed().as_nanos() as f64 / batch as f64);
    }
    per_call.sort_by(f64::total_cmp);
    let median = per_call[per_call.len() / 2];
    let (value, unit) = if median >= 1_000_000.0 {
        (median / 1_000_000.0, "ms")
    } else if median >= 1_000.0 {
        (median / 1_000.0, "µs")
    } else {
        (median, "ns")
    };
    println!("{name:<44} {value:>10.2} {unit}/op   ({} batches of {batch})", per_call.len());
}

fn object(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => object,
        _ => panic!("benchmark content must be a JSON object"),
    }
}

/// A small version-12 room: create, the creator's join, power levels, join rules, and a
/// message ready to be checked.
struct Room {
    rules: RoomVersionRules,
    by_id: HashMap<OwnedEventId, ResEvent>,
    by_state: HashMap<(String, String), ResEvent>,
    message: Pdu,
}

fn build_room(key: &SigningKey, server: &ruma::ServerName, sender: &OwnedUserId) -> Room {
    let rules = RoomVersionId::V12.rules().expect("version 12 is supported");
    let mut by_id = HashMap::new();
    let mut by_state = HashMap::new();
    let mut prev: Vec<OwnedEventId> = Vec::new();
    let mut room_id = None;
    let mut depth = 1;
    let mut add = |template: Template, auth: Vec<OwnedEventId>, room: &mut Option<_>| {
        let position = Position {
            room_id: room.as_deref(),
            prev_events: &prev,
            auth_events: auth,
            depth,
            reference_hash: None,
        };
        let pdu = builder::build(
            template,
            position,
            &rules,
            key,
            server,
            MilliSecondsSinceUnixEpoch::now(),
        )
        .expect("event builds");
        *room = Some(pdu.room_id.clone());
        prev = vec![pdu.event_id.clone()];
        depth += 1;
        let event = ResEvent::in_state(Arc::new(pdu));
        if let Some(state_key) = &event.pdu.state_key {
            by_state.insert((event.pdu.kind.to_string(), state_key.clone()), event.clone());
        }
        by_id.insert(event.pdu.event_id.clone(), event.clone());
        event.pdu.event_id.clone()
    };
    add(
        Template::state(
            TimelineEventType::RoomCreate,
            "",
            sender,
            object(serde_json::json!({"room_version": "12"})),
        ),
        Vec::new(),
        &mut room_id,
    );
    let member = add(
        Template::state(
            TimelineEventType::RoomMember,
            sender.as_str(),
            sender,
            object(serde_json::json!({"membership": "join"})),
        ),
        Vec::new(),
        &mut room_id,
    );
    let power = add(
        Template::state(
            TimelineEventType::RoomPowerLevels,
            "",
            sender,
            object(serde_json::json!({"users": {}, "events_default": 0, "state_default": 50})),
        ),
        vec![member.clone()],
        &mut room_id,
    );
    add(
        Template::state(
            TimelineEventType::RoomJoinRules,
            "",
            sender,
            object(serde_json::json!({"join_rule": "public"})),
        ),
        vec![member.clone(), power.clone()],
        &mut room_id,
    );
    let room = room_id.expect("the create event defines the room");
    let message = builder::build(
        Template::message(
            TimelineEventType::RoomMessage,
            sender,
            object(serde_json::json!({"msgtype": "m.text", "body": "hello, benchmark"})),
        ),
        Position {
            room_id: Some(&room),
            prev_events: &prev,
            auth_events: vec![member, power],
            depth,
            reference_hash: None,
        },
        &rules,
        key,
        server,
        MilliSecondsSinceUnixEpoch::now(),
    )
    .expect("message builds");
    Room { rules, by_id, by_state, message }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` filters by name.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let filter = filter.as_deref();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("database");
    let server = ruma::server_name!("bench.local");
    let key = runtime
        .block_on(SigningKey::load_or_generate(&storage, server.to_owned()))
        .expect("signing key");
    let sender: OwnedUserId = "@alice:bench.local".try_into().expect("user id");

    // Storage key codecs.
    let room_key = ("!AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg".to_owned(), 1_234_567_u64);
    let encoded = room_key.encode();
    bench(filter, "codec: encode (room id, position)", || room_key.encode());
    bench(filter, "codec: decode (room id, position)", || {
        <(String, u64)>::decode(&encoded).expect("decodes")
    });
    let triple =
        ("@alice:bench.local".to_owned(), "org.example.app".to_owned(), "pushkey".to_owned());
    let encoded_triple = triple.encode();
    bench(filter, "codec: encode (user, app, pushkey)", || triple.encode());
    bench(filter, "codec: decode (user, app, pushkey)", || {
        <(String, String, String)>::decode(&encoded_triple).expect("decodes")
    });

    // Request bodies: the depth and repeated-key check every body passes before ruma parses
    // it, against a plain parse of the same bytes, for a message and a 1 MB body of many
    // small objects (a large to-device batch or key upload).
    let message = br#"{"msgtype":"m.text","body":"hello, benchmark","m.mentions":{}}"#.to_vec();
    let devices: serde_json::Map<String, serde_json::Value> = (0..4_000)
        .map(|n| {
            let content = serde_json::json!({
                "algorithm": "m.olm.v1.curve25519-aes-sha2",
                "sender_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
                "ciphertext": { format!("key{n}"): { "type": 0, "body": "x".repeat(120) } },
            });
            (format!("DEVICE{n}"), content)
        })
        .collect();
    let large =
        serde_json::to_vec(&serde_json::json!({ "messages": { "@bob:bench.local": devices } }))
            .expect("serialize");
    bench(filter, "body: check message", || tuwunel::limits::check_json(&message));
    bench(filter, "body: parse message (serde_json::Value)", || {
        serde_json::from_slice::<serde_json::Value>(&message).expect("parses")
    });
    bench(filter, &format!("body: check {} KB to-device batch", large.len() / 1000), || {
        tuwunel::limits::check_json(&large)
    });
    bench(
        filter,
        &format!("body: parse {} KB to-device batch (serde_json::Value)", large.len() / 1000),
        || serde_json::from_slice::<serde_json::Value>(&large).expect("parses"),
    );

    // PDUs: build (content hash + signature + reference hash), verify, parse.
    let room = build_room(&key, server, &sender);
    let template = Template::message(
        TimelineEventType::RoomMessage,
        &sender,
        object(serde_json::json!({"msgtype": "m.text", "body": "hello, benchmark"})),
    );
    let prev = room.message.prev_events.clone();
    bench(filter, "pdu: build (hash, sign, event id)", || {
        builder::build(
            template.clone(),
            Position {
                room_id: Some(&room.message.room_id),
                prev_events: &prev,
                auth_events: room.message.auth_events.clone(),
                depth: room.message.depth,
                reference_hash: None,
            },
            &room.rules,
            &key,
            server,
            MilliSecondsSinceUnixEpoch::now(),
        )
        .expect("builds")
    });
    let federation = room.message.federation_json(&RoomVersionId::V12).expect("stored form parses");
    bench(filter, "pdu: reference hash", || {
        ruma::signatures::reference_hash(&federation, &room.rules).expect("hashes")
    });
    let mut keys = ruma::signatures::PublicKeyMap::new();
    keys.insert(server.to_string(), [(key.key_id().to_string(), key.public_key())].into());
    bench(filter, "pdu: verify signature and hash", || {
        ruma::signatures::verify_event(&keys, &federation, &room.rules).expect("verifies")
    });
    let stored = room.message.to_bytes();
    bench(filter, "pdu: parse stored event", || Pdu::from_bytes(&stored).expect("parses"));

    // Auth checks for a message against the room's state.
    let message_event = ResEvent { pdu: Arc::new(room.message.clone()), rejected: false };
    let fetch_event = |id: &ruma::EventId| room.by_id.get(id).cloned();
    let fetch_state = |kind: &StateEventType, key: &str| {
        room.by_state.get(&(kind.to_string(), key.to_owned())).cloned()
    };
    ruma::state_res::check_state_independent_auth_rules(
        &room.rules.authorization,
        &message_event,
        fetch_event,
    )
    .expect("the benchmark message passes the auth rules");
    bench(filter, "auth: state-independent rules (message)", || {
        ruma::state_res::check_state_independent_auth_rules(
            &room.rules.authorization,
            &message_event,
            fetch_event,
        )
    });
    bench(filter, "auth: state-dependent rules (message)", || {
        ruma::state_res::check_state_dependent_auth_rules(
            &room.rules.authorization,
            &message_event,
            fetch_state,
        )
    });

    // State snapshots: a full snapshot of 1,000 entries and a full chain of deltas on it.
    let mut full = StateMap::new();
    for short_key in 0..1_000_u64 {
        full.insert(short_key, 1_000_000 + short_key);
    }
    let mut batch = Batch::new();
    let (base, mut chain) = state::write(&storage, &mut batch, None, &full, &[]);
    let mut tip = base;
    for step in 0..(state::FULL_EVERY - 1) {
        let change = (u64::from(step) * 7 % 1_000, 2_000_000 + u64::from(step));
        full.insert(change.0, change.1);
        (tip, chain) = state::write(&storage, &mut batch, Some((tip, chain)), &full, &[change]);
    }
    runtime.block_on(storage.writer().commit(batch)).expect("snapshots commit");
    bench(filter, "state: load full snapshot (1,000 keys)", || {
        state::load(&storage, base).expect("loads")
    });
    bench(filter, "state: load through 63 deltas", || state::load(&storage, tip).expect("loads"));
    bench(filter, "state: lookup one key through 63 deltas", || {
        state::lookup(&storage, tip, 999).expect("looks up")
    });
    let snapshot = tuwunel::storage::rooms::Snapshot { parent: Some(7), entries: vec![(1, 2); 64] };
    let encoded_snapshot = snapshot.encode_value();
    bench(filter, "codec: decode 64-entry snapshot delta", || {
        tuwunel::storage::rooms::Snapshot::decode_value(&encoded_snapshot).expect("decodes")
    });

    // The room activity row each commit writes (sliding sync's list order), and its read.
    let message_kind = TimelineEventType::RoomMessage;
    bench(filter, "activity: stamp and write a one-message commit", || {
        let stamp = tuwunel::rooms::activity::Stamp::new(7, std::iter::once(&message_kind), 3);
        let mut batch = Batch::new();
        stamp.write(&mut batch, &(1_000..1_001));
        batch
    });
    let mut batch = Batch::new();
    tuwunel::rooms::activity::Stamp::new(7, std::iter::once(&message_kind), 3)
        .write(&mut batch, &(1_000..1_001));
    runtime.block_on(storage.writer().commit(batch)).expect("activity commit");
    bench(filter, "activity: cached read", || {
        tuwunel::rooms::activity::current(&storage, 7).expect("reads")
    });

    // After each commit: handing it to the listeners (the SyncHub, then two that have
    // nothing to do for it, as the pushers and the admin command hook for a plain message).
    let listeners = CommitListeners::default();
    listeners.subscribe(Arc::new(SyncHub::default()));
    let admin_room: OwnedRoomId = "!admin:bench.local".try_into().expect("room id");
    listeners.subscribe(Arc::new(Elsewhere(admin_room.clone())));
    listeners.subscribe(Arc::new(Elsewhere(admin_room)));
    let commit = RoomCommit {
        room_id: room.message.room_id.clone(),
        events: vec![CommittedEvent { pdu: Arc::new(room.message.clone()), position: 1 }],
        members: Vec::new(),
        notified: Vec::new(),
    };
    bench(filter, "commits: hand a message to 3 listeners", || {
        let mut pending = std::pin::pin!(listeners.notify(&commit));
        pending
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    });

    runtime.block_on(storage.close());
}

/// A commit listener that acts on one other room only.
struct Elsewhere(OwnedRoomId);

impl CommitListener for Elsewhere {
    fn committed<'a>(&'a self, commit: &'a RoomCommit) -> Pending<'a> {
        if commit.room_id != self.0 {
            return done();
        }
        Box::pin(async {})
    }
}
