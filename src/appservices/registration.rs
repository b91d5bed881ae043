//! One application service's registration: the fields of its registration file (the spec's
//! names, plus the unstable names bridges still write), read from YAML, checked field by field,
//! and rendered back.
//!
//! The same type serves the three sources an operator registers from (the config, the admin
//! room, `appservice_dir`), so every check and error message is written once.

use std::{collections::BTreeMap, fmt};

use regex::{Regex, RegexBuilder};
use ruma::ServerName;
use serde::{Deserialize, Serialize};

use super::namespaces::{CompiledNamespace, CompiledNamespaces};
use crate::config::{AppserviceConfig, AppserviceNamespace};

/// Largest compiled size of one namespace regex. The `regex` crate matches in linear time, so
/// this only bounds memory; registrations are admin input, and real bridges use a few hundred
/// bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest id accepted; the id is a path segment (`/appservice/{id}/ping`) and a storage key.
const MAX_ID_BYTES: usize = 255;
/// The spec's limit on a whole user id, which the sender user must respect.
const MAX_USER_ID_BYTES: usize = 255;

/// A registration as the operator gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// Unique among registrations; never changes.
    pub id: String,
    /// Where transactions and queries go; `None` (YAML `null`) for a service that only acts
    /// as users and wants no traffic.
    pub url: Option<String>,
    /// What the service authenticates to us with.
    pub as_token: String,
    /// What we authenticate to the service with.
    pub hs_token: String,
    /// The service's own user, on this server.
    pub sender_localpart: String,
    pub namespaces: Namespaces,
    /// Whether masqueraded users are rate limited; `None` when the file does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<String>>,
    /// Typing, receipts and presence in transactions (spec 1.13; MSC2409 before it).
    #[serde(skip_serializing_if = "is_false")]
    pub receive_ephemeral: bool,
    /// MSC4190 (spec 1.17): the service manages its users' devices without logging them in.
    /// Parsed and shown; every service may manage devices.
    #[serde(rename = "io.element.msc4190", skip_serializing_if = "is_false")]
    pub device_management: bool,
    /// MSC3202 and MSC4203: device lists, one-time key counts and to-device messages of the
    /// service's users in transactions, for bridges that encrypt.
    #[serde(rename = "org.matrix.msc3202", skip_serializing_if = "is_false")]
    pub msc3202: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The users, aliases and rooms a service is interested in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    #[serde(default)]
    pub users: Vec<Namespace>,
    #[serde(default)]
    pub aliases: Vec<Namespace>,
    #[serde(default)]
    pub rooms: Vec<Namespace>,
}

/// One namespace entry: a regex, and whether the service claims it for itself alone
/// (`exclusive` may be left out, meaning false, as Tuwunel reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub exclusive: bool,
    pub regex: String,
}

/// A registration read from a file, with what in it was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub registration: Registration,
    /// One line per key that is ignored, for the operator to read.
    pub warnings: Vec<String>,
}

