//! The catalogue of column families: every table the server stores, what it maps, and how
//! RocksDB is tuned for it. This list is the only place a table is declared; opening the
//! database, metrics and backups all iterate it.

/// How a table is read, which decides its RocksDB tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mostly point lookups of whole keys: bloom filters, small blocks.
    Point,
    /// Mostly ordered prefix scans (timelines, per-room indexes): larger blocks, no filter
    /// checks on scans.
    Scan,
    /// A handful of small records read at startup (server metadata).
    Tiny,
}

/// A declared table.
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    /// The column family name; never renamed once released (a rename is a migration).
    pub name: &'static str,
    /// What the table maps, for operators reading `admin` output and for contributors.
    pub maps: &'static str,
    pub access: Access,
    /// Share of the block cache this table may use, relative to the others.
    pub cache_weight: u32,
}

/// Index of a table in [`TABLES`]; batches refer to tables by id, not by RocksDB handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableId(pub(crate) u16);

impl TableId {
    pub fn def(self) -> &'static TableDef {
        &TABLES[usize::from(self.0)]
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }
}

macro_rules! catalogue {
    ($($id:ident = $name:literal, $access:ident, $weight:literal, $maps:literal;)*) => {
        /// Every table, in id order.
        pub static TABLES: &[TableDef] = &[
            $(TableDef { name: $name, maps: $maps, access: Access::$access, cache_weight: $weight },)*
        ];

        catalogue!(@ids 0u16, $($id)*);
    };
    (@ids $n:expr, $id:ident $($rest:ident)*) => {
        pub const $id: TableId = TableId($n);
        catalogue!(@ids $n + 1u16, $($rest)*);
    };
    (@ids $n:expr,) => {};
}

