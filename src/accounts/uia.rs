//! User-Interactive Authentication: sessions, flows and stages, and the exact 401 bodies the
//! spec describes.
//!
//! A session belongs to one endpoint and (when known) one user; stages complete in flow
//! order; a session expires after `uia_session_timeout_s` and is then replaced by a new
//! challenge. Sessions live in memory: a restart asks clients to authenticate again.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dashmap::DashMap;
use ruma::{
    OwnedUserId, UserId,
    api::client::uiaa::{AuthData, AuthType, UserIdentifier},
};
use serde_json::{Value as JsonValue, json};

use crate::{Error, Result};

const SESSION_LIMIT: usize = 10_000;

/// What a stage check needs from the rest of the server.
pub trait StageChecks {
    /// Whether `password` is `user`'s password.
    fn password_matches(&self, user: &UserId, password: &str) -> impl Future<Output = bool> + Send;
    /// Whether `token` may be used to register now.
    fn registration_token_valid(&self, token: &str) -> bool;
    /// Called after a failed password stage (for rate limiting).
    fn password_failed(&self, user: &UserId);
}

/// What the endpoint asks for.
pub struct Challenge<'a> {
    /// Endpoint name; a session started for one endpoint cannot authorise another.
    pub endpoint: &'static str,
    pub flows: Vec<Vec<AuthType>>,
    /// The user who must authenticate (password stages), when known.
    pub user: Option<&'a UserId>,
    pub server_name: &'a ruma::ServerName,
}

/// A completed authentication.
#[derive(Debug, Clone)]
pub struct Completed {
    pub session: String,
    /// The registration token the `m.login.registration_token` stage accepted, if any.
    pub registration_token: Option<String>,
}

struct Session {
    created: Instant,
    endpoint: &'static str,
    user: Option<OwnedUserId>,
    completed: Vec<AuthType>,
    registration_token: Option<String>,
}

pub struct Uia {
    sessions: DashMap<String, Session>,
    lifetime: Duration,
}

impl Uia {
    pub fn new(lifetime: Duration) -> Self {
        Self { sessions: DashMap::new(), lifetime }
    }

    /// Runs one round of UIA: `Ok` when a flow is complete, otherwise the 401 to send.
    pub async fn authenticate(
        &self,
        challenge: &Challenge<'_>,
        auth: Option<&AuthData>,
        checks: &impl StageChecks,
    ) -> Result<Completed> {
        let Some(auth) = auth else {
            let session = self.open(challenge)?;
            return Err(self.unauthorized(challenge, &session, None));
        };
        let session = match auth.session() {
            Some(id) if self.valid(id, challenge) => id.to_owned(),
            // Unknown, expired or belonging to another endpoint or user: start over.
            Some(_) => {
                let session = self.open(challenge)?;
                return Err(self.unauthorized(
                    challenge,
                    &session,
                    Some((
                        "M_FORBIDDEN",
                        "Unknown or expired authentication session; start again.",
                    )),
                ));
            }
            None => self.open(challenge)?,
        };

        // A session that already satisfies a flow authorises the call whatever stage is
        // (re)submitted with it; clients such as matrix-nio finish with an extra dummy stage.
        if let Some(done) = self.complete(&session, challenge) {
            return Ok(done);
        }

        let stage = auth.auth_type();
        match (stage, auth) {
            // Only the session: report progress (or success if already complete).
            (None, _) => {}
            (Some(stage), auth) => {
                let completed = self.completed(&session);
                if !next_stage_allowed(&challenge.flows, &completed, &stage) {
                    return Err(self.unauthorized(
                        challenge,
                        &session,
                        Some(("M_FORBIDDEN", "That authentication stage is not expected now.")),
                    ));
                }
                let mut token_used = None;
                match auth {
                    AuthData::Dummy(_) => {}
                    AuthData::RegistrationToken(token) => {
                        if !checks.registration_token_valid(&token.token) {
                            return Err(self.unauthorized(
                                challenge,
                                &session,
                                Some(("M_FORBIDDEN", "Invalid or expired registration token.")),
                            ));
                        }
                        token_used = Some(token.token.clone());
                    }
                    AuthData::Password(password) => {
                        let Some(user) = challenge.user else {
                            return Err(self.unauthorized(
                                challenge,
                                &session,
                                Some((
                                    "M_FORBIDDEN",
                                    "Password authentication is not possible here.",
                                )),
                            ));
                        };
                        let claimed = match &password.identifier {
                            UserIdentifier::Matrix(id) => Some(id.user.clone()),
                            _ => None,
                        };
                        let claims_user = claimed.is_some_and(|claimed| {
                            claimed == user.as_str()
                                || (claimed == user.localpart()
                                    && user.server_name() == challenge.server_name)
                        });
                        if !claims_user || !checks.password_matches(user, &password.password).await
                        {
                            checks.password_failed(user);
                            return Err(self.unauthorized(
                                challenge,
                                &session,
                                Some(("M_FORBIDDEN", "Invalid username or password.")),
                            ));
                        }
                    }
                    _ => {
                        return Err(self.unauthorized(
                            challenge,
                            &session,
                            Some((
                                "M_UNRECOGNIZED",
                                "This server does not support that authentication type.",
                            )),
                        ));
                    }
                }
                if let Some(mut entry) = self.sessions.get_mut(&session) {
                    if !entry.completed.contains(&stage) {
                        entry.completed.push(stage);
                    }
                    if token_used.is_some() {
                        entry.registration_token = token_used;
                    }
                }
            }
        }

        match self.complete(&session, challenge) {
            Some(done) => Ok(done),
            None => Err(self.unauthorized(challenge, &session, None)),
        }
    }

