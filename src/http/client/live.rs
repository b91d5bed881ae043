//! Live streams clients write to: typing notifications, read receipts and markers,
//! to-device messages and presence.

use std::{sync::Arc, time::Duration};

use ruma::{
    UserId,
    api::client::{
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        to_device::send_event_to_device,
    },
    events::receipt::ReceiptThread,
    presence::PresenceState,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value as JsonValue, json};

use super::require_self;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{UserMessage, to_device::Delivery},
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits,
    rooms::actor::RoomMessage,
    storage::{
        Direction,
        codec::{Json, Prefix},
        ephemeral::{PRESENCE_TABLE, ToDeviceRecord},
        users::DEVICES_TABLE,
    },
};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a typing notice lasts when the client names no timeout (before the configured
/// bounds apply).
const DEFAULT_TYPING_TIMEOUT_MS: u64 = 30_000;

/// `PUT /rooms/{roomId}/typing/{userId}` as the spec has it: `timeout` may be left out even
/// when `typing` is true (ruma's own type insists on it), and then the server's default applies.
/// Paths, method and authentication are ruma's; only the body is read differently.
mod create_typing_event {
    use ruma::api::client::typing::create_typing_event::v3 as upstream;
    use ruma::{
        OwnedRoomId, OwnedUserId,
        api::{IncomingRequest, Metadata},
    };
    use serde::Deserialize;

    pub(super) struct Request {
        pub room_id: OwnedRoomId,
        pub user_id: OwnedUserId,
        pub typing: bool,
        /// Milliseconds.
        pub timeout: Option<u64>,
    }

    #[derive(Deserialize)]
    struct Body {
        typing: bool,
        #[serde(default)]
        timeout: Option<u64>,
    }

    pub(super) type Response = upstream::Response;

    impl Metadata for Request {
        const METHOD: axum::http::Method = <upstream::Request as Metadata>::METHOD;
        const RATE_LIMITED: bool = <upstream::Request as Metadata>::RATE_LIMITED;
        type Authentication = <upstream::Request as Metadata>::Authentication;
        type PathBuilder = <upstream::Request as Metadata>::PathBuilder;
        const PATH_BUILDER: Self::PathBuilder = <upstream::Request as Metadata>::PATH_BUILDER;
    }

    impl IncomingRequest for Request {
        type EndpointError = <upstream::Request as IncomingRequest>::EndpointError;
        type OutgoingResponse = Response;

        fn try_from_http_request_inner(
            request: axum::http::Request<&[u8]>,
            path_args: &[&str],
        ) -> Result<Self, ruma::api::error::DeserializationError> {
            let [room_id, user_id] = path_args else {
                return Err(ruma::api::error::DeserializationError::Header(
                    ruma::api::error::HeaderDeserializationError::MissingHeader("path".to_owned()),
                ));
            };
            let body: Body = serde_json::from_slice(request.body())?;
            Ok(Self {
                room_id: OwnedRoomId::try_from(*room_id)?,
                user_id: OwnedUserId::try_from(*user_id)?,
                typing: body.typing,
                timeout: body.timeout,
            })
        }
    }
}

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, typing);
    let router = route(router, receipt);
    let router = route(router, read_markers);
    let router = route(router, send_to_device);
    let router = route(router, get_status);
    route(router, set_status)
}

fn not_in_room() -> Error {
    Error::forbidden("You are not a member of this room.")
}

async fn typing(
    services: Arc<Services>,
    request: Ruma<create_typing_event::Request>,
) -> Result<create_typing_event::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "send typing notifications")?;
    crate::rooms::room(&services.storage, &body.room_id)?.ok_or_else(not_in_room)?;
    let timeout = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(DEFAULT_TYPING_TIMEOUT_MS)));
    let user = sender.user_id.clone();
    services
        .rooms
        .actors
        .call(&body.room_id, |reply| RoomMessage::Typing { user, timeout, reply }, CALL_TIMEOUT)
        .await??;
    Ok(create_typing_event::Response::new())
}

fn thread_key(thread: &ReceiptThread) -> Option<String> {
    match thread {
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(root) => Some(root.to_string()),
        _ => None,
    }
}

/// Records a receipt through the room's actor.
async fn record_receipt(
    services: &Services,
    user: &UserId,
    room_id: &ruma::RoomId,
    kind: &str,
    event_id: ruma::OwnedEventId,
    thread: Option<String>,
) -> Result<()> {
    crate::rooms::room(&services.storage, room_id)?.ok_or_else(not_in_room)?;
    let user = user.to_owned();
    let kind = kind.to_owned();
    services
        .rooms
        .actors
        .call(
            &room_id.to_owned(),
            |reply| RoomMessage::Receipt { user, kind, event_id, thread, reply },
            CALL_TIMEOUT,
        )
        .await?
}

