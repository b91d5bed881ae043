//! Configuration sources, precedence and every error path, through `Config::load`.

use std::path::{Path, PathBuf};

use tuwunel::{
    Config,
    config::{ConfigError, Inputs, Origin},
};

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

fn load(
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    options: &[&str],
) -> Result<Config, ConfigError> {
    Config::load(&Inputs { files, env, options: options.iter().map(|o| (*o).to_owned()).collect() })
}

#[test]
fn no_configuration_is_a_development_server() {
    let config = load(vec![], vec![], &[]).expect("loads");
    assert!(config.development);
    assert_eq!(config.server_name.as_str(), "localhost");
    assert_eq!(config.database_path, PathBuf::from("./tuwunel_db"));
    assert_eq!(config.port.to_vec(), vec![8008]);
    assert_eq!(
        config.listen_addresses().0,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().expect("ip")]
    );
}

#[test]
fn precedence_is_files_then_env_then_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conduit = file(
        dir.path(),
        "conduit.toml",
        "[global]\nserver_name = \"conduit.example\"\nport = 1\nlog = \"warn\"\n",
    );
    let conduwuit = file(
        dir.path(),
        "conduwuit.toml",
        "[global]\nport = 2\nnew_user_displayname_suffix = \"c\"\n",
    );
    let tuwunel =
        file(dir.path(), "tuwunel.toml", "[global]\nport = 3\nallow_registration = true\n");
    let first =
        file(dir.path(), "first.toml", "[global]\nport = 4\nserver_name = \"first.example\"\n");
    let second = file(dir.path(), "second.toml", "[global]\nport = 5\n");
    let env_vars = env(&[
        ("CONDUIT_CONFIG", conduit.to_str().expect("utf8")),
        ("CONDUWUIT_CONFIG", conduwuit.to_str().expect("utf8")),
        ("TUWUNEL_CONFIG", tuwunel.to_str().expect("utf8")),
    ]);

    // Files: the *_CONFIG variables in order, then -c files in order.
    let config = load(vec![first.clone(), second.clone()], env_vars.clone(), &[]).expect("loads");
    assert!(!config.development);
    assert_eq!(config.port.to_vec(), vec![5]);
    assert_eq!(config.server_name.as_str(), "first.example");
    assert_eq!(config.log, "warn", "keys only the lowest file sets survive");
    assert_eq!(config.new_user_displayname_suffix, "c");
    assert!(config.allow_registration);

    // Environment beats files, TUWUNEL_ beats CONDUWUIT_ beats CONDUIT_.
    let mut with_env = env_vars.clone();
    with_env.extend(env(&[("CONDUIT_PORT", "6"), ("TUWUNEL_PORT", "8"), ("CONDUWUIT_PORT", "7")]));
    let config = load(vec![first.clone(), second.clone()], with_env.clone(), &[]).expect("loads");
    assert_eq!(config.port.to_vec(), vec![8]);

    // Options beat everything, in order.
    let config = load(vec![first, second], with_env, &["port=9", "port = 10"]).expect("loads");
    assert_eq!(config.port.to_vec(), vec![10]);
}

