//! Application services: bridges and bots registered with this server, which act as the
//! users in their namespaces and receive the events that concern them.
//!
//! This module owns the registrations (the config, the admin room and `appservice_dir`) and
//! what is derived from them. Nothing in `rooms` or `accounts` names it.

pub mod namespaces;
pub mod registration;

pub use self::registration::{FieldError, Registration};

use crate::{Config, Error, Result};

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