/// Sets the `m.fully_read` marker (server-managed room account data).
async fn fully_read(
    services: &Services,
    user: &UserId,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
) -> Result<()> {
    if !crate::rooms::is_joined(services.storage.engine(), room_id, user)? {
        return Err(not_in_room());
    }
    let content = json!({ "event_id": event_id });
    super::account_data::write(services, user, Some(room_id), "m.fully_read".to_owned(), content)
        .await?;
    Ok(())
}

async fn receipt(
    services: Arc<Services>,
    request: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let thread = thread_key(&body.thread);
    match body.receipt_type {
        ReceiptType::FullyRead => {
            if thread.is_some() {
                return Err(Error::invalid_param("m.fully_read cannot be threaded."));
            }
            fully_read(&services, &sender.user_id, &body.room_id, &body.event_id).await?;
        }
        ReceiptType::Read => {
            record_receipt(
                &services,
                &sender.user_id,
                &body.room_id,
                "m.read",
                body.event_id,
                thread,
            )
            .await?
        }
        ReceiptType::ReadPrivate => {
            record_receipt(
                &services,
                &sender.user_id,
                &body.room_id,
                "m.read.private",
                body.event_id,
                thread,
            )
            .await?
        }
        _ => return Err(Error::invalid_param("Unknown receipt type.")),
    }
    Ok(create_receipt::v3::Response::new())
}

async fn read_markers(
    services: Arc<Services>,
    request: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    if let Some(event_id) = &body.fully_read {
        fully_read(&services, &sender.user_id, &body.room_id, event_id).await?;
    }
    if let Some(event_id) = body.read_receipt {
        record_receipt(&services, &sender.user_id, &body.room_id, "m.read", event_id, None).await?;
    }
    if let Some(event_id) = body.private_read_receipt {
        record_receipt(&services, &sender.user_id, &body.room_id, "m.read.private", event_id, None)
            .await?;
    }
    Ok(set_read_marker::v3::Response::new())
}

async fn send_to_device(
    services: Arc<Services>,
    request: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    validate::max_bytes("An event type", &body.event_type.to_string(), limits::MAX_ID_BYTES)?;
    validate::max_bytes("A transaction ID", body.txn_id.as_str(), limits::MAX_OPAQUE_ID_BYTES)?;
    let transaction =
        (sender.device_id.clone(), format!("{}\u{1f}{}", body.event_type, body.txn_id));
    // Like an event, a message must fit in what servers exchange (Synapse's bound). All are
    // checked before any is delivered, so a refused request delivers nothing.
    let oversized = body
        .messages
        .values()
        .flat_map(|devices| devices.values())
        .any(|content| content.json().get().len() > limits::MAX_PDU_BYTES);
    if oversized {
        return Err(Error::too_large(format!(
            "A to-device message is limited to {} bytes.",
            limits::MAX_PDU_BYTES
        )));
    }
    let kind = body.event_type.to_string();
    let engine = services.storage.engine();
    let mut deliveries = Vec::new();
    // `*` multiplies a message by the recipient's devices: what one request queues is bounded
    // in messages and in bytes (by what the request itself may carry), or one small request
    // could store gigabytes.
    let most_bytes = services.config.max_request_size.as_usize();
    let mut queued_bytes = 0_usize;
    let mut queue = |deliveries: &mut Vec<_>, delivery: Delivery, size: usize| {
        queued_bytes = queued_bytes.saturating_add(size);
        if deliveries.len() >= limits::MAX_TO_DEVICE_DELIVERIES || queued_bytes > most_bytes {
            return Err(Error::too_large(format!(
                "One request may queue at most {} to-device messages and {most_bytes} bytes \
                 (with `*` counted once per device); send them in several requests.",
                limits::MAX_TO_DEVICE_DELIVERIES
            )));
        }
        deliveries.push(delivery);
        Ok(())
    };
    let mut remote = RemoteMessages::default();
    for (user, devices) in body.messages {
        if user.server_name() != services.config.server_name {
            if services.federation.policy.allows(user.server_name()) {
                for (target, content) in devices {
                    let content: JsonValue =
                        serde_json::from_str(content.json().get()).map_err(|error| {
                            Error::bad_json(format!("Invalid message content: {error}"))
                        })?;
                    remote.add(&user, &target, content);
                }
            }
            continue;
        }
        for (target, content) in devices {
            let size = content.json().get().len();
            let content: JsonValue = serde_json::from_str(content.json().get())
                .map_err(|error| Error::bad_json(format!("Invalid message content: {error}")))?;
            let record =
                ToDeviceRecord { sender: sender.user_id.clone(), kind: kind.clone(), content };
            match target {
                // A device that does not exist gets nothing: queued, its messages would stay
                // forever (and reach a later device that takes its ID).
                DeviceIdOrAllDevices::DeviceId(device) => {
                    if DEVICES_TABLE.contains(engine, &(user.clone(), device.clone()))? {
                        queue(&mut deliveries, (user.clone(), device, record), size)?;
                    }
                }
                DeviceIdOrAllDevices::AllDevices => {
                    for ((_, device), _) in DEVICES_TABLE.collect(
                        engine,
                        &Prefix::of(&user),
                        Direction::Forward,
                        usize::MAX,
                    )? {
                        queue(&mut deliveries, (user.clone(), device, record.clone()), size)?;
                    }
                }
            }
        }
    }
    let remote = remote.into_edus(&sender.user_id, &kind);
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::SendToDevice {
            transaction,
            deliveries,
            remote,
            reply,
        })
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}

