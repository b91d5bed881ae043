//! Application services: registrations from the config, and what the server does with them.

use crate::common::TestServer;

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
