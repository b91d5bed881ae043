//! Federation between two (or three) of our servers in one process, each behind TLS with a
//! certificate from the test bed's CA: key exchange (direct and through a notary), signed
//! requests accepted, unsigned, forged, wrong-key, wrong-destination and denied ones refused
//! with the spec's errors, and the queries (profile, alias, device keys, one-time keys,
//! devices) in both directions.

use std::{net::SocketAddr, sync::Arc};

use reqwest::Method;
use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::{
    common::{assert_error, client, status_and_json},
    e2ee::upload_device,
    testbed::{Ca, FakeServer, FedServer, TlsFront, new_pair},
};

/// GETs `path` on `server` as `user` (a client of `server`).
async fn get_as(server: &FedServer, user: &crate::common::User, path: &str) -> (u16, Value) {
    server.server.get_as(user, path).await
}

#[tokio::test]
async fn profiles_and_keys_cross_in_both_directions() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let (status, body) = a
        .server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            json!({"displayname": "Alice of A"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // B asks A (B fetches nothing yet; A must fetch B's keys to check B's signature).
    let (status, body) =
        get_as(&b, &bob, &format!("/_matrix/client/v3/profile/{}", alice.user_id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Alice of A");
    let (status, body) =
        get_as(&b, &bob, &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id))
            .await;
    assert_eq!((status, &body["displayname"]), (200, &json!("Alice of A")), "{body}");
    // The other way round.
    let (status, body) =
        get_as(&a, &alice, &format!("/_matrix/client/v3/profile/{}", bob.user_id)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["displayname"].is_string(), "{body}");
    // A remote "not found" passes through.
    let (status, body) =
        get_as(&b, &bob, &format!("/_matrix/client/v3/profile/{}", a.user_id("nobody"))).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Each now holds the other's keys, and vouches for them as a notary.
    let a_name: OwnedServerName = a.name.as_str().try_into().expect("name");
    let b_name: OwnedServerName = b.name.as_str().try_into().expect("name");
    let stored = b.server.server().services().federation.keys.stored(&a_name).expect("read");
    assert!(stored.is_some_and(|record| !record.keys.is_empty()), "B stored A's keys");
    let (status, body) = b.server.get(&format!("/_matrix/key/v2/query/{}", a.name)).await;
    assert_eq!(status, 200, "{body}");
    let document = &body["server_keys"][0];
    assert_eq!(document["server_name"], a.name.as_str());
    assert!(document["signatures"][&a.name].is_object(), "A's own signature kept: {document}");
    assert!(document["signatures"][&b.name].is_object(), "countersigned by B: {document}");
    let (status, body) = b
        .server
        .request(
            Method::POST,
            "/_matrix/key/v2/query",
            None,
            Some(json!({"server_keys": {a.name.clone(): {}, "unknown.invalid": {}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["server_keys"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|document| document["server_name"].as_str())
        .collect();
    assert_eq!(names, vec![a.name.as_str()], "servers with no keys are left out: {body}");
    assert!(a.server.server().services().federation.keys.stored(&b_name).expect("read").is_some());
}

#[tokio::test]
async fn aliases_resolve_across_servers() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let room =
        crate::rooms::create_room(&a.server, &alice, json!({"room_alias_name": "lobby"})).await;
    let alias = format!("%23lobby:{}", a.name);
    let (status, body) =
        get_as(&b, &bob, &format!("/_matrix/client/v3/directory/room/{alias}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["servers"], json!([a.name]));
    let (status, body) =
        get_as(&b, &bob, &format!("/_matrix/client/v3/directory/room/%23nothing:{}", a.name)).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // A server that cannot be resolved is a gateway error, not a hang.
    let (status, body) =
        get_as(&b, &bob, "/_matrix/client/v3/directory/room/%23x:unknown-host.invalid").await;
    assert_error(status, &body, 502, "M_UNKNOWN");
}

#[tokio::test]
async fn device_keys_are_queried_and_claimed_across_servers() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let signer = upload_device(&a.server, &alice).await;
    let one_time: serde_json::Map<String, Value> = (0..2)
        .map(|index| (format!("signed_curve25519:K{index}"), json!({"key": format!("otk{index}")})))
        .collect();
    let (status, body) = a
        .server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"one_time_keys": one_time}))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = b
        .server
        .post_as(
            &bob,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice.user_id.clone(): [], "@x:unknown-host.invalid": []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let device = &body["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(device["keys"][format!("ed25519:{}", alice.device_id)], signer.public.as_str());
    assert!(device["unsigned"]["device_display_name"].is_null(), "names stay home: {device}");
    assert!(body["failures"]["unknown-host.invalid"].is_object(), "{body}");
    assert!(body["failures"].get(a.name.as_str()).is_none(), "{body}");

    let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (status, body) =
            b.server.post_as(&bob, "/_matrix/client/v3/keys/claim", claim.clone()).await;
        assert_eq!(status, 200, "{body}");
        if let Some(keys) = body["one_time_keys"][&alice.user_id][&alice.device_id].as_object() {
            claimed.extend(keys.keys().cloned());
        }
    }
    claimed.sort();
    assert_eq!(claimed, vec!["signed_curve25519:K0", "signed_curve25519:K1"], "each key once");
}

/// Sends a request with an optional `Authorization` header and raw body.
pub(crate) async fn send(
    server: &FedServer,
    method: Method,
    uri: &str,
    authorization: Option<String>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut request = client().request(method, server.server.url(uri));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    status_and_json(request.send().await.expect("request")).await
}

#[tokio::test]
async fn signed_requests_are_checked() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let origin = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let _ = upload_device(&b.server, &bob).await;
    let devices =
        format!("/_matrix/federation/v1/user/devices/{}", bob.user_id.replace('@', "%40"));

    // Unsigned.
    let (status, body) = send(&b, Method::GET, &devices, None, None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    // Not X-Matrix at all.
    let (status, body) = send(&b, Method::GET, &devices, Some("Bearer abc".to_owned()), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    // Correctly signed.
    let good = origin.authorization("GET", &devices, &b.name, None, None);
    let (status, body) = send(&b, Method::GET, &devices, Some(good.clone()), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], bob.user_id.as_str());
    assert_eq!(body["devices"][0]["device_id"], bob.device_id.as_str(), "{body}");
    assert!(body["devices"][0].get("device_display_name").is_none(), "names stay home: {body}");
    // The same header on another URI: the signature covers the URI.
    let other = format!("{devices}?x=1");
    let (status, body) = send(&b, Method::GET, &other, Some(good), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    // Addressed to another server.
    let elsewhere = origin.authorization("GET", &devices, "other.example", None, None);
    let (status, body) = send(&b, Method::GET, &devices, Some(elsewhere), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    // Signed by a key that is not the origin's, under the origin's key id.
    let impostor = new_pair("fake1");
    let forged = origin.authorization("GET", &devices, &b.name, None, Some(&impostor));
    let (status, body) = send(&b, Method::GET, &devices, Some(forged), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");

    // A body that is not JSON, and one too large.
    let query = "/_matrix/federation/v1/user/keys/query";
    let header = origin.authorization("POST", query, &b.name, Some(&json!({})), None);
    let (status, body) =
        send(&b, Method::POST, query, Some(header.clone()), Some(b"{not json".to_vec())).await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let huge = vec![b' '; 30 * 1024 * 1024];
    let (status, body) = send(&b, Method::POST, query, Some(header), Some(huge)).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // JSON nested past any sensible depth: refused, not a crash.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let header = origin.authorization("POST", query, &b.name, Some(&json!({})), None);
    let (status, body) =
        send(&b, Method::POST, query, Some(header), Some(nested.into_bytes())).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    // A signed body of the wrong shape.
    let wrong = json!({"device_keys": "nope"});
    let header = origin.authorization("POST", query, &b.name, Some(&wrong), None);
    let bytes = serde_json::to_vec(&wrong).expect("json");
    let (status, body) = send(&b, Method::POST, query, Some(header), Some(bytes)).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    // And a good one.
    let good = json!({"device_keys": {bob.user_id.clone(): []}});
    let header = origin.authorization("POST", query, &b.name, Some(&good), None);
    let bytes = serde_json::to_vec(&good).expect("json");
    let (status, body) = send(&b, Method::POST, query, Some(header), Some(bytes)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["device_keys"][&bob.user_id][&bob.device_id].is_object(), "{body}");

    // The origin rotates its key: B does not know the new key id and fetches again.
    *origin.key.lock().expect("key") = new_pair("fake2");
    let rotated = origin.authorization("GET", &devices, &b.name, None, None);
    let (status, body) = send(&b, Method::GET, &devices, Some(rotated), None).await;
    assert_eq!(status, 200, "a new key id is fetched: {body}");
    let stored = b
        .server
        .server()
        .services()
        .federation
        .keys
        .stored(&origin.name)
        .expect("read")
        .expect("stored");
    assert!(stored.keys["ed25519:fake1"].expired, "the old key is kept as old");
    assert!(!stored.keys["ed25519:fake2"].expired);
    // Under a key id the origin never published (B refetches once, finds nothing).
    let unknown = new_pair("never");
    let forged = origin.authorization("GET", &devices, &b.name, None, Some(&unknown));
    let (status, body) = send(&b, Method::GET, &devices, Some(forged), None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn denied_servers_get_forbidden() {
    let ca = Ca::new();
    let origin = FakeServer::start(&ca).await;
    for option in [
        "forbidden_remote_server_names=[\"^localhost$\"]",
        "allowed_remote_server_names_experimental=[\"^friends\\\\.example$\"]",
        "allow_inbound_profile_lookup_federation_requests=false",
    ] {
        let server = FedServer::start(&ca, &[option]).await;
        let path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ax";
        let header = origin.authorization("GET", path, &server.name, None, None);
        let (status, body) = send(&server, Method::GET, path, Some(header), None).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    let closed = FedServer::start(&ca, &["allow_federation=false"]).await;
    let path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ax";
    let header = origin.authorization("GET", path, &closed.name, None, None);
    let (status, body) = send(&closed, Method::GET, path, Some(header), None).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = closed.server.get("/_matrix/key/v2/query/example.org").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn every_signed_federation_route_refuses_unsigned_requests() {
    let server = crate::common::TestServer::start().await;
    let routes = tuwunel::http::federation::mounted_routes();
    let unsigned: Vec<&str> =
        routes.iter().filter(|route| !route.signed).map(|route| route.path).collect();
    // What the spec leaves unauthenticated, and nothing else.
    for path in &unsigned {
        assert!(
            path.starts_with("/_matrix/key/")
                || *path == "/_matrix/federation/v1/version"
                || *path == "/_matrix/federation/v1/openid/userinfo",
            "{path} is mounted without a signature check"
        );
    }
    let signed: Vec<_> = routes.iter().filter(|route| route.signed).collect();
    assert!(signed.len() >= 5, "{routes:?}");
    for route in signed {
        assert!(route.path.starts_with("/_matrix/federation/"), "{route:?}");
        let (status, body) = unsigned_request(&server, &route.method, route.path).await;
        assert_error(status, &body, 401, "M_UNAUTHORIZED");
    }
    // Every endpoint the spec (as ruma knows it) requires a signature for, mounted or not:
    // mounted ones refuse, the rest do not exist yet; none answers unsigned.
    for (method, paths) in every_signed_endpoint() {
        for path in paths {
            let (status, body) = unsigned_request(&server, &method, path).await;
            let mounted = routes.iter().any(|route| route.path == path && route.method == method);
            if mounted {
                assert_error(status, &body, 401, "M_UNAUTHORIZED");
            } else {
                assert!(
                    (status == 401 || status == 404 || status == 405)
                        && body["errcode"] != "M_FORBIDDEN",
                    "{method} {path} answered {status} {body} without a signature"
                );
            }
        }
    }
}

/// Sends `method path` without authorization, path parameters filled with plausible values.
async fn unsigned_request(
    server: &crate::common::TestServer,
    method: &Method,
    path: &str,
) -> (u16, Value) {
    let path: String = path
        .split('/')
        .map(|segment| if segment.starts_with('{') { "%40someone%3Aexample.org" } else { segment })
        .collect::<Vec<_>>()
        .join("/");
    let body = matches!(*method, Method::POST | Method::PUT).then(|| json!({}));
    server.request(method.clone(), &path, None, body).await
}

/// Method and paths of a signed endpoint; does not compile for an unsigned one.
fn signed<T>() -> (Method, Vec<&'static str>)
where
    T: ruma::api::Metadata<
            Authentication = ruma::api::federation::authentication::ServerSignatures,
        >,
{
    use ruma::api::path_builder::PathBuilder;
    (T::METHOD, T::PATH_BUILDER.all_paths().collect())
}

fn every_signed_endpoint() -> Vec<(Method, Vec<&'static str>)> {
    use ruma::api::federation::{
        authenticated_media, authorization, backfill, device, directory, event, keys, membership,
        policy, query, space, thirdparty, transactions,
    };
    vec![
        signed::<authenticated_media::get_content::v1::Request>(),
        signed::<authenticated_media::get_content_thumbnail::v1::Request>(),
        signed::<authorization::get_event_authorization::v1::Request>(),
        signed::<backfill::get_backfill::v1::Request>(),
        signed::<device::get_devices::v1::Request>(),
        signed::<directory::get_public_rooms::v1::Request>(),
        signed::<directory::get_public_rooms_filtered::v1::Request>(),
        signed::<event::get_event::v1::Request>(),
        signed::<event::get_event_by_timestamp::v1::Request>(),
        signed::<event::get_missing_events::v1::Request>(),
        signed::<event::get_room_state::v1::Request>(),
        signed::<event::get_room_state_ids::v1::Request>(),
        signed::<keys::claim_keys::v1::Request>(),
        signed::<keys::get_keys::v1::Request>(),
        signed::<membership::create_invite::v1::Request>(),
        signed::<membership::create_invite::v2::Request>(),
        signed::<membership::create_join_event::v2::Request>(),
        signed::<membership::create_knock_event::v1::Request>(),
        signed::<membership::create_leave_event::v2::Request>(),
        signed::<membership::prepare_join_event::v1::Request>(),
        signed::<membership::prepare_knock_event::v1::Request>(),
        signed::<membership::prepare_leave_event::v1::Request>(),
        signed::<policy::sign_event::v1::Request>(),
        signed::<query::get_custom_information::v1::Request>(),
        signed::<query::get_profile_information::v1::Request>(),
        signed::<query::get_room_information::v1::Request>(),
        signed::<space::get_hierarchy::v1::Request>(),
        signed::<thirdparty::exchange_invite::v1::Request>(),
        signed::<transactions::send_transaction_message::v1::Request>(),
    ]
}

#[tokio::test]
async fn keys_come_through_a_notary_when_configured() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let notary = FedServer::start(&ca, &[]).await;
    let trusted = format!("trusted_servers=[\"{}\"]", notary.name);
    let c = FedServer::start(&ca, &[&trusted, "only_query_trusted_key_servers=true"]).await;
    let alice = a.server.register("alice", "pw").await;
    let _carol = c.server.register("carol", "pw").await;
    // A asks C; C may only learn A's keys through the notary.
    let (status, body) =
        get_as(&a, &alice, &format!("/_matrix/client/v3/profile/{}", c.user_id("carol"))).await;
    assert_eq!(status, 200, "{body}");
    let a_name: OwnedServerName = a.name.as_str().try_into().expect("name");
    let services = |server: &FedServer| Arc::clone(server.server.server().services());
    assert!(
        services(&notary).federation.keys.stored(&a_name).expect("read").is_some(),
        "the notary fetched A's keys for C"
    );
    let stored = services(&c).federation.keys.stored(&a_name).expect("read").expect("C has them");
    assert!(!stored.keys.is_empty());
    // C kept A's document as A signed it, without the notary's signature.
    assert!(stored.document["signatures"].get(notary.name.as_str()).is_none());

    // The order: by default a server asks the origin first (the notary learns nothing);
    // with query_trusted_key_servers_first, the notary first.
    for (first, notary_asked) in [
        ("query_trusted_key_servers_first=false", false),
        ("query_trusted_key_servers_first=true", true),
    ] {
        let origin = FedServer::start(&ca, &[]).await;
        let notary = FedServer::start(&ca, &[]).await;
        let trusted = format!("trusted_servers=[\"{}\"]", notary.name);
        let checker = FedServer::start(&ca, &[&trusted, first]).await;
        let asker = origin.server.register("asker", "pw").await;
        let _target = checker.server.register("target", "pw").await;
        let (status, body) = get_as(
            &origin,
            &asker,
            &format!("/_matrix/client/v3/profile/{}", checker.user_id("target")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let origin_name: OwnedServerName = origin.name.as_str().try_into().expect("name");
        let vouched = services(&notary).federation.keys.stored(&origin_name).expect("read");
        assert_eq!(vouched.is_some(), notary_asked, "{first}");
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_key_fetch() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let origin = Arc::new(FakeServer::start(&ca).await);
    let path = "/_matrix/federation/v1/query/directory?room_alias=%23none%3Ax";
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let header = origin.authorization("GET", path, &b.name, None, None);
            let url = b.server.url(path);
            tokio::spawn(async move {
                let response =
                    client().get(url).header("authorization", header).send().await.expect("send");
                status_and_json(response).await
            })
        })
        .collect();
    for request in requests {
        let (status, body) = request.await.expect("task");
        // Authenticated; the alias is simply not one of B's.
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    assert_eq!(
        origin.state.key_requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "twelve requests, one key fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_against_ssl_cert_file_and_never_skipped() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;

    // The tuwunel binary, trusting the test CA only through SSL_CERT_FILE, as other Linux
    // tools would.
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &["localhost"])
        .await
        .expect("front");
    let name = format!("localhost:{}", front.address.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tuwunel.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nserver_name = \"{name}\"\ndatabase_path = \"{}\"\naddress = \"127.0.0.1\"\n\
             port = 0\nallow_registration = true\n\
             yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse = true\n\
             trusted_servers = []\ndns_nameservers = [\"{}\"]\nlog = \"info\"\n{}\n",
            dir.path().join("db").display(),
            crate::testbed::dns_address(),
            crate::testbed::denylist_without_loopback(),
        ),
    )
    .expect("config");
    let ca_file = ca.pem_path.to_str().expect("utf8").to_owned();
    let config = config.to_str().expect("utf8").to_owned();
    let cwd = dir.path().to_owned();
    let mut binary = tokio::task::spawn_blocking(move || {
        let mut binary = crate::binary::Running::start_with_env(
            &["-c", &config],
            &cwd,
            &[("SSL_CERT_FILE", &ca_file)],
        );
        let _ = binary.address();
        binary
    })
    .await
    .expect("start");
    let address = binary.address();
    front.forward_to(address.parse().expect("address"));
    let base = format!("http://{address}");
    let response = client()
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .expect("register");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let response = client()
        .get(format!("{base}/_matrix/client/v3/profile/{}", alice.user_id))
        .bearer_auth(&token)
        .send()
        .await
        .expect("profile");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "the binary verified A's certificate: {body} {:?}", binary.seen);

    // A server that trusts neither tls.ca_file nor SSL_CERT_FILE refuses the same certificate.
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &["localhost"])
        .await
        .expect("front");
    let name = format!("localhost:{}", front.address.port());
    let server_name = format!("server_name=\"{name}\"");
    let denylist = crate::testbed::denylist_without_loopback();
    let untrusting =
        crate::common::TestServer::with_options(&[server_name.as_str(), denylist.as_str()]).await;
    front.forward_to(untrusting.server().addresses()[0]);
    let carol = untrusting.register("carol", "pw").await;
    let (status, body) =
        untrusting.get_as(&carol, &format!("/_matrix/client/v3/profile/{}", alice.user_id)).await;
    assert_error(status, &body, 502, "M_UNKNOWN");
    assert!(body["error"].as_str().is_some_and(|error| error.contains("certificate")), "{body}");
}

#[tokio::test]
async fn device_names_are_shared_only_when_allowed() {
    let ca = Ca::new();
    let origin = FakeServer::start(&ca).await;
    let server = FedServer::start(&ca, &["allow_device_name_federation=true"]).await;
    let bob = server.server.register("bob", "pw").await;
    let _ = upload_device(&server.server, &bob).await;
    let (status, body) = server
        .server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/devices/{}", bob.device_id),
            json!({"display_name": "Bob's phone"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/_matrix/federation/v1/user/devices/{}", bob.user_id.replace('@', "%40"));
    let header = origin.authorization("GET", &path, &server.name, None, None);
    let (status, body) = send(&server, Method::GET, &path, Some(header), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["device_display_name"], "Bob's phone", "{body}");
}

#[tokio::test]
async fn requests_to_a_server_share_one_http2_connection() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    for _ in 0..5 {
        let (status, body) =
            get_as(&a, &alice, &format!("/_matrix/client/v3/profile/{}", bob.user_id)).await;
        assert_eq!(status, 200, "{body}");
    }
    let front = b.front();
    let connections = front.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 1, "five requests from A, one connection to B");
    assert_eq!(front.http2_connections.load(std::sync::atomic::Ordering::SeqCst), 1, "over HTTP/2");
}