catalogue! {
    META = "meta", Tiny, 1,
        "server metadata: schema version, stream and short-id counters, signing keys";
    SHORTID_BY_KEY = "shortid_by_key", Point, 8,
        "(namespace, interned bytes) -> short id";
    KEY_BY_SHORTID = "key_by_shortid", Point, 8,
        "(namespace, short id) -> interned bytes";
    USERS = "users", Point, 4,
        "user id -> account record (password hash, guest, admin, deactivated)";
    DEVICES = "devices", Scan, 4,
        "(user id, device id) -> device record (display name, current token hashes)";
    DEVICE_LAST_SEEN = "device_last_seen", Point, 2,
        "(user id, device id) -> last seen ip and time, flushed from memory";
    ACCESS_TOKENS = "access_tokens", Point, 8,
        "sha-256 of an access token -> its user, device and expiry";
    REFRESH_TOKENS = "refresh_tokens", Point, 2,
        "sha-256 of a refresh token -> its user, device and paired access token";
    REGISTRATION_TOKENS = "registration_tokens", Tiny, 1,
        "admin-issued registration token -> allowed and completed uses, expiry";
    PROFILES = "profiles", Scan, 4,
        "(user id, field) -> profile field value (displayname, avatar_url, custom fields)";
    ACCOUNT_DATA = "account_data", Scan, 4,
        "(user id, room id or empty, type) -> stream position and content";
    ACCOUNT_DATA_STREAM = "account_data_stream", Scan, 2,
        "(user id, stream position) -> (room id or empty, type) of the change";
    FILTERS = "filters", Point, 1,
        "(user id, filter id) -> filter definition";
    ROOMS = "rooms", Point, 2,
        "room id -> room record (short id, version, creator)";
    ROOM_HEADS = "room_heads", Point, 2,
        "short room id -> current state snapshot, forward extremities, depth";
    PDUS = "pdus", Point, 16,
        "short event id -> the event as canonical JSON (redacted once redacted)";
    EVENT_META = "event_meta", Point, 8,
        "short event id -> room, stream position, state snapshots before and after";
    TIMELINE = "timeline", Scan, 8,
        "(short room id, stream position) -> short event id";
    STATE_SNAPSHOTS = "state_snapshots", Point, 8,
        "snapshot id -> parent snapshot and the state entries it changes (or all of them)";
    ROOM_MEMBERS = "room_members", Scan, 4,
        "(short room id, user id) -> current membership and its stream position";
    USER_ROOMS = "user_rooms", Scan, 4,
        "(user id, room id) -> the user's membership, its position, invite/knock state";
    TRANSACTIONS = "transactions", Point, 1,
        "(user id, device id, room id, transaction id) -> event id, for idempotent sends";
    ALIASES = "aliases", Point, 1,
        "room alias -> room id and who created the alias";
    ROOM_ALIASES = "room_aliases", Scan, 1,
        "(room id, alias) -> nothing; the local aliases of a room";
    PUBLISHED_ROOMS = "published_rooms", Scan, 1,
        "room id -> nothing; rooms listed in the public room directory";
    RELATIONS = "relations", Scan, 2,
        "(parent short event id, relation type, child position) -> child short event id";
    THREADS = "threads", Scan, 1,
        "(short room id, latest position) -> thread root short event id";
    ROOM_ACTIVITY = "room_activity", Point, 1,
        "short room id -> positions of the room's newest event and of its newest bump-type event";
    SEARCH_INDEX = "search_index", Scan, 2,
        "(short room id, word, position) -> short event id";
    EVENT_TIMES = "event_times", Scan, 1,
        "(short room id, origin_server_ts, position) -> short event id";
    REPORTS = "reports", Scan, 1,
        "(report time, report id) -> reported room/event, reporter, reason";
    UNREDACTED = "unredacted", Point, 1,
        "short event id -> original event kept after redaction, with redaction time";
    RECEIPTS = "receipts", Scan, 2,
        "(short room id, receipt type, user id, thread id) -> event id, time, stream position";
    RECEIPT_STREAM = "receipt_stream", Scan, 2,
        "(short room id, stream position) -> (user id, receipt type, thread id) of the change";
    TO_DEVICE = "to_device", Scan, 2,
        "(user id, device id, stream position) -> a to-device message waiting for the device";
    TO_DEVICE_TRANSACTIONS = "to_device_transactions", Point, 1,
        "(sender, sender device, transaction id) -> nothing; idempotent sendToDevice";
    PRESENCE = "presence", Point, 2,
        "user id -> presence state, status message, last activity, stream position";
    PRESENCE_STREAM = "presence_stream", Scan, 1,
        "stream position -> user id whose presence changed";
    DEVICE_KEYS = "device_keys", Point, 2,
        "(user id, device id) -> the device's identity keys as uploaded (JSON)";
    ONE_TIME_KEYS = "one_time_keys", Scan, 1,
        "(user id, device id, algorithm, upload position, key id) -> an unclaimed one-time key";
    FALLBACK_KEYS = "fallback_keys", Point, 1,
        "(user id, device id, algorithm) -> the device's fallback key and whether it was used";
    CROSS_SIGNING_KEYS = "cross_signing_keys", Point, 1,
        "(user id, usage: master, self_signing or user_signing) -> the cross-signing key (JSON)";
    KEY_SIGNATURES = "key_signatures", Scan, 1,
        "(target user, target key id, signer user, signer key id) -> a signature uploaded later";
    DEVICE_LIST_STREAM = "device_list_stream", Scan, 1,
        "stream position -> user id whose devices or keys changed";
    DEVICE_LIST_LATEST = "device_list_latest", Point, 1,
        "user id -> the user's latest position on the device list stream";
    BACKUP_VERSIONS = "backup_versions", Point, 1,
        "(user id, version) -> a room key backup version: algorithm, auth data, count, etag";
    BACKUP_KEYS = "backup_keys", Scan, 1,
        "(user id, version, room id, session id) -> a backed-up room key (JSON)";
    UNREAD_EVENTS = "unread_events", Scan, 1,
        "(user id, room short id, stream position) -> an unread event that notified the user";
    UNREAD_COUNTS = "unread_counts", Scan, 2,
        "(user id, room short id, thread root or empty) -> unread notification and highlight counts";
    NOTIFICATIONS = "notifications", Scan, 1,
        "(user id, stream position) -> a notification: room, event, actions, time";
    PUSHERS = "pushers", Scan, 1,
        "(user id, app id, pushkey) -> a pusher as the client set it";
    PUSHER_PROGRESS = "pusher_progress", Point, 1,
        "(user id, app id, pushkey) -> the last notification position delivered to the gateway";
    PUSHKEYS = "pushkeys", Scan, 1,
        "(app id, pushkey, user id) -> nothing; finds every user with a given pushkey";
    MEDIA = "media", Point, 2,
        "(server name, media id) -> content type, file name, size, sha-256, owner, or a pending upload";
    MEDIA_THUMBNAILS = "media_thumbnails", Scan, 2,
        "(server name, media id, size and method) -> a cached thumbnail's type, size, dimensions";
    MEDIA_PENDING = "media_pending", Scan, 1,
        "(owner, media id) -> expiry of a media id created but not uploaded to yet";
    MEDIA_BY_OWNER = "media_by_owner", Scan, 1,
        "(owner, server name, media id) -> nothing; the media each user uploaded";
    MEDIA_USAGE = "media_usage", Point, 1,
        "owner -> bytes and files of the media they uploaded, kept with every upload and deletion";
    URL_PREVIEWS = "url_previews", Point, 1,
        "url -> cached OpenGraph preview and when it was fetched";
    SERVER_SIGNING_KEYS = "server_signing_keys", Point, 1,
        "server name -> its verify keys (current and old, with validity) and its latest key document";
    OPENID_TOKENS = "openid_tokens", Point, 1,
        "sha-256 of an OpenID token -> the user it identifies and its expiry";
    OPENID_TOKENS_BY_USER = "openid_tokens_by_user", Scan, 1,
        "(user id, sha-256 of an OpenID token) -> its expiry; the user's tokens, for cleanup";
    FEDERATION_OUTBOX = "federation_outbox", Scan, 1,
        "stream position -> an event or EDU a commit handed to federation, until fanned out to servers";
    DESTINATION_QUEUE = "destination_queue", Scan, 2,
        "(server name, stream position) -> a PDU or EDU waiting to be sent to that server";
    DESTINATION_TRANSACTIONS = "destination_transactions", Point, 1,
        "server name -> the transaction in flight to it: its id and the queue entries it carries";
    INBOUND_TRANSACTIONS = "inbound_transactions", Point, 1,
        "(origin server, transaction id) -> when it arrived and the answer it got";
    REMOTE_DEVICE_LISTS = "remote_device_lists", Point, 1,
        "user id of another server -> its devices and cross-signing keys as last synchronised";
    FEDERATION_DISABLED_ROOMS = "federation_disabled_rooms", Point, 1,
        "room id -> nothing; rooms an admin disabled for federation";
    BACKWARD_EXTREMITIES = "backward_extremities", Scan, 1,
        "(short room id, event id) -> depth hint; events referenced as prev_events but not held";
    AUTH_CHAINS = "auth_chains", Point, 2,
        "short event id -> the short ids of its whole auth chain, sorted; computed once";
    BACKFILL_TIMELINE = "backfill_timeline", Scan, 1,
        "(short room id, backfill seq growing towards older events) -> short event id";
    PENDING_REDACTIONS = "pending_redactions", Scan, 1,
        "(target event id, redaction short event id) -> nothing; redactions not yet applied";
    INBOUND_PDUS = "inbound_pdus", Scan, 1,
        "(short room id, arrival id) -> a PDU acknowledged to its sender but not yet processed";
    APPSERVICES = "appservices", Tiny, 1,
        "appservice id -> its registration as registered in the admin room (YAML as given)";
}
