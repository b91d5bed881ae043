//! `GET /_matrix/federation/v1/version`: this server's software, for other servers.

use std::sync::Arc;

use ruma::api::federation::discovery::get_server_version;

use crate::{Result, Services, http::discovery::SERVER_SOFTWARE, http::ruma::Ruma};

pub(super) async fn version(
    _services: Arc<Services>,
    _request: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some(SERVER_SOFTWARE.to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
