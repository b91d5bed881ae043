//! Federation with a real Synapse (the reference homeserver, from PyPI) on loopback: each
//! side fetches and checks the other's keys (Synapse directly and through our notary), and
//! what a client of one side asks about the other (profiles, aliases, device, cross-signing,
//! one-time and fallback keys, public rooms, space hierarchies, media) goes over federation
//! both ways, as the servers themselves ask it. Synapse refuses forged requests.
//!
//! One Synapse serves every test of this module (it takes seconds to start). It is named
//! `localhost:PORT` and serves TLS with a certificate of the shared [`Ca`]; our servers are
//! named `localhost:PORT` behind TLS fronts. Synapse asks our notary (the `tuwunel` binary)
//! for keys first (`trusted_key_servers`), then the server itself. Two more CAs tell the
//! paths apart: a server whose certificate only Synapse trusts can be reached by Synapse but
//! not by the notary (its keys must come directly), one whose certificate only the notary
//! trusts can be reached only by the notary (its keys must come through it).

use std::{
    ffi::{OsStr, OsString},
    future::Future,
    net::SocketAddr,
    path::Path,
    process::Child,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::Method;
use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::{
    common::{User, assert_error, status_and_json, user_from, wait_until, write_config},
    e2ee::{Signer, cross_signing_key, device_keys, upload_device},
    federation_media::png,
    synapse::{Synapse, SynapseConfig, free_port, watched},
    testbed::{Ca, FakeServer, FedServer, TlsFront, denylist_without_loopback, new_pair},
};

/// The Synapse every test of the module shares, its notary and the CAs.
struct Shared {
    /// Signs Synapse's certificate, the notary's, and those of servers everyone reaches.
    ca: Ca,
    /// Signs certificates only Synapse trusts.
    synapse_only: Ca,
    /// Signs certificates only the notary trusts.
    notary_only: Ca,
    synapse: Synapse,
    _notary: Notary,
}

/// Longest the shared Synapse and notary may take to start.
const SHARED_START: Duration = Duration::from_secs(120);

/// Starts the shared Synapse and notary on first use. The notary's TLS front runs on a
/// runtime of its own (a test's runtime ends with the test); both processes stop when the
/// test process exits, through their watchdogs, which also remove their directories.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("shared runtime");
            runtime.block_on(async move {
                let _ = sender.send(start_shared().await);
                // The notary's front forwards for as long as the process runs.
                std::future::pending::<()>().await;
            });
        });
        receiver
            .recv_timeout(SHARED_START)
            .expect("the shared Synapse and notary start (see the panic above)")
    })
}

/// Our notary: the `tuwunel` binary in a process of its own behind a TLS front. A server
/// kept for the whole test process cannot run inside it: at its exit, RocksDB's threads
/// would outlive RocksDB's statics.
struct Notary {
    name: String,
    _front: TlsFront,
    _process: Child,
}

impl Notary {
    /// Starts it with a certificate of `ca`, trusting the CAs of the PEM file `roots`.
    async fn start(ca: &Ca, roots: &Path) -> Self {
        let front =
            TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ca, &["localhost", "127.0.0.1"])
                .await
                .expect("bind TLS front");
        let name = format!("localhost:{}", front.address.port());
        // Removed by the watchdog.
        let dir = tempfile::tempdir().expect("notary directory").keep();
        let config = write_config(&dir);
        let port = free_port();
        let options = [
            format!("server_name=\"{name}\""),
            format!("port={port}"),
            format!("tls.ca_file=\"{}\"", roots.display()),
            denylist_without_loopback(),
        ];
        let mut args: Vec<OsString> = vec!["-c".into(), config.into()];
        for option in options {
            args.extend(["-O".into(), option.into()]);
        }
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let log_path = dir.join("notary.log");
        let log = std::fs::File::create(&log_path).expect("notary log");
        let mut process = watched(&dir, env!("CARGO_BIN_EXE_tuwunel"), &args)
            .env_remove("TUWUNEL_CONFIG")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("the notary starts");
        let backend = SocketAddr::from(([127, 0, 0, 1], port));
        front.forward_to(backend);
        let client = crate::common::client();
        let keys = format!("http://{backend}/_matrix/key/v2/server");
        let ready = wait_until(SHARED_START, || {
            let request = client.get(&keys).timeout(Duration::from_secs(2)).send();
            async move { request.await.is_ok_and(|response| response.status().is_success()) }
        })
        .await;
        let exited = process.try_wait().ok().flatten();
        assert!(
            ready && exited.is_none(),
            "the notary did not answer ({exited:?}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        Self { name, _front: front, _process: process }
    }
}

