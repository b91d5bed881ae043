//! HTTP `Range` requests on media downloads (RFC 9110 §14), so players can seek in audio and
//! video: one range (`a-b`, open-ended `a-`, suffix `-n`) is answered `206 Partial Content`
//! with `Content-Range`; a range that starts past the end is answered `416` with
//! `Content-Range: bytes */length`. Several ranges at once, another unit, a malformed header
//! or any `If-Range` (we send no validators it could match) are answered with the whole body
//! and `200`, which the RFC allows: a server may always ignore `Range`.

use axum::http::{HeaderMap, HeaderValue, header};

/// What to send of a representation of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// All of it, `200`.
    Full,
    /// Bytes `start..=end`, `206`.
    Part { start: u64, end: u64 },
    /// Nothing of it can be sent, `416`.
    Unsatisfiable,
}

impl Requested {
    /// Reads the request's `Range` (and `If-Range`) headers against `length` bytes.
    pub fn from_headers(headers: &HeaderMap, length: u64) -> Self {
        if headers.contains_key(header::IF_RANGE) {
            return Self::Full;
        }
        match headers.get(header::RANGE).map(HeaderValue::to_str) {
            Some(Ok(value)) => Self::parse(value, length),
            _ => Self::Full,
        }
    }

    /// Parses one `Range` value; anything not understood means the whole body.
    pub fn parse(value: &str, length: u64) -> Self {
        let Some((unit, set)) = value.trim().split_once('=') else {
            return Self::Full;
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
            return Self::Full;
        }
        let Some((first, last)) = set.trim().split_once('-') else {
            return Self::Full;
        };
        let number = |text: &str| -> Option<u64> {
            let text = text.trim();
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())
                .flatten()
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            // `-n`: the last n bytes.
            (true, false) => match number(last) {
                Some(0) => Self::Unsatisfiable,
                Some(_) if length == 0 => Self::Unsatisfiable,
                Some(suffix) => Self::Part { start: length - suffix.min(length), end: length - 1 },
                None => Self::Full,
            },
            // `a-`: from a to the end.
            (false, true) => match number(first) {
                Some(start) if start >= length => Self::Unsatisfiable,
                Some(start) => Self::Part { start, end: length - 1 },
                None => Self::Full,
            },
            // `a-b`: a last position before the first is invalid, so ignored.
            (false, false) => match (number(first), number(last)) {
                (Some(start), Some(end)) if start > end => Self::Full,
                (Some(start), Some(_)) if start >= length => Self::Unsatisfiable,
                (Some(start), Some(end)) => Self::Part { start, end: end.min(length - 1) },
                _ => Self::Full,
            },
            (true, true) => Self::Full,
        }
    }
}

/// `Content-Range` of a partial answer.
pub fn content_range(start: u64, end: u64, length: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {start}-{end}/{length}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// `Content-Range` of a `416` answer.
pub fn unsatisfied_range(length: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{length}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::Requested::{self, Full, Part, Unsatisfiable};

    fn parse(value: &str, length: u64) -> Requested {
        Requested::parse(value, length)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-0", 10), Part { start: 0, end: 0 });
        assert_eq!(parse("bytes=2-5", 10), Part { start: 2, end: 5 });
        assert_eq!(parse("bytes=2-9", 10), Part { start: 2, end: 9 });
        // A last position past the end is cut to the end.
        assert_eq!(parse("bytes=2-1000", 10), Part { start: 2, end: 9 });
        assert_eq!(parse("BYTES = 3 - 4", 10), Part { start: 3, end: 4 });
    }

    #[test]
    fn open_ended_and_suffix_ranges() {
        assert_eq!(parse("bytes=7-", 10), Part { start: 7, end: 9 });
        assert_eq!(parse("bytes=9-", 10), Part { start: 9, end: 9 });
        assert_eq!(parse("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(parse("bytes=-10", 10), Part { start: 0, end: 9 });
        // A suffix longer than the file is the whole file.
        assert_eq!(parse("bytes=-1000", 10), Part { start: 0, end: 9 });
    }

    #[test]
    fn ranges_beyond_the_end_are_unsatisfiable() {
        assert_eq!(parse("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn anything_else_is_the_whole_body() {
        for value in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=5-2",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes 0-1",
            "",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse(value, 10), Full, "{value}");
        }
    }
}
