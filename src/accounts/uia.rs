//! User-Interactive Authentication: sessions, flows and stages, and the exact 401 bodies the
//! spec describes.
//!
//! A session belongs to one endpoint, (when known) one user and, once a request names it, one
//! operation (the username to register, the devices to delete): a request on the session that
//! asks for something else is refused, so what was authorised is what happens. Stages
//! complete in flow order; a session expires after `uia_session_timeout_s` and is then
//! replaced by a new challenge. A completed session authorises exactly one operation: the
//! request that completes it takes it out of the table ([`Claim`]), so concurrent requests on
//! the same session cannot all proceed; it comes back only if that operation fails. Sessions
//! live in memory: a restart asks clients to authenticate again.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dashmap::DashMap;
use ruma::{
    OwnedUserId, UserId,
    api::client::uiaa::{AuthData, AuthType, UserIdentifier},
};
use serde_json::{Value as JsonValue, json};

use crate::{Error, Result, time::Time};

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
    /// What this request asks the endpoint to do, in the parts that must not change within
    /// a session (`None`: this request does not say, and takes what the session holds).
    pub operation: Option<String>,
    pub server_name: &'a ruma::ServerName,
}

/// A completed authentication, taken out of the session table: the one request allowed to
/// carry out the operation. [`Claim::finish`] once it has succeeded; dropping the claim
/// without finishing (the operation failed) puts the session back, so the client can retry.
pub struct Claim<'a> {
    uia: &'a Uia,
    id: String,
    session: Option<Session>,
}

impl Claim<'_> {
    /// The registration token the `m.login.registration_token` stage accepted, if any.
    pub fn registration_token(&self) -> Option<&str> {
        self.session.as_ref().and_then(|session| session.registration_token.as_deref())
    }

    /// The operation the session is bound to, if any request on it named one.
    pub fn operation(&self) -> Option<&str> {
        self.session.as_ref().and_then(|session| session.operation.as_deref())
    }

    /// The operation succeeded: the session is spent.
    pub fn finish(mut self) {
        self.session = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.uia.sessions.insert(std::mem::take(&mut self.id), session);
        }
    }
}

struct Session {
    created: Instant,
    endpoint: &'static str,
    user: Option<OwnedUserId>,
    operation: Option<String>,
    completed: Vec<AuthType>,
    registration_token: Option<String>,
}

/// Why a session named by a request cannot be used for it.
enum Unusable {
    /// Unknown, expired, spent, or in use by a concurrent request.
    Gone,
    /// Started for another endpoint, user or operation.
    Mismatch,
}

pub struct Uia {
    sessions: DashMap<String, Session>,
    lifetime: Duration,
    time: Time,
}

impl Uia {
    pub fn new(lifetime: Duration, time: Time) -> Self {
        Self { sessions: DashMap::new(), lifetime, time }
    }

    /// How long ago a session opened at `created` was, on the server's clock.
    fn age(&self, created: Instant) -> Duration {
        self.time.now().saturating_duration_since(created)
    }

    /// Runs one round of UIA: a [`Claim`] when a flow is complete, otherwise the 401 to send.
    pub async fn authenticate(
        &self,
        challenge: &Challenge<'_>,
        auth: Option<&AuthData>,
        checks: &impl StageChecks,
    ) -> Result<Claim<'_>> {
        let Some(auth) = auth else {
            let session = self.open(challenge)?;
            return Err(self.unauthorized(challenge, &session, None));
        };
        let session = match auth.session() {
            Some(id) => match self.usable(id, challenge) {
                Ok(()) => id.to_owned(),
                Err(unusable) => {
                    let message = match unusable {
                        Unusable::Gone => {
                            "Unknown, expired or already used authentication session; start again."
                        }
                        Unusable::Mismatch => {
                            "This authentication session was started for a different request; \
                             start again."
                        }
                    };
                    let session = self.open(challenge)?;
                    return Err(self.unauthorized(
                        challenge,
                        &session,
                        Some(("M_FORBIDDEN", message)),
                    ));
                }
            },
            None => self.open(challenge)?,
        };

