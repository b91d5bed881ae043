//! Typed key and value codecs.
//!
//! Keys are built from parts: integers as fixed-width big-endian (so byte order is numeric
//! order), strings as their UTF-8 bytes. A variable-length part that is not last is followed by
//! a `0xFF` separator; valid UTF-8 never contains `0xFF`, so the split is unambiguous and a
//! prefix scan over the leading parts stays ordered. Every key shape is a tuple of parts with
//! one encoder and one decoder; call sites never touch bytes.

use std::{fmt, marker::PhantomData};

/// Separates a variable-length key part from the next part.
pub const SEPARATOR: u8 = 0xFF;

/// A stored key or value that could not be decoded: a bug or a corrupt database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub &'static str);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable stored bytes: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<CodecError> for crate::Error {
    fn from(error: CodecError) -> Self {
        Self::internal_from("storage", error)
    }
}

/// One component of a key.
pub trait KeyPart: Sized {
    /// Appends this part; `last` is false when more parts follow.
    fn encode_part(&self, out: &mut Vec<u8>, last: bool);
    /// Reads this part from the front of `input`, advancing it.
    fn decode_part(input: &mut &[u8], last: bool) -> Result<Self, CodecError>;
}

impl KeyPart for u64 {
    fn encode_part(&self, out: &mut Vec<u8>, _last: bool) {
        out.extend_from_slice(&self.to_be_bytes());
    }

    fn decode_part(input: &mut &[u8], _last: bool) -> Result<Self, CodecError> {
        let (head, rest) = input.split_first_chunk::<8>().ok_or(CodecError("short u64"))?;
        *input = rest;
        Ok(Self::from_be_bytes(*head))
    }
}

impl KeyPart for String {
    fn encode_part(&self, out: &mut Vec<u8>, last: bool) {
        self.as_str().encode_part(out, last);
    }

    fn decode_part(input: &mut &[u8], last: bool) -> Result<Self, CodecError> {
        let end = if last {
            input.len()
        } else {
            input
                .iter()
                .position(|byte| *byte == SEPARATOR)
                .ok_or(CodecError("missing separator"))?
        };
        let text =
            std::str::from_utf8(&input[..end]).map_err(|_| CodecError("non-utf8 key part"))?;
        let text = text.to_owned();
        *input = if last { &[] } else { &input[end + 1..] };
        Ok(text)
    }
}

impl KeyPart for &str {
    fn encode_part(&self, out: &mut Vec<u8>, last: bool) {
        out.extend_from_slice(self.as_bytes());
        if !last {
            out.push(SEPARATOR);
        }
    }

    fn decode_part(_input: &mut &[u8], _last: bool) -> Result<Self, CodecError> {
        Err(CodecError("borrowed strings are encode-only; decode as String"))
    }
}

/// A complete key shape.
pub trait Key: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl<P: KeyPart> Key for P {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_part(&mut out, true);
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Self, CodecError> {
        let value = P::decode_part(&mut bytes, true)?;
        finish(bytes, value)
    }
}

fn finish<T>(rest: &[u8], value: T) -> Result<T, CodecError> {
    if rest.is_empty() { Ok(value) } else { Err(CodecError("trailing bytes after key")) }
}

macro_rules! tuple_key {
    ($($part:ident),+ ; $last:ident) => {
        impl<$($part: KeyPart,)+ $last: KeyPart> Key for ($($part,)+ $last) {
            #[allow(non_snake_case)]
            fn encode(&self) -> Vec<u8> {
                let ($($part,)+ $last) = self;
                let mut out = Vec::with_capacity(32);
                $($part.encode_part(&mut out, false);)+
                $last.encode_part(&mut out, true);
                out
            }

            #[allow(non_snake_case)]
            fn decode(mut bytes: &[u8]) -> Result<Self, CodecError> {
                $(let $part = $part::decode_part(&mut bytes, false)?;)+
                let $last = $last::decode_part(&mut bytes, true)?;
                finish(bytes, ($($part,)+ $last))
            }
        }
    };
}

tuple_key!(A; B);
tuple_key!(A, B; C);
tuple_key!(A, B, C; D);
tuple_key!(A, B, C, D; E);

/// Types that encode exactly like key part `P`: `P` itself, or a borrowed form of it, so a
/// prefix can be built from what a caller holds without an owned copy.
pub trait PartOf<P: KeyPart> {
    fn encode_as(&self, out: &mut Vec<u8>, last: bool);
}

