//! Per-host settings of the registry client against real `docker-registry` processes on
//! 127.0.0.1: mirrors tried in order before the host (a mirror holding the image serves every
//! read and the host sees nothing; dead, failing and empty mirrors fall back, the failing ones
//! held off), and credentials from the configuration winning over the docker config's, without
//! ever showing up in an error. Every wait is bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use dfagent_registry::{
    HostConfig, HostCredentials, NydusImage, Registry, RegistryConfig, RegistryError, Secret,
};
use dfagent_test_support::net::free_addr;
use dfagent_test_support::proxy::{Proxy, Seen};
use dfagent_test_support::registry::Registry as RegistryProc;
use dfagent_test_support::wait::within;

const FIXTURE: &str = "v6-zstd-blake3";

/// `(bootstrap, blob dir)` of the fixture image.
fn fixture() -> (PathBuf, PathBuf) {
    let dir = dfagent_test_support::fixtures::fixture(FIXTURE);
    (dir.join("bootstrap"), dir.join("blobs"))
}

/// Whether a request is `GET /v2/` (the probe of authentication).
fn is_v2_probe(s: &Seen) -> bool {
    s.method == "GET" && s.path == "/v2/"
}

/// A client that never reads the machine's docker config, with `hosts`.
fn client(dir: &Path, hosts: BTreeMap<String, HostConfig>, holdoff: Duration) -> Registry {
    Registry::new(RegistryConfig {
        docker_config: Some(dir.join("no-docker-config.json")),
        hosts,
        mirror_holdoff: holdoff,
        retries: 1,
        retry_base_delay: Duration::from_millis(10),
        ..RegistryConfig::default()
    })
    .expect("Registry::new")
}

fn mirrored(host: &str, mirrors: &[String]) -> BTreeMap<String, HostConfig> {
    BTreeMap::from([(
        host.to_string(),
        HostConfig {
            mirrors: mirrors.to_vec(),
            ..HostConfig::default()
        },
    )])
}

