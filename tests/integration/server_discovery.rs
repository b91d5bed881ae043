//! Server discovery, each step of the spec's order against the test bed's DNS server and
//! `.well-known` endpoints served over TLS on loopback port 443 (so these tests need root,
//! as CI has): IP literals, explicit ports, `.well-known` delegation (to an explicit port, to
//! SRV), SRV without `.well-known` (`_matrix-fed._tcp`, then `_matrix._tcp`), port 8448, the
//! `.well-known` error cases, caching by `Cache-Control` and TTL, cached failures, and
//! concurrent lookups sharing one resolution.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use ruma::OwnedServerName;
use serde_json::json;
use tuwunel::federation::discovery::{Discovery, Route};

use crate::testbed::{Ca, FedServer, TestRecord, TlsFront, dns_add, unique};

fn name(text: &str) -> OwnedServerName {
    text.try_into().expect("server name")
}

fn discovery(server: &FedServer) -> Arc<Discovery> {
    Arc::clone(server.server.server().services().federation.client.discovery())
}

/// What a test `.well-known` endpoint answers for one host.
#[derive(Clone)]
enum Answer {
    Delegate(String, Option<&'static str>),
    Status(StatusCode),
    NotJson,
    RedirectTo(&'static str),
}

/// `.well-known` endpoints for several host names on one loopback address, port 443, each
/// answering as told and counting requests.
struct WellKnown {
    front: TlsFront,
    requests: Arc<AtomicUsize>,
}

impl WellKnown {
    async fn start(ca: &Ca, answers: Vec<(String, Answer)>) -> Self {
        let names: Vec<String> = answers.iter().map(|(host, _)| host.clone()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let front = TlsFront::bind_random_loopback(443, ca, &name_refs).await;
        let requests = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(answers);
        let handler = {
            let (requests, answers) = (Arc::clone(&requests), Arc::clone(&answers));
            move |uri: Uri, headers: HeaderMap| {
                let (requests, answers) = (Arc::clone(&requests), Arc::clone(&answers));
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in `Host`.
                    let host = uri
                        .host()
                        .map(str::to_owned)
                        .or_else(|| {
                            let value = headers.get(header::HOST)?.to_str().ok()?;
                            Some(value.split(':').next().unwrap_or(value).to_owned())
                        })
                        .unwrap_or_default();
                    let answer =
                        answers.iter().find(|(name, _)| *name == host).map(|(_, a)| a.clone());
                    respond(answer)
                }
            }
        };
        let app = Router::new().route("/.well-known/matrix/server", get(handler.clone())).route(
            "/elsewhere",
            get(|| async { axum::Json(json!({"m.server": "moved.test:4321"})) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        front.forward_to(listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        for host in &names {
            dns_add(host, 60, vec![TestRecord::A(front.ip())]);
        }
        Self { front, requests }
    }
}

fn respond(answer: Option<Answer>) -> Response {
    match answer {
        Some(Answer::Delegate(to, cache)) => {
            let mut response = axum::Json(json!({"m.server": to})).into_response();
            if let Some(cache) = cache {
                response.headers_mut().insert(header::CACHE_CONTROL, cache.parse().expect("value"));
            }
            response
        }
        Some(Answer::Status(status)) => (status, "no").into_response(),
        Some(Answer::NotJson) => (StatusCode::OK, "{\"m.server\": ").into_response(),
        Some(Answer::RedirectTo(path)) => {
            (StatusCode::FOUND, [(header::LOCATION, path)], "").into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A user of `from` reads the profile of `@u:<target>` (a full federation round trip).
async fn profile_round_trip(from: &FedServer, to: &FedServer) {
    let user = from.server.register(&format!("asker{}", rand::random::<u16>()), "pw").await;
    let _target = to.server.register("u", "pw").await;
    let (status, body) =
        from.server.get_as(&user, &format!("/_matrix/client/v3/profile/@u:{}", to.name)).await;
    assert_eq!(status, 200, "profile of @u:{}: {body}", to.name);
}

#[tokio::test]
async fn ip_literals_and_explicit_ports_are_used_as_given() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &["127.0.0.1"])
        .await
        .expect("front");
    let literal = format!("127.0.0.1:{}", front.address.port());
    let b = FedServer::start_named(&ca, front, literal.clone(), &[]).await;
    profile_round_trip(&a, &b).await;
    let destination = discovery(&a).resolve(&name(&literal)).await.expect("resolves");
    assert_eq!(destination.route, Route::IpLiteral);
    assert_eq!(destination.host_header, literal);
    let destination = discovery(&b).resolve(&name(&a.name)).await.expect("resolves");
    assert_eq!((destination.route, destination.host.as_str()), (Route::ExplicitPort, "localhost"));
    let plain = discovery(&a).resolve(&name("192.0.2.7")).await.expect("resolves");
    assert_eq!((plain.port, plain.route), (8448, Route::IpLiteral));
}

#[tokio::test]
async fn well_known_delegates_to_a_port_and_lookups_share_one_fetch() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let delegated = unique("wk");
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &["localhost"])
        .await
        .expect("front");
    let target = format!("localhost:{}", front.address.port());
    let well_known = WellKnown::start(
        &ca,
        vec![(delegated.clone(), Answer::Delegate(target.clone(), Some("max-age=600")))],
    )
    .await;
    let b = FedServer::start_named(&ca, front, delegated.clone(), &[]).await;

    let resolver = discovery(&a);
    let server = name(&delegated);
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let (resolver, server) = (Arc::clone(&resolver), server.clone());
            tokio::spawn(async move { resolver.resolve(&server).await })
        })
        .collect();
    for lookup in lookups {
        let destination = lookup.await.expect("task").expect("resolves");
        assert_eq!(destination.route, Route::WellKnownExplicitPort);
        assert_eq!(destination.host_header, target);
    }
    assert_eq!(well_known.requests.load(Ordering::SeqCst), 1, "one fetch for all lookups");
    let (_, ttl) = resolver.cached_with_expiry(&server).expect("cached");
    assert!(ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600), "{ttl:?}");

    profile_round_trip(&a, &b).await;
    assert_eq!(well_known.requests.load(Ordering::SeqCst), 1, "served from the cache");
    drop(well_known.front);
}

#[tokio::test]
async fn well_known_then_srv_connects_to_the_target_with_the_delegated_name() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let server_name = unique("origin");
    let delegated = unique("deleg");
    let target = unique("target");
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &[&delegated])
        .await
        .expect("front");
    let port = front.address.port();
    let _well_known = WellKnown::start(
        &ca,
        vec![(server_name.clone(), Answer::Delegate(delegated.clone(), None))],
    )
    .await;
    dns_add(
        &format!("_matrix-fed._tcp.{delegated}"),
        30,
        vec![TestRecord::Srv { priority: 10, weight: 5, port, target: target.clone() }],
    );
    dns_add(&target, 30, vec![TestRecord::A(std::net::Ipv4Addr::LOCALHOST)]);
    let b = FedServer::start_named(&ca, front, server_name.clone(), &[]).await;

