//! Accounts: who may register, who a token belongs to, User-Interactive Authentication,
//! rate limits and the bookkeeping around users that is not a write to one user's account
//! (those go to the user's actor, [`actor`]).

pub mod actor;
pub mod deactivate;
pub mod openid;
pub mod passwords;
pub mod profile;
pub mod rate_limit;
pub mod registration;
pub mod to_device;
pub mod tokens;
pub mod turn;
pub mod uia;

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use regex::Regex;
use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, UserId, api::client::uiaa::AuthType};

pub use self::actor::{
    AccountDataUpdate, Devices, PushRulesUpdate, SessionRequest, UserActor, UserMessage,
    WrittenActions,
};
use self::{rate_limit::RateLimiter, tokens::TokenCache, uia::Uia};
use crate::{
    Config, Error, Result,
    actors::{ActorSystem, Limits, Registry, Reply},
    storage::{
        Batch, Storage,
        codec::{Json, Prefix},
        meta::RECORDS,
        users::{
            ACCESS_TOKENS_TABLE, LAST_SEEN_TABLE, LastSeen, REGISTRATION_TOKENS_TABLE,
            RegistrationTokenRecord, USERS_TABLE, UserRecord,
        },
    },
    time::Time,
};

/// Set once the first registered user has been made an admin.
const FIRST_ADMIN_ASSIGNED: &str = "first_admin_assigned";
/// How long a user actor call may take before the caller gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Users whose device activity is written at once by a flush.
const LAST_SEEN_CONCURRENCY: usize = 64;
/// Login tokens waiting to be exchanged are bounded.
const LOGIN_TOKEN_LIMIT: usize = 10_000;

/// The authenticated user behind an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub guest: bool,
    /// Hash of the access token used, for operations on "this session".
    pub token_hash: String,
}

pub struct Accounts {
    server_name: OwnedServerName,
    storage: Arc<Storage>,
    pub users: Registry<UserActor>,
    pub tokens: Arc<TokenCache>,
    pub uia: Uia,
    pub limiter: RateLimiter,
    /// Device activity not yet written to the database.
    last_seen: DashMap<(OwnedUserId, OwnedDeviceId), LastSeen>,
    login_tokens: DashMap<String, (OwnedUserId, Instant)>,
    login_token_ttl: Duration,
    /// Serialises registrations: the first-admin decision and token use counts depend on
    /// what the previous registration did.
    pub registration: tokio::sync::Mutex<()>,
    forbidden_usernames: Vec<Regex>,
    registration_token: Option<String>,
    registration_token_file: Option<std::path::PathBuf>,
    open_registration: bool,
    server_user: String,
    /// `turn_*`: the TURN servers and credentials for calls, if configured.
    pub turn: Option<turn::Turn>,
    time: Time,
}

