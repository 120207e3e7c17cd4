//! [`RegistryOrigin`] against a real `docker-registry`: the URL and headers it hands a proxy
//! fetch the right bytes when sent as they are (a plain reqwest GET with a Range, as a
//! Dragonfly seed peer would), for an anonymous registry, one behind a token service and one
//! wanting Basic credentials; a refusal relayed by the proxy gets a new token at the next
//! `locate`; a token service that is down is a clear error; no secret in `Debug`, errors or
//! logs. Every wait is bounded (`within`).

mod common;

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{anonymous_client, blob_bytes, client_with, fixture, token_setup, LogSink, IMAGE};
use dfagent_core::{BlobId, BlobOrigin, OriginRequest, TierErrorKind};
use dfagent_registry::{NydusImage, Registry, RegistryOrigin};
use dfagent_test_support::registry::Registry as RegistryProc;
use dfagent_test_support::token::ExpiresIn;
use dfagent_test_support::wait::within;

/// GET `req.url` with `req.headers` (unless `bare`) and a Range of `range`: status and body.
async fn get(req: &OriginRequest, range: Range<u64>, bare: bool) -> (u16, Vec<u8>) {
    let mut r = reqwest::Client::new()
        .get(&req.url)
        .header("Range", format!("bytes={}-{}", range.start, range.end - 1));
    if !bare {
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
    }
    let resp = within("GET", r.send()).await.expect("GET the origin URL");
    let status = resp.status().as_u16();
    let body = within("body", resp.bytes()).await.expect("body");
    (status, body.to_vec())
}

/// `origin.locate(blob)`, bounded, for a blob the image has.
async fn locate(origin: &RegistryOrigin, blob: &BlobId) -> OriginRequest {
    within("locate", origin.locate(blob))
        .await
        .expect("locate")
        .expect("a blob of the image")
}

/// The one `Authorization` header of `req`.
fn authorization(req: &OriginRequest) -> String {
    assert_eq!(req.headers.len(), 1, "{req:?}");
    assert!(
        req.headers[0].0.eq_ignore_ascii_case("authorization"),
        "{req:?}"
    );
    req.headers[0].1.clone()
}

/// Resolve `reference` with `client`.
async fn resolve(client: &Registry, reference: &str) -> Arc<NydusImage> {
    Arc::new(
        within("resolve", client.resolve(reference))
            .await
            .expect("resolve"),
    )
}

#[tokio::test]
async fn anonymous_registry_url_without_headers_serves_the_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = RegistryProc::start();
    let client = Arc::new(anonymous_client(tmp.path()));
    let (bootstrap, blobs) = fixture(IMAGE);
    let reference = format!("{}/team/app:v1", reg.host());
    within("push", client.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push");
    let img = resolve(&client, &reference).await;
    // A client that has not read from the registry yet: the origin finds out itself that the
    // registry wants nothing.
    let fresh = Arc::new(anonymous_client(tmp.path()));
    let origin = RegistryOrigin::new(fresh, img.clone());
    for (id, size) in img.blobs.clone() {
        let req = locate(&origin, &id).await;
        assert_eq!(
            req.url,
            format!(
                "http://{}/v2/team/app/blobs/sha256:{}",
                reg.host(),
                id.hex()
            )
        );
        assert!(req.headers.is_empty(), "{req:?}");
        let data = blob_bytes(IMAGE, &id);
        assert_eq!(data.len() as u64, size);
        let range = 1000..size.min(70_000);
        let (status, body) = get(&req, range.clone(), false).await;
        assert_eq!(status, 206);
        assert!(
            body == data[range.start as usize..range.end as usize],
            "wrong bytes"
        );
    }
    let unknown = BlobId::from_bytes([7; 32]);
    let none = within("locate", origin.locate(&unknown))
        .await
        .expect("locate");
    assert!(none.is_none(), "{none:?}");
    // A refusal of no credentials: the registry is asked again, still wants none.
    origin.credentials_refused();
    let req = locate(&origin, &img.blobs[0].0).await;
    assert!(req.headers.is_empty(), "{req:?}");
}

