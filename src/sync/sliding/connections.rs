//! The sliding sync connections of every device, in memory: what each has sent (its
//! [`ConnState`]), the `pos` values it handed out, and the bounds that keep them small.
//!
//! A connection is one `(user, device, conn_id)`. Its `pos` is `<epoch>.<seq>`: the epoch is
//! random per connection, so a `pos` of another connection, of an evicted or expired one, or
//! of one from before a restart never matches, and the client is told `M_UNKNOWN_POS` and
//! starts again with a small window. Nothing is lost by that: to-device positions are durable.
//!
//! A response's [`Delta`] stays pending until the client presents its `pos`. Presenting the
//! confirmed `pos` again is a retry (or a cancel-and-resend with another body): the pending
//! deltas are dropped, so the retry sees what the first attempt saw. Each request bumps the
//! connection's generation; an older request still waiting sees it, stops, and records
//! nothing.
//!
//! Bounds: [`MAX_CONNECTIONS_PER_DEVICE`] per device and `sliding_sync_max_connections` in all
//! (the least recently used one goes), and connections idle for
//! `sliding_sync_connection_timeout_s` expire (on the server's injectable clock): a `pos` of
//! one is refused at once, and the minute's housekeeping frees its memory.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use ruma::{OwnedDeviceId, OwnedUserId};
use tokio::sync::watch;

use super::state::{ConnState, Delta};
use crate::{Error, Result, time::Time};

/// At most this many connections per device (Element X keeps three).
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 10;
/// At most this many responses per connection wait for the client to confirm them.
const MAX_PENDING: usize = 2;
/// How many retired epochs are remembered, only to say why a `pos` is unknown.
const RETIRED_REMEMBERED: usize = 1024;

/// One device's connection, as the client names it (`""` without a `conn_id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub user: OwnedUserId,
    pub device: OwnedDeviceId,
    pub conn_id: String,
}

/// The bounds of the registry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections of all devices together.
    pub max_connections: usize,
    /// Idle time after which a connection is gone.
    pub idle_timeout: Duration,
}

/// Why a connection went away, for the `M_UNKNOWN_POS` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retired {
    Expired,
    Evicted,
}

struct Connection {
    epoch: u64,
    /// The `seq` the client confirmed last, and the state it confirmed.
    acked: u64,
    base: ConnState,
    /// Responses not yet confirmed, oldest first.
    pending: VecDeque<(u64, Delta)>,
    next_seq: u64,
    generation: watch::Sender<u64>,
    last_used: Instant,
}

impl Connection {
    fn new(epoch: u64, now: Instant) -> Self {
        Self {
            epoch,
            acked: 0,
            base: ConnState::default(),
            pending: VecDeque::new(),
            next_seq: 1,
            generation: watch::channel(0).0,
            last_used: now,
        }
    }

    fn pos(&self, seq: u64) -> String {
        format!("{}.{seq}", self.epoch)
    }

    fn tracked_rooms(&self) -> usize {
        self.base.rooms.len()
    }
}

#[derive(Default)]
struct Registry {
    /// Connections by device, then by `conn_id`.
    devices: HashMap<(OwnedUserId, OwnedDeviceId), HashMap<String, Connection>>,
    count: usize,
    tracked_rooms: usize,
    retired: VecDeque<(u64, Retired)>,
}

impl Registry {
    fn retire(&mut self, connection: &Connection, why: Retired) {
        self.count -= 1;
        self.tracked_rooms -= connection.tracked_rooms();
        if self.retired.len() >= RETIRED_REMEMBERED {
            self.retired.pop_front();
        }
        self.retired.push_back((connection.epoch, why));
    }

    fn publish(&self) {
        metrics::gauge!("tuwunel_sliding_sync_connections").set(self.count as f64);
        metrics::gauge!("tuwunel_sliding_sync_tracked_rooms").set(self.tracked_rooms as f64);
    }

