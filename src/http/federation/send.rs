//! `PUT /_matrix/federation/v1/send/{txnId}`: a transaction of PDUs and EDUs from another
//! server, handed to the intake (`federation::intake`), which checks, applies and answers
//! it.

use std::sync::Arc;

use ruma::api::federation::transactions::send_transaction_message;

use super::Signed;
use crate::{Result, Services};

pub(super) async fn transaction(
    services: Arc<Services>,
    request: Signed<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    services.federation.intake.receive(&request.origin, request.body).await
}
