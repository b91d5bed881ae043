//! Discovery: the spec versions we speak, `.well-known` delegation and support documents,
//! and the server's name and version for clients and monitoring (other servers ask
//! `http::federation`).

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, http::Method, routing::get};
use ruma::api::{
    client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        discover_support::{self, Contact, ContactRole},
        get_supported_versions,
    },
    client::rtc::RtcTransport,
    federation::discovery::discover_homeserver as discover_server,
};
use serde_json::{Value as JsonValue, json};

use super::ruma::{Ruma, route};
use crate::http::routes::{BodyKind, Routes};
use crate::{Error, Result, Services};

/// The name servers and monitoring see.
pub const SERVER_SOFTWARE: &str = "Tuwunel";

/// The Client-Server API versions this server implements: only versions whose endpoints are
/// all served, since clients take a version as a promise. v1.15 adds the OAuth 2.0
/// authentication API (`GET /v1/auth_metadata` and its flows), which is not built (its room
/// summaries are); v1.18 the suspension and lock admin endpoints, v1.19
/// `GET /v1/mutual_rooms`. The
/// integration test `discovery::every_advertised_version_is_served` holds this list to the
/// endpoints each version added.
const SPEC_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14",
];

pub fn routes(router: Routes) -> Routes {
    let router = route(router, versions);
    let router = route(router, well_known_client);
    let router = route(router, well_known_support);
    let router = route(router, well_known_server);
    router.mount(Method::GET, "/_tuwunel/server_version", BodyKind::Ignored, get(server_version))
}

async fn versions(
    services: Arc<Services>,
    _request: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(
        SPEC_VERSIONS.iter().map(|version| (*version).to_owned()).collect(),
    );
    response.unstable_features = BTreeMap::new();
    if !services.config.well_known.rtc_transports_json().is_empty() {
        // MatrixRTC transport discovery (`/rtc/transports`) has something to offer.
        response.unstable_features.insert("org.matrix.msc4143".to_owned(), true);
    }
    Ok(response)
}

/// The configured MatrixRTC transports as ruma's type (checked at startup to have a `type`).
fn rtc_transports(services: &Services) -> Result<Vec<RtcTransport>> {
    services
        .config
        .well_known
        .rtc_transports_json()
        .into_iter()
        .map(|mut object| {
            let kind = match object.remove("type") {
                Some(JsonValue::String(kind)) => kind,
                _ => return Err(Error::internal("an RTC transport without a type")),
            };
            RtcTransport::new(&kind, object)
                .map_err(|error| Error::internal(format!("RTC transport {kind}: {error}")))
        })
        .collect()
}

async fn well_known_client(
    services: Arc<Services>,
    _request: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    let base_url = services.config.well_known.client.clone().ok_or_else(|| {
        Error::not_found(
            "This server does not publish client delegation (well_known.client is unset).",
        )
    })?;
    let mut response = discover_homeserver::Response::new(HomeserverInfo::new(base_url));
    response.rtc_foci = rtc_transports(&services)?;
    Ok(response)
}

async fn well_known_server(
    services: Arc<Services>,
    _request: Ruma<discover_server::Request>,
) -> Result<discover_server::Response> {
    let server = services.config.well_known.server.clone().ok_or_else(|| {
        Error::not_found(
            "This server does not publish server delegation (well_known.server is unset).",
        )
    })?;
    Ok(discover_server::Response::new(server))
}

async fn well_known_support(
    services: Arc<Services>,
    _request: Ruma<discover_support::Request>,
) -> Result<discover_support::Response> {
    let well_known = &services.config.well_known;
    let role = match well_known.support_role.as_deref() {
        Some("m.role.security") => ContactRole::Security,
        _ => ContactRole::Admin,
    };
    let contact = match (&well_known.support_email, &well_known.support_mxid) {
        (Some(email), mxid) => {
            let mut contact = Contact::with_email_address(role, email.clone());
            contact.matrix_id = mxid.clone();
            Some(contact)
        }
        (None, Some(mxid)) => Some(Contact::with_matrix_id(role, mxid.clone())),
        (None, None) => None,
    };
    let contacts: Vec<Contact> = contact.into_iter().collect();
    if contacts.is_empty() && well_known.support_page.is_none() {
        return Err(Error::not_found("This server publishes no support contacts."));
    }
    let mut response = discover_support::Response::with_contacts(contacts);
    response.support_page = well_known.support_page.clone();
    Ok(response)
}

async fn server_version() -> Json<JsonValue> {
    Json(json!({ "name": SERVER_SOFTWARE, "version": env!("CARGO_PKG_VERSION") }))
}
