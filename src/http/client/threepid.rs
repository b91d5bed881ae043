//! Third-party identifiers (email, phone). This server does not send email or SMS and
//! binds no identifiers: listing answers an empty list and every change answers the spec's
//! refusal, so clients hide the feature.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::api::{
    client::account::{
        ThirdPartyIdRemovalStatus, add_3pid, bind_3pid, delete_3pid, get_3pids,
        request_3pid_management_token_via_email, request_3pid_management_token_via_msisdn,
        request_password_change_token_via_email, request_password_change_token_via_msisdn,
        request_registration_token_via_email, request_registration_token_via_msisdn, unbind_3pid,
    },
    error::ErrorKind,
};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, list);
    let router = route(router, add);
    let router = route(router, bind);
    let router = route(router, delete);
    let router = route(router, unbind);
    let router = route(
        router,
        |_: Arc<Services>, _: Ruma<request_3pid_management_token_via_email::v3::Request>| async {
            Err::<request_3pid_management_token_via_email::v3::Response, _>(medium_not_supported())
        },
    );
    let router = route(
        router,
        |_: Arc<Services>, _: Ruma<request_3pid_management_token_via_msisdn::v3::Request>| async {
            Err::<request_3pid_management_token_via_msisdn::v3::Response, _>(medium_not_supported())
        },
    );
    let router = route(
        router,
        |_: Arc<Services>, _: Ruma<request_registration_token_via_email::v3::Request>| async {
            Err::<request_registration_token_via_email::v3::Response, _>(denied())
        },
    );
    let router = route(
        router,
        |_: Arc<Services>, _: Ruma<request_registration_token_via_msisdn::v3::Request>| async {
            Err::<request_registration_token_via_msisdn::v3::Response, _>(denied())
        },
    );
    let router = route(
        router,
        |_: Arc<Services>, _: Ruma<request_password_change_token_via_email::v3::Request>| async {
            Err::<request_password_change_token_via_email::v3::Response, _>(denied())
        },
    );
    route(
        router,
        |_: Arc<Services>, _: Ruma<request_password_change_token_via_msisdn::v3::Request>| async {
            Err::<request_password_change_token_via_msisdn::v3::Response, _>(denied())
        },
    )
}

fn medium_not_supported() -> Error {
    Error::matrix(
        StatusCode::BAD_REQUEST,
        ErrorKind::ThreepidMediumNotSupported,
        "This server does not send email or SMS, so third-party identifiers cannot be added.",
    )
}

fn denied() -> Error {
    Error::matrix(
        StatusCode::FORBIDDEN,
        ErrorKind::ThreepidDenied,
        "This server does not use email or phone numbers for accounts.",
    )
}

fn auth_failed() -> Error {
    Error::matrix(
        StatusCode::FORBIDDEN,
        ErrorKind::ThreepidAuthFailed,
        "This server does not support third-party identifiers.",
    )
}

async fn list(
    _: Arc<Services>,
    request: Ruma<get_3pids::v3::Request>,
) -> Result<get_3pids::v3::Response> {
    request.sender()?;
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

async fn add(
    _: Arc<Services>,
    request: Ruma<add_3pid::v3::Request>,
) -> Result<add_3pid::v3::Response> {
    request.sender()?;
    Err(auth_failed())
}

async fn bind(
    _: Arc<Services>,
    request: Ruma<bind_3pid::v3::Request>,
) -> Result<bind_3pid::v3::Response> {
    request.sender()?;
    Err(auth_failed())
}

async fn delete(
    _: Arc<Services>,
    request: Ruma<delete_3pid::v3::Request>,
) -> Result<delete_3pid::v3::Response> {
    request.sender()?;
    Ok(delete_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

async fn unbind(
    _: Arc<Services>,
    request: Ruma<unbind_3pid::v3::Request>,
) -> Result<unbind_3pid::v3::Response> {
    request.sender()?;
    Ok(unbind_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
