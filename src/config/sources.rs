//! Where configuration comes from, in precedence order, and which source set each key.
//!
//! Lowest to highest: the embedded development configuration (only when no file is given),
//! the files named by `CONDUIT_CONFIG`, `CONDUWUIT_CONFIG`, `TUWUNEL_CONFIG`, each `-c FILE`
//! in order, environment variables `CONDUIT_*`, `CONDUWUIT_*`, `TUWUNEL_*` (`__` separates
//! nested tables), and finally each `-O key=value`. Later sources override earlier ones key by
//! key; tables merge.

use std::{collections::HashMap, fmt, path::PathBuf};

use super::ConfigError;

/// Environment variable prefixes, lowest precedence first.
pub const ENV_PREFIXES: [&str; 3] = ["CONDUIT_", "CONDUWUIT_", "TUWUNEL_"];

/// Environment variables naming a config file, lowest precedence first.
pub const CONFIG_FILE_VARS: [&str; 3] = ["CONDUIT_CONFIG", "CONDUWUIT_CONFIG", "TUWUNEL_CONFIG"];

/// The configuration used when no file is given: a development server on loopback.
pub const EMBEDDED_DEV_CONFIG: &str = include_str!("dev.toml");

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    Embedded,
    File(PathBuf),
    Env { name: String, raw: String },
    Option(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the built-in default"),
            Self::Embedded => f.write_str("the embedded development configuration"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env { name, .. } => write!(f, "environment variable {name}"),
            Self::Option(text) => write!(f, "command-line option -O '{text}'"),
        }
    }
}

/// The origin of every key set so far, by dotted path relative to `[global]`.
#[derive(Debug, Default)]
pub struct Origins(HashMap<String, Origin>);

impl Origins {
    /// The source of `path`, or of the closest enclosing table that was set as a whole.
    pub fn get(&self, path: &str) -> Origin {
        let mut candidate = path;
        loop {
            if let Some(origin) = self.0.get(candidate) {
                return origin.clone();
            }
            match candidate.rfind('.') {
                Some(dot) => candidate = &candidate[..dot],
                None => return Origin::Default,
            }
        }
    }
}

/// The configuration inputs of one start, as given by the operator.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// `-c/--config` files, in order.
    pub files: Vec<PathBuf>,
    /// The process environment (or a test's stand-in for it).
    pub env: Vec<(String, String)>,
    /// `-O/--option key=value` overrides, in order.
    pub options: Vec<String>,
}

impl Inputs {
    /// Reads the real process environment.
    pub fn from_process(files: Vec<PathBuf>, options: Vec<String>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self { files, env, options }
    }

    fn env_var(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Config files in precedence order: the `*_CONFIG` variables, then `-c` files.
    pub fn config_files(&self) -> Vec<PathBuf> {
        CONFIG_FILE_VARS
            .iter()
            .filter_map(|name| self.env_var(name))
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .chain(self.files.iter().cloned())
            .collect()
    }
}

/// The merged `[global]` table with the origin of each key.
#[derive(Debug, Default)]
pub struct Layers {
    pub table: toml::Table,
    pub origins: Origins,
    /// Top-level tables other than `[global]`, reported as unknown.
    pub foreign_tables: Vec<(String, Origin)>,
    /// Whether a configuration file (rather than the embedded default) was read.
    pub from_file: bool,
}

impl Layers {
    /// Gathers every source of `inputs` in precedence order.
    pub fn gather(inputs: &Inputs) -> Result<Self, ConfigError> {
        let mut layers = Self::default();
        let files = inputs.config_files();
        if files.is_empty() {
            let document = parse_document(EMBEDDED_DEV_CONFIG, &Origin::Embedded)?;
            layers.merge_document(document, &Origin::Embedded);
        }
        for path in files {
            let origin = Origin::File(path.clone());
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Unreadable {
                path: path.clone(),
                reason: error.to_string(),
            })?;
            let document = parse_document(&text, &origin)?;
            layers.merge_document(document, &origin);
            layers.from_file = true;
        }
        for prefix in ENV_PREFIXES {
            let mut vars: Vec<_> = inputs
                .env
                .iter()
                .filter(|(name, _)| {
                    name.starts_with(prefix) && !CONFIG_FILE_VARS.contains(&name.as_str())
                })
                .collect();
            vars.sort();
            for (name, raw) in vars {
                let key = name[prefix.len()..].to_ascii_lowercase();
                if key.is_empty() {
                    continue;
                }
                let origin = Origin::Env { name: name.clone(), raw: raw.clone() };
                let path: Vec<&str> = key.split("__").collect();
                let nested = nest(path.into_iter(), guess_env_value(raw));
                layers.merge(nested, &origin, "");
            }
        }
        for text in &inputs.options {
            let origin = Origin::Option(text.clone());
            let table = parse_option(text)?;
            layers.merge(table, &origin, "");
        }
        Ok(layers)
    }