impl Accounts {
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        actors: &ActorSystem,
        hub: Arc<crate::sync::hub::SyncHub>,
        time: Time,
    ) -> Result<Self> {
        let tokens = Arc::new(TokenCache::default());
        let limits = Limits {
            idle_timeout: Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let users = actors
            .registry(
                UserActor::new(
                    Arc::clone(&storage),
                    Arc::clone(&tokens),
                    hub,
                    time.clone(),
                    crate::federation::outbox::Outbox::from_config(config),
                ),
                limits,
            )
            .await?;
        if let Some(path) = &config.registration_token_file {
            // Read again at each use (so it can be edited live), but a file that cannot be
            // read is a broken setup to report now, not at the first registration.
            let text = std::fs::read_to_string(path).map_err(|error| {
                Error::internal(format!(
                    "cannot read registration_token_file {}: {error}",
                    path.display()
                ))
            })?;
            if text.split_whitespace().next().is_none() {
                tracing::warn!(path = %path.display(), "registration_token_file holds no token");
            }
        }
        let turn = turn::Turn::from_config(config)?;
        let forbidden_usernames = config
            .forbidden_usernames
            .iter()
            .map(|pattern| Regex::new(pattern))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::internal(format!("forbidden_usernames: {error}")))?;
        Ok(Self {
            server_name: config.server_name.clone(),
            storage,
            users,
            tokens,
            uia: Uia::new(Duration::from_secs(config.uia_session_timeout_s.max(1)), time.clone()),
            limiter: RateLimiter::new(config, time.clone()),
            last_seen: DashMap::new(),
            login_tokens: DashMap::new(),
            login_token_ttl: Duration::from_millis(config.login_token_ttl.max(1)),
            registration: tokio::sync::Mutex::new(()),
            forbidden_usernames,
            registration_token: config.registration_token.clone(),
            registration_token_file: config.registration_token_file.clone(),
            open_registration: config
                .yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse,
            server_user: config.server_user_localpart.clone(),
            turn,
            time,
        })
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Sends a message built around a reply to `user`'s actor and waits for the answer.
    pub async fn call<R: Send + 'static>(
        &self,
        user: &UserId,
        build: impl FnOnce(Reply<Result<R>>) -> UserMessage,
    ) -> Result<R> {
        self.users.call(&user.to_owned(), build, CALL_TIMEOUT).await?
    }

    /// The stored account of `user`.
    pub fn record(&self, user: &UserId) -> Result<Option<UserRecord>> {
        Ok(USERS_TABLE.get(self.storage.engine(), &user.to_owned())?.map(|Json(record)| record))
    }

    /// Every stored profile field of a local, active user; `None` for anyone else (unknown,
    /// deactivated, or another server's user).
    pub fn profile(&self, user: &UserId) -> Result<Option<Vec<(String, serde_json::Value)>>> {
        let exists = self.record(user)?.is_some_and(|record| !record.deactivated);
        if user.server_name() != self.server_name || !exists {
            return Ok(None);
        }
        crate::storage::users::PROFILES_TABLE
            .collect(
                self.storage.engine(),
                &Prefix::of(user),
                crate::storage::Direction::Forward,
                usize::MAX,
            )?
            .into_iter()
            .map(|((_, field), bytes)| Ok((field, serde_json::from_slice(&bytes)?)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Whether `user` is a server admin.
    pub fn is_admin(&self, user: &UserId) -> bool {
        self.record(user).ok().flatten().is_some_and(|record| record.admin && !record.deactivated)
    }

    /// Resolves an access token to its user and device.
    pub fn resolve(&self, token: &str) -> Result<Sender> {
        let token_hash = tokens::hash(token);
        let record = match self.tokens.get(&token_hash) {
            Some(record) => record,
            None => {
                let epoch = self.tokens.epoch();
                let Json(record) = ACCESS_TOKENS_TABLE
                    .get(self.storage.engine(), &token_hash)?
                    .ok_or_else(|| Error::unknown_token(false, "Unknown access token."))?;
                self.tokens.insert(token_hash.clone(), record.clone(), epoch);
                record
            }
        };
        if record.expires_ms.is_some_and(|expiry| expiry <= self.time.now_ms()) {
            return Err(Error::unknown_token(true, "The access token has expired; refresh it."));
        }
        if let Some(refresh_hash) = record.minted_from.clone() {
            // First use of a refreshed token: the refresh token it came from is now spent.
            let users = self.users.clone();
            let user = record.user_id.clone();
            let access_hash = token_hash.clone();
            tokio::spawn(async move {
                let _ = users
                    .send(&user, UserMessage::RetireRefresh { access_hash, refresh_hash })
                    .await;
            });
        }
        Ok(Sender {
            user_id: record.user_id,
            device_id: record.device_id,
            guest: record.guest,
            token_hash,
        })
    }

    /// Records device activity in memory; [`Accounts::flush_last_seen`] persists it.
    pub fn note_seen(&self, sender: &Sender, ip: Option<IpAddr>) {
        self.note_device_seen(&sender.user_id, &sender.device_id, ip);
    }

    /// Records activity of a device (a request, or the login that created it).
    pub fn note_device_seen(&self, user: &UserId, device: &ruma::DeviceId, ip: Option<IpAddr>) {
        self.last_seen.insert(
            (user.to_owned(), device.to_owned()),
            LastSeen { ip: ip.map(|ip| ip.to_string()), ts_ms: self.time.now_ms() },
        );
    }

    /// The latest activity of a device, from memory or the database.
    pub fn last_seen(&self, user: &UserId, device: &ruma::DeviceId) -> Option<LastSeen> {
        if let Some(seen) = self.last_seen.get(&(user.to_owned(), device.to_owned())) {
            return Some(seen.clone());
        }
        LAST_SEEN_TABLE
            .get(self.storage.engine(), &(user.to_owned(), device.to_owned()))
            .ok()
            .flatten()
            .map(|Json(seen)| seen)
    }

    /// Writes pending device activity, through each user's actor (which skips devices
    /// removed meanwhile). A user whose write failed keeps their entries for the next flush.
    pub async fn flush_last_seen(&self) -> Result<()> {
        let pending: Vec<_> = self
            .last_seen
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut by_user: std::collections::BTreeMap<OwnedUserId, Vec<_>> = Default::default();
        for ((user, device), seen) in &pending {
            by_user.entry(user.clone()).or_default().push((device.clone(), seen.clone()));
        }
        let mut saving = tokio::task::JoinSet::new();
        let mut saved = std::collections::HashSet::new();
        let mut failure = None;
        let mut collect = |joined: Option<Result<(OwnedUserId, Result<()>), _>>| match joined {
            Some(Ok((user, Ok(())))) => {
                saved.insert(user);
            }
            Some(Ok((_, Err(error)))) => failure = Some(error),
            Some(Err(error)) => {
                failure = Some(Error::internal(format!("saving activity: {error}")))
            }
            None => {}
        };
        for (user, seen) in by_user {
            if saving.len() >= LAST_SEEN_CONCURRENCY {
                collect(saving.join_next().await);
            }
            let users = self.users.clone();
            saving.spawn(async move {
                let result = users
                    .call(&user, |reply| UserMessage::SaveLastSeen { seen, reply }, CALL_TIMEOUT)
                    .await
                    .and_then(|result| result);
                (user, result)
            });
        }
        while let Some(joined) = saving.join_next().await {
            collect(Some(joined));
        }
        for (key, seen) in pending {
            if saved.contains(&key.0) {
                self.last_seen.remove_if(&key, |_, current| current.ts_ms == seen.ts_ms);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// The UIA flows `/register` offers.
    pub fn registration_flows(&self) -> Vec<Vec<AuthType>> {
        let mut flows = Vec::new();
        if self.open_registration {
            flows.push(vec![AuthType::Dummy]);
        }
        if !self.open_registration || self.any_registration_token() {
            // The trailing dummy stage matches what clients written against Synapse (such as
            // matrix-nio) expect: they submit the token, then finish with m.login.dummy.
            flows.push(vec![AuthType::RegistrationToken, AuthType::Dummy]);
        }
        flows
    }

    fn file_tokens(&self) -> Vec<String> {
        self.registration_token_file
            .as_ref()
            .and_then(|path| match std::fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read registration_token_file");
                    None
                }
            })
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn any_registration_token(&self) -> bool {
        self.registration_token.is_some()
            || !self.file_tokens().is_empty()
            || REGISTRATION_TOKENS_TABLE
                .collect(
                    self.storage.engine(),
                    &Prefix::all(),
                    crate::storage::Direction::Forward,
                    1,
                )
                .is_ok_and(|tokens| !tokens.is_empty())
    }

    /// Whether `token` currently allows a registration.
    pub fn registration_token_valid(&self, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        if self.registration_token.as_deref() == Some(token)
            || self.file_tokens().iter().any(|t| t == token)
        {
            return true;
        }
        REGISTRATION_TOKENS_TABLE
            .get(self.storage.engine(), &token.to_owned())
            .ok()
            .flatten()
            .is_some_and(|Json(record)| record.usable(self.time.now_ms()))
    }

    /// Counts one completed use of an admin-issued token (configured tokens are unlimited).
    /// Call with the registration lock held.
    pub fn use_registration_token(&self, token: &str, batch: &mut Batch) -> Result<()> {
        if self.registration_token.as_deref() == Some(token)
            || self.file_tokens().iter().any(|t| t == token)
        {
            return Ok(());
        }
        let Json(mut record) = REGISTRATION_TOKENS_TABLE
            .get(self.storage.engine(), &token.to_owned())?
            .ok_or_else(|| Error::forbidden("Invalid registration token."))?;
        if !record.usable(self.time.now_ms()) {
            return Err(Error::forbidden(
                "The registration token has been used up or has expired.",
            ));
        }
        record.completed += 1;
        REGISTRATION_TOKENS_TABLE.put(batch, &token.to_owned(), &Json(record));
        Ok(())
    }

    /// Whether the next registered user becomes the server's first admin.
    pub fn first_admin_pending(&self) -> Result<bool> {
        Ok(RECORDS.get(self.storage.engine(), &FIRST_ADMIN_ASSIGNED.to_owned())?.is_none())
    }

    /// Marks the first admin as assigned (in the registering user's batch).
    pub fn mark_first_admin(batch: &mut Batch) {
        RECORDS.put(batch, &FIRST_ADMIN_ASSIGNED.to_owned(), &b"1".to_vec());
    }

    /// When registration is on but no token is configured and open registration is not
    /// allowed, a fresh server issues itself a one-time token and logs it, so its first user
    /// can always register.
    pub async fn bootstrap_registration(&self, config: &Config) -> Result<Option<String>> {
        if !config.allow_registration
            || self.open_registration
            || self.registration_token.is_some()
            || self.registration_token_file.is_some()
        {
            return Ok(None);
        }
        if !self.first_admin_pending()? {
            tracing::warn!(
                "registration is enabled without a configured token: users need a token issued with \
                 `!admin token issue`"
            );
            return Ok(None);
        }
        let existing = REGISTRATION_TOKENS_TABLE
            .collect(
                self.storage.engine(),
                &Prefix::all(),
                crate::storage::Direction::Forward,
                usize::MAX,
            )?
            .into_iter()
            .find(|(_, Json(record))| record.bootstrap && record.usable(self.time.now_ms()))
            .map(|(token, _)| token);
        let token = match existing {
            Some(token) => token,
            None => {
                let token = tokens::generate("reg");
                let mut batch = Batch::new();
                let record = RegistrationTokenRecord {
                    uses_allowed: Some(1),
                    bootstrap: true,
                    ..Default::default()
                };
                REGISTRATION_TOKENS_TABLE.put(&mut batch, &token, &Json(record));
                self.storage.writer().commit(batch).await?;
                token
            }
        };
        tracing::warn!(
            "registration is enabled but no registration token is configured; register the first \
             (admin) account with this one-time token: {token}"
        );
        Ok(Some(token))
    }

    /// Validates a requested localpart and builds the user id.
    pub fn check_localpart(&self, requested: &str) -> Result<OwnedUserId> {
        let localpart = requested.to_lowercase();
        let invalid = |reason: &str| {
            Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::InvalidUsername,
                format!("Invalid username: {reason}"),
            )
        };
        if localpart.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !localpart.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        ) {
            return Err(invalid("only a-z, 0-9 and . _ = - / + are allowed"));
        }
        if localpart.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("numeric user IDs are reserved for guest accounts"));
        }
        let user_id = UserId::parse_with_server_name(localpart.as_str(), &self.server_name)
            .map_err(|error| invalid(&error.to_string()))?;
        if user_id.as_str().len() > 255 {
            return Err(invalid("the user ID would be longer than 255 bytes"));
        }
        if localpart == self.server_user
            || self.forbidden_usernames.iter().any(|pattern| pattern.is_match(&localpart))
        {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UserInUse,
                "That user ID is reserved.",
            ));
        }
        Ok(user_id)
    }

    /// Issues a short-lived `m.login.token` for `user`.
    pub fn issue_login_token(&self, user: &UserId) -> Result<(String, Duration)> {
        if self.login_tokens.len() >= LOGIN_TOKEN_LIMIT {
            let now = self.time.now();
            self.login_tokens.retain(|_, (_, issued)| {
                now.saturating_duration_since(*issued) < self.login_token_ttl
            });
            if self.login_tokens.len() >= LOGIN_TOKEN_LIMIT {
                return Err(Error::limit_exceeded(Duration::from_secs(10)));
            }
        }
        let token = tokens::generate("lt");
        self.login_tokens.insert(token.clone(), (user.to_owned(), self.time.now()));
        Ok((token, self.login_token_ttl))
    }

    /// Consumes a login token, returning its user if it is valid.
    pub fn take_login_token(&self, token: &str) -> Option<OwnedUserId> {
        let (_, (user, issued)) = self.login_tokens.remove(token)?;
        (self.time.now().saturating_duration_since(issued) < self.login_token_ttl).then_some(user)
    }
}
