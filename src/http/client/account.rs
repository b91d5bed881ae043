//! Account management: whoami, password change and deactivation.

use std::sync::Arc;

use ruma::api::client::{
    account::{ThirdPartyIdRemovalStatus, change_password, deactivate, whoami},
    uiaa::AuthType,
};

use super::register::Checks;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services, accounts,
    accounts::{Devices, UserMessage},
    accounts::{
        passwords,
        rate_limit::Action,
        uia::{Challenge, Claim},
    },
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, whoami);
    let router = route(router, change_password);
    route(router, deactivate)
}

async fn whoami(
    _services: Arc<Services>,
    request: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response> {
    let sender = request.sender()?;
    let mut response = whoami::v3::Response::new(sender.user_id.clone(), sender.guest);
    response.device_id = Some(sender.device_id.clone());
    Ok(response)
}

/// Runs the password stage of UIA for the caller. `operation` is what the request asks for
/// (see [`Challenge::operation`]); the returned claim is finished once that succeeded.
pub(super) async fn password_challenge<'a>(
    services: &'a Services,
    endpoint: &'static str,
    user: &ruma::UserId,
    operation: Option<String>,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
) -> Result<Claim<'a>> {
    let accounts = &services.accounts;
    accounts.limiter.refuse_if_exhausted(Action::FailedLogin, user.as_str())?;
    let challenge = Challenge {
        endpoint,
        flows: vec![vec![AuthType::Password]],
        user: Some(user),
        operation,
        server_name: accounts.server_name(),
    };
    accounts.uia.authenticate(&challenge, auth, &Checks(accounts)).await
}

async fn change_password(
    services: Arc<Services>,
    request: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let claim =
        password_challenge(&services, "change_password", &sender.user_id, None, body.auth.as_ref())
            .await?;
    if body.new_password.is_empty() {
        return Err(Error::matrix(
            axum::http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::WeakPassword,
            "The new password must not be empty.",
        ));
    }
    let hash = passwords::hash(body.new_password).await?;
    let accounts = &services.accounts;
    accounts
        .call(&sender.user_id, |reply| UserMessage::SetPassword { hash: Some(hash), reply })
        .await?;
    if body.logout_devices {
        let keep = Some(sender.device_id.clone());
        accounts
            .call(&sender.user_id, |reply| UserMessage::RemoveDevices {
                devices: Devices::AllExcept(keep),
                reply,
            })
            .await?;
    }
    claim.finish();
    tracing::info!(user = %sender.user_id, "password changed");
    Ok(change_password::v3::Response::new())
}

async fn deactivate(
    services: Arc<Services>,
    request: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let sender = request.sender()?.clone();
    let claim = password_challenge(
        &services,
        "deactivate",
        &sender.user_id,
        None,
        request.body.auth.as_ref(),
    )
    .await?;
    accounts::deactivate::deactivate(
        &services.accounts,
        &services.rooms,
        &services.push,
        &sender.user_id,
    )
    .await?;
    claim.finish();
    tracing::info!(user = %sender.user_id, "account deactivated");
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
