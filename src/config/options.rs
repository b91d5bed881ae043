//! Every configuration key: its documentation, type and default.
//!
//! `tuwunel.toml.example` is generated from these declarations (`tuwunel --generate-config`),
//! and a test fails when the committed file differs. Key names follow Tuwunel's, so an
//! operator's existing `tuwunel.toml` keeps its meaning.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, path::PathBuf};

use ruma::{OwnedServerName, OwnedUserId};

use super::{
    section::config_section,
    types::{ByteSize, ListOrOne},
};

config_section! {
    /// The `[global]` table.
    pub struct GlobalConfig {
        /// The server_name is the name of this server. It is used as a suffix for user and
        /// room IDs/aliases, e.g. `@user:example.com`. It cannot be changed once users and
        /// rooms exist. Required whenever a configuration file is used; without any file,
        /// `tuwunel` starts a development server named `localhost`.
        ///
        /// example: "example.com"
        server_name: Option<OwnedServerName> = None,

        /// Directory of the database (RocksDB) and the media it stores. The only path that
        /// must be backed up.
        database_path: PathBuf = PathBuf::from("/var/lib/tuwunel"),

        /// Directory for online backups made with `!admin server backup-database`.
        /// Unset disables backups.
        ///
        /// example: "/var/lib/tuwunel-backups"
        database_backup_path: Option<PathBuf> = None,

        /// How many backups to keep in `database_backup_path`; older ones are deleted after
        /// each new backup.
        database_backups_to_keep: i16 = 1,

        /// Address(es) to listen on: one IP address or a list. Not allowed together with
        /// `unix_socket_path`. With the default, an address family that cannot be bound (for
        /// example IPv6 disabled) is only logged.
        ///
        /// default: ["127.0.0.1", "::1"]
        /// example: ["0.0.0.0", "::"]
        address: Option<ListOrOne<IpAddr>> = None,

        /// Port(s) to listen on: one port or a list, e.g. `[8008, 8448]`.
        port: ListOrOne<u16> = ListOrOne::One(8008),

        /// Listen on this UNIX socket instead of TCP addresses.
        ///
        /// example: "/run/tuwunel/tuwunel.sock"
        unix_socket_path: Option<PathBuf> = None,

        /// Permissions of the UNIX socket, written as octal digits.
        unix_socket_perms: u32 = 660,

        /// Largest request body accepted, in bytes or with a unit ("24 MiB"). Larger bodies
        /// are answered `413 M_TOO_LARGE`. At least 10 MB.
        max_request_size: ByteSize = ByteSize::mib(24),

        /// Requests handled at once across all listeners; more are answered
        /// `429 M_LIMIT_EXCEEDED`. Long-polling /sync requests count, so keep it well above
        /// the number of connected clients.
        max_in_flight_requests: usize = 20_000,

        /// Seconds a client has to send a request's head (request line and headers): from
        /// opening the connection for its first request, and from the first byte of each
        /// later one. Slower connections are closed, so a client sending half a header
        /// cannot hold one open.
        client_header_timeout: u64 = 30,

        /// Seconds a client may pause while sending a request body; a body that stops
        /// arriving for longer is answered `408` and its connection closed.
        client_receive_timeout: u64 = 75,

        /// Seconds a request may take from its head to its response, receiving its body
        /// included; longer ones are answered `408`. Must exceed the longest `/sync` long
        /// poll (`client_sync_timeout_max`) by at least 5 seconds, and allow for the
        /// largest upload (`max_request_size`) over your users' slowest links.
        client_request_timeout: u64 = 240,

        /// Seconds a client may stop accepting a response before its connection is closed.
        client_response_timeout: u64 = 120,

        /// Seconds a keep-alive connection may wait for its next request before the server
        /// closes it. A reverse proxy that keeps connections to tuwunel open between requests
        /// must close idle ones sooner than this (nginx: 60 s, Caddy: 2 minutes by default).
        client_idle_timeout: u64 = 180,

        /// Seconds requests in flight get to finish when the server stops; connections still
        /// busy then are closed.
        client_shutdown_timeout: u64 = 10,

        /// Connections one client address may hold open at once (for IPv6, one /64 network);
        /// more are closed as they arrive. Peers on loopback, such as a reverse proxy on this
        /// host, and the UNIX socket are not limited. 0 removes the limit.
        client_max_connections_per_ip: usize = 128,

        /// Allow new users to register. Registration needs a token (`registration_token`,
        /// `registration_token_file` or one issued by an admin) unless the open-registration
        /// switch below is also set.
        allow_registration: bool = false,

        /// A static token a new user must present to register.
        ///
        /// example: "o&^uCtes4HPf0Vu@F20jQeeWE7"
        registration_token: Option<String> = None,

        /// A file of registration tokens separated by whitespace, re-read when used.
        ///
        /// example: "/etc/tuwunel/.reg_token"
        registration_token_file: Option<PathBuf> = None,

        /// Allow registration without any token. Anyone who can reach the server can then
        /// create accounts: expect spam and abuse.
        yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse: bool = false,

        /// Allow guest accounts (`/register?kind=guest`): no password, limited to the
        /// endpoints the spec opens to guests.
        allow_guest_registration: bool = false,

        /// Regular expressions; a username matching any of them cannot be registered.
        ///
        /// example: ["^admin", "support$"]
        forbidden_usernames: Vec<String> = Vec::new(),

        /// Localpart of the server's own user (`@conduit:<server_name>`), which runs the admin
        /// room. Reserved: nobody can register it. Cannot be changed once the database exists.
        server_user_localpart: String = "conduit".to_owned(),

        /// Lifetime in seconds of access tokens given to clients that support refresh tokens.
        /// Clients that do not (no `refresh_token: true` at login) get tokens that do not
        /// expire.
        access_token_ttl: u64 = 604_800,

        /// Lifetime in seconds of refresh tokens (0: until used or the device is removed).
        refresh_token_ttl: u64 = 0,

        /// Lifetime in milliseconds of `m.login.token` login tokens (`POST /login/get_token`).
        login_token_ttl: u64 = 120_000,

        /// Seconds a User-Interactive Authentication session stays valid.
        uia_session_timeout_s: u64 = 900,

        /// Let user directory searches find every local user, not only those who share a room
        /// with the searcher or sit in public rooms.
        user_directory_search_all_users: bool = false,

        /// Require an access token to read profiles (`GET /profile/...`).
        require_auth_for_profile_requests: bool = false,

        /// Registrations per second allowed from one IP address (token bucket refill rate).
        rc_registration_per_second: f64 = 0.17,

        /// Registrations one IP address may make in a burst.
        rc_registration_burst_count: u32 = 3,

        /// Logins per second allowed from one IP address.
        rc_login_per_second: f64 = 0.003,

        /// Logins one IP address may make in a burst.
        rc_login_burst_count: u32 = 5,

        /// Failed logins (or failed password checks) per second allowed for one account.
        rc_failed_login_per_second: f64 = 0.17,

        /// Failed logins one account may accumulate in a burst.
        rc_failed_login_burst_count: u32 = 3,

        /// Messages per second one user may send.
        rc_message_per_second: f64 = 0.2,

        /// Messages one user may send in a burst.
        rc_message_burst_count: u32 = 10,

        /// Room joins per second one user may make.
        rc_joins_per_second: f64 = 0.1,

        /// Room joins one user may make in a burst.
        rc_joins_burst_count: u32 = 10,

        /// Invites per second one user may send.
        rc_invites_per_second: f64 = 0.3,

        /// Invites one user may send in a burst.
        rc_invites_burst_count: u32 = 10,

        /// Room version of new rooms: "10", "11" or "12".
        default_room_version: ruma::RoomVersionId = ruma::RoomVersionId::V12,

        /// Let ordinary users create rooms (admins always may).
        allow_room_creation: bool = true,

        /// Regular expressions; a room alias whose localpart matches any of them cannot be
        /// created.
        ///
        /// example: ["^admin", "official"]
        forbidden_alias_names: Vec<String> = Vec::new(),

        /// Keep the original of redacted events (for admins and moderation) for
        /// `redaction_retention_seconds` before discarding it.
        save_unredacted_events: bool = true,

        /// Seconds the original of a redacted event is kept when `save_unredacted_events`.
        redaction_retention_seconds: u64 = 5_184_000,

        /// Seconds an entry stays in a user's notification list (`GET /notifications`)
        /// before the hourly housekeeping deletes it; 0 keeps them forever. Unread counts
        /// are not affected.
        notification_retention_seconds: u64 = 2_592_000,

        /// Shortest typing notification, in seconds, whatever the client asks for.
        typing_client_timeout_min_s: u64 = 15,

        /// Longest typing notification, in seconds, whatever the client asks for.
        typing_client_timeout_max_s: u64 = 45,

        /// Shortest long-poll of /sync in milliseconds, whatever the client asks for.
        client_sync_timeout_min: u64 = 5000,

        /// Long-poll of /sync in milliseconds when the client gives no timeout.
        client_sync_timeout_default: u64 = 30_000,

        /// Longest long-poll of /sync in milliseconds, whatever the client asks for.
        client_sync_timeout_max: u64 = 90_000,

        /// Most simplified sliding sync connections (MSC4186, what Element X syncs with)
        /// kept in memory, all users together. Past it the least recently used one is
        /// dropped, and its client starts it again with a small window. Each device keeps at
        /// most 10. Our addition to Tuwunel's keys.
        sliding_sync_max_connections: usize = 10_000,

        /// Seconds a sliding sync connection may stay unused before it is dropped (its
        /// client then starts it again). Our addition to Tuwunel's keys.
        sliding_sync_connection_timeout_s: u64 = 21_600,

        /// Track and share the presence of this server's users.
        allow_local_presence: bool = true,

        /// Accept presence of other servers' users (for users who share a room with one of
        /// this server's).
        allow_incoming_presence: bool = true,

        /// Send this server's presence to the servers that share a room with each user.
        /// Needs `allow_local_presence`.
        allow_outgoing_presence: bool = true,

        /// Accept typing notifications from other servers.
        allow_incoming_typing: bool = true,

        /// Send this server's typing notifications to the other servers in the room.
        allow_outgoing_typing: bool = true,

        /// Seconds a typing notification from another server lasts unless that server ends
        /// it sooner (within `typing_client_timeout_min_s`..`typing_client_timeout_max_s`).
        typing_federation_timeout_s: u64 = 30,

        /// Seconds without activity after which an online user becomes unavailable.
        presence_idle_timeout_s: u64 = 300,

        /// Seconds without activity after which a user becomes offline.
        presence_offline_timeout_s: u64 = 1800,

        /// Federate with other Matrix servers. When false, federation endpoints answer
        /// `403 M_FORBIDDEN` and this server contacts no other server.
        allow_federation: bool = true,

        /// Servers trusted to vouch for other servers' signing keys (notaries), asked through
        /// `/_matrix/key/v2/query` when a server's keys cannot be fetched from it directly
        /// (or first, see below). `[]` trusts no notary.
        trusted_servers: Vec<OwnedServerName> = vec![ruma::server_name!("matrix.org").to_owned()],

        /// Answer other servers' profile lookups (`/_matrix/federation/v1/query/profile`);
        /// when false they get `403 M_FORBIDDEN`.
        allow_inbound_profile_lookup_federation_requests: bool = true,

        /// Share the display names of this server's users' devices with other servers (in
        /// device key and device list answers).
        allow_device_name_federation: bool = false,

        /// Ask `trusted_servers` for a server's signing keys before asking the server itself.
        query_trusted_key_servers_first: bool = false,

        /// Fetch other servers' signing keys only through `trusted_servers`, never directly.
        only_query_trusted_key_servers: bool = false,

        /// Regular expressions matched against a remote server's host name: matching servers
        /// are refused in both directions (their requests get `403 M_FORBIDDEN`; nothing is
        /// sent to them).
        ///
        /// example: ["badserver\\.tld$", "badphrase"]
        forbidden_remote_server_names: Vec<String> = Vec::new(),

        /// Regular expressions matched against a remote server's host name: when the list is
        /// not empty, only matching servers are federated with (and
        /// `forbidden_remote_server_names` still applies to them). Experimental in Tuwunel;
        /// same meaning here.
        ///
        /// example: ["^matrix\\.example\\.org$"]
        allowed_remote_server_names_experimental: Vec<String> = Vec::new(),

        /// Regular expressions matched against a remote server's host name: the published
        /// room directories of matching servers are not fetched for this server's users
        /// (`/publicRooms?server=...` answers `403 M_FORBIDDEN`), and matching servers get
        /// `403 M_FORBIDDEN` when they ask for this server's directory. Federation with them
        /// otherwise goes on.
        ///
        /// example: ["spam\\.example$"]
        forbidden_remote_room_directory_server_names: Vec<String> = Vec::new(),

        /// Let other servers read this server's published room directory
        /// (`/_matrix/federation/v1/publicRooms`). Off by default, as in Tuwunel: other
        /// servers' users then cannot browse your public rooms, though they can still join
        /// them by alias or id.
        allow_public_room_directory_over_federation: bool = false,

        /// Seconds an OpenID token (`POST /user/{userId}/openid/request_token`) stays valid:
        /// how long a third-party service (an integration manager, a widget) may use it to
        /// learn who the user is.
        openid_token_ttl: u64 = 3_600,

        /// TURN servers clients relay voice and video calls through, handed out by
        /// `GET /voip/turnServer` with credentials. Empty: that endpoint answers `{}` and
        /// clients call peer to peer only.
        ///
        /// example: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
        turn_uris: Vec<String> = Vec::new(),

        /// The shared secret of the TURN server (coturn's `static-auth-secret`): each client
        /// gets a username and password that expire after `turn_ttl`, computed by the TURN
        /// REST API formula. Takes precedence over `turn_username` / `turn_password`.
        ///
        /// example: "n0t-a-real-secret"
        turn_secret: Option<String> = None,

        /// A file holding the TURN shared secret (surrounding whitespace ignored), read at
        /// startup; a file that cannot be read stops the server. Used instead of
        /// `turn_secret` when both are set.
        ///
        /// example: "/etc/tuwunel/.turn_secret"
        turn_secret_file: Option<PathBuf> = None,

        /// A static TURN username every client gets, when no shared secret is configured.
        ///
        /// example: "tuwunel"
        turn_username: Option<String> = None,

        /// The password going with `turn_username`.
        ///
        /// example: "n0t-a-real-password"
        turn_password: Option<String> = None,

        /// Seconds the TURN credentials stay valid (and the `ttl` clients are told).
        turn_ttl: u64 = 86_400,

        /// Give TURN credentials to guest accounts too. Off: guests are refused with
        /// `403 M_GUEST_ACCESS_FORBIDDEN`.
        turn_allow_guests: bool = false,

        /// Seconds one request to another server may take in all (connecting, sending,
        /// waiting for and reading the answer).
        federation_timeout: u64 = 300,

        /// Seconds an idle connection to another server is kept open for reuse.
        federation_idle_timeout: u64 = 25,

        /// Milliseconds another server waits at most for the answer to a transaction it
        /// sent: the events not processed by then are kept in the database, answered as
        /// received, and processed after the answer (or at the next start). Our addition to
        /// Tuwunel's keys.
        federation_transaction_deadline_ms: u64 = 20_000,

        /// Largest answer to a `send_join`, in MiB: the whole state of the room being
        /// joined with its auth chain, far beyond `max_request_size` for large rooms. Our
        /// addition to Tuwunel's keys.
        federation_join_max_response_mb: u64 = 256,

        /// Servers asked for a join template (`make_join`) before a join of a room on
        /// other servers gives up.
        max_make_join_attempts_per_join_attempt: usize = 48,

        /// Idle connections kept open per remote server.
        federation_idle_per_host: u16 = 1,

        /// Seconds sending one transaction (the PDUs and EDUs queued for a server) may
        /// take; a transaction that takes longer is retried later.
        sender_timeout: u64 = 180,

        /// Longest wait, in seconds, between two attempts to send to a server that does not
        /// answer: the wait starts at `sender_retry_backoff_min_ms` and doubles with each
        /// failure up to this.
        sender_retry_backoff_limit: u64 = 86_400,

        /// Wait, in milliseconds, before the first retry after a failed transaction; it
        /// doubles with each further failure. Our addition to Tuwunel's keys.
        sender_retry_backoff_min_ms: u64 = 5_000,

        /// Seconds the servers' senders get to finish a transaction when this server stops;
        /// what is not sent by then stays queued for the next start.
        sender_shutdown_timeout: u64 = 5,

        /// At startup, resume sending to every server with something queued (gradually, a
        /// few servers at a time). When false, a server's queue waits until there is
        /// something new for it or it contacts this server.
        startup_netburst: bool = true,

        /// Seconds connecting to a server's `/.well-known/matrix/server` may take.
        well_known_conn_timeout: u64 = 6,

        /// Seconds fetching a server's `/.well-known/matrix/server` may take in all.
        well_known_timeout: u64 = 10,

        /// DNS answers (server discovery's SRV, A and AAAA records) kept in memory.
        dns_cache_entries: u32 = 32_768,

        /// Shortest time in seconds a DNS answer is cached, whatever its TTL says.
        dns_min_ttl: u64 = 10_800,

        /// Shortest time in seconds a "no such name" DNS answer is cached.
        dns_min_ttl_nxdomain: u64 = 259_200,

        /// Attempts per DNS query before giving up.
        dns_attempts: u16 = 10,

        /// Seconds to wait for one DNS answer.
        dns_timeout: u64 = 10,

        /// Retry over TCP when a DNS answer over UDP was truncated.
        dns_tcp_fallback: bool = true,

        /// Ask every nameserver at once and take the first answer, rather than one after
        /// the other.
        query_all_nameservers: bool = true,

        /// Query DNS over TCP only.
        query_over_tcp_only: bool = false,

        /// Which addresses a name is resolved to: 1 IPv4 only, 2 IPv6 only, 3 both,
        /// 4 IPv6 then IPv4, 5 IPv4 then IPv6.
        ip_lookup_strategy: u8 = 5,

        /// Nameservers (`"ip"` or `"ip:port"`) for server discovery instead of those in
        /// /etc/resolv.conf. Our addition to Tuwunel's keys: for split-horizon setups,
        /// private federations and test beds.
        ///
        /// example: ["127.0.0.53:53"]
        dns_nameservers: Vec<String> = Vec::new(),

        /// Serve the deprecated unauthenticated media endpoints (`/_matrix/media/*/download`,
        /// `thumbnail`, `config` and `preview_url`) as well as the authenticated ones under
        /// `/_matrix/client/v1/media/`. Off: those legacy routes answer `404 M_NOT_FOUND`, the
        /// spec's answer for frozen unauthenticated media. Uploads
        /// (`/_matrix/media/v3/upload`, `/_matrix/media/v1/create`) are not legacy; they
        /// always require an access token and are always served.
        allow_legacy_media: bool = false,

        /// When another server does not know the authenticated federation media endpoints
        /// (it answers `404 M_UNRECOGNIZED`), ask its deprecated unauthenticated
        /// `/_matrix/media/v3/download` instead, as the spec allows. Off by default, as in
        /// Tuwunel: servers without authenticated media have mostly frozen the old endpoints
        /// too, so the extra request rarely helps.
        request_legacy_media: bool = false,

        /// How many media IDs one user may hold from `POST /_matrix/media/v1/create` without
        /// having uploaded to them yet; more are refused with `429 M_LIMIT_EXCEEDED`.
        max_pending_media_uploads: usize = 5,

        /// Seconds a media ID from `POST /_matrix/media/v1/create` stays usable for its upload
        /// (the `unused_expires_at` a client is told); afterwards it is gone.
        pending_media_upload_expiration_s: u64 = 86_400,

        /// Bytes of media one local user may have stored at once, in bytes or with a unit
        /// ("2 GiB"). An upload that would go past it is refused with
        /// `403 M_RESOURCE_LIMIT_EXCEEDED` (naming the `well_known` support contact);
        /// deleting media makes room again. Unset: no quota. Our addition to Tuwunel's keys.
        ///
        /// example: "2 GiB"
        media_quota_per_user: Option<ByteSize> = None,

        /// Days media uploaded here is kept after its last download (or its upload, if never
        /// downloaded); the hourly housekeeping deletes older media, file, thumbnails and
        /// all. Downloads are recorded to the day. 0 keeps media forever. Our addition to
        /// Tuwunel's keys.
        media_retention_local_days: u64 = 0,

        /// The same for media of other servers cached here (fetched again if asked for after
        /// it was deleted). 0 keeps it forever. Our addition to Tuwunel's keys.
        media_retention_remote_days: u64 = 0,

        /// Largest picture, in pixels (width times height, as its header declares), that the
        /// thumbnailer decodes. Bigger pictures get `413 M_TOO_LARGE` from the thumbnail
        /// endpoints instead of being decoded, which stops decompression bombs (a small file
        /// declaring a huge canvas). A decode may use about four bytes per pixel.
        media_thumbnail_max_pixels: u64 = 50_000_000,

        /// Most frames an animated thumbnail (`animated=true` on a GIF, animated WebP or APNG)
        /// carries; longer animations are cut short. Frames also share the
        /// `media_thumbnail_max_pixels` budget.
        media_thumbnail_max_frames: usize = 50,

        /// Regular expressions matched against a remote server's host name (without its
        /// port): media of matching servers is never fetched, nor served from the cache of
        /// media fetched before; requests for it answer `404 M_NOT_FOUND`.
        ///
        /// example: ["badserver\\.tld$", "badphrase"]
        prevent_media_downloads_from: Vec<String> = Vec::new(),

        /// IP ranges (CIDR) that outbound requests made on a user's behalf (URL previews,
        /// push gateways, later federation) may never reach. Checked on the addresses a name resolves to
        /// and again on every redirect, so a link cannot make the server call into your own
        /// network. The default covers the ranges IANA's special-purpose registries mark as
        /// not globally reachable (loopback, private, link-local, CGNAT, multicast,
        /// documentation, benchmarking, reserved, unique-local and the IETF protocol
        /// assignments of IPv4 and IPv6), the IPv4-compatible range and the NAT64 prefixes.
        /// An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64,
        /// 6to4) is also checked as that IPv4 address. `[]` allows everything (only for tests
        /// and closed networks).
        ip_range_denylist: Vec<String> = default_ip_range_denylist(),

        /// Push gateway hosts (names or IP addresses, as written in a pusher's URL) that
        /// pushers may reach even when they resolve into `ip_range_denylist`: a gateway the
        /// operator runs on this machine or network. Pushes to any other denied address are
        /// dropped, not retried.
        push_gateway_allowlist: Vec<String> = Vec::new(),

        /// URL previews: hosts whose name contains one of these strings may be previewed
        /// ("*" allows every host). URL previews are off while this and the two lists below
        /// (`url_preview_domain_explicit_allowlist`, `url_preview_url_contains_allowlist`)
        /// are all empty.
        ///
        /// example: ["wikipedia.org"]
        url_preview_domain_contains_allowlist: Vec<String> = Vec::new(),

        /// URL previews: hosts that may be previewed, matched exactly ("*" allows every
        /// host).
        ///
        /// example: ["matrix.org", "www.matrix.org"]
        url_preview_domain_explicit_allowlist: Vec<String> = Vec::new(),

        /// URL previews: hosts that are never previewed, matched exactly; checked before the
        /// allowlists and again on every redirect and image fetch.
        ///
        /// example: ["evil.example"]
        url_preview_domain_explicit_denylist: Vec<String> = Vec::new(),

        /// URL previews: URLs containing one of these strings may be previewed ("*" allows
        /// every URL).
        ///
        /// example: ["https://en.wikipedia.org/wiki/"]
        url_preview_url_contains_allowlist: Vec<String> = Vec::new(),

        /// URL previews: also match the domain allowlists against the root domain of the
        /// host (`en.m.wikipedia.org` is allowed by `wikipedia.org`).
        url_preview_check_root_domain: bool = false,

        /// URL previews: how much of a page is read for its OpenGraph tags, in bytes or with
        /// a unit; the rest is not downloaded.
        url_preview_max_spider_size: ByteSize = ByteSize(786_432),

        /// URL previews: largest image (`og:image`, or a link straight to an image) stored in
        /// the media repository for a preview; bigger ones leave the preview without image.
        url_preview_max_media_size: ByteSize = ByteSize::mib(10),

        /// URL previews: seconds a preview is cached before the page is fetched again.
        url_preview_cache_ttl: u64 = 86_400,

        /// The log filter, in `tracing` EnvFilter syntax, e.g. "info" or
        /// "warn,tuwunel::http=debug". The `RUST_LOG` variable is not read; use this key
        /// (or `TUWUNEL_LOG`).
        log: String = "info".to_owned(),

        /// Text appended (after a space) to the display name of every new user. Empty
        /// disables it.
        new_user_displayname_suffix: String = "💕".to_owned(),

        /// Fail to start, rather than warn, when the configuration holds a key this version
        /// does not know (a typo, usually).
        error_on_unknown_config_opts: bool = false,

        /// Admin commands to run once the server has started, as if typed in the admin room
        /// without the `!admin` prefix; `--execute` appends to this list.
        ///
        /// example: ["server backup-database"]
        admin_execute: Vec<String> = Vec::new(),

        /// Keep starting when an `admin_execute` command fails.
        admin_execute_errors_ignore: bool = false,

        /// Admin commands to run each time the server receives SIGUSR2, e.g. an online backup
        /// triggered from cron with `systemctl kill -s USR2 tuwunel`.
        ///
        /// example: ["server backup-database"]
        admin_signal_execute: Vec<String> = Vec::new(),

        /// Serve Prometheus metrics at `/metrics`.
        metrics_enabled: bool = false,

        /// Serve `/metrics` on this address only (for example a private interface) instead
        /// of on the main listeners.
        ///
        /// example: "127.0.0.1:9090"
        metrics_address: Option<SocketAddr> = None,

        /// Seconds an idle actor (a room, a remote server, a user's presence) stays in memory
        /// before it is passivated; it is rebuilt from the database on its next message.
        actor_idle_timeout_s: u64 = 60,

        /// Messages one actor may have queued before new requests to it are refused with
        /// `429 M_LIMIT_EXCEEDED`.
        actor_mailbox_limit: usize = 1024,

        /// Size of the database's read cache in MiB.
        ///
        /// default: 128 + 64 per CPU core
        db_cache_capacity_mb: Option<f64> = None,

        /// Most memory, in MiB, the database's write buffers (memtables) may hold across all
        /// tables before the oldest is flushed to disk.
        ///
        /// default: 48 + 4 per CPU core
        db_write_buffer_capacity_mb: Option<f64> = None,

        /// Multiplies the bounds of the server's in-memory caches (parsed events, state,
        /// memberships, unread counts, recent timeline entries); 0.5 halves the memory they
        /// may hold. The database's read cache is `db_cache_capacity_mb`.
        cache_capacity_modifier: f64 = 1.0,

        /// Level of RocksDB's own log (LOG files in the database directory): "debug", "info",
        /// "warn", "error", "fatal" or "header".
        rocksdb_log_level: String = "error".to_owned(),

        /// Size at which RocksDB's log file is rotated, in bytes.
        rocksdb_max_log_file_size: usize = 4 << 20,

        /// Seconds after which RocksDB's log file is rotated (0: by size only).
        rocksdb_log_time_to_roll: usize = 0,

        /// Number of old RocksDB log files kept; at least 1.
        rocksdb_max_log_files: usize = 3,

        /// Tune for rotational disks (larger reads, fewer background jobs).
        rocksdb_optimize_for_spinning_disks: bool = false,

        /// Use direct I/O for reads, flushes and compactions. Leave off on filesystems that
        /// do not support O_DIRECT (tmpfs, ZFS, some overlay filesystems).
        rocksdb_direct_io: bool = false,

        /// Background threads for flushes and compactions (0: the number of CPU cores, at
        /// least 2).
        rocksdb_parallelism_threads: usize = 0,

        /// Compression of stored data: "zstd", "lz4" or "none".
        rocksdb_compression_algo: String = "zstd".to_owned(),

        /// Compression level for `rocksdb_compression_algo` (32767: the library default).
        rocksdb_compression_level: i32 = 32767,

        /// Compress the oldest (bottommost) data with zstd.
        rocksdb_bottommost_compression: bool = true,

        /// zstd level for the bottommost data (32767: the library default).
        rocksdb_bottommost_compression_level: i32 = 32767,

        /// How the write-ahead log is replayed after a crash: 0 absolute consistency (refuse
        /// to open on any corruption), 1 tolerate a corrupted tail, 2 point in time (stop at
        /// the first corruption), 3 skip any corrupted record.
        rocksdb_recovery_mode: u8 = 1,

        /// Check every file read for corruption (slower).
        rocksdb_paranoid_file_checks: bool = false,

        /// Run RocksDB's repair on the database before opening it. Only after corruption,
        /// with a backup at hand; turn it off again afterwards.
        rocksdb_repair: bool = false,

        /// Run automatic compactions. Turning this off grows the database without bound.
        rocksdb_compaction: bool = true,

        /// Seconds a request to an application service (a transaction, a ping, a user or
        /// room query) may take before it counts as failed.
        appservice_timeout: u64 = 35,

        /// Seconds an unused connection to an application service is kept open.
        appservice_idle_timeout: u64 = 300,

        /// A directory of registration files (YAML, as bridges generate them for Synapse),
        /// each loaded at startup (`*.yaml`, `*.yml`; other files are ignored). Files added
        /// or removed take effect at the next start. A file that is invalid, or whose id is
        /// also defined in this configuration, stops the start, naming the file.
        ///
        /// example: "/etc/tuwunel/appservices"
        appservice_dir: Option<PathBuf> = None,

        /// Tuwunel's switch to resolve application service URLs without its own resolver.
        /// Accepted for compatibility; application service URLs are always resolved by the
        /// system resolver, and `ip_range_denylist` does not apply to them (only admins
        /// register them, and bridges usually run on loopback or a private network).
        dns_passthru_appservices: bool = false,

        /// Discovery documents served under `/.well-known/matrix/`.
        [section] well_known: WellKnownConfig = WellKnownConfig::default(),

        /// TLS settings.
        [section] tls: TlsConfig = TlsConfig::default(),

        /// Application services (bridges and bots) registered in the configuration, one
        /// table each, named by the service's id. The keys are the fields of the service's
        /// registration file, with its namespaces directly in the table as
        /// `[[global.appservice.<ID>.users]]` (and `aliases`, `rooms`), each with `regex`
        /// and `exclusive`. Services can also be registered from the admin room
        /// (`!admin appservices register`) or `appservice_dir`; a service defined here
        /// cannot be unregistered from the admin room, and wins over an admin-room
        /// registration of the same id. An invalid table stops the start, naming the key;
        /// each service's own user (`sender_localpart`) is created at start. Today no
        /// traffic reaches the services and the admin commands do not exist yet.
        [map] appservice: BTreeMap<String, AppserviceConfig> = BTreeMap::new(),
    }
}

