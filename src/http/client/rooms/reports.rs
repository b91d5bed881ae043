//! Reporting events, rooms and users to the server's admins. Reports are stored; admins list
//! them with `!admin rooms list-reports`.

use std::sync::Arc;

use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{rate_limit::Action, tokens},
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits, rooms,
    storage::{
        Batch,
        codec::Json,
        rooms::{REPORTS_TABLE, ReportRecord},
    },
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, report_event);
    let router = route(router, report_room);
    route(router, report_user)
}

async fn store(services: &Services, record: ReportRecord) -> Result<()> {
    if let Some(reason) = &record.reason {
        validate::max_chars("A report's reason", reason, limits::MAX_REASON_CHARS)?;
    }
    if !services.accounts.is_admin(&record.reporter) {
        services.accounts.limiter.check(Action::Report, record.reporter.as_str())?;
    }
    let mut batch = Batch::new();
    REPORTS_TABLE.put(&mut batch, &(record.received_ms, tokens::generate("rep")), &Json(record));
    services.storage.writer().commit(batch).await
}

async fn report_event(
    services: Arc<Services>,
    request: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let not_found =
        || Error::not_found("The event was not found or you are not joined to the room.");
    let record = require_room(&services, &body.room_id).map_err(|_| not_found())?;
    if !rooms::is_joined(services.storage.engine(), &body.room_id, &sender.user_id)? {
        return Err(not_found());
    }
    let (short, _) = rooms::pdu_by_id(&services.storage, &body.event_id)?.ok_or_else(not_found)?;
    if rooms::event_meta(services.storage.engine(), short)?
        .is_none_or(|meta| meta.room != record.short)
    {
        return Err(not_found());
    }
    store(
        &services,
        ReportRecord {
            reporter: sender.user_id,
            room_id: Some(body.room_id),
            event_id: Some(body.event_id),
            user_id: None,
            reason: body.reason,
            received_ms: services.time.now_ms(),
        },
    )
    .await?;
    Ok(report_content::v3::Response::new())
}

async fn report_room(
    services: Arc<Services>,
    request: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_room(&services, &body.room_id)
        .map_err(|_| Error::not_found("The room was not found."))?;
    store(
        &services,
        ReportRecord {
            reporter: sender.user_id,
            room_id: Some(body.room_id),
            event_id: None,
            user_id: None,
            reason: Some(body.reason),
            received_ms: services.time.now_ms(),
        },
    )
    .await?;
    Ok(report_room::v3::Response::new())
}

async fn report_user(
    services: Arc<Services>,
    request: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let local = body.user_id.server_name() == services.config.server_name;
    if !local || services.accounts.record(&body.user_id)?.is_none() {
        return Err(Error::not_found("The user was not found."));
    }
    store(
        &services,
        ReportRecord {
            reporter: sender.user_id,
            room_id: None,
            event_id: None,
            user_id: Some(body.user_id),
            reason: Some(body.reason),
            received_ms: services.time.now_ms(),
        },
    )
    .await?;
    Ok(report_user::v3::Response::new())
}