    profile_round_trip(&a, &b).await;
    let resolver = discovery(&a);
    let (destination, ttl) = resolver.cached_with_expiry(&name(&server_name)).expect("cached");
    let destination = destination.expect("resolved");
    assert_eq!(destination.route, Route::WellKnownSrv);
    assert_eq!(destination.host, delegated, "TLS checks the delegated name");
    assert_eq!(destination.host_header, delegated);
    assert_eq!(destination.connect_to.as_deref(), Some(target.as_str()));
    assert_eq!(destination.port, port);
    assert!(ttl <= Duration::from_secs(30), "cached no longer than the SRV record: {ttl:?}");
}

#[tokio::test]
async fn srv_records_are_used_without_well_known() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    // No `.well-known` anywhere: the name's address has nothing listening on 443.
    let server_name = unique("srv");
    let legacy = unique("legacy");
    let target = unique("target");
    let unused = std::net::Ipv4Addr::new(127, 0, 0, 1);
    dns_add(&server_name, 30, vec![TestRecord::A(unused)]);
    dns_add(&legacy, 30, vec![TestRecord::A(unused)]);
    dns_add(&target, 30, vec![TestRecord::A(std::net::Ipv4Addr::LOCALHOST)]);
    let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ca, &[&server_name])
        .await
        .expect("front");
    let port = front.address.port();
    dns_add(
        &format!("_matrix-fed._tcp.{server_name}"),
        30,
        vec![TestRecord::Srv { priority: 1, weight: 1, port, target: target.clone() }],
    );
    dns_add(
        &format!("_matrix._tcp.{legacy}"),
        30,
        vec![TestRecord::Srv { priority: 1, weight: 1, port: 9999, target: target.clone() }],
    );
    let b = FedServer::start_named(&ca, front, server_name.clone(), &[]).await;
    profile_round_trip(&a, &b).await;
    let resolver = discovery(&a);
    let destination = resolver.resolve(&name(&server_name)).await.expect("resolves");
    assert_eq!((destination.route, destination.port), (Route::Srv, port));
    assert_eq!(destination.host, server_name);
    let destination = resolver.resolve(&name(&legacy)).await.expect("resolves");
    assert_eq!((destination.route, destination.port), (Route::LegacySrv, 9999));
    assert_eq!(destination.host_header, legacy);
}