config_section! {
    /// One `[global.appservice.<ID>]` table: an application service's registration.
    pub struct AppserviceConfig {
        /// The service's id; when set, it must equal the table's name.
        ///
        /// default: the table's name
        id: Option<String> = None,

        /// Where the service listens (http or https, a path is allowed). Unset: the service
        /// receives no traffic and only acts as its users.
        ///
        /// example: "http://127.0.0.1:29318"
        url: Option<String> = None,

        /// The secret the service authenticates to this server with. Required.
        as_token: String = String::new(),

        /// The secret this server authenticates to the service with. Required.
        hs_token: String = String::new(),

        /// The localpart of the service's own user (its bot).
        ///
        /// default: the table's name
        sender_localpart: Option<String> = None,

        /// Namespaces of user ids the service acts as and is told about: a list of
        /// `{ exclusive = true, regex = '@irc_.*:example\.com' }`. Regexes match anywhere in
        /// the id (add `^` and `$` to anchor) and ignore case; an exclusive namespace is
        /// refused to everyone else.
        users: Vec<AppserviceNamespace> = Vec::new(),

        /// Namespaces of room aliases, as `users` (case-insensitive too).
        aliases: Vec<AppserviceNamespace> = Vec::new(),

        /// Namespaces of room ids, as `users` but case-sensitive.
        rooms: Vec<AppserviceNamespace> = Vec::new(),

        /// Whether the users the service acts as are rate limited; its own user never is.
        rate_limited: bool = false,

        /// The third-party protocols the service bridges, such as ["irc"].
        protocols: Vec<String> = Vec::new(),

        /// Send typing notifications, receipts and presence in transactions (the
        /// registration file's `receive_ephemeral` or `de.sorunome.msc2409.push_ephemeral`).
        receive_ephemeral: bool = false,

        /// The service manages its users' devices itself (MSC4190; the registration file's
        /// `io.element.msc4190`).
        device_management: bool = false,

        /// Send device-list changes, one-time key counts and to-device messages of the
        /// service's users in transactions, for bridges that encrypt (MSC3202 and MSC4203;
        /// the registration file's `org.matrix.msc3202`).
        msc3202_transaction_extensions: bool = false,
    }
}

