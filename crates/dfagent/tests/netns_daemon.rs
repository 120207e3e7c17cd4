//! A `dfagent daemon` in a network namespace of its own (test-support's `netns`): the registry
//! listens on the bridge address in the root namespace (behind a recording proxy), the CLI
//! client and the mount stay in the test's namespaces. A fixture image is mounted through the
//! daemon and read; its registry traffic comes from the node's address; cut off from the
//! bridge, what it read is still served. Needs root, FUSE, iproute2 and docker-registry;
//! prints why and passes without root.

use std::path::Path;
use std::time::Duration;

use dfagent_test_support::daemon::DfagentDaemon;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{expected_files, fixture, sha256_hex, ExpectedFile};
use dfagent_test_support::netns::{leftovers, require, Bridge};
use dfagent_test_support::proxy::Proxy;
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::bounded;

const IMAGE: &str = "v6-zstd-blake3";
const PREFIX: &str = "ntdd";

/// Read `f` under `mp` on a thread of its own (a FUSE hang fails the test instead of stalling
/// it); its sha256 must match the listing.
fn read_and_check(mp: &Path, f: &ExpectedFile) {
    let path = mp.join(&f.path);
    let data = bounded(
        &format!("reading {}", f.path),
        Duration::from_secs(60),
        move || std::fs::read(&path),
    )
    .unwrap_or_else(|e| panic!("reading {}: {e}", f.path));
    assert_eq!(data.len() as u64, f.size, "{}", f.path);
    assert_eq!(sha256_hex(&data), f.sha256, "{}", f.path);
}

#[test]
fn a_daemon_in_a_namespace_mounts_from_a_registry_on_the_bridge() {
    require();
    let work = tmp_dir("dfagent-netns-");
    // Declared first, dropped last: the daemon stops before its namespace goes.
    let bridge = Bridge::create(PREFIX);
    let node = bridge.add_node("d1");

    let reg = Registry::start_on(bridge.free_addr());
    let proxy = Proxy::builder()
        .listen(bridge.free_addr())
        .upstream(reg.addr())
        .start();
    assert_eq!(proxy.addr().ip(), bridge.addr());
    let host = proxy.host();
    let reference = format!("{host}/netns/{IMAGE}:v1");
    let img = fixture(IMAGE);
    dfagent_cli!()
        .with_store(&work.path().join("push-store"))
        .ok(&[
            "push",
            "--insecure-registry",
            &host,
            "--bootstrap",
            img.join("bootstrap").to_str().unwrap(),
            "--blob-dir",
            img.join("blobs").to_str().unwrap(),
            &reference,
        ]);
    proxy.take_log();

    let dir = work.path().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let store = work.path().join("store");
    let mp = work.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let cli = dfagent_cli!();
    let daemon =
        DfagentDaemon::start_in(&node, &cli, &dir, &store, &["--insecure-registry", &host]);
    let mount = daemon.mount(&reference, &mp, &["--prefetch", "none"]);

    let files: Vec<ExpectedFile> = expected_files(IMAGE)
        .into_iter()
        .filter(|f| f.size > 0)
        .collect();
    assert!(files.len() >= 2, "the fixture has files with data");
    read_and_check(&mp, &files[0]);

    // Every request the registry got came from the node.
    let seen = proxy.take_log();
    assert!(
        seen.iter().any(|s| s.is_blob_get()),
        "no blob was fetched: {seen:?}"
    );
    for s in &seen {
        assert_eq!(s.client.ip(), node.addr(), "{s:?}");
    }

    // Cut off, the node still serves what it read (from its store).
    node.cut();
    read_and_check(&mp, &files[0]);
    assert!(proxy.take_log().is_empty(), "a request got through the cut");
    node.restore();
    read_and_check(&mp, &files[1]);

    drop(mount);
    daemon.stop();
    drop(proxy);
    drop(reg);
    drop(node);
    drop(bridge);
    assert_eq!(leftovers(PREFIX), Vec::<String>::new());
}