/// What is wrong with one field of a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the registration file, such as `namespaces.users[0].regex`.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl FieldError {
    /// The same problem named as a key of `[global.appservice.<id>]`, where the namespaces
    /// sit directly in the table.
    pub fn in_config(&self, id: &str) -> String {
        let field = self.field.strip_prefix("namespaces.").unwrap_or(&self.field);
        format!("`global.appservice.{id}.{field}`: {}", self.reason)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

/// The registration file as written, before the unstable names are folded in. Every field is
/// optional here so that a missing one is reported by name, not by the YAML parser.
#[derive(Deserialize)]
struct RawRegistration {
    id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    url: Option<Option<String>>,
    as_token: Option<String>,
    hs_token: Option<String>,
    sender_localpart: Option<String>,
    namespaces: Option<Namespaces>,
    rate_limited: Option<bool>,
    protocols: Option<Vec<String>>,
    receive_ephemeral: Option<bool>,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    msc2409_push_ephemeral: Option<bool>,
    push_ephemeral: Option<bool>,
    device_management: Option<bool>,
    #[serde(rename = "io.element.msc4190")]
    msc4190: Option<bool>,
    msc3202_transaction_extensions: Option<bool>,
    #[serde(rename = "org.matrix.msc3202")]
    msc3202: Option<bool>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

/// Tells `url: null` (present, no traffic) from a missing `url`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl Registration {
    /// Reads a registration file (YAML; JSON is YAML too). The result is not yet checked:
    /// see [`Registration::check`].
    pub fn from_yaml(text: &str) -> Result<Parsed, FieldError> {
        let raw: RawRegistration = serde_saphyr::from_str(text).map_err(|error| {
            FieldError::new("(file)", format!("not a valid registration: {error}"))
        })?;
        let required = |value: Option<String>, field: &str| {
            value.ok_or_else(|| FieldError::new(field, "missing; every registration needs it"))
        };
        let mut warnings: Vec<String> = raw
            .unknown
            .keys()
            .map(|key| format!("`{key}` is not a registration field tuwunel knows; ignored"))
            .collect();
        let url = match raw.url {
            Some(url) => url,
            None => {
                warnings
                    .push("`url` is missing; taken as null (no transactions are sent)".to_owned());
                None
            }
        };
        let either = |stable: Option<bool>, unstable: &[Option<bool>]| {
            stable.or_else(|| unstable.iter().find_map(|value| *value)).unwrap_or(false)
        };
        let registration = Self {
            id: required(raw.id, "id")?,
            url,
            as_token: required(raw.as_token, "as_token")?,
            hs_token: required(raw.hs_token, "hs_token")?,
            sender_localpart: required(raw.sender_localpart, "sender_localpart")?,
            namespaces: raw.namespaces.ok_or_else(|| {
                FieldError::new("namespaces", "missing; every registration needs it")
            })?,
            rate_limited: raw.rate_limited,
            protocols: raw.protocols,
            receive_ephemeral: either(
                raw.receive_ephemeral,
                &[raw.msc2409_push_ephemeral, raw.push_ephemeral],
            ),
            device_management: either(raw.device_management, &[raw.msc4190]),
            msc3202: either(raw.msc3202_transaction_extensions, &[raw.msc3202]),
        };
        Ok(Parsed { registration, warnings })
    }

    /// The registration a `[global.appservice.<name>]` table describes. Only a conflicting
    /// `id` is refused here; [`Registration::check`] judges the rest.
    pub fn from_config(name: &str, table: &AppserviceConfig) -> Result<Self, FieldError> {
        if let Some(id) = &table.id
            && id != name
        {
            return Err(FieldError::new(
                "id",
                format!(
                    "is `{id}` but the table is named `{name}`; remove `id` or make them equal"
                ),
            ));
        }
        let namespaces = |list: &[AppserviceNamespace]| {
            list.iter()
                .map(|entry| Namespace { exclusive: entry.exclusive, regex: entry.regex.clone() })
                .collect()
        };
        Ok(Self {
            id: name.to_owned(),
            url: table.url.clone(),
            as_token: table.as_token.clone(),
            hs_token: table.hs_token.clone(),
            sender_localpart: table.sender_localpart.clone().unwrap_or_else(|| name.to_owned()),
            namespaces: Namespaces {
                users: namespaces(&table.users),
                aliases: namespaces(&table.aliases),
                rooms: namespaces(&table.rooms),
            },
            rate_limited: Some(table.rate_limited),
            protocols: (!table.protocols.is_empty()).then(|| table.protocols.clone()),
            receive_ephemeral: table.receive_ephemeral,
            device_management: table.device_management,
            msc3202: table.msc3202_transaction_extensions,
        })
    }

    /// Renders the registration as a registration file; [`Registration::from_yaml`] reads it
    /// back to the same value.
    pub fn to_yaml(&self) -> String {
        // Every field is a string, a bool or a list of them: serialising cannot fail.
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// The service's own user id on `server_name`.
    pub fn sender(&self, server_name: &ServerName) -> Option<ruma::OwnedUserId> {
        ruma::UserId::parse(format!("@{}:{server_name}", self.sender_localpart)).ok()
    }

    /// Checks every field on its own and compiles the namespaces. All problems are reported at
    /// once, each naming its field.
    pub fn check(&self, server_name: &ServerName) -> Result<CompiledNamespaces, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.id.is_empty() {
            errors.push(FieldError::new("id", "must not be empty"));
        } else if self.id.len() > MAX_ID_BYTES {
            errors.push(FieldError::new("id", format!("longer than {MAX_ID_BYTES} bytes")));
        } else if self.id.chars().any(char::is_control) {
            errors.push(FieldError::new("id", "must not contain control characters"));
        }
        if let Some(url) = &self.url
            && let Err(reason) = check_url(url)
        {
            errors.push(FieldError::new("url", reason));
        }
        for (field, token) in [("as_token", &self.as_token), ("hs_token", &self.hs_token)] {
            if let Err(reason) = check_token(token) {
                errors.push(FieldError::new(field, reason));
            }
        }
        if let Err(reason) = check_localpart(&self.sender_localpart, server_name) {
            errors.push(FieldError::new("sender_localpart", reason));
        }
        let mut compile = |kind: &str, list: &[Namespace], case_insensitive: bool| {
            list.iter()
                .enumerate()
                .filter_map(|(index, namespace)| {
                    match compile_regex(&namespace.regex, case_insensitive) {
                        Ok(regex) => {
                            Some(CompiledNamespace { exclusive: namespace.exclusive, regex })
                        }
                        Err(reason) => {
                            errors.push(FieldError::new(
                                format!("namespaces.{kind}[{index}].regex"),
                                reason,
                            ));
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        };
        // Users and aliases match case-insensitively, rooms exactly, as Tuwunel does: user ids
        // and aliases are case-insensitive in practice, room ids are opaque.
        let users = compile("users", &self.namespaces.users, true);
        let aliases = compile("aliases", &self.namespaces.aliases, true);
        let rooms = compile("rooms", &self.namespaces.rooms, false);
        if errors.is_empty() {
            Ok(CompiledNamespaces { users, aliases, rooms })
        } else {
            Err(errors)
        }
    }

    /// Problems with registering `self` next to `others` (which do not include an earlier
    /// version of `self`): ids and tokens must be unique, or a token would name two services.
    pub fn conflicts<'a>(&self, others: impl IntoIterator<Item = &'a Self>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for other in others {
            if other.id == self.id {
                errors.push(FieldError::new("id", format!("`{}` is already registered", self.id)));
            }
            for (field, token) in [("as_token", &self.as_token), ("hs_token", &self.hs_token)] {
                if *token == other.as_token || *token == other.hs_token {
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "already used by the appservice `{}`; tokens must be unique",
                            other.id
                        ),
                    ));
                }
            }
        }
        if self.as_token == self.hs_token {
            errors.push(FieldError::new(
                "hs_token",
                "equals as_token; the two directions need different secrets",
            ));
        }
        errors
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("must start with http:// or https://, not {}://", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or a fragment; a path is allowed".to_owned());
    }
    Ok(())
}

/// Tokens travel in an `Authorization` header, so they must be visible ASCII.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    Ok(())
}

/// The historic user id grammar (printable ASCII but `:`), which mautrix's random mixed-case
/// sender localparts need.
fn check_localpart(localpart: &str, server_name: &ServerName) -> Result<(), String> {
    if localpart.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = localpart.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
        return Err(format!("contains {bad:?}; a localpart is printable ASCII without `:`"));
    }
    let length = localpart.len() + server_name.as_str().len() + 2;
    if length > MAX_USER_ID_BYTES {
        return Err(format!(
            "makes a user id of {length} bytes; at most {MAX_USER_ID_BYTES} are allowed"
        ));
    }
    Ok(())
}

