//! The registrations in force: one immutable snapshot, swapped whole on every change, so
//! request handlers and room actors read it with one atomic load and never wait on a lock.
//!
//! The snapshot answers what the hot paths ask: which service an `as_token` belongs to (by
//! its hash, as access tokens are looked up), and which service, if any, claims a user or
//! an alias exclusively.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use ruma::{OwnedUserId, RoomAliasId, ServerName, UserId};

use super::{
    namespaces::{Claim, CompiledNamespaces},
    registration::{FieldError, Registration},
};
use crate::accounts::tokens;

/// Where a registration came from; decides who may change it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `[global.appservice.<ID>]`: changed by editing the config and restarting.
    Config,
    /// A file of `appservice_dir`.
    Directory(std::path::PathBuf),
    /// `!admin appservices register`.
    Database,
}

/// One registration in force, checked and compiled.
#[derive(Debug)]
pub struct Appservice {
    pub registration: Registration,
    pub namespaces: CompiledNamespaces,
    pub source: Source,
    /// The service's own user.
    pub sender: OwnedUserId,
}

impl Appservice {
    /// Checks `registration` on its own; conflicts with others are the registry's.
    pub fn new(
        registration: Registration,
        source: Source,
        server_name: &ServerName,
    ) -> Result<Self, Vec<FieldError>> {
        let namespaces = registration.check(server_name)?;
        let Some(sender) = registration.sender(server_name) else {
            return Err(vec![FieldError {
                field: "sender_localpart".to_owned(),
                reason: "does not make a valid user id".to_owned(),
            }]);
        };
        Ok(Self { registration, namespaces, source, sender })
    }

    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether the service is interested in `user_id` (its sender user included).
    pub fn is_user(&self, user_id: &UserId) -> bool {
        user_id == self.sender || self.namespaces.user(user_id).matches()
    }
}

/// The registrations at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped on every change, so caches derived from a snapshot know when to recompute.
    pub generation: u64,
    by_id: HashMap<String, Arc<Appservice>>,
    /// Hash of the as_token -> id.
    by_token: HashMap<String, String>,
}

impl Snapshot {
    pub fn get(&self, id: &str) -> Option<&Arc<Appservice>> {
        self.by_id.get(id)
    }

    /// The service a request's token belongs to.
    pub fn by_token(&self, token: &str) -> Option<&Arc<Appservice>> {
        self.by_token.get(&tokens::hash(token)).and_then(|id| self.by_id.get(id))
    }

    /// Every registration, by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Appservice>> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all.into_iter()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The service that claims `user_id` for itself alone: its sender user, or an exclusive
    /// users namespace.
    pub fn exclusive_user_owner(&self, user_id: &UserId) -> Option<&Arc<Appservice>> {
        self.all().find(|service| {
            service.sender == user_id || service.namespaces.user(user_id) == Claim::Exclusive
        })
    }

    /// The service that claims `alias` for itself alone.
    pub fn exclusive_alias_owner(&self, alias: &RoomAliasId) -> Option<&Arc<Appservice>> {
        self.all().find(|service| service.namespaces.alias(alias) == Claim::Exclusive)
    }

    /// Problems with adding `candidate` (replacing a registration of the same id): ids and
    /// tokens unique, and no service's own user inside another's exclusive namespace.
    pub fn conflicts(&self, candidate: &Appservice) -> Vec<FieldError> {
        let others: Vec<&Registration> = self
            .by_id
            .values()
            .filter(|other| other.id() != candidate.id())
            .map(|other| &other.registration)
            .collect();
        let mut errors = candidate.registration.conflicts(others);
        for other in self.by_id.values().filter(|other| other.id() != candidate.id()) {
            if other.namespaces.user(&candidate.sender) == Claim::Exclusive {
                errors.push(FieldError {
                    field: "sender_localpart".to_owned(),
                    reason: format!(
                        "{} is inside an exclusive users namespace of `{}`",
                        candidate.sender,
                        other.id()
                    ),
                });
            }
            if candidate.namespaces.user(&other.sender) == Claim::Exclusive {
                errors.push(FieldError {
                    field: "namespaces.users".to_owned(),
                    reason: format!(
                        "claims {}, the user of the appservice `{}`",
                        other.sender,
                        other.id()
                    ),
                });
            }
        }
        errors
    }

    fn with(&self, service: Arc<Appservice>) -> Self {
        let mut next = self.copy();
        next.remove_id(service.id());
        next.by_token.insert(tokens::hash(&service.registration.as_token), service.id().to_owned());
        next.by_id.insert(service.id().to_owned(), service);
        next
    }

