//! A mount's pin is released however the mount ends: when mounting fails after the image was
//! opened and pinned, and when the FUSE session ends without the node (unmounted from outside)
//! and the daemon reaps it. Real FUSE mounts of a registry image; needs root and /dev/fuse.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfagent_node::daemon::Daemon;
use dfagent_node::{ImageSource, MountOptions, MountSpec, Node, NodeConfig, NodeError};
use dfagent_resolver::prefetch::PrefetchPolicy;
use dfagent_test_support::fixtures::fixture;
use dfagent_test_support::mount::{detach, MountGuard};
use dfagent_test_support::mountinfo::{entry_at, is_mounted};
use dfagent_test_support::proxy::{Action, Proxy};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::wait_until;

const IMAGE: &str = "v6-zstd-blake3";

fn open_node(dir: &Path) -> Arc<Node> {
    Node::open(
        NodeConfig::with_store_at(dir.join("store")),
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}

/// Push the fixture image to the registry at `host`; its repository and tag there (without the
/// host, so that a proxy in front can name it too).
async fn push_fixture(node: &Node, host: &str) -> String {
    let img = fixture(IMAGE);
    let name = format!("fixtures/{IMAGE}:v1");
    node.push(
        &img.join("bootstrap"),
        &img.join("blobs"),
        &format!("{host}/{name}"),
    )
    .await
    .unwrap();
    name
}

fn spec(reference: &str, mp: &Path) -> MountSpec {
    MountSpec {
        image: ImageSource::Registry(reference.to_string()),
        mountpoint: mp.to_path_buf(),
        options: MountOptions {
            prefetch: PrefetchPolicy::None,
            ..MountOptions::default()
        },
    }
}

/// Whether the node or its store still pins `reference`.
fn pinned(node: &Node, reference: &str) -> bool {
    let stored = node
        .store()
        .unwrap()
        .pinned_images()
        .unwrap()
        .iter()
        .any(|r| r == reference);
    stored || node.pins().users(reference) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_point_that_vanishes_after_the_pin_leaves_nothing_pinned() {
    let dir = tmp_dir("dfagent-node-pins-");
    let mp: PathBuf = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let reg = Registry::start();
    // The mount point goes away while the image is being opened: when the bootstrap is asked
    // for, after the mount point was checked and before the image is pinned and mounted.
    let removed = Arc::new(AtomicBool::new(false));
    let (flag, target) = (removed.clone(), mp.clone());
    let proxy = Proxy::builder()
        .upstream(reg.addr())
        .policy(move |req| {
            if req.is_blob_get() && !flag.swap(true, Ordering::SeqCst) {
                std::fs::remove_dir(&target).expect("removing the mount point");
            }
            Action::Forward
        })
        .start();
    let node = open_node(dir.path());
    let reference = format!(
        "{}/{}",
        proxy.host(),
        push_fixture(&node, &reg.host()).await
    );

    let err = match node.mount(spec(&reference, &mp)).await {
        Ok(_) => panic!("mounted on a mount point that was removed"),
        Err(e) => e,
    };
    assert!(
        removed.load(Ordering::SeqCst),
        "the bootstrap was never fetched"
    );
    // The failure is the mount's own, after the image was opened (and pinned).
    assert!(
        matches!(&err, NodeError::Io { what, .. } if what.starts_with("mounting at")),
        "{err}"
    );
    assert!(!is_mounted(&mp));
    assert!(
        !pinned(&node, &reference),
        "the failed mount left {reference} pinned: store {:?}, users {}",
        node.store().unwrap().pinned_images().unwrap(),
        node.pins().users(&reference)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ended_outside_the_daemon_releases_its_pin() {
    let dir = tmp_dir("dfagent-node-pins-");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let reg = Registry::start();
    let node = open_node(dir.path());
    let reference = format!("{}/{}", reg.host(), push_fixture(&node, &reg.host()).await);
    let daemon = Daemon::new(node.clone(), MountOptions::default());

    let info = daemon.mount(spec(&reference, &mp)).await.unwrap();
    assert!(pinned(&node, &reference), "a mounted image is pinned");
    let entry = entry_at(&mp).expect("mounted");
    assert_eq!(entry.source, format!("dfagent:{}", info.image_digest));

    // Someone unmounts it behind the daemon's back: the session ends, the reaper notices.
    detach(&mp);
    assert!(!is_mounted(&mp));
    assert!(
        wait_until(Duration::from_secs(10), || {
            daemon.reap();
            daemon.mount_count() == 0
        }),
        "the daemon did not notice the session ended"
    );
    assert!(
        !pinned(&node, &reference),
        "the reaped mount left {reference} pinned: store {:?}, users {}",
        node.store().unwrap().pinned_images().unwrap(),
        node.pins().users(&reference)
    );
}
