//! Push: rules (stored as `m.push_rules` account data), evaluation of committed events,
//! unread notification counts, the notification list, and pushers that deliver to HTTP
//! push gateways.

pub mod bounds;
pub mod counts;
pub mod evaluate;
pub mod gateway;
pub mod pushers;
pub mod retention;
pub mod rules;