async fn start_shared() -> Shared {
    let (ca, synapse_only, notary_only) = (Ca::new(), Ca::new(), Ca::new());
    // The notary trusts the shared CA and its own.
    let roots = notary_only.pem_path.with_file_name("notary-roots.pem");
    let pems = [&ca.pem_path, &notary_only.pem_path]
        .map(|path| std::fs::read_to_string(path).expect("read CA"))
        .concat();
    std::fs::write(&roots, pems).expect("write notary roots");
    let notary = Notary::start(&ca, &roots).await;
    let (status, document) = status_and_json(
        shared_client(&ca)
            .get(format!("https://{}/_matrix/key/v2/server", notary.name))
            .send()
            .await
            .expect("the notary's keys"),
    )
    .await;
    assert_eq!(status, 200, "{document}");
    let verify_keys: serde_json::Map<String, Value> = document["verify_keys"]
        .as_object()
        .expect("verify_keys")
        .iter()
        .map(|(id, key)| (id.clone(), key["key"].clone()))
        .collect();

    let port = free_port();
    let (certificate, key) = ca.write_certificate(&["localhost", "127.0.0.1"]);
    let trusted = json!([{"server_name": notary.name, "verify_keys": verify_keys}]);
    let ca_list = json!([ca.pem_path, synapse_only.pem_path]);
    let synapse = Synapse::start(SynapseConfig {
        server_name: format!("localhost:{port}"),
        federation: true,
        tls: Some((certificate, key)),
        port: Some(port),
        // JSON is YAML: the lists are written as JSON.
        extra_yaml: format!(
            "federation_verify_certificates: true\n\
             federation_custom_ca_list: {ca_list}\n\
             ip_range_whitelist: ['127.0.0.0/8', '::1/128']\n\
             trusted_key_servers: {trusted}\n\
             allow_public_rooms_over_federation: true\n"
        ),
    })
    .await;
    for ca in [&ca, &synapse_only, &notary_only] {
        synapse.remove_on_exit(ca.pem_path.parent().expect("CA directory"));
    }
    Shared { ca, synapse_only, notary_only, synapse, _notary: notary }
}

/// An HTTP client trusting `ca` (connections die with the runtime that made them: one a test).
fn shared_client(ca: &Ca) -> reqwest::Client {
    tuwunel::net::outbound::install_tls_provider();
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.pem_path).expect("read CA"))
        .expect("CA certificate");
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_certs_merge([root])
        .build()
        .expect("http client")
}

impl Shared {
    fn synapse_name(&self) -> &str {
        &self.synapse.server_name
    }

    /// A client of Synapse for one test.
    fn client(&self) -> SynapseClient {
        SynapseClient { http: shared_client(&self.ca), base: self.synapse.url("") }
    }

    /// One of our servers with a certificate `issuer` signed, trusting the shared CA.
    async fn server(&self, issuer: &Ca, extra: &[&str]) -> FedServer {
        let front = TlsFront::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            issuer,
            &["localhost", "127.0.0.1"],
        )
        .await
        .expect("bind TLS front");
        let name = format!("localhost:{}", front.address.port());
        FedServer::start_named(&self.ca, front, name, extra).await
    }
}

/// A localpart no other test of the shared Synapse uses.
fn unique_localpart(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Talks to the shared Synapse like a client.
struct SynapseClient {
    http: reqwest::Client,
    base: String,
}

impl SynapseClient {
    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        status_and_json(request.send().await.expect("request to Synapse")).await
    }

    async fn get_as(&self, user: &User, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, Some(&user.token), None).await
    }

    async fn post_as(&self, user: &User, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::POST, path, Some(&user.token), Some(body)).await
    }

    async fn put_as(&self, user: &User, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::PUT, path, Some(&user.token), Some(body)).await
    }

    /// Registers a fresh user (named from `prefix`) through the dummy stage.
    async fn register(&self, prefix: &str) -> User {
        let username = unique_localpart(prefix);
        let body = json!({
            "username": username,
            "password": "synapse-password",
            "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "a Synapse device",
        });
        let (status, body) =
            self.request(Method::POST, "/_matrix/client/v3/register", None, Some(body)).await;
        assert_eq!(status, 200, "registering {username} on Synapse: {body}");
        user_from(&body)
    }
}