    fn merge_document(&mut self, mut document: toml::Table, origin: &Origin) {
        if let Some(global) = document.remove("global") {
            match global {
                toml::Value::Table(global) => self.merge(global, origin, ""),
                _ => self.foreign_tables.push(("global".to_owned(), origin.clone())),
            }
        }
        for name in document.keys() {
            self.foreign_tables.push((name.clone(), origin.clone()));
        }
    }

    fn merge(&mut self, incoming: toml::Table, origin: &Origin, prefix: &str) {
        merge_into(&mut self.table, incoming, origin, prefix, &mut self.origins.0);
    }
}

fn merge_into(
    target: &mut toml::Table,
    incoming: toml::Table,
    origin: &Origin,
    prefix: &str,
    origins: &mut HashMap<String, Origin>,
) {
    for (key, value) in incoming {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (target.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(nested)) => {
                merge_into(existing, nested, origin, &path, origins);
            }
            (_, value) => {
                record_origins(&value, origin, &path, origins);
                target.insert(key, value);
            }
        }
    }
}

fn record_origins(
    value: &toml::Value,
    origin: &Origin,
    path: &str,
    origins: &mut HashMap<String, Origin>,
) {
    origins.insert(path.to_owned(), origin.clone());
    if let toml::Value::Table(table) = value {
        for (key, nested) in table {
            record_origins(nested, origin, &format!("{path}.{key}"), origins);
        }
    }
}

fn parse_document(text: &str, origin: &Origin) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|error| ConfigError::Syntax {
        origin: origin.clone(),
        reason: error.to_string().trim().to_owned(),
    })
}

/// Builds `{a = {b = value}}` from the path `a.b`.
fn nest<'a>(mut path: impl DoubleEndedIterator<Item = &'a str>, value: toml::Value) -> toml::Table {
    let mut table = toml::Table::new();
    let Some(last) = path.next_back() else {
        return table;
    };
    table.insert(last.to_owned(), value);
    for parent in path.rev() {
        let mut outer = toml::Table::new();
        outer.insert(parent.to_owned(), toml::Value::Table(table));
        table = outer;
    }
    table
}

/// Types an environment value the way an operator means it: TOML when it parses as a TOML
/// value (`8448`, `true`, `["a", "b"]`), otherwise the text itself.
fn guess_env_value(raw: &str) -> toml::Value {
    format!("value = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Parses `-O key=value` with the value as TOML; a bare word value is taken as a string.
fn parse_option(text: &str) -> Result<toml::Table, ConfigError> {
    if let Ok(table) = text.parse::<toml::Table>() {
        return Ok(unwrap_global(table));
    }
    let Some((key, value)) = text.split_once('=') else {
        return Err(ConfigError::Syntax {
            origin: Origin::Option(text.to_owned()),
            reason: "expected key=value".to_owned(),
        });
    };
    let key = key.trim();
    let path = key.strip_prefix("global.").unwrap_or(key);
    if path.is_empty() || path.split('.').any(|part| part.is_empty()) {
        return Err(ConfigError::Syntax {
            origin: Origin::Option(text.to_owned()),
            reason: format!("invalid key '{key}'"),
        });
    }
    let path: Vec<&str> = path.split('.').collect();
    Ok(nest(path.into_iter(), toml::Value::String(value.trim().to_owned())))
}

/// `-O global.port=1` and `-O port=1` mean the same thing.
fn unwrap_global(mut table: toml::Table) -> toml::Table {
    if table.len() == 1
        && let Some(toml::Value::Table(global)) = table.remove("global")
    {
        return global;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_typed_when_they_parse_as_toml() {
        assert_eq!(guess_env_value("8448"), toml::Value::Integer(8448));
        assert_eq!(guess_env_value("true"), toml::Value::Boolean(true));
        assert_eq!(guess_env_value("example.com"), toml::Value::String("example.com".into()));
        assert!(matches!(guess_env_value("[\"a\", \"b\"]"), toml::Value::Array(_)));
    }

    #[test]
    fn options_accept_toml_and_bare_words() {
        let table = parse_option("port = 8080").expect("valid");
        assert_eq!(table["port"], toml::Value::Integer(8080));
        let table = parse_option("server_name=example.com").expect("valid");
        assert_eq!(table["server_name"], toml::Value::String("example.com".into()));
        let table = parse_option("well_known.client=\"https://m.example.com\"").expect("valid");
        assert_eq!(
            table["well_known"]["client"],
            toml::Value::String("https://m.example.com".into())
        );
        let table = parse_option("global.port=1").expect("valid");
        assert_eq!(table["port"], toml::Value::Integer(1));
        assert!(parse_option("no equals sign").is_err());
    }

    #[test]
    fn origins_fall_back_to_the_enclosing_table() {
        let mut origins = Origins::default();
        origins.0.insert("well_known".into(), Origin::Option("x".into()));
        assert_eq!(origins.get("well_known.client"), Origin::Option("x".into()));
        assert_eq!(origins.get("port"), Origin::Default);
    }
}