    /// Frees the least recently used connection of all.
    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .devices
            .iter()
            .flat_map(|(device, connections)| {
                connections.iter().map(move |(conn_id, connection)| {
                    (connection.last_used, device.clone(), conn_id.clone())
                })
            })
            .min_by_key(|(last_used, ..)| *last_used);
        if let Some((_, device, conn_id)) = oldest {
            self.remove(&device, &conn_id, Retired::Evicted);
        }
    }

    fn remove(&mut self, device: &(OwnedUserId, OwnedDeviceId), conn_id: &str, why: Retired) {
        let Some(connections) = self.devices.get_mut(device) else { return };
        let Some(connection) = connections.remove(conn_id) else { return };
        if connections.is_empty() {
            self.devices.remove(device);
        }
        self.retire(&connection, why);
    }
}

/// A request's hold on its connection, from [`Connections::begin`].
pub struct Begun {
    /// The state to compute the response against.
    pub state: ConnState,
    /// This request's generation, for [`Connections::finish`].
    pub generation: u64,
    /// Changes when a newer request on the connection begins.
    pub superseded: watch::Receiver<u64>,
}

impl Begun {
    /// Whether a newer request on the same connection has begun.
    pub fn is_superseded(&self) -> bool {
        *self.superseded.borrow() != self.generation
    }
}

/// Every device's sliding sync connections.
pub struct Connections {
    registry: Mutex<Registry>,
    limits: Limits,
    time: Time,
}

impl Connections {
    pub fn new(limits: Limits, time: Time) -> Self {
        Self { registry: Mutex::new(Registry::default()), limits, time }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, connection: &Connection, now: Instant) -> bool {
        now.saturating_duration_since(connection.last_used) >= self.limits.idle_timeout
    }

    /// Starts a request on `key` from `pos`: a new connection without one (replacing any of
    /// that name), else the state the client confirmed by presenting it. `400 M_UNKNOWN_POS`
    /// when `pos` is not one this connection can continue from.
    pub fn begin(&self, key: &ConnKey, pos: Option<&str>) -> Result<Begun> {
        let now = self.time.now();
        let device = (key.user.clone(), key.device.clone());
        let mut registry = self.lock();
        let Some(pos) = pos else {
            registry.remove(&device, &key.conn_id, Retired::Evicted);
            // Make room: first on the device, then in all.
            while registry
                .devices
                .get(&device)
                .is_some_and(|connections| connections.len() >= MAX_CONNECTIONS_PER_DEVICE)
            {
                let oldest = registry.devices.get(&device).and_then(|connections| {
                    connections
                        .iter()
                        .min_by_key(|(_, connection)| connection.last_used)
                        .map(|(conn_id, _)| conn_id.clone())
                });
                let Some(oldest) = oldest else { break };
                registry.remove(&device, &oldest, Retired::Evicted);
            }
            while registry.count >= self.limits.max_connections.max(1) {
                registry.evict_least_recently_used();
            }
            let connection = Connection::new(rand::random(), now);
            let begun = Begun {
                state: ConnState::default(),
                generation: 0,
                superseded: connection.generation.subscribe(),
            };
            registry.devices.entry(device).or_default().insert(key.conn_id.clone(), connection);
            registry.count += 1;
            registry.publish();
            return Ok(begun);
        };

        let (epoch, seq) = parse_pos(pos).ok_or_else(|| unknown_pos("unknown"))?;
        let expired = registry
            .devices
            .get(&device)
            .and_then(|connections| connections.get(&key.conn_id))
            .is_some_and(|connection| self.expired(connection, now));
        if expired {
            registry.remove(&device, &key.conn_id, Retired::Expired);
            registry.publish();
        }
        let registry = &mut *registry;
        let Some(connection) = registry
            .devices
            .get_mut(&device)
            .and_then(|connections| connections.get_mut(&key.conn_id))
            .filter(|connection| connection.epoch == epoch)
        else {
            let why = registry.retired.iter().find(|(retired, _)| *retired == epoch);
            return Err(unknown_pos(match why {
                Some((_, Retired::Expired)) => "expired",
                Some((_, Retired::Evicted)) => "evicted",
                None => "unknown",
            }));
        };
        if seq != connection.acked {
            let Some(index) = connection.pending.iter().position(|(pending, _)| *pending == seq)
            else {
                return Err(unknown_pos("unknown"));
            };
            let before = connection.tracked_rooms();
            let (_, delta) = connection.pending.remove(index).unwrap_or_default();
            connection.base.fold(&delta);
            connection.acked = seq;
            registry.tracked_rooms = registry.tracked_rooms + connection.tracked_rooms() - before;
        }
        // Presenting `acked` retries it; presenting a pending one confirms it. Either way no
        // other response can be confirmed any more.
        connection.pending.clear();
        connection.last_used = now;
        connection.generation.send_modify(|generation| *generation += 1);
        let begun = Begun {
            state: connection.base.clone(),
            generation: *connection.generation.borrow(),
            superseded: connection.generation.subscribe(),
        };
        registry.publish();
        Ok(begun)
    }

