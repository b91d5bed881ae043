//! Sessions: login flows, `POST /login` (password and token), refresh, logout, and login
//! tokens for signing in another device.

use std::sync::Arc;

use ruma::{
    OwnedUserId, UserId,
    api::client::{
        session::{
            get_login_token,
            get_login_types::{self, v3::LoginType},
            login::{self, v3::LoginInfo},
            logout, logout_all, refresh_token,
        },
        uiaa::{AuthType, UserIdentifier},
    },
};

use super::register::{Checks, session_request};
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{Devices, UserMessage},
    accounts::{passwords, rate_limit::Action, uia::Challenge},
    http::ruma::{Ruma, route},
    storage::{codec::Json, users::REFRESH_TOKENS_TABLE},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, login_types);
    let router = route(router, login);
    let router = route(router, refresh);
    let router = route(router, logout);
    let router = route(router, logout_all);
    route(router, login_token)
}

async fn login_types(
    _services: Arc<Services>,
    _request: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    let mut token = get_login_types::v3::TokenLoginType::new();
    token.get_login_token = true;
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(get_login_types::v3::PasswordLoginType::new()),
        LoginType::Token(token),
    ]))
}

fn invalid_credentials() -> Error {
    Error::forbidden("Invalid username or password.")
}

/// Resolves what a client typed as its user: a full user id of this server or a localpart.
fn local_user(services: &Services, typed: &str) -> Result<OwnedUserId> {
    let user = if typed.starts_with('@') {
        UserId::parse(typed.to_lowercase()).map_err(|_| invalid_credentials())?
    } else {
        UserId::parse_with_server_name(typed.to_lowercase(), &services.config.server_name)
            .map_err(|_| invalid_credentials())?
    };
    if user.server_name() != services.config.server_name {
        return Err(invalid_credentials());
    }
    Ok(user)
}

// The legacy top-level `user` field is still sent by older clients.
#[allow(deprecated)]
async fn login(
    services: Arc<Services>,
    request: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let accounts = &services.accounts;
    let ip = request.client_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    accounts.limiter.check(Action::Login, &ip)?;
    let client_ip = request.client_ip;
    let body = request.body;
    super::register::check_device(
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )?;

    let user_id = match &body.login_info {
        LoginInfo::Password(password) => {
            let typed = match (&password.identifier, &password.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => {
                    return Err(Error::forbidden(
                        "Only user identifiers (m.id.user) are supported.",
                    ));
                }
            };
            let user_id = local_user(&services, &typed)?;
            accounts.limiter.refuse_if_exhausted(Action::FailedLogin, user_id.as_str())?;
            let record = accounts.record(&user_id)?;
            let Some(record) = record else {
                let _ = accounts.limiter.check(Action::FailedLogin, user_id.as_str());
                return Err(invalid_credentials());
            };
            if record.deactivated {
                return Err(Error::matrix(
                    axum::http::StatusCode::FORBIDDEN,
                    ruma::api::error::ErrorKind::UserDeactivated,
                    "This account has been deactivated.",
                ));
            }
            let matches = match record.password_hash {
                Some(hash) => passwords::verify(password.password.clone(), hash).await,
                None => false,
            };
            if !matches {
                let _ = accounts.limiter.check(Action::FailedLogin, user_id.as_str());
                return Err(invalid_credentials());
            }
            user_id
        }
        LoginInfo::Token(token) => accounts
            .take_login_token(&token.token)
            .ok_or_else(|| Error::forbidden("Invalid or expired login token."))?,
        LoginInfo::ApplicationService(_) => {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::AppserviceLoginUnsupported,
                "Application service login is not available.",
            ));
        }
        _ => {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Unsupported login type.",
            ));
        }
    };

    let session = session_request(
        &services,
        body.device_id,
        body.initial_device_display_name,
        body.refresh_token,
        false,
    );
    let issued = accounts
        .call(&user_id, |reply| UserMessage::OpenSession { request: session, reply })
        .await?;
    accounts.note_device_seen(&user_id, &issued.device_id, client_ip);
    let mut response = login::v3::Response::new(user_id, issued.access_token, issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in;
    if let Some(base_url) = &services.config.well_known.client {
        response.well_known =
            Some(login::v3::DiscoveryInfo::new(login::v3::HomeserverInfo::new(base_url.clone())));
    }
    Ok(response)
}

async fn refresh(
    services: Arc<Services>,
    request: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let refresh_hash = crate::accounts::tokens::hash(&request.body.refresh_token);
    let Json(record) = REFRESH_TOKENS_TABLE
        .get(services.storage.engine(), &refresh_hash)?
        .ok_or_else(|| Error::unknown_token(false, "Unknown or revoked refresh token."))?;
    let session = session_request(&services, None, None, true, false);
    let issued = services
        .accounts
        .call(&record.user_id, |reply| UserMessage::Refresh {
            refresh_hash,
            request: session,
            reply,
        })
        .await?;
    let mut response = refresh_token::v3::Response::new(issued.access_token);
    response.refresh_token = issued.refresh_token;
    response.expires_in_ms = issued.expires_in;
    Ok(response)
}

async fn logout(
    services: Arc<Services>,
    request: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    let sender = request.sender()?;
    let device = sender.device_id.clone();
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::RemoveDevices {
            devices: Devices::One(device),
            reply,
        })
        .await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    services: Arc<Services>,
    request: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let sender = request.sender()?;
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::RemoveDevices { devices: Devices::All, reply })
        .await?;
    Ok(logout_all::v3::Response::new())
}

async fn login_token(
    services: Arc<Services>,
    request: Ruma<get_login_token::v1::Request>,
) -> Result<get_login_token::v1::Response> {
    let sender = request.sender()?.clone();
    let accounts = &services.accounts;
    accounts.limiter.refuse_if_exhausted(Action::FailedLogin, sender.user_id.as_str())?;
    let challenge = Challenge {
        endpoint: "login_token",
        flows: vec![vec![AuthType::Password]],
        user: Some(&sender.user_id),
        operation: None,
        server_name: accounts.server_name(),
    };
    let claim = accounts
        .uia
        .authenticate(&challenge, request.body.auth.as_ref(), &Checks(accounts))
        .await?;
    let (token, lifetime) = accounts.issue_login_token(&sender.user_id)?;
    claim.finish();
    Ok(get_login_token::v1::Response::new(lifetime, token))
}