fn compile_regex(pattern: &str, case_insensitive: bool) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| format!("not a valid regex: {error}"))
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, user_id};

    use super::*;

    const SPEC: &str = include_str!("../../tests/fixtures/appservices/spec.yaml");
    const MAUTRIX: &str = include_str!("../../tests/fixtures/appservices/mautrix.yaml");
    const MATRIX_APPSERVICE: &str =
        include_str!("../../tests/fixtures/appservices/matrix-appservice.yaml");

    fn parse(text: &str) -> Registration {
        Registration::from_yaml(text).expect("parses").registration
    }

    fn field_errors(registration: &Registration) -> Vec<String> {
        match registration.check(server_name!("test.local")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|error| error.field).collect(),
        }
    }

    #[test]
    fn the_spec_example_parses_and_checks() {
        let registration = parse(SPEC);
        assert_eq!(registration.id, "IRC Bridge");
        assert_eq!(registration.url.as_deref(), Some("http://127.0.0.1:1234"));
        assert_eq!(registration.sender_localpart, "_irc_bot");
        assert_eq!(registration.namespaces.users.len(), 2);
        assert!(registration.namespaces.users[0].exclusive);
        assert!(!registration.namespaces.aliases[0].exclusive);
        assert!(!registration.receive_ephemeral);
        let namespaces = registration.check(server_name!("test.local")).expect("valid");
        assert!(namespaces.users.iter().any(|ns| ns.regex.is_match("@_irc_bridge_bob:test.local")));
    }

    #[test]
    fn mautrix_output_parses_with_its_unstable_keys() {
        let parsed = Registration::from_yaml(MAUTRIX).expect("parses");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let registration = parsed.registration;
        // Random, mixed case: the historic grammar.
        assert_eq!(registration.sender_localpart, "wHHGpVlQxbNk4OCmJdyMtZs2HeFT0q3a");
        assert!(registration.receive_ephemeral);
        assert!(registration.device_management);
        assert_eq!(registration.rate_limited, Some(false));
        let namespaces = registration.check(server_name!("test.local")).expect("valid");
        // Python's re.escape writes `\#`, which must mean a literal `#`.
        assert!(namespaces.aliases[0].regex.is_match("#echo_general:test.local"));
        assert!(!namespaces.aliases[0].regex.is_match("#other:test.local"));
    }

    #[test]
    fn matrix_appservice_output_parses_with_only_the_msc2409_key() {
        let registration = parse(MATRIX_APPSERVICE);
        assert!(registration.receive_ephemeral);
        assert_eq!(registration.protocols, Some(vec!["jsnet".to_owned()]));
        assert_eq!(registration.rate_limited, Some(true));
        assert!(field_errors(&registration).is_empty());
    }

    #[test]
    fn an_invalid_regex_names_its_field() {
        let mut registration = parse(SPEC);
        registration.namespaces.users[1].regex = "@(unclosed".to_owned();
        registration.namespaces.rooms.push(Namespace { exclusive: false, regex: "[".to_owned() });
        assert_eq!(
            field_errors(&registration),
            ["namespaces.users[1].regex", "namespaces.rooms[0].regex"]
        );
    }

    #[test]
    fn tokens_must_be_set_and_printable() {
        let mut registration = parse(SPEC);
        registration.as_token = String::new();
        registration.hs_token = "two words".to_owned();
        assert_eq!(field_errors(&registration), ["as_token", "hs_token"]);
    }

    #[test]
    fn url_is_http_or_null() {
        let mut registration = parse(SPEC);
        for bad in ["ftp://x", "127.0.0.1:29318", "http://", "http://h/?q=1"] {
            registration.url = Some(bad.to_owned());
            assert_eq!(field_errors(&registration), ["url"], "{bad}");
        }
        registration.url = Some("https://bridge.example/prefix".to_owned());
        assert!(field_errors(&registration).is_empty());
        let null = SPEC.replace("url: \"http://127.0.0.1:1234\"", "url: null");
        assert_eq!(parse(&null).url, None);
    }

    #[test]
    fn sender_localpart_follows_the_historic_grammar() {
        let mut registration = parse(SPEC);
        registration.sender_localpart = "MixedCase_Bot".to_owned();
        assert!(field_errors(&registration).is_empty());
        assert_eq!(
            registration.sender(server_name!("test.local")).as_deref(),
            Some(user_id!("@MixedCase_Bot:test.local"))
        );
        for bad in ["a:b", "", "has space", "é"] {
            registration.sender_localpart = bad.to_owned();
            assert_eq!(field_errors(&registration), ["sender_localpart"], "{bad:?}");
        }
        registration.sender_localpart = "x".repeat(250);
        assert_eq!(field_errors(&registration), ["sender_localpart"]);
    }

    #[test]
    fn missing_fields_are_named_and_unknown_ones_warned() {
        let missing = SPEC.replace("hs_token:", "hs_tokn:");
        let error = Registration::from_yaml(&missing).expect_err("hs_token is required");
        assert_eq!(error.field, "hs_token");
        let parsed = Registration::from_yaml(&missing.replace("hs_tokn:", "hs_token: x\nhs_tokn:"))
            .expect("parses");
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].contains("`hs_tokn`"), "{:?}", parsed.warnings);

        let error = Registration::from_yaml("id: [unclosed").expect_err("not YAML");
        assert_eq!(error.field, "(file)");
        let error = Registration::from_yaml("id: x\nnamespaces: {users: [{exclusive: true}]}")
            .expect_err("regex is required");
        assert!(error.reason.contains("regex"), "{error}");
    }

    #[test]
    fn ids_and_tokens_are_unique() {
        let first = parse(SPEC);
        let mut second = parse(MAUTRIX);
        assert!(second.conflicts([&first]).is_empty());
        second.id = first.id.clone();
        second.hs_token = first.as_token.clone();
        let fields: Vec<_> =
            second.conflicts([&first]).into_iter().map(|error| error.field).collect();
        assert_eq!(fields, ["id", "hs_token"]);
        let mut same = parse(SPEC);
        same.hs_token = same.as_token.clone();
        assert_eq!(same.conflicts([]).len(), 1);
    }

    #[test]
    fn a_config_table_becomes_a_registration() {
        let table = AppserviceConfig {
            as_token: "a".to_owned(),
            hs_token: "h".to_owned(),
            users: vec![AppserviceNamespace { exclusive: true, regex: "@(".to_owned() }],
            protocols: vec!["irc".to_owned()],
            ..Default::default()
        };
        let registration = Registration::from_config("echo", &table).expect("converts");
        assert_eq!(registration.id, "echo");
        assert_eq!(registration.sender_localpart, "echo", "defaults to the table's name");
        assert_eq!(registration.url, None);
        assert_eq!(registration.rate_limited, Some(false));
        assert_eq!(registration.protocols, Some(vec!["irc".to_owned()]));
        let errors = registration.check(server_name!("test.local")).expect_err("bad regex");
        assert_eq!(
            errors[0].in_config("echo").split(':').next(),
            Some("`global.appservice.echo.users[0].regex`")
        );

        let renamed = AppserviceConfig { id: Some("other".to_owned()), ..table };
        let error = Registration::from_config("echo", &renamed).expect_err("ids differ");
        assert_eq!(error.field, "id");
    }

    #[test]
    fn yaml_round_trips() {
        for text in [SPEC, MAUTRIX, MATRIX_APPSERVICE] {
            let registration = parse(text);
            let rendered = registration.to_yaml();
            assert_eq!(parse(&rendered), registration, "{rendered}");
        }
        let mut null_url = parse(SPEC);
        null_url.url = None;
        assert_eq!(parse(&null_url.to_yaml()), null_url);
    }
}
