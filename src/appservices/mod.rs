//! Application services: bridges and bots registered with this server, which act as the
//! users in their namespaces and receive the events that concern them.
//!
//! This module owns the registrations (the config, the admin room and `appservice_dir`) and
//! what is derived from them. Nothing in `rooms` or `accounts` names it.

pub mod namespaces;
pub mod registration;
pub mod registry;

pub use self::registration::{FieldError, Registration};

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::Arc,
};

use ruma::ServerName;

use self::registry::{Appservice, Registry, Snapshot, Source};
use crate::{
    Config, Error, Result,
    accounts::Accounts,
    storage::{
        Direction, Storage,
        appservices::{APPSERVICES_TABLE, StoredRegistration},
        codec::{Json, Prefix},
    },
};

/// The application services in force and what they are owed.
#[derive(Debug)]
pub struct Appservices {
    registry: Registry,
}

impl Appservices {
    /// Loads the registrations of the three sources and creates their own users. The
    /// configuration's (`configured`, from [`from_config`]) and `appservice_dir`'s are the
    /// operator's files: a problem with one of them stops the start, naming it. Those
    /// registered in the admin room are skipped with a warning when they clash with the
    /// files (which win) or can no longer be used, so a bad one never locks the operator out
    /// of the admin room that would fix it.
    pub async fn start(
        configured: Vec<Registration>,
        config: &Config,
        storage: &Storage,
        accounts: &Accounts,
    ) -> Result<Self> {
        let server_name = &config.server_name;
        let registry = Registry::default();
        for registration in configured {
            let id = registration.id.clone();
            let service = Appservice::new(registration, Source::Config, server_name)
                .map_err(|errors| config_error(&id, &errors))?;
            registry.insert(service).map_err(|errors| config_error(&id, &errors))?;
        }
        if let Some(dir) = &config.appservice_dir {
            for (path, text) in registration_files(dir)? {
                add_file(&registry, &path, &text, server_name)?;
            }
        }
        for (id, Json(stored)) in stored_registrations(storage)? {
            add_stored(&registry, &id, &stored, server_name);
        }

        for service in registry.snapshot().all() {
            let created = accounts.ensure_appservice_user(&service.sender, service.id()).await;
            if let Err(error) = created {
                let reason = error.to_string();
                match &service.source {
                    Source::Config => {
                        return Err(Error::internal(format!(
                            "invalid application service in the configuration: \
                             `global.appservice.{}.sender_localpart`: {reason}",
                            service.id()
                        )));
                    }
                    Source::Directory(path) => {
                        return Err(Error::internal(format!(
                            "invalid application service in {}: `sender_localpart`: {reason}",
                            path.display()
                        )));
                    }
                    Source::Database => {
                        tracing::warn!(
                            appservice = service.id(),
                            %reason,
                            "not loading an application service registered in the admin \
                             room: its own user cannot be created"
                        );
                        registry.remove(service.id());
                    }
                }
            }
        }
        let loaded = registry.snapshot();
        if !loaded.is_empty() {
            let ids: Vec<&str> = loaded.all().map(|service| service.id()).collect();
            tracing::info!(appservices = ?ids, "application services loaded");
        }
        Ok(Self { registry })
    }

    /// The registrations in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.registry.snapshot()
    }
}

fn config_error(id: &str, errors: &[FieldError]) -> Error {
    let problems: Vec<String> = errors.iter().map(|error| error.in_config(id)).collect();
    Error::internal(format!(
        "invalid application service in the configuration: {}",
        problems.join("; ")
    ))
}

fn file_error(path: &Path, errors: &[FieldError]) -> Error {
    let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Error::internal(format!(
        "invalid application service registration {}: {}",
        path.display(),
        problems.join("; ")
    ))
}