#[tokio::test]
async fn token_registry_bearer_renewed_after_refusal_and_no_secret_shown() {
    let sink = log_sink();
    let s = token_setup(Duration::from_secs(600), ExpiresIn::Lifetime).await;
    let img = resolve(&s.client, &s.reference).await;
    // A client that has not met the registry's challenge: `locate` learns it and fetches a token.
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::write_docker_config(tmp.path(), &s.proxy.host(), "carol", "t0ken-pw");
    let origin = RegistryOrigin::new(Arc::new(client_with(config, 2)), img.clone());
    let (id, size) = img.blobs[1];
    let data = blob_bytes(IMAGE, &id);
    let range = 4096..size.min(300_000);
    let want = &data[range.start as usize..range.end as usize];

    let issued = s.tokens.issued();
    let req = locate(&origin, &id).await;
    assert_eq!(s.tokens.issued(), issued + 1, "one token for the locate");
    assert_eq!(
        req.url,
        format!(
            "http://{}/v2/team/app/blobs/sha256:{}",
            s.proxy.host(),
            id.hex()
        )
    );
    let first = authorization(&req);
    let token = first.strip_prefix("Bearer ").expect("a Bearer token");
    assert!(
        s.tokens.issued_tokens().iter().any(|t| t == token),
        "a token of the token service"
    );
    let (status, _) = get(&req, range.clone(), true).await;
    assert_eq!(status, 401, "the registry wants a token");
    let (status, body) = get(&req, range.clone(), false).await;
    assert_eq!(status, 206);
    assert!(body == want, "wrong bytes");

    // The token is kept while it lives.
    let again = locate(&origin, &id).await;
    assert_eq!(authorization(&again), first);
    assert_eq!(s.tokens.issued(), issued + 1);

    // Refused (twice, as two proxy requests may relay): one new token at the next locate.
    origin.credentials_refused();
    origin.credentials_refused();
    let renewed = locate(&origin, &id).await;
    let second = authorization(&renewed);
    assert_ne!(second, first, "a new token after the refusal");
    assert_eq!(s.tokens.issued(), issued + 2);
    let (status, body) = get(&renewed, range.clone(), false).await;
    assert_eq!(status, 206);
    assert!(body == want, "wrong bytes");
    let third = authorization(&locate(&origin, &img.blobs[0].0).await);
    assert_eq!(third, second, "the same repository's token");
    assert_eq!(s.tokens.issued(), issued + 2);

    // The token service goes away: the next renewal fails clearly.
    let tokens = s.tokens.issued_tokens();
    origin.credentials_refused();
    drop(s.tokens);
    let err = within("locate", origin.locate(&id))
        .await
        .expect_err("no token service");
    assert_eq!(err.kind, TierErrorKind::Network, "{err}");
    assert!(err.message.contains("token"), "{err}");

    let mut secrets = vec!["t0ken-pw".to_string(), common::b64(b"carol:t0ken-pw")];
    secrets.extend(
        tokens
            .iter()
            .flat_map(|t| t.split('.').skip(1).map(str::to_string)),
    );
    assert!(secrets.len() > 2);
    let logs = sink.text();
    assert!(logs.contains("blob located at its registry"), "{logs}");
    let shown = [
        ("Debug", format!("{req:?} {renewed:?} {origin:?}")),
        ("error", format!("{err} {err:?}")),
        ("logs", logs),
    ];
    for (what, text) in shown {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} show {secret}");
        }
    }
}

#[tokio::test]
async fn basic_registry_credentials_and_wrong_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = RegistryProc::builder()
        .basic_auth("dave", "b4sic-pw")
        .start();
    let config = common::write_docker_config(tmp.path(), &reg.host(), "dave", "b4sic-pw");
    let client = client_with(config.clone(), 2);
    let (bootstrap, blobs) = fixture(IMAGE);
    let reference = format!("{}/team/app:v1", reg.host());
    within("push", client.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push");
    let img = resolve(&client, &reference).await;
    let (id, size) = img.blobs[0];
    let data = blob_bytes(IMAGE, &id);

    let origin = RegistryOrigin::new(Arc::new(client_with(config, 2)), img.clone());
    let req = locate(&origin, &id).await;
    assert_eq!(
        authorization(&req),
        format!("Basic {}", common::b64(b"dave:b4sic-pw"))
    );
    let range = 0..size.min(10_000);
    let (status, body) = get(&req, range.clone(), false).await;
    assert_eq!(status, 206);
    assert!(body == data[..range.end as usize], "wrong bytes");
    let shown = format!("{req:?} {origin:?}");
    assert!(!shown.contains("b4sic-pw") && !shown.contains(&common::b64(b"dave:b4sic-pw")));

    // Wrong credentials: the registry's refusal, relayed, makes the next locate an auth error.
    let wrong_dir = tempfile::tempdir().expect("tempdir");
    let wrong = common::write_docker_config(wrong_dir.path(), &reg.host(), "dave", "wr0ng-pw");
    let origin = RegistryOrigin::new(Arc::new(client_with(wrong, 2)), img.clone());
    let err = within("locate", origin.locate(&id))
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind, TierErrorKind::Auth, "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wr0ng-pw") && !shown.contains(&common::b64(b"dave:wr0ng-pw")));
}

/// The process's `tracing` subscriber, installed once for this test binary, and what it wrote.
fn log_sink() -> LogSink {
    static SINK: OnceLock<LogSink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = LogSink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        sink
    })
    .clone()
}