    /// The completed authentication, if `session` has finished a flow of `challenge`.
    fn complete(&self, session: &str, challenge: &Challenge<'_>) -> Option<Completed> {
        let completed = self.completed(session);
        challenge.flows.iter().any(|flow| flow.iter().all(|stage| completed.contains(stage))).then(
            || Completed {
                session: session.to_owned(),
                registration_token: self
                    .sessions
                    .get(session)
                    .and_then(|entry| entry.registration_token.clone()),
            },
        )
    }

    /// Forgets a session once the operation it authorised has succeeded.
    pub fn finish(&self, session: &str) {
        self.sessions.remove(session);
    }

    fn open(&self, challenge: &Challenge<'_>) -> Result<String> {
        if self.sessions.len() >= SESSION_LIMIT {
            self.sessions.retain(|_, session| session.created.elapsed() < self.lifetime);
            if self.sessions.len() >= SESSION_LIMIT {
                return Err(Error::limit_exceeded(Duration::from_secs(10)));
            }
        }
        let id = super::tokens::generate("uia");
        self.sessions.insert(
            id.clone(),
            Session {
                created: Instant::now(),
                endpoint: challenge.endpoint,
                user: challenge.user.map(ToOwned::to_owned),
                completed: Vec::new(),
                registration_token: None,
            },
        );
        Ok(id)
    }

    fn valid(&self, id: &str, challenge: &Challenge<'_>) -> bool {
        let Some(session) = self.sessions.get(id) else {
            return false;
        };
        if session.created.elapsed() >= self.lifetime {
            drop(session);
            self.sessions.remove(id);
            return false;
        }
        session.endpoint == challenge.endpoint && session.user.as_deref() == challenge.user
    }

    fn completed(&self, id: &str) -> Vec<AuthType> {
        self.sessions.get(id).map(|session| session.completed.clone()).unwrap_or_default()
    }

    fn unauthorized(
        &self,
        challenge: &Challenge<'_>,
        session: &str,
        error: Option<(&str, &str)>,
    ) -> Error {
        let flows: Vec<JsonValue> = challenge
            .flows
            .iter()
            .map(|flow| json!({ "stages": flow.iter().map(AuthType::as_str).collect::<Vec<_>>() }))
            .collect();
        let completed: Vec<String> =
            self.completed(session).iter().map(|stage| stage.as_str().to_owned()).collect();
        let mut body = json!({ "flows": flows, "params": {}, "session": session });
        if !completed.is_empty() {
            body["completed"] = json!(completed);
        }
        if let Some((errcode, message)) = error {
            body["errcode"] = json!(errcode);
            body["error"] = json!(message);
        }
        Error::Json { status: StatusCode::UNAUTHORIZED, body }
    }
}

/// Whether `stage` is the next stage of some flow that begins with `completed`.
fn next_stage_allowed(flows: &[Vec<AuthType>], completed: &[AuthType], stage: &AuthType) -> bool {
    if completed.contains(stage) {
        return true;
    }
    flows.iter().any(|flow| {
        flow.len() > completed.len()
            && flow[..completed.len()].iter().all(|done| completed.contains(done))
            && &flow[completed.len()] == stage
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_flow_order() {
        let flows =
            vec![vec![AuthType::RegistrationToken, AuthType::Dummy], vec![AuthType::Password]];
        assert!(next_stage_allowed(&flows, &[], &AuthType::RegistrationToken));
        assert!(next_stage_allowed(&flows, &[], &AuthType::Password));
        assert!(!next_stage_allowed(&flows, &[], &AuthType::Dummy));
        assert!(next_stage_allowed(&flows, &[AuthType::RegistrationToken], &AuthType::Dummy));
    }
}