/// The registration files of `appservice_dir` (`*.yaml`, `*.yml`), in name order so that
/// which of two clashing files is refused does not depend on the file system.
fn registration_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let unreadable = |error: std::io::Error| {
        Error::internal(format!("`global.appservice_dir` {}: {error}", dir.display()))
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let registration = path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| matches!(extension, "yaml" | "yml"));
        if registration && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|error| {
            Error::internal(format!(
                "reading the application service registration {}: {error}",
                path.display()
            ))
        })?;
        files.push((path, text));
    }
    Ok(files)
}

fn add_file(registry: &Registry, path: &Path, text: &str, server_name: &ServerName) -> Result<()> {
    let parsed = Registration::from_yaml(text).map_err(|error| file_error(path, &[error]))?;
    for warning in &parsed.warnings {
        tracing::warn!(file = %path.display(), "{warning}");
    }
    let id = parsed.registration.id.clone();
    if let Some(existing) = registry.snapshot().get(&id) {
        let origin = match &existing.source {
            Source::Directory(other) => other.display().to_string(),
            Source::Config | Source::Database => format!("`global.appservice.{id}`"),
        };
        return Err(file_error(
            path,
            &[FieldError {
                field: "id".to_owned(),
                reason: format!("`{id}` is also defined in {origin}"),
            }],
        ));
    }
    let service =
        Appservice::new(parsed.registration, Source::Directory(path.to_owned()), server_name)
            .map_err(|errors| file_error(path, &errors))?;
    registry.insert(service).map_err(|errors| file_error(path, &errors))?;
    Ok(())
}

fn stored_registrations(storage: &Storage) -> Result<Vec<(String, Json<StoredRegistration>)>> {
    let mut stored = Vec::new();
    APPSERVICES_TABLE.scan(
        storage.engine(),
        &Prefix::all(),
        None,
        Direction::Forward,
        |id, row| {
            stored.push((id, row));
            ControlFlow::Continue(())
        },
    )?;
    Ok(stored)
}

fn add_stored(
    registry: &Registry,
    id: &str,
    stored: &StoredRegistration,
    server_name: &ServerName,
) {
    let skip = |reason: String| {
        tracing::warn!(
            appservice = id,
            %reason,
            "not loading an application service registered in the admin room; fix or \
             unregister it there"
        );
    };
    if registry.snapshot().get(id).is_some() {
        return skip(
            "an application service of that id is defined in the configuration files, which win"
                .to_owned(),
        );
    }
    let registration = match Registration::from_yaml(&stored.yaml) {
        Ok(parsed) if parsed.registration.id == id => parsed.registration,
        Ok(parsed) => {
            return skip(format!("its YAML names the id `{}`", parsed.registration.id));
        }
        Err(error) => return skip(error.to_string()),
    };
    let joined = |errors: Vec<FieldError>| {
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    };
    match Appservice::new(registration, Source::Database, server_name) {
        Ok(service) => {
            if let Err(errors) = registry.insert(service) {
                skip(joined(errors));
            }
        }
        Err(errors) => skip(joined(errors)),
    }
}

/// The registrations of the `[global.appservice.<ID>]` tables, checked. A bad one stops the
/// start, naming its key, as any invalid configuration value does.
pub fn from_config(config: &Config) -> Result<Vec<Registration>> {
    let mut registrations: Vec<Registration> = Vec::new();
    let mut problems = Vec::new();
    for (name, table) in &config.appservice {
        let registration = match Registration::from_config(name, table) {
            Ok(registration) => registration,
            Err(error) => {
                problems.push(error.in_config(name));
                continue;
            }
        };
        if let Err(errors) = registration.check(&config.server_name) {
            problems.extend(errors.iter().map(|error| error.in_config(name)));
        }
        let conflicts = registration.conflicts(&registrations);
        problems.extend(conflicts.iter().map(|error| error.in_config(name)));
        registrations.push(registration);
    }
    if problems.is_empty() {
        Ok(registrations)
    } else {
        Err(Error::internal(format!(
            "invalid application service in the configuration: {}",
            problems.join("; ")
        )))
    }
}
