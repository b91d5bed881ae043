//! Outbound HTTP: the process-wide TLS crypto provider and the settings every client this
//! server builds starts from (URL previews, push gateways, federation).
//!
//! reqwest is built with `rustls-no-provider`, so a provider must be installed before any
//! client is built; [`client_builder`] does it once per process.

use std::{sync::Once, time::Duration};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static PROVIDER: Once = Once::new();

/// Installs ring as rustls' crypto provider for the process (first caller wins; installing
/// twice is harmless). Call before building any reqwest client.
pub fn install_tls_provider() {
    PROVIDER.call_once(|| {
        // Another crate may have installed one already; any provider will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the server's identity and no ambient proxies: environment proxy
/// variables must not silently route requests (and their address checks) elsewhere.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
        .user_agent(concat!("tuwunel/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
}
