//! Simplified sliding sync (MSC4186), the sync Element X speaks: the domain side.
//!
//! A client sends, with each request, the lists it wants (ranges of the user's rooms ordered
//! by activity), the rooms it subscribes to and the extensions it enables; [`request`] checks
//! all of it, and [`required_state`] says which state events a room's config asks for.

pub mod request;
pub mod required_state;
