//! The federation test bed: a DNS server on loopback that every test server asks, a
//! throw-away certificate authority, TLS fronts for test servers and test endpoints, and
//! servers named `localhost:PORT` that federate with each other over TLS.
//!
//! Test servers never reach the network: their only nameserver is [`dns_address`], which
//! knows the names tests registered and answers NXDOMAIN for everything else.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, LazyLock, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::Path,
    http::{HeaderMap, StatusCode},
    routing::{get, put},
};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, SRV},
    },
    serialize::binary::{BinDecodable, BinEncodable},
};
use rand::Rng;
use ruma::{
    CanonicalJsonObject, OwnedServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    serde::Base64,
    signatures::Ed25519KeyPair,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

use crate::common::TestServer;

/// A DNS record the test DNS server answers with.
#[derive(Debug, Clone)]
pub enum TestRecord {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    /// Answer SERVFAIL for the name.
    Fail,
}

/// A name's records and their TTL in seconds.
type Entry = (Vec<TestRecord>, u32);

/// name (lower case, no trailing dot) -> its records.
static ZONE: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Adds records for `name` with `ttl`.
pub fn dns_add(name: &str, ttl: u32, records: Vec<TestRecord>) {
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    ZONE.lock().expect("zone").insert(key, (records, ttl));
}

/// The address of the test DNS server (started on first use).
pub fn dns_address() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind test DNS");
        let address = socket.local_addr().expect("DNS address");
        std::thread::spawn(move || serve_dns(&socket));
        address
    })
}

fn serve_dns(socket: &UdpSocket) {
    let mut buffer = [0u8; 4096];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer) else { continue };
        let Ok(request) = Message::from_bytes(&buffer[..length]) else { continue };
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_authoritative(true);
        response.add_queries(request.queries().to_vec());
        let mut code = ResponseCode::NoError;
        for query in request.queries() {
            let name = query.name().to_utf8();
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            let zone = ZONE.lock().expect("zone");
            let Some((records, ttl)) = zone.get(&key) else {
                code = ResponseCode::NXDomain;
                continue;
            };
            for record in records {
                let rdata = match (record, query.query_type()) {
                    (TestRecord::Fail, _) => {
                        code = ResponseCode::ServFail;
                        continue;
                    }
                    (TestRecord::A(ip), RecordType::A) => RData::A(A(*ip)),
                    (TestRecord::Srv { priority, weight, port, target }, RecordType::SRV) => {
                        let target = Name::from_ascii(format!("{target}.")).expect("SRV target");
                        RData::SRV(SRV::new(*priority, *weight, *port, target))
                    }
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(query.name().clone(), *ttl, rdata));
            }
        }
        response.set_response_code(code);
        if let Ok(bytes) = response.to_bytes() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// A port free on 127.0.0.1 now (for a configuration that must name its port before the
/// server binds it; another process could take it meanwhile, which is unlikely in a test).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A unique DNS label for one test's names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}.test", rand::thread_rng().r#gen::<u32>())
}