/// Most messages in one `m.direct_to_device` EDU we send; more for one server go in several
/// (each well within what a receiver takes from one EDU).
const MESSAGES_PER_EDU: usize = 1000;

/// The `messages` of one `m.direct_to_device` EDU: user -> device (or `*`) -> content.
type EduMessages = std::collections::BTreeMap<String, serde_json::Map<String, JsonValue>>;

/// Messages for other servers' users, grouped by server.
#[derive(Default)]
struct RemoteMessages {
    servers: std::collections::BTreeMap<ruma::OwnedServerName, Vec<EduMessages>>,
}

impl RemoteMessages {
    fn add(&mut self, user: &UserId, target: &DeviceIdOrAllDevices, content: JsonValue) {
        let chunks = self.servers.entry(user.server_name().to_owned()).or_default();
        let count: usize =
            chunks.last().map_or(0, |chunk| chunk.values().map(|devices| devices.len()).sum());
        if chunks.is_empty() || count >= MESSAGES_PER_EDU {
            chunks.push(std::collections::BTreeMap::new());
        }
        if let Some(chunk) = chunks.last_mut() {
            chunk.entry(user.to_string()).or_default().insert(target.to_string(), content);
        }
    }

    /// One `m.direct_to_device` content per chunk, each with a `message_id` of its own.
    fn into_edus(self, sender: &UserId, kind: &str) -> Vec<(ruma::OwnedServerName, JsonValue)> {
        use rand::Rng;
        let mut edus = Vec::new();
        for (server, chunks) in self.servers {
            for messages in chunks {
                let message_id: String = rand::thread_rng()
                    .sample_iter(rand::distributions::Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect();
                edus.push((
                    server.clone(),
                    json!({
                        "sender": sender,
                        "type": kind,
                        "message_id": message_id,
                        "messages": messages,
                    }),
                ));
            }
        }
        edus
    }
}

fn presence_name(state: &PresenceState) -> Result<&'static str> {
    match state {
        PresenceState::Online => Ok("online"),
        PresenceState::Unavailable => Ok("unavailable"),
        PresenceState::Offline => Ok("offline"),
        _ => Err(Error::invalid_param("presence must be online, unavailable or offline.")),
    }
}

async fn set_status(
    services: Arc<Services>,
    request: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "set presence")?;
    let state = presence_name(&body.presence)?;
    if let Some(message) = &body.status_msg {
        validate::max_chars("A status message", message, limits::MAX_STATUS_MSG_CHARS)?;
    }
    services.presence.set(&sender.user_id, state, Some(body.status_msg)).await?;
    Ok(set_presence::v3::Response::new())
}

async fn get_status(
    services: Arc<Services>,
    request: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let sender = request.sender()?.clone();
    let target = request.body.user_id;
    if services.accounts.record(&target)?.is_none() {
        return Err(Error::not_found("No such user."));
    }
    if target != sender.user_id && !share_a_room(&services, &sender.user_id, &target)? {
        return Err(Error::forbidden("You do not share a room with this user."));
    }
    let record = PRESENCE_TABLE.get(services.storage.engine(), &target)?.map(|Json(record)| record);
    let Some(record) = record else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    };
    let state = match record.state.as_str() {
        "online" => PresenceState::Online,
        "unavailable" => PresenceState::Unavailable,
        _ => PresenceState::Offline,
    };
    let mut response = get_presence::v3::Response::new(state);
    response.status_msg = record.status_msg;
    let last_active = services.presence.last_active_ms(&target, record.last_active_ms);
    response.last_active_ago =
        Some(Duration::from_millis(services.time.now_ms().saturating_sub(last_active)));
    response.currently_active = Some(record.state == "online");
    Ok(response)
}

fn share_a_room(services: &Services, user: &UserId, other: &UserId) -> Result<bool> {
    let mine = crate::rooms::joined_rooms(services.storage.engine(), user)?;
    let theirs: std::collections::HashSet<_> =
        crate::rooms::joined_rooms(services.storage.engine(), other)?.into_iter().collect();
    Ok(mine.iter().any(|room| theirs.contains(room)))
}