impl<P: KeyPart> PartOf<P> for P {
    fn encode_as(&self, out: &mut Vec<u8>, last: bool) {
        self.encode_part(out, last);
    }
}

impl PartOf<String> for str {
    fn encode_as(&self, out: &mut Vec<u8>, last: bool) {
        out.extend_from_slice(self.as_bytes());
        if !last {
            out.push(SEPARATOR);
        }
    }
}

impl<T: PartOf<String> + ?Sized> PartOf<String> for &T {
    fn encode_as(&self, out: &mut Vec<u8>, last: bool) {
        (**self).encode_as(out, last);
    }
}

/// Ruma's identifiers as key parts and values (issue 21, step 24): stored as their string
/// form, so the bytes are exactly those of the `String`s they replace (no migration), and read
/// back by parsing, so an invalid stored id is a [`CodecError`], never a panic. The borrowed
/// id stands for the owned one in a [`Prefix`].
macro_rules! id_key_parts {
    ($($owned:ident / $borrowed:ident),+ $(,)?) => {$(
        impl KeyPart for ruma::$owned {
            fn encode_part(&self, out: &mut Vec<u8>, last: bool) {
                self.as_str().encode_as(out, last);
            }

            fn decode_part(input: &mut &[u8], last: bool) -> Result<Self, CodecError> {
                let text = String::decode_part(input, last)?;
                ruma::$owned::try_from(text)
                    .map_err(|_| CodecError(concat!("invalid ", stringify!($borrowed), " in a key")))
            }
        }

        impl PartOf<ruma::$owned> for ruma::$borrowed {
            fn encode_as(&self, out: &mut Vec<u8>, last: bool) {
                self.as_str().encode_as(out, last);
            }
        }

        impl<T: PartOf<ruma::$owned> + ?Sized> PartOf<ruma::$owned> for &T {
            fn encode_as(&self, out: &mut Vec<u8>, last: bool) {
                (**self).encode_as(out, last);
            }
        }

        impl Value for ruma::$owned {
            fn encode_value(&self) -> Vec<u8> {
                self.as_str().as_bytes().to_vec()
            }

            fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
                let text = String::decode_value(bytes)?;
                ruma::$owned::try_from(text)
                    .map_err(|_| CodecError(concat!("invalid ", stringify!($borrowed), " value")))
            }
        }
    )+};
}

id_key_parts!(
    OwnedUserId / UserId,
    OwnedRoomId / RoomId,
    OwnedEventId / EventId,
    OwnedRoomAliasId / RoomAliasId,
    OwnedDeviceId / DeviceId,
    OwnedServerName / ServerName,
    OwnedTransactionId / TransactionId,
);

/// Key shapes with at least two parts: their first part alone is a real prefix.
pub trait Leading1 {
    type First: KeyPart;
}

/// Key shapes with at least three parts: their first two parts are a real prefix.
pub trait Leading2: Leading1 {
    type Second: KeyPart;
}

/// Key shapes with at least four parts: their first three parts are a real prefix.
pub trait Leading3: Leading2 {
    type Third: KeyPart;
}

/// Key shapes with five parts: their first four parts are a real prefix.
pub trait Leading4: Leading3 {
    type Fourth: KeyPart;
}

impl<A: KeyPart, B> Leading1 for (A, B) {
    type First = A;
}
impl<A: KeyPart, B, C> Leading1 for (A, B, C) {
    type First = A;
}
impl<A: KeyPart, B, C, D> Leading1 for (A, B, C, D) {
    type First = A;
}
impl<A: KeyPart, B, C, D, E> Leading1 for (A, B, C, D, E) {
    type First = A;
}
impl<A: KeyPart, B: KeyPart, C> Leading2 for (A, B, C) {
    type Second = B;
}
impl<A: KeyPart, B: KeyPart, C, D> Leading2 for (A, B, C, D) {
    type Second = B;
}
impl<A: KeyPart, B: KeyPart, C, D, E> Leading2 for (A, B, C, D, E) {
    type Second = B;
}
impl<A: KeyPart, B: KeyPart, C: KeyPart, D> Leading3 for (A, B, C, D) {
    type Third = C;
}
impl<A: KeyPart, B: KeyPart, C: KeyPart, D, E> Leading3 for (A, B, C, D, E) {
    type Third = C;
}
impl<A: KeyPart, B: KeyPart, C: KeyPart, D: KeyPart, E> Leading4 for (A, B, C, D, E) {
    type Fourth = D;
}