/// A throw-away certificate authority, its certificate written to a PEM file servers trust
/// through `tls.ca_file`.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: verifiers pick a CA by its name, and a test may use several.
        let name = format!("tuwunel test CA {:08x}", rand::thread_rng().r#gen::<u32>());
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("CA directory");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, certificate.pem()).expect("write CA");
        Self { issuer: rcgen::Issuer::new(params, key), pem_path, _dir: dir }
    }

    /// A certificate for `names` and its key, as PEM files in `dir` (for `tls.certs` and
    /// `tls.key`).
    pub fn leaf_pem_files(&self, names: &[&str], dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let certificate = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let (certs, private) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&certs, certificate.pem()).expect("write certificate");
        std::fs::write(&private, key.serialize_pem()).expect("write key");
        (certs, private)
    }

    /// A client that trusts only this CA.
    pub fn client(&self) -> reqwest::Client {
        tuwunel::net::outbound::install_tls_provider();
        let pem = std::fs::read(&self.pem_path).expect("CA");
        let ca = reqwest::Certificate::from_pem(&pem).expect("CA certificate");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// A server TLS configuration with a certificate for `names` (host names or IP
    /// addresses), offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let (certificate, key) = self.leaf(names);
        let chain = vec![CertificateDer::from(certificate.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A certificate for `names` and its key as PEM files next to the CA's, for servers that
    /// read their own (Synapse).
    pub fn write_certificate(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        static FILES: AtomicUsize = AtomicUsize::new(0);
        let (certificate, key) = self.leaf(names);
        let number = FILES.fetch_add(1, Ordering::SeqCst);
        let certificate_path = self._dir.path().join(format!("leaf{number}.crt"));
        let key_path = self._dir.path().join(format!("leaf{number}.key"));
        std::fs::write(&certificate_path, certificate.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (certificate_path, key_path)
    }

    fn leaf(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let certificate = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        (certificate, key)
    }
}

/// A TLS listener that forwards each connection's plaintext to a backend address (set once
/// the backend runs, and again when it restarts on another port; none while it is down).
pub struct TlsFront {
    pub address: SocketAddr,
    backend: Arc<Mutex<Option<SocketAddr>>>,
    /// TLS connections accepted, and how many of them negotiated HTTP/2.
    pub connections: Arc<AtomicUsize>,
    pub http2_connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on `address` (port 0 for any) with a certificate for `names`.
    pub async fn bind(address: SocketAddr, ca: &Ca, names: &[&str]) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(ca.server_config(names));
        let backend: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let target = Arc::clone(&backend);
        let connections = Arc::new(AtomicUsize::new(0));
        let http2_connections = Arc::new(AtomicUsize::new(0));
        let (counted, counted_h2) = (Arc::clone(&connections), Arc::clone(&http2_connections));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, target) = (acceptor.clone(), Arc::clone(&target));
                let (counted, counted_h2) = (Arc::clone(&counted), Arc::clone(&counted_h2));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                        counted_h2.fetch_add(1, Ordering::SeqCst);
                    }
                    let Some(backend) = *target.lock().expect("backend") else { return };
                    let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(Self { address, backend, connections, http2_connections, task })
    }

    /// Binds `port` on a random address of 127.0.0.0/8 (a well-known port such as 443 needs
    /// root, as CI has), retrying on collisions with other tests.
    pub async fn bind_random_loopback(port: u16, ca: &Ca, names: &[&str]) -> Self {
        for _ in 0..50 {
            let mut rng = rand::thread_rng();
            let ip = Ipv4Addr::new(
                127,
                rng.gen_range(1..=254),
                rng.gen_range(0..=255),
                rng.gen_range(1..=254),
            );
            match Self::bind(SocketAddr::new(IpAddr::V4(ip), port), ca, names).await {
                Ok(front) => return front,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(error) => panic!(
                    "cannot listen on {ip}:{port} ({error}); the discovery tests bind the \
                     federation ports on loopback and must run as root"
                ),
            }
        }
        panic!("no free loopback address for port {port}");
    }

    pub fn forward_to(&self, backend: SocketAddr) {
        *self.backend.lock().expect("backend") = Some(backend);
    }

    /// Stops forwarding: new connections are closed after their handshake.
    pub fn forward_nowhere(&self) {
        *self.backend.lock().expect("backend") = None;
    }

    pub fn ip(&self) -> Ipv4Addr {
        match self.address.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `ip_range_denylist` with loopback taken out: the explicit exemption that lets test
/// servers reach each other.
pub fn denylist_without_loopback() -> String {
    let ranges: Vec<String> = tuwunel::config::GlobalConfig::default()
        .ip_range_denylist
        .into_iter()
        .filter(|range| range != "127.0.0.0/8" && range != "::1/128")
        .map(|range| format!("\"{range}\""))
        .collect();
    format!("ip_range_denylist=[{}]", ranges.join(","))
}

/// A test server reachable over TLS under `server_name`, through its front.
pub struct FedServer {
    pub server: TestServer,
    /// Kept alive for as long as the server runs.
    _front: TlsFront,
    pub name: String,
}

impl FedServer {
    /// A server named `localhost:PORT`, PORT being its TLS front's.
    pub async fn start(ca: &Ca, extra: &[&str]) -> Self {
        let front =
            TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ca, &["localhost", "127.0.0.1"])
                .await
                .expect("bind TLS front");
        let name = format!("localhost:{}", front.address.port());
        Self::start_named(ca, front, name, extra).await
    }

    /// A server named `name` behind `front`.
    pub async fn start_named(ca: &Ca, front: TlsFront, name: String, extra: &[&str]) -> Self {
        let server_name = format!("server_name=\"{name}\"");
        let ca_file = format!("tls.ca_file=\"{}\"", ca.pem_path.display());
        let denylist = denylist_without_loopback();
        let mut options = vec![server_name.as_str(), ca_file.as_str(), denylist.as_str()];
        options.extend_from_slice(extra);
        let server = TestServer::with_options(&options).await;
        front.forward_to(server.server().addresses()[0]);
        Self { server, _front: front, name }
    }

    /// A server named `HOST:PORT`, HOST a fresh name of the test DNS (from `prefix`): for
    /// rules that match host names, which cannot tell `localhost` servers apart.
    pub async fn start_as(ca: &Ca, prefix: &str, extra: &[&str]) -> Self {
        let host = unique(prefix);
        dns_add(&host, 300, vec![TestRecord::A(Ipv4Addr::LOCALHOST)]);
        let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ca, &[host.as_str()])
            .await
            .expect("bind TLS front");
        let name = format!("{host}:{}", front.address.port());
        Self::start_named(ca, front, name, extra).await
    }

    /// The host name of the server (without the port).
    pub fn host(&self) -> &str {
        self.name.rsplit_once(':').map_or(self.name.as_str(), |(host, _)| host)
    }

    pub fn front(&self) -> &TlsFront {
        &self._front
    }

    /// Stops the server; its front stays, so the name is still there but answers nothing.
    pub async fn stop(&mut self) {
        self._front.forward_nowhere();
        self.server.stop().await;
    }

    /// Starts the server again on its database, behind the same front (same name).
    pub async fn restart(&mut self) {
        self.server.restart().await;
        self._front.forward_to(self.server.server().addresses()[0]);
    }

    pub fn services(&self) -> Arc<tuwunel::Services> {
        Arc::clone(self.server.server().services())
    }

    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }
}

