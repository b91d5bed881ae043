//! Third-party networks (`/thirdparty/...`): the protocols application services bridge to.
//! This server has no application services yet, so it bridges to none; Element's "Explore
//! rooms" asks for the list all the same and must get an empty one, not a 404.

use std::{collections::BTreeMap, sync::Arc};

use crate::http::routes::Routes;
use ruma::api::client::thirdparty::{get_protocol, get_protocols};

use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, protocols);
    route(router, protocol)
}

async fn protocols(
    _services: Arc<Services>,
    request: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    request.sender()?;
    Ok(get_protocols::v3::Response::new(BTreeMap::new()))
}

async fn protocol(
    _services: Arc<Services>,
    request: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response> {
    request.sender()?;
    Err(Error::not_found(format!("No application service bridges to '{}'.", request.body.protocol)))
}