#[test]
fn env_vars_nest_with_double_underscore_and_are_typed() {
    let config = load(
        vec![],
        env(&[
            ("TUWUNEL_WELL_KNOWN__CLIENT", "https://matrix.example.org"),
            ("TUWUNEL_WELL_KNOWN__SERVER", "matrix.example.org:443"),
            ("TUWUNEL_PORT", "[8008, 8448]"),
            ("TUWUNEL_ALLOW_FEDERATION", "false"),
            ("TUWUNEL_REGISTRATION_TOKEN", "12345"),
            ("TUWUNEL_CONFIG", ""),
            ("UNRELATED", "ignored"),
        ]),
        &[],
    )
    .expect("loads");
    assert_eq!(config.well_known.client.as_deref(), Some("https://matrix.example.org"));
    assert_eq!(
        config.well_known.server.as_ref().map(|s| s.as_str()),
        Some("matrix.example.org:443")
    );
    assert_eq!(config.port.to_vec(), vec![8008, 8448]);
    assert!(!config.allow_federation);
    assert_eq!(
        config.registration_token.as_deref(),
        Some("12345"),
        "numeric-looking strings stay strings"
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn options_set_nested_keys() {
    let config = load(
        vec![],
        vec![],
        &[
            "well_known.support_page=\"https://example.org/help\"",
            "address=[\"127.0.0.1\", \"::1\"]",
        ],
    )
    .expect("loads");
    assert_eq!(config.well_known.support_page.as_deref(), Some("https://example.org/help"));
    assert_eq!(config.listen_addresses().0.len(), 2);
}

#[test]
fn a_wrong_type_names_the_key_and_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path =
        file(dir.path(), "bad.toml", "[global]\nserver_name = \"x.example\"\nport = \"eighty\"\n");
    let error = load(vec![path.clone()], vec![], &[]).expect_err("must fail");
    let ConfigError::InvalidValue { key, origin, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(key, "port");
    assert_eq!(origin, &Origin::File(path.clone()));
    let message = error.to_string();
    assert!(
        message.contains("`port`") && message.contains(path.to_str().expect("utf8")),
        "{message}"
    );

    let error =
        load(vec![], env(&[("TUWUNEL_ALLOW_FEDERATION", "perhaps")]), &[]).expect_err("must fail");
    assert!(error.to_string().contains("`allow_federation`"), "{error}");
    assert!(error.to_string().contains("TUWUNEL_ALLOW_FEDERATION"), "{error}");

    let error =
        load(vec![], vec![], &["well_known.support_mxid=\"not a user\""]).expect_err("must fail");
    assert!(error.to_string().contains("`well_known.support_mxid`"), "{error}");
    assert!(error.to_string().contains("-O"), "{error}");
}

#[test]
fn a_config_file_needs_a_server_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(dir.path(), "noname.toml", "[global]\nport = 8008\n");
    let error = load(vec![path], vec![], &[]).expect_err("must fail");
    assert!(matches!(error, ConfigError::Missing { key: "server_name", .. }), "{error:?}");
}

#[test]
fn unreadable_and_unparsable_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = load(vec![dir.path().join("missing.toml")], vec![], &[]).expect_err("must fail");
    assert!(matches!(error, ConfigError::Unreadable { .. }), "{error:?}");

    let path = file(dir.path(), "broken.toml", "[global\nserver_name = ");
    let error = load(vec![path], vec![], &[]).expect_err("must fail");
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");

    let error = load(vec![], vec![], &["port"]).expect_err("must fail");
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
}

#[test]
fn unknown_keys_warn_or_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        dir.path(),
        "typo.toml",
        "[global]\nserver_name = \"x.example\"\nallow_registartion = true\n[global.well_known]\nclinet = \"x\"\n[other]\nkey = 1\n",
    );
    let config = load(vec![path.clone()], env(&[("TUWUNEL_NOT_A_KEY", "1")]), &[])
        .expect("loads with warnings");
    let warnings = config.warnings.join("\n");
    for key in ["allow_registartion", "well_known.clinet", "`other`", "not_a_key"] {
        assert!(warnings.contains(key), "{key} not warned about: {warnings}");
    }

    let error =
        load(vec![path], vec![], &["error_on_unknown_config_opts=true"]).expect_err("must fail");
    assert!(matches!(error, ConfigError::UnknownKeys(_)), "{error:?}");
    assert!(error.to_string().contains("allow_registartion"), "{error}");
}

