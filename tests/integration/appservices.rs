//! Application services: registrations from the config, and what the server does with them.

use tuwunel::{
    appservices::registry::Source,
    storage::{
        Batch,
        appservices::{APPSERVICES_TABLE, StoredRegistration},
        codec::Json,
    },
};

use crate::common::{TestServer, start_error};

#[tokio::test]
async fn show_config_hides_the_appservice_tokens() {
    let server = TestServer::with_options(&[
        "appservice.echo.as_token=\"as-very-secret\"",
        "appservice.echo.hs_token=\"hs-very-secret\"",
        "appservice.echo.url=\"http://127.0.0.1:9\"",
    ])
    .await;
    let shown = tuwunel::admin::execute(server.server().services(), "server show-config")
        .await
        .expect("show-config");
    assert!(shown.contains("http://127.0.0.1:9"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
}

/// Options defining the appservice `echo`, whose own user is `@echobot`.
const ECHO: [&str; 5] = [
    "appservice.echo.as_token=\"as-echo\"",
    "appservice.echo.hs_token=\"hs-echo\"",
    "appservice.echo.url=\"http://127.0.0.1:9\"",
    "appservice.echo.sender_localpart=\"echobot\"",
    "appservice.echo.users=[{exclusive=true, regex='@echo_.*'}]",
];

fn registration_yaml(id: &str, sender: &str, users: &str) -> String {
    format!(
        "id: {id}\nurl: null\nas_token: as-{id}-{sender}\nhs_token: hs-{id}-{sender}\n\
         sender_localpart: {sender}\nnamespaces:\n  users:\n    - exclusive: true\n      \
         regex: '{users}'\n"
    )
}

fn source_of(server: &TestServer, id: &str) -> Option<Source> {
    server.server().services().appservices.snapshot().get(id).map(|service| service.source.clone())
}

#[tokio::test]
async fn a_configured_appservice_has_its_own_user_across_restarts() {
    let mut server = TestServer::with_options(&ECHO).await;
    assert_eq!(source_of(&server, "echo"), Some(Source::Config));
    let (status, body) = server.get("/_matrix/client/v3/profile/@echobot:test.local").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "echobot");

    // The user exists now, and is the service's: a second start takes it as it is.
    server.restart().await;
    let (status, _) = server.get("/_matrix/client/v3/profile/@echobot:test.local").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_person_holding_the_senders_name_stops_the_start() {
    let mut server = TestServer::start().await;
    server.register("echobot", "pw").await;
    server.stop().await;
    let error = start_error(server.dir.path(), &ECHO).await;
    assert!(error.contains("`global.appservice.echo.sender_localpart`"), "{error}");
    assert!(error.contains("@echobot:test.local"), "{error}");
    // The person's account is untouched.
    server.restart().await;
    server.login("echobot", "pw").await;
    server.stop().await;
}

#[tokio::test]
async fn registration_files_of_appservice_dir_are_loaded() {
    let files = tempfile::tempdir().expect("tempdir");
    std::fs::write(files.path().join("irc.yaml"), registration_yaml("irc", "ircbot", "@irc_.*"))
        .expect("write");
    // Not a registration file: ignored.
    std::fs::write(files.path().join("README.txt"), "not yaml: [").expect("write");
    let dir_option = format!("appservice_dir=\"{}\"", files.path().display());
    let mut options: Vec<&str> = ECHO.to_vec();
    options.push(&dir_option);
    let mut server = TestServer::with_options(&options).await;
    assert_eq!(source_of(&server, "irc"), Some(Source::Directory(files.path().join("irc.yaml"))));
    assert_eq!(source_of(&server, "echo"), Some(Source::Config));
    let (status, _) = server.get("/_matrix/client/v3/profile/@ircbot:test.local").await;
    assert_eq!(status, 200);
    server.stop().await;

    // A file with the config's id, or a broken one, stops the start naming the file.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(files.path().join("echo.yml"), registration_yaml("echo", "other", "@o_.*"))
        .expect("write");
    let error = start_error(dir.path(), &options).await;
    assert!(error.contains("echo.yml") && error.contains("`global.appservice.echo`"), "{error}");
    std::fs::remove_file(files.path().join("echo.yml")).expect("remove");
    std::fs::write(files.path().join("bad.yaml"), registration_yaml("bad", "badbot", "@(unclosed"))
        .expect("write");
    let error = start_error(dir.path(), &options).await;
    assert!(error.contains("bad.yaml") && error.contains("namespaces.users[0].regex"), "{error}");
}

#[tokio::test]
async fn admin_room_registrations_are_loaded_and_yield_to_the_files() {
    let mut server = TestServer::with_options(&ECHO).await;
    let stored = |yaml: String| {
        Json(StoredRegistration {
            yaml,
            registered_ms: 1,
            registered_by: "@admin:test.local".to_owned(),
        })
    };
    let mut batch = Batch::new();
    APPSERVICES_TABLE.put(
        &mut batch,
        &"irc".to_owned(),
        &stored(registration_yaml("irc", "ircbot", "@irc_.*")),
    );
    // Same id as the config's: the config's wins, and this one's user is never created.
    APPSERVICES_TABLE.put(
        &mut batch,
        &"echo".to_owned(),
        &stored(registration_yaml("echo", "echo2bot", "@e2_.*")),
    );
    // Unusable ones are skipped, and the server still starts.
    APPSERVICES_TABLE.put(&mut batch, &"broken".to_owned(), &stored("id: [".to_owned()));
    APPSERVICES_TABLE.put(
        &mut batch,
        &"greedy".to_owned(),
        &stored(registration_yaml("greedy", "greedybot", "@echo.*")),
    );
    server.server().services().storage.writer().commit(batch).await.expect("commit");
    server.restart().await;

    assert_eq!(source_of(&server, "irc"), Some(Source::Database));
    assert_eq!(source_of(&server, "echo"), Some(Source::Config));
    assert_eq!(source_of(&server, "broken"), None);
    assert_eq!(source_of(&server, "greedy"), None, "it claims echo's own user");
    let (status, _) = server.get("/_matrix/client/v3/profile/@ircbot:test.local").await;
    assert_eq!(status, 200);
    for skipped in ["echo2bot", "greedybot"] {
        let (status, _) =
            server.get(&format!("/_matrix/client/v3/profile/@{skipped}:test.local")).await;
        assert_eq!(status, 404, "{skipped}");
    }
    server.stop().await;
}