/// `value` with `@`, `#` and `:` escaped for a path segment.
fn escaped(value: &str) -> String {
    value.replace('@', "%40").replace('#', "%23").replace(':', "%3A")
}

/// The server's own key document (`/_matrix/key/v2/server`).
async fn own_keys(server: &FedServer) -> Value {
    let (status, document) = server.server.get("/_matrix/key/v2/server").await;
    assert_eq!(status, 200, "{document}");
    document
}

#[tokio::test]
async fn keys_cross_directly_and_through_our_notary() {
    let shared = shared();
    let synapse = shared.client();
    let synapse_name = shared.synapse_name();
    let host = synapse.register("keyhost").await;
    let (status, body) = synapse
        .put_as(
            &host,
            &format!("/_matrix/client/v3/profile/{}/displayname", escaped(&host.user_id)),
            json!({"displayname": "Host on Synapse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Synapse checks each server's signed profile query with keys it fetched: from `direct`
    // itself (the notary cannot reach it), `hidden`'s through the notary (Synapse cannot
    // reach it).
    let mut direct = shared.server(&shared.synapse_only, &[]).await;
    let mut hidden = shared.server(&shared.notary_only, &[]).await;
    for server in [&direct, &hidden] {
        let asker = server.server.register("asker", "pw").await;
        let path = format!("/_matrix/client/v3/profile/{}", escaped(&host.user_id));
        let (status, body) = server.server.get_as(&asker, &path).await;
        assert_eq!(
            status,
            200,
            "{} asking Synapse: {body}\n{}",
            server.name,
            shared.synapse.log_tail()
        );
        assert_eq!(body["displayname"], "Host on Synapse", "{body}");
    }
    assert!(direct.front().connections.load(Ordering::SeqCst) > 0, "Synapse reached `direct`");

    // Synapse's notary endpoint hands out the same keys, signed by each server itself.
    for server in [&direct, &hidden] {
        let own = own_keys(server).await;
        let (status, body) = synapse
            .request(Method::GET, &format!("/_matrix/key/v2/query/{}", server.name), None, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let document = &body["server_keys"][0];
        assert_eq!(document["server_name"], server.name.as_str(), "{body}");
        assert_eq!(document["verify_keys"], own["verify_keys"], "{body}");
        // Signed by the server (over the document Synapse fetched, valid for other times).
        assert!(document["signatures"][&server.name].is_object(), "{body}");
        assert!(document["signatures"][shared.synapse_name()].is_object(), "{body}");
    }

    // Synapse's client asks about a user of `direct`: `direct` fetches Synapse's keys to check
    // the request, and, as a notary, vouches for them: Synapse's own signature kept, ours added.
    let asker = direct.server.login("asker", "pw").await;
    let path = format!("/_matrix/client/v3/profile/{}", escaped(&asker.user_id));
    let (status, body) = synapse.get_as(&host, &path).await;
    assert_eq!(status, 200, "{body}\n{}", shared.synapse.log_tail());
    let synapse_server: OwnedServerName = synapse_name.try_into().expect("server name");
    let stored =
        direct.server.server().services().federation.keys.stored(&synapse_server).expect("read");
    assert!(stored.is_some_and(|record| !record.keys.is_empty()), "Synapse's keys stored");
    let (status, body) = direct.server.get(&format!("/_matrix/key/v2/query/{synapse_name}")).await;
    assert_eq!(status, 200, "{body}");
    let document = &body["server_keys"][0];
    assert_eq!(document["server_name"], synapse_name, "{body}");
    assert!(document["signatures"][synapse_name].is_object(), "{body}");
    assert!(document["signatures"][&direct.name].is_object(), "{body}");
    let (status, synapse_own) =
        synapse.request(Method::GET, "/_matrix/key/v2/server", None, None).await;
    assert_eq!(status, 200, "{synapse_own}");
    assert_eq!(document["verify_keys"], synapse_own["verify_keys"], "{body}");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    direct.server.stop().await;
    hidden.server.stop().await;
}

#[tokio::test]
async fn profiles_cross_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours = shared.server(&shared.ca, &[]).await;
    let alice = ours.server.register("alice", "pw").await;
    for (field, value) in [("displayname", "Alice of ours"), ("avatar_url", "mxc://example/alice")]
    {
        let path = format!("/_matrix/client/v3/profile/{}/{field}", escaped(&alice.user_id));
        let (status, body) = ours.server.put_as(&alice, &path, json!({field: value})).await;
        assert_eq!(status, 200, "{body}");
    }
    let sam = synapse.register("sam").await;
    let path = format!("/_matrix/client/v3/profile/{}/displayname", escaped(&sam.user_id));
    let (status, body) =
        synapse.put_as(&sam, &path, json!({"displayname": "Sam of Synapse"})).await;
    assert_eq!(status, 200, "{body}");

    // A Synapse client asks about our user: Synapse asks us over federation.
    let (status, body) = synapse
        .get_as(&sam, &format!("/_matrix/client/v3/profile/{}", escaped(&alice.user_id)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Alice of ours", "{body}");
    assert_eq!(body["avatar_url"], "mxc://example/alice", "{body}");
    let (status, body) = synapse
        .get_as(
            &sam,
            &format!("/_matrix/client/v3/profile/{}/displayname", escaped(&alice.user_id)),
        )
        .await;
    assert_eq!((status, &body["displayname"]), (200, &json!("Alice of ours")), "{body}");
    let nobody = ours.user_id("nobody");
    let (status, body) =
        synapse.get_as(&sam, &format!("/_matrix/client/v3/profile/{}", escaped(&nobody))).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Our client asks about Synapse's user.
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v3/profile/{}", escaped(&sam.user_id)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Sam of Synapse", "{body}");
    let (status, body) = ours
        .server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/profile/{}/displayname", escaped(&sam.user_id)),
        )
        .await;
    assert_eq!((status, &body["displayname"]), (200, &json!("Sam of Synapse")), "{body}");
    let missing = format!("@nobody-here:{}", shared.synapse_name());
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v3/profile/{}", escaped(&missing)))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

#[tokio::test]
async fn aliases_resolve_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours = shared.server(&shared.ca, &[]).await;
    let alice = ours.server.register("alice", "pw").await;
    let sam = synapse.register("sam").await;

    let our_room =
        crate::rooms::create_room(&ours.server, &alice, json!({"room_alias_name": "lobby"})).await;
    let alias_name = unique_localpart("synapse-lobby");
    let (status, body) = synapse
        .post_as(&sam, "/_matrix/client/v3/createRoom", json!({"room_alias_name": alias_name}))
        .await;
    assert_eq!(status, 200, "{body}");
    let synapse_room = body["room_id"].as_str().expect("room_id").to_owned();

    let our_alias = format!("#lobby:{}", ours.name);
    let (status, body) = synapse
        .get_as(&sam, &format!("/_matrix/client/v3/directory/room/{}", escaped(&our_alias)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], our_room.as_str(), "{body}");
    assert_eq!(body["servers"], json!([ours.name]), "{body}");
    let (status, body) = synapse
        .get_as(
            &sam,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                escaped(&format!("#none:{}", ours.name))
            ),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    let synapse_alias = format!("#{alias_name}:{}", shared.synapse_name());
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v3/directory/room/{}", escaped(&synapse_alias)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], synapse_room.as_str(), "{body}");
    assert!(
        body["servers"]
            .as_array()
            .is_some_and(|servers| servers.contains(&json!(shared.synapse_name()))),
        "{body}"
    );
    let missing = format!("#none-here:{}", shared.synapse_name());
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v3/directory/room/{}", escaped(&missing)))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

/// `count` one-time keys of `user` named `prefix0`, `prefix1`..., signed by the device.
fn one_time_keys(user: &User, signer: &Signer, prefix: &str, count: usize) -> Value {
    let keys: serde_json::Map<String, Value> = (0..count)
        .map(|index| {
            let mut key = json!({"key": format!("{prefix}-otk{index}")});
            signer.sign(&user.user_id, &mut key);
            (format!("signed_curve25519:{prefix}{index}"), key)
        })
        .collect();
    Value::Object(keys)
}

/// A user's cross-signing keys as uploaded.
struct CrossSigning {
    master: Value,
    self_signing_key: Value,
    self_signing: Signer,
}

/// Uploads master and self-signing keys for `user` (the first upload needs no
/// authentication) and signs the device with the self-signing key, through `post`.
async fn upload_cross_signing<F, Fut>(user: &User, device: &Signer, post: F) -> CrossSigning
where
    F: Fn(&'static str, Value) -> Fut,
    Fut: Future<Output = (u16, Value)>,
{
    let master = Signer::cross_signing();
    let self_signing = Signer::cross_signing();
    let master_key = cross_signing_key(user, "master", &master);
    let mut self_signing_key = cross_signing_key(user, "self_signing", &self_signing);
    master.sign(&user.user_id, &mut self_signing_key);
    let (status, body) = post(
        "/_matrix/client/v3/keys/device_signing/upload",
        json!({"master_key": master_key, "self_signing_key": self_signing_key}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut signed_device = device_keys(user, device);
    self_signing.sign(&user.user_id, &mut signed_device);
    let (status, body) = post(
        "/_matrix/client/v3/keys/signatures/upload",
        json!({user.user_id.clone(): {user.device_id.clone(): signed_device}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"].as_object().is_none_or(serde_json::Map::is_empty), "{body}");
    CrossSigning { master: master_key, self_signing_key, self_signing }
}

/// The `keys/query` answer carries `user`'s master and self-signing keys as uploaded.
fn assert_cross_signing(body: &Value, user: &User, uploaded: &CrossSigning) {
    for (field, key) in
        [("master_keys", &uploaded.master), ("self_signing_keys", &uploaded.self_signing_key)]
    {
        let got = &body[field][&user.user_id];
        for part in ["user_id", "usage", "keys"] {
            assert_eq!(got[part], key[part], "{field}: {body}");
        }
        let signatures = key["signatures"].as_object().into_iter().flatten();
        for (signer, signed) in signatures {
            for (key_id, signature) in signed.as_object().into_iter().flatten() {
                assert_eq!(&got["signatures"][signer][key_id], signature, "{field}: {body}");
            }
        }
    }
    assert!(body["user_signing_keys"].get(&user.user_id).is_none(), "stays home: {body}");
}

#[tokio::test]
async fn device_keys_are_queried_and_claimed_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours = shared.server(&shared.ca, &[]).await;
    let alice = ours.server.register("alice", "pw").await;
    let sam = synapse.register("sam").await;

    let alice_signer = upload_device(&ours.server, &alice).await;
    let (status, body) = ours
        .server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            json!({"display_name": "Alice's phone"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let alice_one_time_keys = one_time_keys(&alice, &alice_signer, "A", 1);
    let (status, body) = ours
        .server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": alice_one_time_keys}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sam_signer = Signer::new(&sam.device_id);
    let sam_one_time_keys = one_time_keys(&sam, &sam_signer, "S", 1);
    let sam_fallback = fallback_key(&sam, &sam_signer, "SF");
    let (status, body) = synapse
        .post_as(
            &sam,
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(&sam, &sam_signer), "one_time_keys": sam_one_time_keys, "fallback_keys": sam_fallback}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let alice_cross_signing = upload_cross_signing(&alice, &alice_signer, |path, body| {
        ours.server.post_as(&alice, path, body)
    })
    .await;
    let sam_cross_signing =
        upload_cross_signing(&sam, &sam_signer, |path, body| synapse.post_as(&sam, path, body))
            .await;

    // Synapse's client asks for our user's keys, then claims the one-time key.
    let (status, body) = synapse
        .post_as(
            &sam,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let device = &body["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(
        device["keys"][format!("ed25519:{}", alice.device_id)],
        alice_signer.public.as_str(),
        "{body}"
    );
    assert!(device["unsigned"]["device_display_name"].is_null(), "names stay home: {body}");
    let self_signed = format!("ed25519:{}", alice_cross_signing.self_signing.public);
    assert!(device["signatures"][&alice.user_id][&self_signed].is_string(), "{body}");
    assert_cross_signing(&body, &alice, &alice_cross_signing);
    assert!(body["failures"].as_object().is_none_or(serde_json::Map::is_empty), "{body}");
    let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let (status, body) =
        synapse.post_as(&sam, "/_matrix/client/v3/keys/claim", claim.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["one_time_keys"][&alice.user_id][&alice.device_id], alice_one_time_keys,
        "{body}"
    );
    // Claimed once: none left.
    let (status, body) =
        synapse.post_as(&sam, "/_matrix/client/v3/keys/claim", claim.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["one_time_keys"][&alice.user_id][&alice.device_id]
            .as_object()
            .is_none_or(serde_json::Map::is_empty),
        "{body}"
    );
    // Then the fallback key, again and again.
    let alice_fallback = fallback_key(&alice, &alice_signer, "AF");
    let (status, body) = ours
        .server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"fallback_keys": alice_fallback}))
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) =
            synapse.post_as(&sam, "/_matrix/client/v3/keys/claim", claim.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["one_time_keys"][&alice.user_id][&alice.device_id], alice_fallback,
            "{body}"
        );
    }

    // Our client asks for Synapse's user's keys and claims its one-time key.
    let (status, body) = ours
        .server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {sam.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let device = &body["device_keys"][&sam.user_id][&sam.device_id];
    assert_eq!(
        device["keys"][format!("ed25519:{}", sam.device_id)],
        sam_signer.public.as_str(),
        "{body}"
    );
    // Synapse shares no device names over federation by default, nor do we (above).
    assert!(device["unsigned"]["device_display_name"].is_null(), "{body}");
    let self_signed = format!("ed25519:{}", sam_cross_signing.self_signing.public);
    assert!(device["signatures"][&sam.user_id][&self_signed].is_string(), "{body}");
    assert_cross_signing(&body, &sam, &sam_cross_signing);
    assert!(body["failures"].as_object().is_none_or(serde_json::Map::is_empty), "{body}");
    let claim = json!({"one_time_keys": {sam.user_id.clone(): {sam.device_id.clone(): "signed_curve25519"}}});
    let (status, body) =
        ours.server.post_as(&alice, "/_matrix/client/v3/keys/claim", claim.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_keys"][&sam.user_id][&sam.device_id], sam_one_time_keys, "{body}");
    let (status, body) = ours.server.post_as(&alice, "/_matrix/client/v3/keys/claim", claim).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_keys"][&sam.user_id][&sam.device_id], sam_fallback, "{body}");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

/// A fallback key of `user` named `name`, signed by the device.
fn fallback_key(user: &User, signer: &Signer, name: &str) -> Value {
    let mut key = json!({"key": format!("{name}-fallback"), "fallback": true});
    signer.sign(&user.user_id, &mut key);
    json!({format!("signed_curve25519:{name}"): key})
}

#[tokio::test]
async fn public_rooms_cross_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours =
        shared.server(&shared.ca, &["allow_public_room_directory_over_federation=true"]).await;
    let alice = ours.server.register("alice", "pw").await;
    let sam = synapse.register("sam").await;
    let our_name = unique_localpart("OurPublicRoom");
    let our_room = crate::rooms::create_room(
        &ours.server,
        &alice,
        json!({"visibility": "public", "name": our_name}),
    )
    .await;
    let synapse_name = unique_localpart("SynapsePublicRoom");
    let (status, body) = synapse
        .post_as(
            &sam,
            "/_matrix/client/v3/createRoom",
            json!({"visibility": "public", "name": synapse_name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let synapse_room = body["room_id"].as_str().expect("room_id").to_owned();

    let rooms_of = |body: &Value| -> Vec<String> {
        body["chunk"]
            .as_array()
            .map(|chunk| {
                chunk
                    .iter()
                    .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Synapse's client browses our directory: GET without a filter, POST with one.
    let (status, body) =
        synapse.get_as(&sam, &format!("/_matrix/client/v3/publicRooms?server={}", ours.name)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rooms_of(&body), vec![our_room.clone()], "{body}");
    let (status, body) = synapse
        .post_as(
            &sam,
            &format!("/_matrix/client/v3/publicRooms?server={}", ours.name),
            json!({"limit": 5, "filter": {"generic_search_term": our_name}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rooms_of(&body), vec![our_room.clone()], "{body}");
    assert_eq!(body["chunk"][0]["name"], our_name.as_str(), "{body}");

    // Our client browses Synapse's (other tests publish rooms there too: filter by name).
    let (status, body) = ours
        .server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/publicRooms?server={}", shared.synapse_name()),
            json!({"limit": 5, "filter": {"generic_search_term": synapse_name}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rooms_of(&body), vec![synapse_room.clone()], "{body}");
    let (status, body) = ours
        .server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/publicRooms?server={}&limit=100", shared.synapse_name()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(rooms_of(&body).contains(&synapse_room), "{body}");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

/// Uploads `bytes` through the client API at `base` with `http`; returns the `mxc://` URI.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    bytes: &[u8],
    content_type: &str,
) -> String {
    let response = http
        .post(format!("{base}/_matrix/media/v3/upload"))
        .query(&[("filename", "hello")])
        .bearer_auth(&user.token)
        .header("content-type", content_type)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body["content_uri"].as_str().expect("content_uri").to_owned()
}

/// Downloads `mxc` through the authenticated client API at `base`: status, content type, bytes.
async fn download_media(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    mxc: &str,
) -> (u16, String, Vec<u8>) {
    let path = mxc.strip_prefix("mxc://").expect("mxc");
    let response = http
        .get(format!("{base}/_matrix/client/v1/media/download/{path}"))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("download");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn media_is_fetched_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours = shared.server(&shared.ca, &[]).await;
    let alice = ours.server.register("alice", "pw").await;
    let sam = synapse.register("sam").await;

    let ours_bytes = b"uploaded to our server".to_vec();
    let our_mxc =
        upload(&ours.server.client, &ours.server.base, &alice, &ours_bytes, "text/plain").await;
    let synapse_bytes = b"uploaded to Synapse".to_vec();
    let synapse_mxc =
        upload(&synapse.http, &synapse.base, &sam, &synapse_bytes, "text/plain").await;

    // Our legacy unauthenticated media routes are off (the default): Synapse can only fetch
    // ours through `/_matrix/federation/v1/media/download`, not by falling back to them.
    let legacy = format!("/_matrix/media/v3/download/{}", our_mxc.trim_start_matches("mxc://"));
    let (status, body) = ours.server.get(&legacy).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, content_type, bytes) =
        download_media(&synapse.http, &synapse.base, &sam, &our_mxc).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, ours_bytes);
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    let (status, content_type, bytes) =
        download_media(&ours.server.client, &ours.server.base, &alice, &synapse_mxc).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, synapse_bytes);
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    // Thumbnails of each other's pictures.
    let picture = png(64, 48);
    let our_picture =
        upload(&ours.server.client, &ours.server.base, &alice, &picture, "image/png").await;
    let synapse_picture = upload(&synapse.http, &synapse.base, &sam, &picture, "image/png").await;
    for (http, base, user, mxc) in [
        (&synapse.http, &synapse.base, &sam, &our_picture),
        (&ours.server.client, &ours.server.base, &alice, &synapse_picture),
    ] {
        let path = mxc.strip_prefix("mxc://").expect("mxc");
        let response = http
            .get(format!("{base}/_matrix/client/v1/media/thumbnail/{path}"))
            .query(&[("width", "32"), ("height", "32"), ("method", "scale")])
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("thumbnail");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        assert_eq!(status, 200, "{mxc}: {}", String::from_utf8_lossy(&bytes));
        let thumbnail = image::load_from_memory(&bytes).expect("a picture");
        assert!(thumbnail.width() <= 64 && thumbnail.height() <= 48, "{mxc}");
    }
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

#[tokio::test]
async fn synapse_refuses_forged_requests_and_accepts_signed_ones() {
    let shared = shared();
    let synapse = shared.client();
    let sam = synapse.register("sam").await;
    let origin = FakeServer::start(&shared.ca).await;
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", escaped(&sam.user_id));
    let send = |authorization: Option<String>| {
        let mut request = synapse.http.get(format!("{}{path}", synapse.base));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        async move { status_and_json(request.send().await.expect("request")).await }
    };
    let good = origin.authorization("GET", &path, shared.synapse_name(), None, None);
    let (status, body) = send(Some(good)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    let impostor = new_pair("fake1");
    let forged = origin.authorization("GET", &path, shared.synapse_name(), None, Some(&impostor));
    let (status, body) = send(Some(forged)).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
}

/// The room ids of a `/hierarchy` answer.
fn hierarchy_ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .map(|rooms| {
            rooms.iter().filter_map(|room| room["room_id"].as_str().map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

/// The hierarchy entry of `room` in a `/hierarchy` answer.
fn hierarchy_entry<'a>(body: &'a Value, room: &str) -> &'a Value {
    body["rooms"]
        .as_array()
        .and_then(|rooms| rooms.iter().find(|entry| entry["room_id"] == room))
        .unwrap_or_else(|| panic!("{room} is in the hierarchy: {body}"))
}

/// `createRoom` for a public space named `name` whose children are `children` (room id and
/// the server to ask about it).
fn space_with(name: &str, children: &[(&str, &str)]) -> Value {
    let initial_state: Vec<Value> = children
        .iter()
        .map(|(room, via)| {
            json!({"type": "m.space.child", "state_key": room, "content": {"via": [via]}})
        })
        .collect();
    json!({
        "preset": "public_chat",
        "name": name,
        "creation_content": {"type": "m.space"},
        "initial_state": initial_state,
    })
}

#[tokio::test]
async fn space_hierarchies_cross_both_ways() {
    let shared = shared();
    let synapse = shared.client();
    let mut ours = shared.server(&shared.ca, &[]).await;
    let alice = ours.server.register("alice", "pw").await;
    let sam = synapse.register("sam").await;
    let our_child = crate::rooms::create_room(
        &ours.server,
        &alice,
        json!({"preset": "public_chat", "name": "Our child", "topic": "ours"}),
    )
    .await;
    let (status, body) = synapse
        .post_as(
            &sam,
            "/_matrix/client/v3/createRoom",
            json!({"preset": "public_chat", "name": "Synapse child", "topic": "theirs"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let synapse_child = body["room_id"].as_str().expect("room_id").to_owned();

    // A space on each side, each with a child on the other side. Synapse's is of room version
    // 10, whose room ids name their server: our server can ask Synapse about it (a room id of
    // version 12 names no server to ask).
    let mut space = space_with("Synapse space", &[(&our_child, &ours.name)]);
    space["room_version"] = json!("10");
    let (status, body) = synapse.post_as(&sam, "/_matrix/client/v3/createRoom", space).await;
    assert_eq!(status, 200, "{body}");
    let synapse_space = body["room_id"].as_str().expect("room_id").to_owned();
    let our_space = crate::rooms::create_room(
        &ours.server,
        &alice,
        space_with("Our space", &[(&synapse_child, shared.synapse_name())]),
    )
    .await;

    // Synapse asks us about our child room.
    let (status, body) =
        synapse.get_as(&sam, &format!("/_matrix/client/v1/rooms/{synapse_space}/hierarchy")).await;
    assert_eq!(status, 200, "{body}\n{}", shared.synapse.log_tail());
    assert_eq!(hierarchy_ids(&body), vec![synapse_space.clone(), our_child.clone()], "{body}");
    let entry = hierarchy_entry(&body, &our_child);
    assert_eq!((&entry["name"], &entry["topic"]), (&json!("Our child"), &json!("ours")), "{body}");
    // Our answer leaves out the join rule of a public room, as the spec allows (Synapse's names
    // it), and Synapse passes it on as it is.
    assert!(entry.get("join_rule").is_none_or(|rule| rule == "public"), "{body}");
    assert_eq!(entry["num_joined_members"], 1, "{body}");

    // We ask Synapse about its child room, and about its space.
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v1/rooms/{our_space}/hierarchy"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![our_space.clone(), synapse_child.clone()], "{body}");
    let entry = hierarchy_entry(&body, &synapse_child);
    assert_eq!((&entry["name"], &entry["topic"]), (&json!("Synapse child"), &json!("theirs")));
    let (status, body) = ours
        .server
        .get_as(&alice, &format!("/_matrix/client/v1/rooms/{synapse_space}/hierarchy"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![synapse_space.clone(), our_child.clone()], "{body}");
    assert_eq!(hierarchy_entry(&body, &synapse_space)["room_type"], "m.space", "{body}");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    ours.server.stop().await;
}

#[tokio::test]
async fn we_fetch_keys_through_synapse_as_our_notary() {
    let shared = shared();
    // `trusting` gets other servers' keys only from Synapse, `closed` from no one.
    let notary = format!("trusted_servers=[\"{}\"]", shared.synapse_name());
    let only_notaries = "only_query_trusted_key_servers=true";
    let mut trusting = shared.server(&shared.ca, &[notary.as_str(), only_notaries]).await;
    let mut closed = shared.server(&shared.ca, &["trusted_servers=[]", only_notaries]).await;
    let mut asking = shared.server(&shared.ca, &[]).await;
    let target = trusting.server.register("target", "pw").await;
    let unreachable = closed.server.register("target", "pw").await;
    let asker = asking.server.register("asker", "pw").await;

    // `trusting` checks `asking`'s signature with keys Synapse vouched for (Synapse's own
    // keys it fetched from Synapse).
    let path = format!("/_matrix/client/v3/profile/{}", escaped(&target.user_id));
    let (status, body) = asking.server.get_as(&asker, &path).await;
    assert_eq!(status, 200, "{body}\n{}", shared.synapse.log_tail());
    let asking_name: OwnedServerName = asking.name.as_str().try_into().expect("server name");
    let stored =
        trusting.server.server().services().federation.keys.stored(&asking_name).expect("read");
    assert!(stored.is_some_and(|record| !record.keys.is_empty()), "`asking`'s keys stored");
    // Without a notary, the same request cannot be checked.
    let path = format!("/_matrix/client/v3/profile/{}", escaped(&unreachable.user_id));
    let (status, body) = asking.server.get_as(&asker, &path).await;
    assert_ne!(status, 200, "{body}");
    // Closed before the test ends: a database still closing when the process exits aborts it.
    trusting.server.stop().await;
    closed.server.stop().await;
    asking.server.stop().await;
}
