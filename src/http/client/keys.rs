//! End-to-end encryption key endpoints: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, `/keys/device_signing/upload` and `/keys/signatures/upload`.
//! Queries and claims for other servers' users are sent to those servers (all at once); a
//! server that does not answer is listed under `failures`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UInt, UserId,
    api::{
        OutgoingRequest,
        client::keys::{
            claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures,
            upload_signing_keys,
        },
        federation::{authentication::ServerSignatures, keys as federation_keys},
        path_builder::SinglePath,
    },
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::account::password_challenge;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    federation::client::OutboundError,
    http::ruma::{Ruma, route},
    keys::{
        device_lists,
        query::{self, MASTER, SELF_SIGNING, USER_SIGNING},
        signatures,
        store::{CheckedSignature, KeyCommand, cross_signing_needs_auth},
    },
    storage::users::USERS_TABLE,
    sync::token::SyncToken,
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, upload);
    let router = route(router, query_keys);
    let router = route(router, claim);
    let router = route(router, changes);
    let router = route(router, upload_cross_signing);
    route(router, upload_signatures_handler)
}

fn to_json<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get())
        .map_err(|error| Error::bad_json(format!("Invalid key object: {error}")))
}

fn to_raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

fn counts_response(counts: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts
        .into_iter()
        .map(|(algorithm, count)| {
            (OneTimeKeyAlgorithm::from(algorithm), UInt::new_saturating(count))
        })
        .collect()
}

/// How long other servers are given to answer a key query or claim when the client does
/// not say, and at most.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Servers asked at the same time for one request: a client naming thousands of servers
/// waits longer rather than making this server open thousands of connections at once.
const MAX_CONCURRENT_SERVERS: usize = 32;

/// A server that could not answer, as the spec's `failures` entry.
fn remote_failure(error: &OutboundError) -> JsonValue {
    let status = match error {
        OutboundError::Remote { status, .. } => *status,
        OutboundError::Refused(_) => 403,
        _ => 503,
    };
    json!({ "status": status, "message": error.to_string() })
}

/// Sends one request per server ([`MAX_CONCURRENT_SERVERS`] at a time), each with
/// `timeout`, and collects the answers.
async fn ask_servers<R>(
    services: &Arc<Services>,
    requests: BTreeMap<OwnedServerName, R>,
    timeout: Duration,
) -> Vec<(OwnedServerName, Result<R::IncomingResponse, OutboundError>)>
where
    R: OutgoingRequest<PathBuilder = SinglePath, Authentication = ServerSignatures>
        + Send
        + 'static,
    R::IncomingResponse: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SERVERS));
    for (server, request) in requests {
        let services = Arc::clone(services);
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            // The semaphore is never closed; without a permit the request just goes ahead.
            let _permit = permits.acquire_owned().await.ok();
            let answer =
                services.federation.client.send_with_timeout(&server, request, timeout).await;
            (server, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(error) => tracing::error!(%error, "a federation key request task failed"),
        }
    }
    answers
}

fn is_local_account(services: &Services, user: &UserId) -> Result<bool> {
    Ok(user.server_name() == services.config.server_name
        && USERS_TABLE.contains(services.storage.engine(), &user.to_owned())?)
}

async fn upload(
    services: Arc<Services>,
    request: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let device_keys = body.device_keys.as_ref().map(to_json).transpose()?;
    let one_time_keys = body
        .one_time_keys
        .iter()
        .map(|(id, key)| Ok((id.to_string(), to_json(key)?)))
        .collect::<Result<Vec<_>>>()?;
    let fallback_keys = body
        .fallback_keys
        .iter()
        .map(|(id, key)| Ok((id.to_string(), to_json(key)?)))
        .collect::<Result<Vec<_>>>()?;
    let device = sender.device_id.clone();
    let counts = services
        .accounts
        .call(&sender.user_id, |reply| {
            UserMessage::Keys(KeyCommand::Upload {
                device,
                device_keys,
                one_time_keys,
                fallback_keys,
                reply,
            })
        })
        .await?;
    Ok(upload_keys::v3::Response::new(counts_response(counts)))
}