    /// Records what a response sent and gives the `pos` that confirms it. A request that was
    /// superseded records nothing, and answers with the `pos` it continued from.
    pub fn finish(&self, key: &ConnKey, begun: &Begun, delta: Delta) -> Result<String> {
        let now = self.time.now();
        let mut registry = self.lock();
        let connection = registry
            .devices
            .get_mut(&(key.user.clone(), key.device.clone()))
            .and_then(|connections| connections.get_mut(&key.conn_id))
            .ok_or_else(|| unknown_pos("evicted"))?;
        if *connection.generation.borrow() != begun.generation {
            return Ok(connection.pos(connection.acked));
        }
        let seq = connection.next_seq;
        connection.next_seq += 1;
        if connection.pending.len() >= MAX_PENDING {
            connection.pending.pop_front();
        }
        connection.pending.push_back((seq, delta));
        connection.last_used = now;
        Ok(connection.pos(seq))
    }

    /// Frees every expired connection (the server's one-minute housekeeping calls it).
    pub fn sweep(&self) {
        let now = self.time.now();
        let mut registry = self.lock();
        let expired: Vec<_> = registry
            .devices
            .iter()
            .flat_map(|(device, connections)| {
                connections
                    .iter()
                    .filter(|(_, connection)| self.expired(connection, now))
                    .map(move |(conn_id, _)| (device.clone(), conn_id.clone()))
            })
            .collect();
        for (device, conn_id) in expired {
            registry.remove(&device, &conn_id, Retired::Expired);
        }
        registry.publish();
    }

