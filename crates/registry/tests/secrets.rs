//! The registry client's logs and errors never carry a password or a token, read through a
//! real `docker-registry` behind a token service. In a test binary of its own because it
//! installs the process's one global `tracing` subscriber.

mod common;

use std::time::Duration;

use common::{client_with, token_setup, write_docker_config_for, LogSink};
use dfagent_registry::RegistryError;
use dfagent_test_support::token::ExpiresIn;
use dfagent_test_support::wait::within;

/// The client's logs and errors carry neither the password nor a token.
#[tokio::test(flavor = "current_thread")]
async fn credentials_and_tokens_stay_out_of_logs_and_errors() {
    let sink = LogSink::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(sink.clone())
        .with_ansi(false)
        .finish();
    // Global, in a test binary of its own: a thread-local subscriber misses events when a test
    // on another thread registers the same call sites at the same moment (tracing's interest
    // cache), which made this test fail now and then.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let s = token_setup(Duration::from_secs(600), ExpiresIn::Lifetime).await;
    let img = within("resolve", s.client.resolve(&s.reference))
        .await
        .expect("resolve");
    let (id, _) = img.blobs[0];
    within("read", s.client.read_range(&img, &id, 0..100))
        .await
        .expect("read");
    let wrong = tempfile::tempdir().expect("tempdir");
    let bad = client_with(
        write_docker_config_for(wrong.path(), &[&s.proxy.host()], "carol", "wr0ng-pw"),
        1,
    );
    let err = within("resolve", bad.resolve(&s.reference))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    let logs = sink.text();
    assert!(logs.contains("new registry token"), "logs captured: {logs}");
    let issued = s.tokens.issued_tokens();
    assert!(!issued.is_empty());
    let mut secrets = vec![
        "t0ken-pw".to_string(),
        "wr0ng-pw".to_string(),
        common::b64(b"carol:t0ken-pw"),
        common::b64(b"carol:wr0ng-pw"),
    ];
    // A token's claims and signature are each unique to it.
    secrets.extend(
        issued
            .iter()
            .flat_map(|t| t.split('.').skip(1).map(str::to_string)),
    );
    for (what, text) in [("logs", logs), ("error", format!("{err} {err:?}"))] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} show {secret}");
        }
    }
}