#[tokio::test]
async fn port_8448_is_the_last_resort() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let server_name = unique("plain");
    let front = TlsFront::bind_random_loopback(8448, &ca, &[&server_name]).await;
    dns_add(&server_name, 30, vec![TestRecord::A(front.ip())]);
    let b = FedServer::start_named(&ca, front, server_name.clone(), &[]).await;
    profile_round_trip(&a, &b).await;
    let destination = discovery(&a).resolve(&name(&server_name)).await.expect("resolves");
    assert_eq!((destination.route, destination.port), (Route::DefaultPort, 8448));
}

#[tokio::test]
async fn well_known_errors_fall_back_and_redirects_are_followed() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let missing = unique("missing");
    let broken = unique("broken");
    let looping = unique("loop");
    let moved = unique("moved");
    let _well_known = WellKnown::start(
        &ca,
        vec![
            (missing.clone(), Answer::Status(StatusCode::NOT_FOUND)),
            (broken.clone(), Answer::NotJson),
            (looping.clone(), Answer::RedirectTo("/.well-known/matrix/server")),
            (moved.clone(), Answer::RedirectTo("/elsewhere")),
        ],
    )
    .await;
    let resolver = discovery(&a);
    for host in [&missing, &broken, &looping] {
        let destination = resolver.resolve(&name(host)).await.expect("resolves");
        assert_eq!(destination.route, Route::DefaultPort, "{host}");
        assert_eq!((destination.host.as_str(), destination.port), (host.as_str(), 8448));
        let (_, ttl) = resolver.cached_with_expiry(&name(host)).expect("cached");
        assert!(ttl <= Duration::from_secs(3600), "error answers are cached at most an hour");
    }
    let destination = resolver.resolve(&name(&moved)).await.expect("resolves");
    assert_eq!(destination.route, Route::WellKnownExplicitPort);
    assert_eq!(destination.host_header, "moved.test:4321");
}

#[tokio::test]
async fn failed_resolutions_are_cached_briefly() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let server_name = unique("servfail");
    dns_add(&server_name, 30, vec![TestRecord::Fail]);
    dns_add(&format!("_matrix-fed._tcp.{server_name}"), 30, vec![TestRecord::Fail]);
    let resolver = discovery(&a);
    let error = resolver.resolve(&name(&server_name)).await.expect_err("DNS fails");
    assert!(error.0.contains("SRV"), "{error}");
    let (cached, ttl) = resolver.cached_with_expiry(&name(&server_name)).expect("cached");
    assert!(cached.is_err());
    assert!(ttl <= tuwunel::federation::discovery::FAILURE_TTL, "{ttl:?}");
    // A client asking meanwhile gets the gateway error at once.
    let user = a.server.register("asker", "pw").await;
    let (status, body) =
        a.server.get_as(&user, &format!("/_matrix/client/v3/profile/@u:{server_name}")).await;
    crate::common::assert_error(status, &body, 502, "M_UNKNOWN");
}
