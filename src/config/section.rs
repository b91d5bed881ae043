//! The declarative machinery behind configuration sections.
//!
//! A section is declared once with [`config_section!`]: every key with its doc comment, type
//! and default. From that one declaration come the struct, its defaults, a parser that names
//! the offending key and where it came from, the list of unknown keys, and the documentation
//! that `tuwunel.toml.example` is generated from.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use super::{
    ConfigError,
    sources::{Origin, Origins},
};

/// A configuration table with typed fields.
pub trait Section: Sized + Default {
    /// Parses `table`, consuming the keys it knows; anything left is reported as unknown.
    fn parse(table: toml::Table, ctx: &mut ParseContext<'_>) -> Result<Self, ConfigError>;

    /// The documentation of every key, in declaration order.
    fn describe() -> Vec<KeyDoc>;
}

/// Documentation of one configuration key or nested section.
#[derive(Debug)]
pub struct KeyDoc {
    pub name: &'static str,
    pub doc: Vec<&'static str>,
    pub body: KeyBody,
}

#[derive(Debug)]
pub enum KeyBody {
    /// A plain key with its default value, rendered as TOML (`None`: no default).
    Value(Option<toml::Value>),
    /// A nested table such as `[global.well_known]`.
    Section(Vec<KeyDoc>),
    /// Tables of one shape under names the operator chooses, such as
    /// `[global.appservice.<ID>]`: the keys of one such table.
    Map(Vec<KeyDoc>),
}

/// A key the server does not know, with where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub path: String,
    pub origin: Origin,
}

/// State carried while parsing nested sections: the dotted path so far, where each value came
/// from, and the unknown keys found.
pub struct ParseContext<'a> {
    origins: &'a Origins,
    path: Vec<String>,
    pub(super) unknown: Vec<UnknownKey>,
}

impl<'a> ParseContext<'a> {
    pub(super) fn new(origins: &'a Origins) -> Self {
        Self { origins, path: Vec::new(), unknown: Vec::new() }
    }

    fn path_of(&self, key: &str) -> String {
        let mut path = self.path.join(".");
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        path
    }

    /// Converts one value to its declared type, naming the key and its origin on failure.
    pub fn convert<T: DeserializeOwned>(
        &self,
        key: &'static str,
        value: toml::Value,
    ) -> Result<T, ConfigError> {
        let path = self.path_of(key);
        let origin = self.origins.get(&path);
        let typed_error = match value.try_into::<T>() {
            Ok(typed) => return Ok(typed),
            Err(error) => error,
        };
        // Environment variables are typed by guessing (TOML first); a value such as
        // `TUWUNEL_REGISTRATION_TOKEN=12345` is meant as a string, so fall back to the raw text.
        if let Origin::Env { raw, .. } = &origin
            && let Ok(typed) = toml::Value::String(raw.clone()).try_into::<T>()
        {
            return Ok(typed);
        }
        Err(ConfigError::InvalidValue {
            key: path,
            origin,
            reason: typed_error.message().trim().to_owned(),
        })
    }

    /// Parses a nested section found under `key`.
    pub fn section<S: Section>(
        &mut self,
        key: &'static str,
        value: toml::Value,
    ) -> Result<S, ConfigError> {
        self.nested(key.to_owned(), value)
    }

    /// Parses a table of sections keyed by names the operator chooses, found under `key`.
    pub fn map<S: Section>(
        &mut self,
        key: &'static str,
        value: toml::Value,
    ) -> Result<BTreeMap<String, S>, ConfigError> {
        let table = self.table(key, value)?;
        self.path.push(key.to_owned());
        let parsed = table
            .into_iter()
            .map(|(name, value)| Ok((name.clone(), self.nested(name, value)?)))
            .collect();
        self.path.pop();
        parsed
    }

    fn nested<S: Section>(&mut self, key: String, value: toml::Value) -> Result<S, ConfigError> {
        let table = self.table(&key, value)?;
        self.path.push(key);
        let parsed = S::parse(table, self);
        self.path.pop();
        parsed
    }

    fn table(&self, key: &str, value: toml::Value) -> Result<toml::Table, ConfigError> {
        match value {
            toml::Value::Table(table) => Ok(table),
            _ => {
                let path = self.path_of(key);
                let origin = self.origins.get(&path);
                Err(ConfigError::InvalidValue {
                    key: path,
                    origin,
                    reason: "expected a table".to_owned(),
                })
            }
        }
    }

    /// Records every key left in `table` as unknown.
    pub fn leftovers(&mut self, table: toml::Table) {
        for key in table.keys() {
            let path = self.path_of(key);
            let origin = self.origins.get(&path);
            self.unknown.push(UnknownKey { path, origin });
        }
    }
}

/// The sections a `[map]` key holds, for its documentation.
pub trait MapOfSections {
    fn describe_entry() -> Vec<KeyDoc>;
}

impl<S: Section> MapOfSections for BTreeMap<String, S> {
    fn describe_entry() -> Vec<KeyDoc> {
        S::describe()
    }
}

/// Renders a default value for the documentation, if it has a TOML form.
pub fn render_default<T: serde::Serialize>(value: &T) -> Option<toml::Value> {
    toml::Value::try_from(value).ok()
}

/// Declares a configuration section; see the module documentation.
///
/// Each key is `/// docs` then `name: Type = default`; a nested table is written
/// `[section] name: Type = Type::default()`, and tables under names the operator chooses
/// `[map] name: BTreeMap<String, Type> = BTreeMap::new()`.
macro_rules! config_section {
    (
        $(#[doc = $section_doc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $([$kind:ident])? $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[doc = $section_doc])*
        #[derive(Clone, Debug, serde::Serialize)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::config::section::Section for $name {
            fn parse(
                mut table: toml::Table,
                ctx: &mut $crate::config::section::ParseContext<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                let parsed = Self {
                    $(
                        $field: match table.remove(stringify!($field)) {
                            None => $default,
                            Some(value) => $crate::config::section::config_section!(
                                @parse $([$kind])? ctx, $field, $ty, value
                            ),
                        },
                    )*
                };
                ctx.leftovers(table);
                Ok(parsed)
            }

            fn describe() -> Vec<$crate::config::section::KeyDoc> {
                let defaults = Self::default();
                vec![
                    $(
                        $crate::config::section::KeyDoc {
                            name: stringify!($field),
                            doc: vec![$($doc),*],
                            body: $crate::config::section::config_section!(
                                @describe $([$kind])? defaults, $field, $ty
                            ),
                        },
                    )*
                ]
            }
        }
    };

    (@parse [section] $ctx:ident, $field:ident, $ty:ty, $value:ident) => {
        $ctx.section::<$ty>(stringify!($field), $value)?
    };
    (@parse [map] $ctx:ident, $field:ident, $ty:ty, $value:ident) => {
        $ctx.map(stringify!($field), $value)?
    };
    (@parse $ctx:ident, $field:ident, $ty:ty, $value:ident) => {
        $ctx.convert::<$ty>(stringify!($field), $value)?
    };
    (@describe [section] $defaults:ident, $field:ident, $ty:ty) => {
        $crate::config::section::KeyBody::Section(
            <$ty as $crate::config::section::Section>::describe(),
        )
    };
    (@describe [map] $defaults:ident, $field:ident, $ty:ty) => {
        $crate::config::section::KeyBody::Map(
            <$ty as $crate::config::section::MapOfSections>::describe_entry(),
        )
    };
    (@describe $defaults:ident, $field:ident, $ty:ty) => {
        $crate::config::section::KeyBody::Value(
            $crate::config::section::render_default(&$defaults.$field),
        )
    };
}

pub(crate) use config_section;