#[test]
fn inconsistent_settings_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["unix_socket_path=\"/tmp/x.sock\"", "address=\"127.0.0.1\""], "unix_socket_path"),
        (&["port=[]"], "port"),
        (&["max_request_size=1000"], "max_request_size"),
        (&["max_request_size=\"9 MB\""], "max_request_size"),
        (&["rocksdb_max_log_files=0"], "rocksdb_max_log_files"),
        (&["rocksdb_compression_algo=\"bz2\""], "rocksdb_compression_algo"),
        (&["rocksdb_recovery_mode=7"], "rocksdb_recovery_mode"),
        (&["log=\"info,[\""], "log"),
        (&["registration_token=\"\""], "registration_token"),
        (&["unix_socket_perms=999"], "unix_socket_perms"),
        (&["well_known.support_role=\"m.role.boss\""], "support_role"),
        (&["address=\"not-an-ip\""], "address"),
        // A request deadline that would cut off the longest /sync long poll (90 s).
        (&["client_request_timeout=60"], "client_request_timeout"),
        (&["client_sync_timeout_max=240000"], "client_request_timeout"),
        (&["client_header_timeout=0"], "client_header_timeout"),
    ];
    for (options, key) in cases {
        let error = load(vec![], vec![], options).expect_err(&format!("{options:?} must fail"));
        assert!(error.to_string().contains(key), "{options:?}: {error}");
    }
}

#[test]
fn sizes_accept_units() {
    let config = load(vec![], vec![], &["max_request_size=\"50 MiB\""]).expect("loads");
    assert_eq!(config.max_request_size.0, 50 * 1024 * 1024);
}

#[test]
fn appservice_tables_parse_by_name_and_env_vars_reach_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        dir.path(),
        "tuwunel.toml",
        r#"[global]
server_name = "test.local"
appservice_timeout = 10

[global.appservice.echo]
url = "http://127.0.0.1:29318"
as_token = "as-secret"
hs_token = "hs-secret"
receive_ephemeral = true

[[global.appservice.echo.users]]
exclusive = true
regex = '@echo_.*:test\.local'

[[global.appservice.echo.aliases]]
regex = '#echo_.*'

[global.appservice."IRC Bridge"]
as_token = "irc-as"
hs_token = "irc-hs"
sender_localpart = "_irc_bot"
"#,
    );
    let config = load(
        vec![path.clone()],
        env(&[("TUWUNEL_APPSERVICE__ECHO__URL", "http://127.0.0.1:1")]),
        &["appservice.echo.protocols=[\"echonet\"]"],
    )
    .expect("loads");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.appservice_timeout, 10);
    let echo = &config.appservice["echo"];
    assert_eq!(echo.url.as_deref(), Some("http://127.0.0.1:1"), "the env var wins over the file");
    assert_eq!(echo.as_token, "as-secret");
    assert!(echo.receive_ephemeral);
    assert_eq!(echo.protocols, ["echonet"]);
    assert!(echo.users[0].exclusive);
    assert_eq!(echo.users[0].regex, r"@echo_.*:test\.local");
    assert!(!echo.aliases[0].exclusive, "exclusive defaults to false");
    let irc = &config.appservice["IRC Bridge"];
    assert_eq!(irc.url, None);
    assert_eq!(irc.sender_localpart.as_deref(), Some("_irc_bot"));

    // Keys and types inside a service's table are judged like any other.
    let typo = file(dir.path(), "typo.toml", "[global.appservice.echo]\nhs_tokn = \"x\"\n");
    let config = load(vec![path.clone(), typo], vec![], &[]).expect("loads with a warning");
    assert!(
        config.warnings.join("\n").contains("`appservice.echo.hs_tokn`"),
        "{:?}",
        config.warnings
    );
    let error = load(vec![path.clone()], vec![], &["appservice.echo.as_token=1"])
        .expect_err("a number is no token");
    assert!(error.to_string().contains("`appservice.echo.as_token`"), "{error}");
    let error = load(vec![path], vec![], &["appservice.echo.users=[{exclusive=true}]"])
        .expect_err("a namespace needs its regex");
    assert!(error.to_string().contains("`appservice.echo.users`"), "{error}");
    assert!(error.to_string().contains("regex"), "{error}");
}
