//! Value types that configuration keys accept beyond plain TOML scalars.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A key that takes either one value or a list (`port = 8008` or `port = [8008, 8448]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ListOrOne<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: de::DeserializeOwned> Deserialize<'de> for ListOrOne<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Decide on the shape first so the error names the problem with the value itself,
        // not "data did not match any variant".
        let value = toml::Value::deserialize(deserializer)?;
        match value {
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    item.try_into::<T>().map_err(|error| de::Error::custom(error.message().trim()))
                })
                .collect::<Result<Vec<T>, D::Error>>()
                .map(Self::Many),
            single => single
                .try_into::<T>()
                .map(Self::One)
                .map_err(|error| de::Error::custom(error.message().trim())),
        }
    }
}

impl<T: Clone> ListOrOne<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(value) => vec![value.clone()],
            Self::Many(values) => values.clone(),
        }
    }
}

/// A size in bytes, written as an integer or with a unit (`"24 MiB"`, `"512KB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(mib: u64) -> Self {
        Self(mib * 1024 * 1024)
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("'{text}' is not a size"))?;
        let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "unknown size unit '{other}' (use B, KB, KiB, MB, MiB, GB, GiB)"
                ));
            }
        };
        // Sizes are whole bytes; a fractional result is rounded down on purpose.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self((number * multiplier) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, as an integer or a string such as \"24 MiB\"")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                ByteSize::parse(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("24 MiB"), Ok(ByteSize(24 * 1024 * 1024)));
        assert_eq!(ByteSize::parse("20MB"), Ok(ByteSize(20_000_000)));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("3 parsecs").is_err());
    }
}
