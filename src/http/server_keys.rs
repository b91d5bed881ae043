//! `GET /_matrix/key/v2/server`: this server's signing keys, self-signed, for other servers.

use std::{sync::Arc, time::Duration};

use ruma::{
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, UInt,
    api::federation::discovery::{ServerSigningKeys, VerifyKey, get_server_keys},
    serde::Raw,
};

use super::ruma::{Ruma, route};
use crate::http::routes::Routes;
use crate::{Error, Result, Services};

/// How long other servers may cache our key document.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

pub fn routes(router: Routes) -> Routes {
    route(router, server_keys)
}

async fn server_keys(
    services: Arc<Services>,
    _request: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    if !services.config.allow_federation {
        return Err(Error::forbidden("Federation is disabled."));
    }
    let key = &services.signing_key;
    let valid_until = MilliSecondsSinceUnixEpoch::now()
        .get()
        .saturating_add(UInt::try_from(VALIDITY.as_millis()).unwrap_or(UInt::MAX));
    let mut keys = ServerSigningKeys::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch(valid_until),
    );
    keys.verify_keys.insert(key.key_id().to_owned(), VerifyKey::new(key.public_key()));
    let CanonicalJsonValue::Object(mut object) = ruma::canonical_json::to_canonical_value(&keys)
        .map_err(|error| Error::internal(format!("key document: {error}")))?
    else {
        return Err(Error::internal("key document is not an object"));
    };
    object.remove("signatures");
    key.sign_json(&mut object)?;
    let raw = serde_json::value::to_raw_value(&object)?;
    Ok(get_server_keys::v2::Response::new(Raw::from_json(raw)))
}