/// One namespace entry of a `[global.appservice.<ID>]` table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppserviceNamespace {
    #[serde(default)]
    pub exclusive: bool,
    pub regex: String,
}

/// What `ip_range_denylist` refuses unless the operator says otherwise.
fn default_ip_range_denylist() -> Vec<String> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",
        "::1/128",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "100:0:0:1::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

config_section! {
    /// The `[global.well_known]` table: delegation and support contacts.
    pub struct WellKnownConfig {
        /// The URL clients should use to reach this server's client API, served at
        /// `/.well-known/matrix/client`. Unset: that document answers 404.
        ///
        /// example: "https://matrix.example.com"
        client: Option<String> = None,

        /// The `host:port` other servers should use for federation, served at
        /// `/.well-known/matrix/server`. Unset: that document answers 404.
        ///
        /// example: "matrix.example.com:443"
        server: Option<OwnedServerName> = None,

        /// A web page where users can get help, in `/.well-known/matrix/support`.
        ///
        /// example: "https://example.com/support"
        support_page: Option<String> = None,

        /// The role of the support contact: "m.role.admin" or "m.role.security".
        ///
        /// example: "m.role.admin"
        support_role: Option<String> = None,

        /// An email address of the support contact.
        ///
        /// example: "admin@example.com"
        support_email: Option<String> = None,

        /// A Matrix user ID of the support contact.
        ///
        /// example: "@admin:example.com"
        support_mxid: Option<OwnedUserId> = None,

        /// The URL of a LiveKit JWT service (lk-jwt-service) for MatrixRTC calls (Element
        /// Call): offered first as the transport `{type = "livekit", livekit_service_url =
        /// ...}`, ahead of `rtc_transports`.
        ///
        /// example: "https://livekit-jwt.example.com"
        livekit_url: Option<String> = None,

        /// MatrixRTC transports (MSC4143), in order of preference, each a table with a `type`
        /// and that type's settings. Served to signed-in users at
        /// `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports` and, when `client` is
        /// set, as `org.matrix.msc4143.rtc_foci` in `/.well-known/matrix/client`.
        ///
        /// example: [{ type = "livekit", livekit_service_url = "https://livekit-jwt.example.com" }]
        rtc_transports: Vec<toml::Table> = Vec::new(),
    }
}

