//! Checks of request values that ruma's types let through: strings longer than the bounds
//! in [`crate::limits`], and values outside the closed enums of the spec. ruma parses an
//! unknown string of most enums into a hidden `_Custom` variant (right for open sets such
//! as event types, wrong for `visibility` or `preset`), so handlers name the allowed values
//! here.

use crate::{Error, Result};

/// Refuses `value` when it has more than `max` characters: `400 M_TOO_LARGE`, as Synapse
/// answers for its own bounds.
pub fn max_chars(what: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(too_long(format!("{what} is limited to {max} characters.")));
    }
    Ok(())
}

/// Refuses `value` when it is longer than `max` bytes of UTF-8: `400 M_TOO_LARGE`.
pub fn max_bytes(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(too_long(format!("{what} is limited to {max} bytes.")));
    }
    Ok(())
}

fn too_long(message: String) -> Error {
    Error::field_too_large(message)
}

/// Refuses a body field whose value is not one of the spec's `allowed` values:
/// `400 M_BAD_JSON`, the body does not match the endpoint's schema.
pub fn known_value(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(Error::bad_json(format!(
        "`{field}` must be one of {}, not \"{}\".",
        list(allowed),
        shown(value)
    )))
}

/// Refuses a path or query parameter whose value is not one of the spec's `allowed`
/// values: `400 M_INVALID_PARAM`.
pub fn known_param(param: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(Error::invalid_param(format!(
        "`{param}` must be one of {}, not \"{}\".",
        list(allowed),
        shown(value)
    )))
}

fn list(allowed: &[&str]) -> String {
    allowed.iter().map(|value| format!("\"{value}\"")).collect::<Vec<_>>().join(", ")
}

/// The start of a client's value, for an error message.
fn shown(value: &str) -> String {
    value.chars().take(64).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_what_they_say() {
        assert!(max_chars("name", "ééé", 3).is_ok());
        assert!(max_chars("name", "éééé", 3).is_err());
        assert!(max_bytes("key", "ééé", 5).is_err());
        assert!(max_bytes("key", "abcde", 5).is_ok());
    }

    #[test]
    fn unknown_values_are_refused_with_the_right_code() {
        assert!(known_value("visibility", "public", &["public", "private"]).is_ok());
        let error =
            known_value("visibility", "secret", &["public", "private"]).expect_err("refused");
        assert_eq!(error.errcode(), "M_BAD_JSON");
        let error = known_param("dir", "sideways", &["b", "f"]).expect_err("refused");
        assert_eq!(error.errcode(), "M_INVALID_PARAM");
    }
}