/// The leading parts of a key of shape `K`, for a prefix scan. Only real prefixes of `K`
/// can be built, each from parts of the right types, and every part is followed by its
/// separator, so the prefix of `"!room"` never matches `"!room2"`.
pub struct Prefix<K> {
    bytes: Vec<u8>,
    _key: PhantomData<fn() -> K>,
}

impl<K> Prefix<K> {
    /// The empty prefix: every key.
    pub fn all() -> Self {
        Self { bytes: Vec::new(), _key: PhantomData }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn parts(capacity: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut bytes = Vec::with_capacity(capacity);
        encode(&mut bytes);
        Self { bytes, _key: PhantomData }
    }
}

impl<K: Leading1> Prefix<K> {
    /// Keys whose first part is `first`.
    pub fn of(first: &(impl PartOf<K::First> + ?Sized)) -> Self {
        Self::parts(16, |out| first.encode_as(out, false))
    }
}

impl<K: Leading2> Prefix<K> {
    /// Keys whose first two parts are `first` and `second`.
    pub fn of2(
        first: &(impl PartOf<K::First> + ?Sized),
        second: &(impl PartOf<K::Second> + ?Sized),
    ) -> Self {
        Self::parts(32, |out| {
            first.encode_as(out, false);
            second.encode_as(out, false);
        })
    }
}

impl<K: Leading3> Prefix<K> {
    /// Keys whose first three parts are `first`, `second` and `third`.
    pub fn of3(
        first: &(impl PartOf<K::First> + ?Sized),
        second: &(impl PartOf<K::Second> + ?Sized),
        third: &(impl PartOf<K::Third> + ?Sized),
    ) -> Self {
        Self::parts(48, |out| {
            first.encode_as(out, false);
            second.encode_as(out, false);
            third.encode_as(out, false);
        })
    }
}

impl<K: Leading4> Prefix<K> {
    /// Keys whose first four parts are `first` to `fourth`.
    pub fn of4(
        first: &(impl PartOf<K::First> + ?Sized),
        second: &(impl PartOf<K::Second> + ?Sized),
        third: &(impl PartOf<K::Third> + ?Sized),
        fourth: &(impl PartOf<K::Fourth> + ?Sized),
    ) -> Self {
        Self::parts(64, |out| {
            first.encode_as(out, false);
            second.encode_as(out, false);
            third.encode_as(out, false);
            fourth.encode_as(out, false);
        })
    }
}

/// What a table scan takes as its prefix: a typed [`Prefix`] of the table's key shape, or
/// (until every call site builds one, issue 21 step 22) raw bytes.
pub trait ScanPrefix<K> {
    fn prefix_bytes(&self) -> &[u8];
}

impl<K> ScanPrefix<K> for Prefix<K> {
    fn prefix_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<K> ScanPrefix<K> for [u8] {
    fn prefix_bytes(&self) -> &[u8] {
        self
    }
}

impl<K, const N: usize> ScanPrefix<K> for [u8; N] {
    fn prefix_bytes(&self) -> &[u8] {
        self
    }
}

impl<K> ScanPrefix<K> for Vec<u8> {
    fn prefix_bytes(&self) -> &[u8] {
        self
    }
}

/// Encodes the leading parts of a key for a prefix scan: every part is followed by its
/// separator, so `prefix(("!room",))` never matches `"!room2"`.
pub fn prefix<P: KeyPart>(part: &P) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    part.encode_part(&mut out, false);
    out
}

/// Like [`prefix`] for two leading parts.
pub fn prefix2<A: KeyPart, B: KeyPart>(first: &A, second: &B) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    first.encode_part(&mut out, false);
    second.encode_part(&mut out, false);
    out
}

/// Like [`prefix`] for three leading parts.
pub fn prefix3<A: KeyPart, B: KeyPart, C: KeyPart>(first: &A, second: &B, third: &C) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    first.encode_part(&mut out, false);
    second.encode_part(&mut out, false);
    third.encode_part(&mut out, false);
    out
}