/// Push the fixture to `registry` (host:port) as `mirrors/app:v1`.
async fn push_fixture(reg: &Registry, registry: &str) -> String {
    let (bootstrap, blobs) = fixture();
    let reference = format!("{registry}/mirrors/app:v1");
    within("push", reg.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push_nydus");
    reference
}

/// Every read of the image `reference`: resolve, bootstrap, a range of each blob, one whole
/// blob downloaded; all bytes checked against the fixture.
async fn read_everything(reg: &Registry, reference: &str, tmp: &Path) -> NydusImage {
    let (bootstrap, blobs) = fixture();
    let img = within("resolve", reg.resolve(reference))
        .await
        .expect("resolve");
    let boot = within("fetch_bootstrap", reg.fetch_bootstrap(&img))
        .await
        .expect("fetch_bootstrap");
    assert_eq!(boot, std::fs::read(&bootstrap).expect("bootstrap"));
    for (id, size) in &img.blobs {
        let data = std::fs::read(blobs.join(id.hex())).expect("fixture blob");
        let range = size / 3..(size / 3 + 1000).min(*size);
        let got = within("read_range", reg.read_range(&img, id, range.clone()))
            .await
            .expect("read_range");
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    let (id, size) = img.blobs[0];
    let dest = tmp.join("downloaded");
    within(
        "download_blob",
        reg.download_blob(reference, &id.oci_digest(), size, &dest),
    )
    .await
    .expect("download_blob");
    assert_eq!(
        std::fs::read(&dest).expect("downloaded"),
        std::fs::read(blobs.join(id.hex())).expect("fixture blob")
    );
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_holding_the_image_serves_every_read() {
    let host_proc = RegistryProc::start();
    let mirror_proc = RegistryProc::start();
    let host = Proxy::forward(host_proc.addr());
    let mirror = Proxy::forward(mirror_proc.addr());
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = client(tmp.path(), BTreeMap::new(), Duration::from_secs(30));
    let reference = push_fixture(&plain, &host.host()).await;
    push_fixture(&plain, &mirror.host()).await;
    host.take_log();
    mirror.take_log();

    let reg = client(
        tmp.path(),
        mirrored(&host.host(), &[mirror.host()]),
        Duration::from_secs(30),
    );
    let img = read_everything(&reg, &reference, tmp.path()).await;
    assert_eq!(
        img.registry,
        host.host(),
        "the image still names its own registry"
    );
    assert_eq!(
        host.take_log(),
        Vec::<Seen>::new(),
        "no request reached the host"
    );
    let seen = mirror.take_log();
    assert!(
        seen.iter()
            .any(|l| l.path.contains("/v2/mirrors/app/manifests/v1"))
            && seen
                .iter()
                .filter(|l| l.path.contains("/blobs/sha256:"))
                .count()
                >= 3,
        "{seen:#?}"
    );

    // Pushes go to the host, never to a mirror.
    let (bootstrap, blobs) = fixture();
    let pushed = format!("{}/mirrors/app:v2", host.host());
    within("push", reg.push_nydus(&pushed, &bootstrap, &blobs))
        .await
        .expect("push through a mirrored client");
    assert!(mirror.take_log().is_empty());
    assert!(!host.take_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_failing_and_empty_mirrors_fall_back_in_order() {
    let host_proc = RegistryProc::start();
    let good_proc = RegistryProc::start();
    let empty_proc = RegistryProc::start();
    let host = Proxy::forward(host_proc.addr());
    let good = Proxy::forward(good_proc.addr());
    let empty = Proxy::forward(empty_proc.addr());
    let failing = Proxy::failing(503);
    let dead = free_addr().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = client(tmp.path(), BTreeMap::new(), Duration::from_secs(30));
    let reference = push_fixture(&plain, &host.host()).await;
    push_fixture(&plain, &good.host()).await;
    for p in [&host, &good, &empty] {
        p.take_log();
    }

    // dead (connection refused) → failing (503) → empty (404) → good: served by good.
    let order = [dead.clone(), failing.host(), empty.host(), good.host()];
    let reg = client(
        tmp.path(),
        mirrored(&host.host(), &order),
        Duration::from_secs(60),
    );
    read_everything(&reg, &reference, tmp.path()).await;
    assert!(host.take_log().is_empty(), "the host is not asked");
    // (Besides the `GET /v2/` probes of authentication.)
    let failing_log = failing.take_log();
    assert_eq!(
        failing_log.iter().filter(|l| !is_v2_probe(l)).count(),
        1,
        "a 5xx mirror is asked once, then held off: {failing_log:#?}"
    );
    let empty_log = empty.take_log();
    assert!(
        empty_log.iter().any(|l| l.path.contains("/manifests/v1")),
        "{empty_log:#?}"
    );
    assert!(!good.take_log().is_empty());

    // Without a good mirror, reads end at the host.
    let order = [dead.clone(), empty.host()];
    let reg = client(
        tmp.path(),
        mirrored(&host.host(), &order),
        Duration::from_secs(60),
    );
    read_everything(&reg, &reference, tmp.path()).await;
    assert!(!host.take_log().is_empty());
    assert!(good.take_log().is_empty());

    // With no hold-off, the failing mirror is asked before every read; the answers are still
    // right.
    let reg = client(
        tmp.path(),
        mirrored(&host.host(), &[failing.host()]),
        Duration::ZERO,
    );
    read_everything(&reg, &reference, tmp.path()).await;
    let failing_log = failing.take_log();
    assert!(
        failing_log.iter().filter(|l| !is_v2_probe(l)).count() >= 4,
        "{failing_log:#?}"
    );

    // The host's error is the one returned when nothing has the image.
    let missing = format!("{}/mirrors/none:v1", host.host());
    let e = within("resolve", reg.resolve(&missing)).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("mirrors/none"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_win_over_the_docker_config_and_never_show() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg_proc = RegistryProc::builder()
        .basic_auth("alice", "s3cret-pw")
        .start();
    let addr = reg_proc.host();
    // The docker config holds a wrong password for the registry.
    let docker_config = tmp.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wrong-pw");
    std::fs::write(
        &docker_config,
        serde_json::json!({"auths": {&addr: {"auth": auth}}}).to_string(),
    )
    .expect("docker config");
    let with = |credentials: Option<HostCredentials>| {
        Registry::new(RegistryConfig {
            docker_config: Some(docker_config.clone()),
            hosts: BTreeMap::from([(
                addr.clone(),
                HostConfig {
                    credentials,
                    ..HostConfig::default()
                },
            )]),
            retries: 0,
            ..RegistryConfig::default()
        })
        .expect("Registry::new")
    };

    // The docker config's wrong password is refused.
    let (bootstrap, blobs) = fixture();
    let reference = format!("{addr}/creds/app:v1");
    let e = within(
        "push",
        with(None).push_nydus(&reference, &bootstrap, &blobs),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::Auth { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");

    // The configuration's credentials win.
    let basic = with(Some(HostCredentials::Basic {
        username: "alice".into(),
        password: Secret::new("s3cret-pw"),
    }));
    assert!(!format!("{basic:?}").contains("s3cret-pw"));
    within("push", basic.push_nydus(&reference, &bootstrap, &blobs))
        .await
        .expect("push with configured credentials");
    read_everything(&basic, &reference, tmp.path()).await;

    // From a credential file, `user:password` or docker-config JSON.
    let file = tmp.path().join("cred");
    std::fs::write(&file, "alice:s3cret-pw\n").expect("cred file");
    read_everything(
        &with(Some(HostCredentials::File(file.clone()))),
        &reference,
        tmp.path(),
    )
    .await;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
    std::fs::write(
        &file,
        serde_json::json!({"auths": {&addr: {"auth": auth}}}).to_string(),
    )
    .expect("cred file");
    read_everything(
        &with(Some(HostCredentials::File(file.clone()))),
        &reference,
        tmp.path(),
    )
    .await;

    // Wrong configured credentials: refused, and the password is in no error.
    let wrong = with(Some(HostCredentials::Basic {
        username: "alice".into(),
        password: Secret::new("not-the-pw"),
    }));
    let e = within("resolve", wrong.resolve(&reference))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Auth { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("not-the-pw"), "{e:?}");

    // A credential file that is not one: an error naming the file, not its content.
    std::fs::write(&file, "s3cret-pw\n").expect("cred file");
    let e = Registry::new(RegistryConfig {
        hosts: BTreeMap::from([(
            addr.clone(),
            HostConfig {
                credentials: Some(HostCredentials::File(file.clone())),
                ..HostConfig::default()
            },
        )]),
        ..RegistryConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("cred") && !e.contains("s3cret-pw"), "{e}");
}