impl WellKnownConfig {
    /// Every MatrixRTC transport as a JSON object: `livekit_url` first, then
    /// `rtc_transports` (each checked at startup to have a string `type`).
    pub fn rtc_transports_json(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let livekit = self.livekit_url.iter().map(|url| {
            let mut object = serde_json::Map::new();
            object.insert("type".to_owned(), "livekit".into());
            object.insert("livekit_service_url".to_owned(), url.clone().into());
            object
        });
        let listed =
            self.rtc_transports.iter().filter_map(|table| match serde_json::to_value(table) {
                Ok(serde_json::Value::Object(object)) => Some(object),
                _ => None,
            });
        livekit.chain(listed).collect()
    }
}

config_section! {
    /// The `[global.tls]` table.
    pub struct TlsConfig {
        /// A PEM file of certificate authorities trusted for connections to other servers
        /// (federation, `.well-known` lookups) in addition to the system's roots, which
        /// `SSL_CERT_FILE` and `SSL_CERT_DIR` replace as for other Linux tools. Our addition
        /// to Tuwunel's keys: for private federations and test beds with their own CA.
        /// Certificates are always verified.
        ///
        /// example: "/etc/tuwunel/private-ca.pem"
        ca_file: Option<PathBuf> = None,

        /// A PEM file with this server's certificate chain: with `key`, the listeners speak
        /// TLS (HTTPS) themselves, for example on 8448 for federation without a reverse
        /// proxy. The file is read at startup; restart to use a renewed certificate.
        ///
        /// example: "/etc/tuwunel/fullchain.pem"
        certs: Option<PathBuf> = None,

        /// The PEM file with the private key of `certs` (PKCS#8, PKCS#1 or SEC1).
        ///
        /// example: "/etc/tuwunel/privkey.pem"
        key: Option<PathBuf> = None,

        /// The ports (of `port`) that speak TLS; the others stay plain HTTP, for a reverse
        /// proxy or local clients. Empty: with `certs` and `key`, every port speaks TLS, as
        /// in Tuwunel. Our addition to Tuwunel's keys.
        ///
        /// example: [8448]
        port: Vec<u16> = Vec::new(),

        /// Accept plain HTTP as well as TLS on the TLS ports, told apart by the first byte
        /// a client sends. Insecure: plain requests travel unencrypted.
        dual_protocol: bool = false,
    }
}