/// A stored value.
pub trait Value: Sized {
    fn encode_value(&self) -> Vec<u8>;
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl Value for u64 {
    fn encode_value(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let bytes: [u8; 8] =
            bytes.try_into().map_err(|_| CodecError("u64 value of wrong length"))?;
        Ok(Self::from_be_bytes(bytes))
    }
}

impl Value for Vec<u8> {
    fn encode_value(&self) -> Vec<u8> {
        self.clone()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

impl Value for String {
    fn encode_value(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError("non-utf8 string value"))
    }
}

impl Value for () {
    fn encode_value(&self) -> Vec<u8> {
        Vec::new()
    }

    fn decode_value(_bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(())
    }
}

/// A value stored as JSON (for structured records that change shape over time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize + serde::de::DeserializeOwned> Value for Json<T> {
    fn encode_value(&self) -> Vec<u8> {
        // Serializing our own plain data structures to JSON cannot fail.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map(Json).map_err(|_| CodecError("malformed json value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_sort_numerically() {
        let small = 255u64.encode();
        let large = 256u64.encode();
        assert!(small < large);
        assert_eq!(u64::decode(&large), Ok(256));
    }

    #[test]
    fn tuples_round_trip() {
        let key = ("!room:example.org".to_owned(), 42u64);
        let bytes = key.encode();
        assert_eq!(<(String, u64)>::decode(&bytes), Ok(key));

        let key = (7u64, "m.room.member".to_owned(), "@alice:example.org".to_owned());
        let bytes = key.encode();
        assert_eq!(<(u64, String, String)>::decode(&bytes), Ok(key));
    }

    #[test]
    fn separators_keep_prefixes_exact() {
        let room = ("!a".to_owned(), 1u64).encode();
        let other = ("!ab".to_owned(), 1u64).encode();
        let scan = prefix(&"!a");
        assert!(room.starts_with(&scan));
        assert!(!other.starts_with(&scan));
    }

    #[test]
    fn typed_prefixes_encode_like_the_leading_parts() {
        let user = "@alice:example.org";
        let of: Prefix<(String, String, u64)> = Prefix::of(user);
        assert_eq!(of.as_bytes(), prefix(&user));
        let owned: Prefix<(String, String, u64)> = Prefix::of(&user.to_owned());
        assert_eq!(owned.as_bytes(), of.as_bytes());
        let of2: Prefix<(String, String, u64)> = Prefix::of2(user, "DEVICE");
        assert_eq!(of2.as_bytes(), prefix2(&user, &"DEVICE"));
        let short: Prefix<(u64, u64)> = Prefix::of(&42u64);
        assert_eq!(short.as_bytes(), 42u64.to_be_bytes());
        let of3: Prefix<(String, String, String, u64)> = Prefix::of3(user, "a", "b");
        assert_eq!(of3.as_bytes(), prefix3(&user, &"a", &"b"));
        let of4: Prefix<(String, String, String, u64, String)> = Prefix::of4(user, "a", "b", &7u64);
        assert_eq!(of4.as_bytes(), [prefix3(&user, &"a", &"b"), 7u64.encode()].concat());
        assert!(Prefix::<(u64, u64)>::all().as_bytes().is_empty());
        // A prefix matches exactly its own part, as the byte form does.
        let scan: Prefix<(String, u64)> = Prefix::of("!a");
        assert!(("!a".to_owned(), 1u64).encode().starts_with(scan.as_bytes()));
        assert!(!("!ab".to_owned(), 1u64).encode().starts_with(scan.as_bytes()));
    }

