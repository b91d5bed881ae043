//! Registration: `POST /register` with User-Interactive Authentication, username
//! availability, registration token validity, guest accounts.

use std::sync::Arc;

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{
        Accounts, SessionRequest, UserMessage, passwords,
        rate_limit::Action,
        registration::{self, NewAccount},
        uia::{Challenge, StageChecks},
    },
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits,
    storage::users::UserRecord,
};
use ruma::{
    OwnedUserId, UserId,
    api::client::{
        account::{
            check_registration_token_validity, get_username_availability,
            register::{self, RegistrationKind},
        },
        uiaa::AuthType,
    },
};

/// The UIA endpoint name of registration.
const REGISTER: &str = "register";

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, register);
    let router = route(router, username_available);
    route(router, token_validity)
}

/// Stage checks backed by the accounts service.
pub(crate) struct Checks<'a>(pub(crate) &'a Accounts);

impl StageChecks for Checks<'_> {
    async fn password_matches(&self, user: &UserId, password: &str) -> bool {
        match self.0.record(user) {
            Ok(Some(UserRecord { password_hash: Some(hash), deactivated: false, .. })) => {
                passwords::verify(password.to_owned(), hash).await
            }
            _ => false,
        }
    }

    fn registration_token_valid(&self, token: &str) -> bool {
        self.0.registration_token_valid(token)
    }

    fn password_failed(&self, user: &UserId) {
        let _ = self.0.limiter.check(Action::FailedLogin, user.as_str());
    }
}

/// The bounds on a device a client names when it logs in or registers: its ID is stored in
/// keys, its name is shown to others in key lists.
pub(crate) fn check_device(
    device_id: Option<&ruma::DeviceId>,
    display_name: Option<&str>,
) -> Result<()> {
    if let Some(device_id) = device_id {
        validate::max_bytes("A device ID", device_id.as_str(), limits::MAX_OPAQUE_ID_BYTES)?;
    }
    if let Some(name) = display_name {
        validate::max_chars("A device name", name, limits::MAX_DEVICE_NAME_CHARS)?;
    }
    Ok(())
}

/// The session options every login-like endpoint uses.
pub(crate) fn session_request(
    services: &Services,
    device_id: Option<ruma::OwnedDeviceId>,
    display_name: Option<String>,
    refresh: bool,
    guest: bool,
) -> SessionRequest {
    let refresh_ttl = match services.config.refresh_token_ttl {
        0 => None,
        seconds => Some(std::time::Duration::from_secs(seconds)),
    };
    SessionRequest {
        device_id,
        display_name,
        refresh,
        access_ttl: std::time::Duration::from_secs(services.config.access_token_ttl.max(1)),
        refresh_ttl,
        guest,
    }
}