/// A new ed25519 key pair with key id `ed25519:<version>`.
pub fn new_pair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).expect("pair")
}

/// A transaction a [`FakeServer`] received: its id, the `X-Matrix` header and the body.
#[derive(Debug, Clone)]
pub struct Received {
    pub txn_id: String,
    pub authorization: String,
    pub body: Value,
}

/// What a [`FakeServer`] shares with its handlers.
#[derive(Default)]
pub struct FakeState {
    /// Requests for the key document so far.
    pub key_requests: AtomicUsize,
    /// Transactions received, in order.
    pub transactions: Mutex<Vec<Received>>,
    /// Every `/send` attempt, failed ones too: transaction id, PDUs and EDUs carried.
    pub attempts: Mutex<Vec<(String, usize, usize)>>,
    /// When set, `/send` answers this status (and records nothing).
    pub fail_with: Mutex<Option<u16>>,
    /// `GET /user/devices/{userId}` answers, by user id.
    pub devices: Mutex<HashMap<String, Value>>,
    pub device_requests: AtomicUsize,
}

/// A server the test controls, reachable over TLS as `localhost:PORT`: it serves its key
/// document, signs whatever requests the test makes, records the transactions it receives
/// (or fails them on demand) and serves the device lists the test gives it.
pub struct FakeServer {
    pub name: OwnedServerName,
    pub key: Arc<Mutex<Ed25519KeyPair>>,
    pub state: Arc<FakeState>,
    /// Kept alive for as long as the fake runs.
    _front: TlsFront,
}

impl FakeServer {
    pub async fn start(ca: &Ca) -> Self {
        Self::start_on(ca, "localhost", Router::new()).await
    }

    /// A fake that also answers `routes` (fake endpoints of a remote server).
    pub async fn serving(ca: &Ca, routes: Router) -> Self {
        Self::start_on(ca, "localhost", routes).await
    }

    /// A fake named `HOST:PORT`, HOST a fresh name of the test DNS (from `prefix`): for
    /// rules that match host names, which cannot tell `localhost` servers apart.
    pub async fn start_as(ca: &Ca, prefix: &str) -> Self {
        let host = unique(prefix);
        dns_add(&host, 300, vec![TestRecord::A(Ipv4Addr::LOCALHOST)]);
        Self::start_on(ca, &host, Router::new()).await
    }