    #[test]
    fn ruma_ids_are_stored_as_their_strings_and_parsed_back() {
        use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
        let user: OwnedUserId = "@alice:example.org".try_into().expect("valid");
        let device: OwnedDeviceId = "DEVICE".into();
        let key = (user.clone(), device.clone(), 7u64);
        let bytes = key.encode();
        assert_eq!(bytes, ("@alice:example.org".to_owned(), "DEVICE".to_owned(), 7u64).encode());
        assert_eq!(<(OwnedUserId, OwnedDeviceId, u64)>::decode(&bytes), Ok(key));
        // A stored string that is not a valid id is an error, not a panic.
        let bad = ("not a user".to_owned(), 1u64).encode();
        assert!(<(OwnedUserId, u64)>::decode(&bad).is_err());
        assert!(OwnedRoomId::decode(b"no sigil").is_err());
        // Borrowed ids (and references to them) build the same prefixes as the strings.
        let borrowed: &UserId = &user;
        let typed: Prefix<(OwnedUserId, OwnedDeviceId, u64)> = Prefix::of(borrowed);
        let owned: Prefix<(OwnedUserId, OwnedDeviceId, u64)> = Prefix::of(&user);
        assert_eq!(typed.as_bytes(), prefix(&"@alice:example.org"));
        assert_eq!(owned.as_bytes(), typed.as_bytes());
        let room: &RoomId = <&RoomId>::try_from("!room:example.org").expect("valid");
        let of2: Prefix<(OwnedRoomId, OwnedUserId, u64)> = Prefix::of2(room, borrowed);
        assert_eq!(of2.as_bytes(), prefix2(&"!room:example.org", &"@alice:example.org"));
        // As values (the users of a stream table), the same: the string's bytes, parsed back.
        assert_eq!(user.encode_value(), "@alice:example.org".to_owned().encode_value());
        assert_eq!(OwnedUserId::decode_value(&user.encode_value()), Ok(user.clone()));
        assert!(OwnedUserId::decode_value(b"not a user").is_err());
        assert!(OwnedUserId::decode_value(&[0xFF]).is_err());
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(<(String, u64)>::decode(b"no-separator").is_err());
        assert!(<(u64, u64)>::decode(&[0; 17]).is_err());
        assert!(String::decode(&[0xFF, 0xFE]).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn keys_round_trip(
            room in any::<String>(),
            user in any::<String>(),
            device in any::<String>(),
            number in any::<u64>(),
            other in any::<u64>(),
        ) {
            let key = (room.clone(), number);
            prop_assert_eq!(<(String, u64)>::decode(&key.encode()), Ok(key));
            let key = (number, room.clone(), user.clone());
            prop_assert_eq!(<(u64, String, String)>::decode(&key.encode()), Ok(key));
            let key = (user.clone(), device.clone(), room.clone(), number, user.clone());
            prop_assert_eq!(<(String, String, String, u64, String)>::decode(&key.encode()), Ok(key));
            let key = (number, other);
            prop_assert_eq!(<(u64, u64)>::decode(&key.encode()), Ok(key));
            prop_assert_eq!(String::decode(&room.encode()), Ok(room));
        }

        #[test]
        fn encoded_order_is_numeric_order_within_a_prefix(
            part in any::<String>(),
            first in any::<u64>(),
            second in any::<u64>(),
            high in any::<u64>(),
        ) {
            prop_assert_eq!(first.encode().cmp(&second.encode()), first.cmp(&second));
            prop_assert_eq!(
                (part.clone(), first).encode().cmp(&(part.clone(), second).encode()),
                first.cmp(&second)
            );
            prop_assert_eq!(
                (high, first).encode().cmp(&(high, second).encode()),
                first.cmp(&second)
            );
        }

        #[test]
        fn a_prefix_matches_exactly_its_own_part(
            part in any::<String>(),
            other in any::<String>(),
            number in any::<u64>(),
        ) {
            let scan = prefix(&part.as_str());
            prop_assert!((part.clone(), number).encode().starts_with(&scan));
            prop_assert_eq!((other.clone(), number).encode().starts_with(&scan), other == part);
            let scan = prefix2(&part.as_str(), &other.as_str());
            prop_assert!((part.clone(), other.clone(), number).encode().starts_with(&scan));
        }

        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_a_value_never_a_panic(bytes in any::<Vec<u8>>()) {
            let _ = <(String, u64)>::decode(&bytes);
            let _ = <(u64, String, String)>::decode(&bytes);
            let _ = <(String, String, String, u64, String)>::decode(&bytes);
            let _ = <(u64, u64)>::decode(&bytes);
            let _ = u64::decode(&bytes);
            let _ = String::decode(&bytes);
            let _ = u64::decode_value(&bytes);
            let _ = String::decode_value(&bytes);
            let _ = <Json<(String, String)>>::decode_value(&bytes);
            let _ = <Json<serde_json::Value>>::decode_value(&bytes);
            let _ = ruma::OwnedUserId::decode_value(&bytes);
            let _ = <(ruma::OwnedUserId, ruma::OwnedDeviceId, u64)>::decode(&bytes);
        }

        #[test]
        fn json_values_round_trip(room in any::<String>(), kind in any::<String>()) {
            let value = Json((room, kind));
            prop_assert_eq!(<Json<(String, String)>>::decode_value(&value.encode_value()), Ok(value));
        }
    }
}