    /// The number of connections.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Whether there is no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = pos.split_once('.')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

fn unknown_pos(reason: &'static str) -> Error {
    metrics::counter!("tuwunel_sliding_sync_unknown_pos_total", "reason" => reason).increment(1);
    Error::unknown_pos(
        "This sliding sync position is not known (any more): start again without `pos`.",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::owned_room_id;

    use super::*;
    use crate::{
        sync::sliding::state::{RoomEntry, RoomStatus},
        time::ManualClock,
    };

    const IDLE: Duration = Duration::from_secs(600);

    fn registry(max_connections: usize) -> (Connections, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let limits = Limits { max_connections, idle_timeout: IDLE };
        (Connections::new(limits, clock.time()), clock)
    }

    fn key(user: &str, device: &str, conn_id: &str) -> ConnKey {
        ConnKey {
            user: format!("@{user}:example.org").try_into().expect("as the test set it up"),
            device: device.into(),
            conn_id: conn_id.to_owned(),
        }
    }

    fn delta(since: u64, room: &str) -> Delta {
        Delta {
            since,
            rooms: vec![(
                format!("!{room}:example.org").try_into().expect("as the test set it up"),
                RoomEntry { status: RoomStatus::Live, bump_stamp: since, ..RoomEntry::default() },
            )],
            list_counts: None,
        }
    }

    fn is_unknown_pos<T>(result: Result<T>) -> bool {
        result.err().is_some_and(|error| error.errcode() == "M_UNKNOWN_POS")
    }

    #[test]
    fn a_retry_of_the_confirmed_pos_sees_what_the_first_attempt_saw() {
        let (connections, _clock) = registry(100);
        let key = key("alice", "A", "room-list");
        let first = connections.begin(&key, None).expect("as the test set it up");
        assert!(first.state.is_new());
        let pos1 =
            connections.finish(&key, &first, delta(10, "one")).expect("as the test set it up");

        let second = connections.begin(&key, Some(&pos1)).expect("as the test set it up");
        assert_eq!(second.state.since, 10, "presenting a pending pos folds it");
        let pos2 =
            connections.finish(&key, &second, delta(20, "two")).expect("as the test set it up");

        // The client never got pos2's response: it retries pos1, and sees the state at pos1.
        let retry = connections.begin(&key, Some(&pos1)).expect("as the test set it up");
        assert_eq!(retry.state.since, 10);
        assert!(!retry.state.rooms.contains_key(&owned_room_id!("!two:example.org")));
        // pos2 was dropped with the retry.
        assert!(is_unknown_pos(connections.begin(&key, Some(&pos2))));
    }

    #[test]
    fn confirming_a_pending_pos_drops_the_others_and_older_ones_are_unknown() {
        let (connections, _clock) = registry(100);
        let key = key("alice", "A", "");
        let first = connections.begin(&key, None).expect("as the test set it up");
        let pos1 =
            connections.finish(&key, &first, delta(10, "one")).expect("as the test set it up");
        let second = connections.begin(&key, Some(&pos1)).expect("as the test set it up");
        let pos2 =
            connections.finish(&key, &second, delta(20, "two")).expect("as the test set it up");
        let third = connections.begin(&key, Some(&pos2)).expect("as the test set it up");
        assert_eq!(third.state.since, 20);
        assert_eq!(third.state.rooms.len(), 2);
        assert!(is_unknown_pos(connections.begin(&key, Some(&pos1))), "an older pos");
    }

    #[test]
    fn a_connection_expires_at_its_idle_timeout_not_before() {
        let (connections, clock) = registry(100);
        let key = key("alice", "A", "");
        let first = connections.begin(&key, None).expect("as the test set it up");
        let pos =
            connections.finish(&key, &first, delta(10, "one")).expect("as the test set it up");
        clock.advance(IDLE - Duration::from_secs(1));
        let second = connections.begin(&key, Some(&pos)).expect("as the test set it up");
        let pos =
            connections.finish(&key, &second, delta(11, "one")).expect("as the test set it up");
        clock.advance(IDLE);
        assert!(is_unknown_pos(connections.begin(&key, Some(&pos))));
        assert!(connections.is_empty());
        // A fresh request works.
        assert!(connections.begin(&key, None).expect("as the test set it up").state.is_new());
    }

    #[test]
    fn the_sweep_frees_expired_connections_only() {
        let (connections, clock) = registry(100);
        let old = key("alice", "A", "");
        connections.begin(&old, None).expect("as the test set it up");
        clock.advance(IDLE / 2);
        let young = key("alice", "A", "other");
        connections.begin(&young, None).expect("as the test set it up");
        clock.advance(IDLE / 2);
        connections.sweep();
        assert_eq!(connections.len(), 1);
    }

    #[test]
    fn the_per_device_cap_evicts_the_least_recently_used_connection() {
        let (connections, clock) = registry(1000);
        let mut positions = Vec::new();
        for index in 0..MAX_CONNECTIONS_PER_DEVICE {
            let key = key("alice", "A", &format!("c{index}"));
            let begun = connections.begin(&key, None).expect("as the test set it up");
            positions.push(
                connections.finish(&key, &begun, delta(1, "one")).expect("as the test set it up"),
            );
            clock.advance(Duration::from_secs(1));
        }
        // c0 is used again, so c1 is now the least recently used.
        let c0 = key("alice", "A", "c0");
        let begun = connections.begin(&c0, Some(&positions[0])).expect("as the test set it up");
        positions[0] =
            connections.finish(&c0, &begun, delta(2, "one")).expect("as the test set it up");
        // Another device's connections do not count.
        connections.begin(&key("alice", "B", "c0"), None).expect("as the test set it up");
        connections.begin(&key("alice", "A", "new"), None).expect("as the test set it up");
        assert_eq!(connections.len(), MAX_CONNECTIONS_PER_DEVICE + 1);
        assert!(is_unknown_pos(connections.begin(&key("alice", "A", "c1"), Some(&positions[1]))));
        assert!(connections.begin(&c0, Some(&positions[0])).is_ok());
    }

    #[test]
    fn the_global_cap_evicts_the_least_recently_used_connection() {
        let (connections, clock) = registry(2);
        let first = key("alice", "A", "");
        let begun = connections.begin(&first, None).expect("as the test set it up");
        let pos =
            connections.finish(&first, &begun, delta(1, "one")).expect("as the test set it up");
        clock.advance(Duration::from_secs(1));
        connections.begin(&key("bob", "B", ""), None).expect("as the test set it up");
        connections.begin(&key("carol", "C", ""), None).expect("as the test set it up");
        assert_eq!(connections.len(), 2);
        assert!(is_unknown_pos(connections.begin(&first, Some(&pos))));
    }

    #[test]
    fn garbage_and_other_connections_positions_are_unknown() {
        let (connections, _clock) = registry(100);
        let alice = key("alice", "A", "");
        let begun = connections.begin(&alice, None).expect("as the test set it up");
        let pos =
            connections.finish(&alice, &begun, delta(1, "one")).expect("as the test set it up");
        for garbage in ["", "x", "1", "1.", ".1", "1.2.3", "-1.0", "99999999999999999999.1"] {
            assert!(is_unknown_pos(connections.begin(&alice, Some(garbage))), "{garbage:?}");
        }
        assert!(is_unknown_pos(connections.begin(&key("bob", "A", ""), Some(&pos))));
        assert!(is_unknown_pos(connections.begin(&key("alice", "OTHER", ""), Some(&pos))));
        assert!(is_unknown_pos(connections.begin(&key("alice", "A", "x"), Some(&pos))));
        // A pos of the same name from an earlier connection (or a restart) does not match.
        connections.begin(&alice, None).expect("as the test set it up");
        assert!(is_unknown_pos(connections.begin(&alice, Some(&pos))));
    }

    #[test]
    fn a_superseded_request_records_nothing() {
        let (connections, _clock) = registry(100);
        let key = key("alice", "A", "");
        let first = connections.begin(&key, None).expect("as the test set it up");
        let pos1 =
            connections.finish(&key, &first, delta(10, "one")).expect("as the test set it up");
        let waiting = connections.begin(&key, Some(&pos1)).expect("as the test set it up");
        assert!(!waiting.is_superseded());
        let newer = connections.begin(&key, Some(&pos1)).expect("as the test set it up");
        assert!(waiting.is_superseded());
        assert_eq!(
            connections.finish(&key, &waiting, delta(20, "stale")).expect("as the test set it up"),
            pos1,
            "a superseded request answers the pos it continued from"
        );
        let pos2 =
            connections.finish(&key, &newer, delta(30, "two")).expect("as the test set it up");
        let state = connections.begin(&key, Some(&pos2)).expect("as the test set it up").state;
        assert_eq!(state.since, 30);
        assert!(!state.rooms.contains_key(&owned_room_id!("!stale:example.org")));
    }
}