    async fn start_on(ca: &Ca, host: &str, routes: Router) -> Self {
        let front = TlsFront::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ca, &[host])
            .await
            .expect("front");
        let name: OwnedServerName =
            format!("{host}:{}", front.address.port()).try_into().expect("name");
        let key = Arc::new(Mutex::new(new_pair("fake1")));
        let state = Arc::new(FakeState::default());
        let (document_name, document_key, counter) =
            (name.clone(), Arc::clone(&key), Arc::clone(&state));
        let (send_state, devices_state) = (Arc::clone(&state), Arc::clone(&state));
        let app = Router::new()
            .route(
                "/_matrix/key/v2/server",
                get(move || {
                    let (name, key) = (document_name.clone(), Arc::clone(&document_key));
                    counter.key_requests.fetch_add(1, Ordering::SeqCst);
                    async move {
                        // Slow enough that concurrent requests overlap.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let pair = key.lock().expect("key");
                        let value = json!({
                            "server_name": name,
                            "verify_keys": {
                                format!("ed25519:{}", pair.version()): {
                                    "key": Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode()
                                }
                            },
                            "old_verify_keys": {},
                            "valid_until_ts": 4_000_000_000_000u64,
                        });
                        let mut object: CanonicalJsonObject =
                            serde_json::from_value(value).expect("object");
                        ruma::signatures::sign_json(name.as_str(), &*pair, &mut object)
                            .expect("sign");
                        Json(object)
                    }
                }),
            )
            .route(
                "/_matrix/federation/v1/send/{txn}",
                put(move |Path(txn): Path<String>, headers: HeaderMap, Json(body): Json<Value>| {
                    let state = Arc::clone(&send_state);
                    async move {
                        let count = |field: &str| body[field].as_array().map_or(0, Vec::len);
                        let attempt = (txn.clone(), count("pdus"), count("edus"));
                        state.attempts.lock().expect("attempts").push(attempt);
                        if let Some(status) = *state.fail_with.lock().expect("fail") {
                            let status = StatusCode::from_u16(status).expect("status");
                            return (status, Json(json!({"errcode": "M_UNKNOWN", "error": "failing on purpose"})));
                        }
                        let authorization = headers
                            .get("authorization")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let mut results = serde_json::Map::new();
                        for pdu in body["pdus"].as_array().into_iter().flatten() {
                            if let Some(id) = pdu["event_id"].as_str() {
                                results.insert(id.to_owned(), json!({}));
                            }
                        }
                        state.transactions.lock().expect("transactions").push(Received {
                            txn_id: txn,
                            authorization,
                            body,
                        });
                        (StatusCode::OK, Json(json!({"pdus": results})))
                    }
                }),
            )
            .route(
                "/_matrix/federation/v1/user/devices/{user}",
                get(move |Path(user): Path<String>| {
                    let state = Arc::clone(&devices_state);
                    async move {
                        state.device_requests.fetch_add(1, Ordering::SeqCst);
                        match state.devices.lock().expect("devices").get(&user) {
                            Some(answer) => (StatusCode::OK, Json(answer.clone())),
                            None => (
                                StatusCode::NOT_FOUND,
                                Json(json!({"errcode": "M_NOT_FOUND", "error": "no such user"})),
                            ),
                        }
                    }
                }),
            )
            .merge(routes);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        front.forward_to(listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { name, key, state, _front: front }
    }

    /// The `Authorization` header for a request, signed with `key` (or the current key).
    pub fn authorization(
        &self,
        method: &str,
        uri: &str,
        destination: &str,
        body: Option<&Value>,
        key: Option<&Ed25519KeyPair>,
    ) -> String {
        let bytes = body.map(|body| serde_json::to_vec(body).expect("json")).unwrap_or_default();
        self.authorization_raw(method, uri, destination, &bytes, key)
    }

    /// [`Self::authorization`] over raw body bytes.
    pub fn authorization_raw(
        &self,
        method: &str,
        uri: &str,
        destination: &str,
        body: &[u8],
        key: Option<&Ed25519KeyPair>,
    ) -> String {
        let current = self.key.lock().expect("key");
        let key = key.unwrap_or(&current);
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(body.to_vec())
            .expect("request");
        let destination: OwnedServerName = destination.try_into().expect("destination");
        let header = XMatrix::sign_http_request(
            &request,
            XMatrixSigningInput::new(self.name.clone(), destination, key),
        )
        .expect("sign");
        header.to_string()
    }