    fn without(&self, id: &str) -> Self {
        let mut next = self.copy();
        next.remove_id(id);
        next
    }

    fn copy(&self) -> Self {
        Self {
            generation: self.generation + 1,
            by_id: self.by_id.clone(),
            by_token: self.by_token.clone(),
        }
    }

    fn remove_id(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_token.remove(&tokens::hash(&old.registration.as_token));
        }
    }
}

/// The registry: the current snapshot, replaced on every change.
#[derive(Debug, Default)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
}

impl Registry {
    /// The registrations now; cheap, and stable for as long as the caller holds it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Adds or replaces `service` if it conflicts with no other registration.
    pub fn insert(&self, service: Appservice) -> Result<Arc<Appservice>, Vec<FieldError>> {
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let conflicts = current.conflicts(&service);
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        let service = Arc::new(service);
        *current = Arc::new(current.with(Arc::clone(&service)));
        Ok(service)
    }

    /// Removes the registration `id`; whether there was one.
    pub fn remove(&self, id: &str) -> Option<Arc<Appservice>> {
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let removed = current.get(id).cloned()?;
        *current = Arc::new(current.without(id));
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{room_alias_id, server_name, user_id};

    use super::*;

    fn service(id: &str, as_token: &str, users: &str, sender: &str) -> Appservice {
        let text = format!(
            "id: {id}\nurl: null\nas_token: {as_token}\nhs_token: hs-{as_token}\n\
             sender_localpart: {sender}\nnamespaces:\n  users:\n    - exclusive: true\n      \
             regex: '{users}'\n  aliases:\n    - exclusive: true\n      regex: '#{id}_.*'\n"
        );
        let registration = Registration::from_yaml(&text).expect("parses").registration;
        Appservice::new(registration, Source::Database, server_name!("test.local")).expect("valid")
    }

    #[test]
    fn tokens_find_their_service_and_replacing_keeps_one_token() {
        let registry = Registry::default();
        let before = registry.snapshot().generation;
        registry.insert(service("irc", "tok-irc", "@irc_.*", "ircbot")).expect("inserts");
        let snapshot = registry.snapshot();
        assert!(snapshot.generation > before);
        assert_eq!(snapshot.by_token("tok-irc").map(|s| s.id()), Some("irc"));
        assert!(snapshot.by_token("tok-other").is_none());

        // Re-registering the same id with a new token retires the old token.
        registry.insert(service("irc", "tok-new", "@irc_.*", "ircbot")).expect("replaces");
        let snapshot = registry.snapshot();
        assert!(snapshot.by_token("tok-irc").is_none());
        assert_eq!(snapshot.by_token("tok-new").map(|s| s.id()), Some("irc"));
        assert_eq!(snapshot.all().count(), 1);

        assert!(registry.remove("irc").is_some());
        assert!(registry.remove("irc").is_none());
        assert!(registry.snapshot().by_token("tok-new").is_none());
    }

    #[test]
    fn exclusive_owners_and_conflicts() {
        let registry = Registry::default();
        registry.insert(service("irc", "tok-irc", "@irc_.*", "ircbot")).expect("inserts");
        let snapshot = registry.snapshot();
        let owner = |user: &UserId| snapshot.exclusive_user_owner(user).map(|s| s.id().to_owned());
        assert_eq!(owner(user_id!("@irc_bob:test.local")).as_deref(), Some("irc"));
        assert_eq!(owner(user_id!("@ircbot:test.local")).as_deref(), Some("irc"));
        assert_eq!(owner(user_id!("@alice:test.local")), None);
        assert_eq!(
            snapshot.exclusive_alias_owner(room_alias_id!("#irc_x:test.local")).map(|s| s.id()),
            Some("irc")
        );

        let fields = |result: Result<Arc<Appservice>, Vec<FieldError>>| {
            result.expect_err("conflicts").into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        // The same as_token, and a sender user inside irc's exclusive namespace.
        assert_eq!(
            fields(registry.insert(service("other", "tok-irc", "@other_.*", "irc_bot2"))),
            ["as_token", "hs_token", "sender_localpart"]
        );
        // A namespace claiming irc's own user.
        assert_eq!(
            fields(registry.insert(service("greedy", "tok-g", "@.*bot:test.local", "greedy"))),
            ["namespaces.users"]
        );
        assert_eq!(registry.snapshot().all().count(), 1, "nothing was added");
    }
}