async fn query_keys(
    services: Arc<Services>,
    request: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response> {
    let sender = request.sender()?.clone();
    let engine = services.storage.engine();
    let mut response = get_keys::v3::Response::new();
    let timeout = request.body.timeout.unwrap_or(REMOTE_TIMEOUT).min(MAX_REMOTE_TIMEOUT);
    let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>> =
        BTreeMap::new();
    for (user, devices) in request.body.device_keys {
        if user.server_name() != services.config.server_name {
            remote.entry(user.server_name().to_owned()).or_default().insert(user, devices);
            continue;
        }
        let mut found = BTreeMap::new();
        for (device, keys) in query::device_keys(engine, &user, &devices)? {
            found.insert(device, to_raw(&keys)?);
        }
        response.device_keys.insert(user.clone(), found);
        if let Some(master) = query::cross_signing_key(engine, &user, MASTER, &sender.user_id)? {
            response.master_keys.insert(user.clone(), to_raw(&master)?);
        }
        if let Some(self_signing) =
            query::cross_signing_key(engine, &user, SELF_SIGNING, &sender.user_id)?
        {
            response.self_signing_keys.insert(user.clone(), to_raw(&self_signing)?);
        }
        if user == sender.user_id
            && let Some(user_signing) =
                query::cross_signing_key(engine, &user, USER_SIGNING, &sender.user_id)?
        {
            response.user_signing_keys.insert(user.clone(), to_raw(&user_signing)?);
        }
    }
    let requests = remote
        .into_iter()
        .map(|(server, users)| (server, federation_keys::get_keys::v1::Request::new(users)))
        .collect();
    for (server, answer) in ask_servers(&services, requests, timeout).await {
        match answer {
            Ok(answer) => {
                // Only what the server may speak for: its own users.
                let own = |user: &OwnedUserId| user.server_name() == server;
                response
                    .device_keys
                    .extend(answer.device_keys.into_iter().filter(|(user, _)| own(user)));
                response
                    .master_keys
                    .extend(answer.master_keys.into_iter().filter(|(user, _)| own(user)));
                response
                    .self_signing_keys
                    .extend(answer.self_signing_keys.into_iter().filter(|(user, _)| own(user)));
            }
            Err(error) => {
                response.failures.insert(server.to_string(), remote_failure(&error));
            }
        }
    }
    Ok(response)
}

async fn claim(
    services: Arc<Services>,
    request: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response> {
    let mut response = claim_keys::v3::Response::new(BTreeMap::new());
    let timeout = request.body.timeout.unwrap_or(REMOTE_TIMEOUT).min(MAX_REMOTE_TIMEOUT);
    let mut remote: BTreeMap<OwnedServerName, federation_keys::claim_keys::v1::OneTimeKeyClaims> =
        BTreeMap::new();
    for (user, wanted) in request.body.one_time_keys {
        if user.server_name() != services.config.server_name {
            remote.entry(user.server_name().to_owned()).or_default().insert(user, wanted);
            continue;
        }
        if !is_local_account(&services, &user)? || wanted.is_empty() {
            continue;
        }
        let wanted: Vec<(OwnedDeviceId, String)> =
            wanted.into_iter().map(|(device, algorithm)| (device, algorithm.to_string())).collect();
        // The owner's actor hands each key out once, however many claims race.
        let claimed = services
            .accounts
            .call(&user, |reply| UserMessage::Keys(KeyCommand::Claim { wanted, reply }))
            .await?;
        let by_device = response.one_time_keys.entry(user.clone()).or_default();
        for (device, key_id, key) in claimed {
            let key_id = key_id.as_str().try_into().map_err(|_| {
                Error::internal(format!("stored one-time key id '{key_id}' is invalid"))
            })?;
            by_device.entry(device).or_default().insert(key_id, to_raw(&key)?);
        }
    }
    let requests = remote
        .into_iter()
        .map(|(server, claims)| (server, federation_keys::claim_keys::v1::Request::new(claims)))
        .collect();
    for (server, answer) in ask_servers(&services, requests, timeout).await {
        match answer {
            Ok(answer) => response.one_time_keys.extend(
                answer.one_time_keys.into_iter().filter(|(user, _)| user.server_name() == server),
            ),
            Err(error) => {
                response.failures.insert(server.to_string(), remote_failure(&error));
            }
        }
    }
    Ok(response)
}

async fn changes(
    services: Arc<Services>,
    request: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let sender = request.sender()?.clone();
    let from = SyncToken::parse(&request.body.from)?;
    let to = SyncToken::parse(&request.body.to)?;
    let upto = to.position.min(services.storage.writer().committed_position());
    let (changed, left) =
        device_lists::changes(&services.storage, &sender.user_id, from.position, upto)?;
    Ok(get_key_changes::v3::Response::new(changed, left))
}

async fn upload_cross_signing(
    services: Arc<Services>,
    request: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let master = body.master_key.as_ref().map(to_json).transpose()?;
    let self_signing = body.self_signing_key.as_ref().map(to_json).transpose()?;
    let user_signing = body.user_signing_key.as_ref().map(to_json).transpose()?;
    let uploads = [
        (MASTER, master.as_ref()),
        (SELF_SIGNING, self_signing.as_ref()),
        (USER_SIGNING, user_signing.as_ref()),
    ];
    let authenticated = cross_signing_needs_auth(&services.storage, &sender.user_id, uploads)?;
    let claim = if authenticated {
        // The keys are what the password authorises: a session cannot be completed with
        // other keys than the ones it was started for.
        let operation = serde_json::to_string(&uploads)?;
        Some(
            password_challenge(
                &services,
                "device_signing_upload",
                &sender.user_id,
                Some(operation),
                body.auth.as_ref(),
            )
            .await?,
        )
    } else {
        None
    };
    services
        .accounts
        .call(&sender.user_id, |reply| {
            UserMessage::Keys(KeyCommand::UploadCrossSigning {
                master,
                self_signing,
                user_signing,
                authenticated,
                reply,
            })
        })
        .await?;
    if let Some(claim) = claim {
        claim.finish();
    }
    Ok(upload_signing_keys::v3::Response::new())
}

fn failure(errcode: &str, message: String) -> Result<upload_signatures::v3::Failure> {
    Ok(serde_json::from_value(json!({ "errcode": errcode, "error": message }))?)
}

async fn upload_signatures_handler(
    services: Arc<Services>,
    request: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let sender = request.sender()?.clone();
    let engine = services.storage.engine();
    let mut checked: Vec<CheckedSignature> = Vec::new();
    let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, upload_signatures::v3::Failure>> =
        BTreeMap::new();
    for (target, keys) in &request.body.signed_keys {
        for (key_id, object) in keys.iter() {
            let outcome = match serde_json::from_str::<JsonValue>(object.get()) {
                Ok(object) if target.server_name() == services.config.server_name => {
                    signatures::check_uploaded(engine, &sender.user_id, target, key_id, &object)
                }
                Ok(_) => Err((
                    "M_UNRECOGNIZED",
                    "Keys of remote users cannot be signed here yet.".to_owned(),
                )),
                Err(error) => Err(("M_BAD_JSON", format!("Invalid key object: {error}"))),
            };
            match outcome {
                Ok(accepted) => {
                    checked.extend(accepted.into_iter().map(|(signing_key, signature)| {
                        (target.clone(), key_id.to_owned(), signing_key, signature)
                    }))
                }
                Err((errcode, message)) => {
                    failures
                        .entry(target.clone())
                        .or_default()
                        .insert(key_id.to_owned(), failure(errcode, message)?);
                }
            }
        }
    }
    if !checked.is_empty() {
        services
            .accounts
            .call(&sender.user_id, |reply| {
                UserMessage::Keys(KeyCommand::AddSignatures { signatures: checked, reply })
            })
            .await?;
    }
    let mut response = upload_signatures::v3::Response::new();
    response.failures = failures;
    Ok(response)
}
