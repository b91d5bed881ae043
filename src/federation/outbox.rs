//! The federation outbox: how the rest of the server hands events and EDUs to other servers.
//!
//! A producer (a room actor committing an event, a user actor queueing a to-device message
//! or changing a device, the presence actor) adds an outbox row to the batch of the commit
//! that caused it, keyed by one of that commit's stream positions: what was acknowledged is
//! durably on its way, and the producer does one write whatever the number of servers. The
//! fan-out (`sender::fanout`) turns each row into entries of the servers' queues once it is
//! committed. Producers only ever talk to storage; nothing here calls federation by name.

use ruma::{OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    Config,
    storage::{
        Batch,
        codec::Json,
        federation::{OUTBOX_TABLE, OutboxItem, Recipients},
    },
};

/// What producers need to know: whether anything goes out at all, and which streams.
#[derive(Debug, Clone)]
pub struct Outbox {
    server_name: OwnedServerName,
    enabled: bool,
    presence: bool,
    typing: bool,
}

impl Outbox {
    pub fn from_config(config: &Config) -> Self {
        Self {
            server_name: config.server_name.clone(),
            enabled: config.allow_federation,
            presence: config.allow_federation && config.allow_outgoing_presence,
            typing: config.allow_federation && config.allow_outgoing_typing,
        }
    }

    /// An outbox that hands nothing on (for tools and tests that run no federation).
    pub fn disabled(server_name: OwnedServerName) -> Self {
        Self { server_name, enabled: false, presence: false, typing: false }
    }

    /// Whether anything is handed to other servers.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether presence changes go out (`allow_outgoing_presence`).
    pub fn presence(&self) -> bool {
        self.presence
    }

    /// Whether typing notifications go out (`allow_outgoing_typing`).
    pub fn typing(&self) -> bool {
        self.typing
    }

    /// Whether `server` is another server than this one.
    pub fn is_remote(&self, server: &ServerName) -> bool {
        server != self.server_name
    }

    /// Adds `item` at `position` (one of the stream positions of the commit `batch` goes
    /// into) to `batch`.
    pub fn put(&self, batch: &mut Batch, position: u64, item: &OutboxItem) {
        if self.enabled {
            OUTBOX_TABLE.put(batch, &position, &Json(item.clone()));
        }
    }
}

/// A room event for the other servers of its room.
pub fn pdu(room: &RoomId, short_event: u64) -> OutboxItem {
    OutboxItem::Pdu { room: room.to_string(), event: short_event, relay_except: None }
}

/// Another server's room event (`origin`'s) that this server relays to the other servers of
/// its room.
pub fn relay(room: &RoomId, short_event: u64, origin: &ServerName) -> OutboxItem {
    OutboxItem::Pdu {
        room: room.to_string(),
        event: short_event,
        relay_except: Some(origin.to_string()),
    }
}

/// The servers of `room` changed by another server's membership event (which is not sent).
pub fn members_changed(room: &RoomId) -> OutboxItem {
    OutboxItem::MembersChanged { room: room.to_string() }
}

/// An EDU for `to`.
pub fn edu(to: Recipients, edu_type: &str, content: JsonValue) -> OutboxItem {
    OutboxItem::Edu { to, edu: json!({ "edu_type": edu_type, "content": content }) }
}

/// `m.typing` for the servers of `room`.
pub fn typing(room: &RoomId, user: &UserId, typing: bool) -> OutboxItem {
    edu(
        Recipients::Room { room: room.to_string() },
        "m.typing",
        json!({ "room_id": room, "user_id": user, "typing": typing }),
    )
}

/// `m.receipt` (a public read receipt) for the servers of `room`.
pub fn receipt(
    room: &RoomId,
    user: &UserId,
    event_id: &ruma::EventId,
    ts: u64,
    thread: Option<&str>,
) -> OutboxItem {
    let mut data = json!({ "ts": ts });
    if let Some(thread) = thread.filter(|thread| !thread.is_empty()) {
        data["thread_id"] = json!(thread);
    }
    edu(
        Recipients::Room { room: room.to_string() },
        "m.receipt",
        json!({ room.as_str(): { "m.read": { user.as_str(): {
            "event_ids": [event_id],
            "data": data,
        } } } }),
    )
}

/// `m.presence` for the servers sharing a room with `user`.
pub fn presence(
    user: &UserId,
    state: &str,
    status_msg: Option<&str>,
    last_active_ago: u64,
) -> OutboxItem {
    let mut update = json!({
        "user_id": user,
        "presence": state,
        "last_active_ago": last_active_ago,
        "currently_active": state == "online",
    });
    if let Some(status_msg) = status_msg {
        update["status_msg"] = json!(status_msg);
    }
    edu(Recipients::User { user: user.to_string() }, "m.presence", json!({ "push": [update] }))
}

/// A change of one of `user`'s devices, made into an `m.device_list_update` (with the
/// device's keys as they are then) when it is fanned out.
pub fn device_list_update(
    user: &UserId,
    device: &str,
    stream_id: u64,
    prev_id: Vec<u64>,
) -> OutboxItem {
    OutboxItem::DeviceListUpdate {
        user: user.to_string(),
        device: device.to_owned(),
        stream_id,
        prev_id,
    }
}

/// A change of `user`'s cross-signing keys, made into an `m.signing_key_update` when it is
/// fanned out.
pub fn signing_key_update(user: &UserId) -> OutboxItem {
    OutboxItem::SigningKeyUpdate { user: user.to_string() }
}