    /// A user id of this server.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Sends `server` a transaction signed by this server: `body` as it is (a JSON value)
    /// under `txn_id`.
    pub async fn send_transaction(
        &self,
        server: &FedServer,
        txn_id: &str,
        body: &Value,
    ) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send_transaction_bytes(server, txn_id, bytes).await
    }

    /// Sends `bytes` as a signed transaction body.
    pub async fn send_transaction_bytes(
        &self,
        server: &FedServer,
        txn_id: &str,
        bytes: Vec<u8>,
    ) -> (u16, Value) {
        let uri = format!("/_matrix/federation/v1/send/{txn_id}");
        let authorization = self.authorization_raw("PUT", &uri, &server.name, &bytes, None);
        let response = crate::common::client()
            .put(server.server.url(&uri))
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .expect("send");
        crate::common::status_and_json(response).await
    }

    /// A transaction body from this server with `edus` (and `pdus`).
    pub fn transaction(&self, pdus: Vec<Value>, edus: Vec<Value>) -> Value {
        json!({
            "origin": self.name,
            "origin_server_ts": 1_700_000_000_000u64,
            "pdus": pdus,
            "edus": edus,
        })
    }

    /// The transactions received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.transactions.lock().expect("transactions").clone()
    }

    /// Every EDU received so far, in order.
    pub fn edus(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .flat_map(|received| received.body["edus"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Makes `/send` answer `status` (`None`: accept again).
    pub fn fail_with(&self, status: Option<u16>) {
        *self.state.fail_with.lock().expect("fail") = status;
    }
}

/// Makes `user` (of any server) a member of `room` on `server` with `membership`, as if
/// their join or leave had arrived: the stand-in, until federated joins exist, for a room
/// this server shares with another server.
pub async fn inject_member(server: &TestServer, room: &str, user: &str, membership: &str) {
    let room = ruma::RoomId::parse(room).expect("room id");
    let user = ruma::UserId::parse(user).expect("user id");
    let content: CanonicalJsonObject =
        serde_json::from_value(json!({ "membership": membership })).expect("content");
    let template = tuwunel::rooms::builder::Template::state(
        ruma::events::TimelineEventType::RoomMember,
        user.as_str(),
        &user,
        content,
    );
    server
        .server()
        .services()
        .rooms
        .send(&room, template, None)
        .await
        .expect("membership accepted");
}

/// How a [`TcpFront`] treats connections; changing it closes the connections it holds, so a
/// client's pooled connection meets the new behaviour too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontMode {
    /// Pass bytes both ways to the backend.
    Forward(SocketAddr),
    /// Close each connection at once: a service that is down.
    Nowhere,
    /// Accept and never answer (the request is read and discarded): a service that hangs.
    Hang,
    /// Pass the request on, wait for the backend's first answer bytes, then close without
    /// passing them back: a service that processed a request whose answer was lost.
    DropResponses(SocketAddr),
}

/// A plain TCP listener with a stable address in front of a backend that may restart on
/// another port (a bridge, a test server), and that can fail in the ways networks do.
pub struct TcpFront {
    pub address: SocketAddr,
    mode: tokio::sync::watch::Sender<FrontMode>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpFront {
    /// Listens on a free port of 127.0.0.1, refusing nothing but forwarding nowhere yet.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a front");
        let address = listener.local_addr().expect("front address");
        let (mode, watch) = tokio::sync::watch::channel(FrontMode::Nowhere);
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut watch = watch.clone();
                let current = *watch.borrow_and_update();
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_front_connection(stream, current) => {}
                        // A new mode (or the front dropped) ends the connection.
                        _ = watch.changed() => {}
                    }
                });
            }
        });
        Self { address, mode, connections, task }
    }

    /// A front already forwarding to `backend`.
    pub async fn forwarding_to(backend: SocketAddr) -> Self {
        let front = Self::bind().await;
        front.set(FrontMode::Forward(backend));
        front
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn set(&self, mode: FrontMode) {
        self.mode.send_replace(mode);
    }

    pub fn forward_to(&self, backend: SocketAddr) {
        self.set(FrontMode::Forward(backend));
    }
}

impl Drop for TcpFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_front_connection(mut client: TcpStream, mode: FrontMode) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match mode {
        FrontMode::Nowhere => {}
        FrontMode::Hang => {
            // Read until the client gives up; answer nothing.
            let mut buffer = [0u8; 4096];
            while matches!(client.read(&mut buffer).await, Ok(read) if read > 0) {}
        }
        FrontMode::Forward(backend) => {
            let Ok(mut backend) = TcpStream::connect(backend).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        }
        FrontMode::DropResponses(backend) => {
            let Ok(backend) = TcpStream::connect(backend).await else { return };
            let (mut client_read, _client_write) = client.split();
            let (mut backend_read, mut backend_write) = backend.into_split();
            let upstream = async {
                let mut buffer = [0u8; 4096];
                loop {
                    match client_read.read(&mut buffer).await {
                        Ok(read) if read > 0 => {
                            if backend_write.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            };
            let mut first = [0u8; 1];
            tokio::select! {
                () = upstream => {}
                // The backend has answered, so it handled the request: drop the answer.
                _ = backend_read.read(&mut first) => {}
            }
        }
    }
}
