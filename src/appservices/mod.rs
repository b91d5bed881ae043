//! Application services: bridges and bots registered with this server, which act as the
//! users in their namespaces and receive the events that concern them.
//!
//! This module owns the registrations (the config, the admin room and `appservice_dir`) and
//! what is derived from them. Nothing in `rooms` or `accounts` names it.

pub mod namespaces;
pub mod registration;

pub use self::registration::{FieldError, Registration};