fn ip_key(request_ip: Option<std::net::IpAddr>) -> String {
    request_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

async fn register(
    services: Arc<Services>,
    request: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    let ip = ip_key(request.client_ip);
    let client_ip = request.client_ip;
    let body = request.body;
    let accounts = &services.accounts;
    validate::known_param("kind", body.kind.as_str(), &["user", "guest"])?;
    check_device(body.device_id.as_deref(), body.initial_device_display_name.as_deref())?;

    if body.kind == RegistrationKind::Guest {
        if !services.config.allow_guest_registration {
            return Err(Error::forbidden("Guest registration is disabled on this server."));
        }
        accounts.limiter.check(Action::Registration, &ip)?;
        return register_guest(&services, body).await;
    }
    if !services.config.allow_registration {
        return Err(Error::forbidden("Registration has been disabled on this server."));
    }

    // The username binds to the UIA session at the first request that gives one; a later
    // stage may leave it out (and gets that one) but not change it.
    let session = body.auth.as_ref().and_then(|auth| auth.session());
    let requested = body.username.clone().or_else(|| {
        let bound = accounts.uia.bound_operation(session?, REGISTER)?;
        Some(UserId::parse(bound).ok()?.localpart().to_owned())
    });
    let (user_id, operation) = match &requested {
        Some(username) => {
            let user_id = accounts.check_localpart(username)?;
            (user_id.clone(), Some(user_id.to_string()))
        }
        None => (generated_user_id(accounts)?, None),
    };
    if accounts.record(&user_id)?.is_some() {
        return Err(user_in_use());
    }

    let challenge = Challenge {
        endpoint: REGISTER,
        flows: accounts.registration_flows(),
        user: None,
        operation,
        server_name: accounts.server_name(),
    };
    let claim =
        accounts.uia.authenticate(&challenge, body.auth.as_ref(), &Checks(accounts)).await?;
    accounts.limiter.check(Action::Registration, &ip)?;

    let password_hash = match body.password {
        Some(password) if !password.is_empty() => Some(passwords::hash(password).await?),
        _ => None,
    };
    let suffix = &services.config.new_user_displayname_suffix;
    let display_name = if suffix.is_empty() {
        user_id.localpart().to_owned()
    } else {
        format!("{} {suffix}", user_id.localpart())
    };

    let account = NewAccount {
        user: user_id.clone(),
        password_hash,
        display_name,
        guest: false,
        registration_token: claim.registration_token().map(str::to_owned),
    };
    let admin =
        registration::register(accounts, &services.rooms, &services.config, account).await?;
    claim.finish();
    tracing::info!(user = %user_id, admin, "registered a new account");

    let mut response = register::v3::Response::new(user_id.clone());
    if body.inhibit_login {
        return Ok(response);
    }
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
    response.access_token = Some(issued.access_token);
    response.device_id = Some(issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in;
    Ok(response)
}

async fn register_guest(
    services: &Services,
    body: register::v3::Request,
) -> Result<register::v3::Response> {
    let accounts = &services.accounts;
    let user_id = loop {
        let candidate = services.storage.interner().allocate().to_string();
        let user_id = UserId::parse_with_server_name(candidate.as_str(), accounts.server_name())
            .map_err(|error| Error::internal(format!("guest id: {error}")))?;
        if accounts.record(&user_id)?.is_none() {
            break user_id;
        }
    };
    let account = NewAccount {
        user: user_id.clone(),
        password_hash: None,
        display_name: format!("Guest {}", user_id.localpart()),
        guest: true,
        registration_token: None,
    };
    accounts.create_account(account).await?;
    let session =
        session_request(services, None, body.initial_device_display_name, body.refresh_token, true);
    let issued = accounts
        .call(&user_id, |reply| UserMessage::OpenSession { request: session, reply })
        .await?;
    let mut response = register::v3::Response::new(user_id);
    response.access_token = Some(issued.access_token);
    response.device_id = Some(issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in;
    Ok(response)
}

fn generated_user_id(accounts: &Accounts) -> Result<OwnedUserId> {
    use rand::Rng;
    for _ in 0..16 {
        let localpart: String =
            (0..12).map(|_| char::from(rand::thread_rng().gen_range(b'a'..=b'z'))).collect();
        let user_id = accounts.check_localpart(&localpart)?;
        if accounts.record(&user_id)?.is_none() {
            return Ok(user_id);
        }
    }
    Err(Error::internal("could not generate a free user id"))
}

fn user_in_use() -> Error {
    Error::matrix(
        axum::http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::UserInUse,
        "That user ID is already taken.",
    )
}

async fn username_available(
    services: Arc<Services>,
    request: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    let user_id = services.accounts.check_localpart(&request.body.username)?;
    if services.accounts.record(&user_id)?.is_some() {
        return Err(user_in_use());
    }
    Ok(get_username_availability::v3::Response::new(true))
}

async fn token_validity(
    services: Arc<Services>,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if !services.config.allow_registration {
        return Err(Error::forbidden("Registration has been disabled on this server."));
    }
    let ip = ip_key(request.client_ip);
    services.accounts.limiter.refuse_if_exhausted(Action::Registration, &ip)?;
    let valid = services
        .accounts
        .registration_flows()
        .iter()
        .any(|flow| flow.contains(&AuthType::RegistrationToken))
        && services.accounts.registration_token_valid(&request.body.token);
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