        // A session that already satisfies a flow authorises the call whatever stage is
        // (re)submitted with it; clients such as matrix-nio finish with an extra dummy stage.
        if self.complete(&session, challenge) {
            return self.claim(session, challenge);
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
                // The session may have been claimed by a concurrent request meanwhile (the
                // password check awaits): then this stage is too late.
                let Some(mut entry) = self.sessions.get_mut(&session) else {
                    return Err(self.gone(challenge)?);
                };
                if !entry.completed.contains(&stage) {
                    entry.completed.push(stage);
                }
                if token_used.is_some() {
                    entry.registration_token = token_used;
                }
            }
        }

        if self.complete(&session, challenge) {
            self.claim(session, challenge)
        } else {
            Err(self.unauthorized(challenge, &session, None))
        }
    }

    /// Whether `session` has finished a flow of `challenge`.
    fn complete(&self, session: &str, challenge: &Challenge<'_>) -> bool {
        let completed = self.completed(session);
        flow_done(&challenge.flows, &completed)
    }

    /// Takes a completed session out of the table for the one request that gets to act on
    /// it; a concurrent request that completed it too finds it gone.
    fn claim(&self, session: String, challenge: &Challenge<'_>) -> Result<Claim<'_>> {
        let flows = &challenge.flows;
        match self.sessions.remove_if(&session, |_, entry| flow_done(flows, &entry.completed)) {
            Some((id, entry)) => Ok(Claim { uia: self, id, session: Some(entry) }),
            None => Err(self.gone(challenge)?),
        }
    }

    /// The 401 (with a fresh session) for a request whose session was claimed under it.
    fn gone(&self, challenge: &Challenge<'_>) -> Result<Error> {
        let session = self.open(challenge)?;
        Ok(self.unauthorized(
            challenge,
            &session,
            Some(("M_FORBIDDEN", "This authentication session is already in use; start again.")),
        ))
    }

    /// The operation a live session of `endpoint` is bound to, for requests that leave it out
    /// (a client need not repeat the username in every stage of a registration).
    pub fn bound_operation(&self, session: &str, endpoint: &str) -> Option<String> {
        self.sessions
            .get(session)
            .filter(|entry| entry.endpoint == endpoint && self.age(entry.created) < self.lifetime)
            .and_then(|entry| entry.operation.clone())
    }

    fn open(&self, challenge: &Challenge<'_>) -> Result<String> {
        if self.sessions.len() >= SESSION_LIMIT {
            self.sessions.retain(|_, session| self.age(session.created) < self.lifetime);
            if self.sessions.len() >= SESSION_LIMIT {
                return Err(Error::limit_exceeded(Duration::from_secs(10)));
            }
        }
        let id = super::tokens::generate("uia");
        self.sessions.insert(
            id.clone(),
            Session {
                created: self.time.now(),
                endpoint: challenge.endpoint,
                user: challenge.user.map(ToOwned::to_owned),
                operation: challenge.operation.clone(),
                completed: Vec::new(),
                registration_token: None,
            },
        );
        Ok(id)
    }

    /// Whether session `id` may serve `challenge`; binds it to the challenge's operation if
    /// this is the first request on it that names one.
    fn usable(&self, id: &str, challenge: &Challenge<'_>) -> Result<(), Unusable> {
        let Some(mut session) = self.sessions.get_mut(id) else {
            return Err(Unusable::Gone);
        };
        if self.age(session.created) >= self.lifetime {
            drop(session);
            self.sessions.remove(id);
            return Err(Unusable::Gone);
        }
        if session.endpoint != challenge.endpoint || session.user.as_deref() != challenge.user {
            return Err(Unusable::Mismatch);
        }
        match (&session.operation, &challenge.operation) {
            (Some(bound), Some(asked)) if bound != asked => Err(Unusable::Mismatch),
            (None, Some(asked)) => {
                session.operation = Some(asked.clone());
                Ok(())
            }
            _ => Ok(()),
        }
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

/// Whether `completed` satisfies one of `flows`.
fn flow_done(flows: &[Vec<AuthType>], completed: &[AuthType]) -> bool {
    flows.iter().any(|flow| flow.iter().all(|stage| completed.contains(stage)))
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
    use ruma::api::client::uiaa::Dummy;

    use super::*;

    struct NoChecks;

    impl StageChecks for NoChecks {
        async fn password_matches(&self, _user: &UserId, _password: &str) -> bool {
            false
        }
        fn registration_token_valid(&self, _token: &str) -> bool {
            false
        }
        fn password_failed(&self, _user: &UserId) {}
    }

    fn challenge(operation: Option<&str>) -> Challenge<'static> {
        Challenge {
            endpoint: "register",
            flows: vec![vec![AuthType::Dummy]],
            user: None,
            operation: operation.map(str::to_owned),
            server_name: ruma::server_name!("test.local"),
        }
    }

    fn dummy(session: &str) -> AuthData {
        let mut dummy = Dummy::new();
        dummy.session = Some(session.to_owned());
        AuthData::Dummy(dummy)
    }

    /// Opens a session and returns its id from the 401.
    async fn open(uia: &Uia, operation: Option<&str>) -> String {
        let Err(Error::Json { body, .. }) =
            uia.authenticate(&challenge(operation), None, &NoChecks).await
        else {
            panic!("a request without auth gets a 401");
        };
        body["session"].as_str().expect("session").to_owned()
    }

    fn errcode(result: Result<Claim<'_>>) -> String {
        match result {
            Err(Error::Json { body, .. }) => body["errcode"].as_str().unwrap_or("none").to_owned(),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => "completed".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_completed_session_serves_one_request_at_a_time_and_once() {
        let uia = Uia::new(Duration::from_secs(60), Time::system());
        let session = open(&uia, None).await;
        let claim = uia.authenticate(&challenge(None), Some(&dummy(&session)), &NoChecks).await;
        let claim = claim.expect("the dummy stage completes the flow");
        // While the first request acts on the session, another one cannot.
        let second = uia.authenticate(&challenge(None), Some(&dummy(&session)), &NoChecks).await;
        assert_eq!(errcode(second), "M_FORBIDDEN");
        // The operation failed: the session can be used again.
        drop(claim);
        let claim = uia.authenticate(&challenge(None), Some(&dummy(&session)), &NoChecks).await;
        claim.expect("the session is back").finish();
        // Spent.
        let again = uia.authenticate(&challenge(None), Some(&dummy(&session)), &NoChecks).await;
        assert_eq!(errcode(again), "M_FORBIDDEN");
    }

    #[tokio::test]
    async fn the_operation_binds_at_the_first_request_that_names_it() {
        let uia = Uia::new(Duration::from_secs(60), Time::system());
        // Opened without an operation (a client asking for the flows first).
        let session = open(&uia, None).await;
        let Err(Error::Json { body, .. }) = uia
            .authenticate(
                &challenge(Some("@alice:test.local")),
                Some(&ruma_session(&session)),
                &NoChecks,
            )
            .await
        else {
            panic!("only the session: progress is reported");
        };
        assert!(body.get("errcode").is_none(), "{body}");
        assert_eq!(uia.bound_operation(&session, "register").as_deref(), Some("@alice:test.local"));
        assert_eq!(uia.bound_operation(&session, "delete_devices"), None);

        let changed = uia
            .authenticate(
                &challenge(Some("@mallory:test.local")),
                Some(&dummy(&session)),
                &NoChecks,
            )
            .await;
        assert_eq!(errcode(changed), "M_FORBIDDEN");
        let claim = uia
            .authenticate(&challenge(None), Some(&dummy(&session)), &NoChecks)
            .await
            .expect("leaving the operation out takes the bound one");
        assert_eq!(claim.operation(), Some("@alice:test.local"));
    }

    fn ruma_session(session: &str) -> AuthData {
        AuthData::FallbackAcknowledgement(ruma::api::client::uiaa::FallbackAcknowledgement::new(
            session.to_owned(),
        ))
    }

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
