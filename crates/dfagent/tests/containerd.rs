//! Containers started from dfagent: Debian's containerd 1.6 and runc with `dfagent daemon` as
//! its proxy snapshotter. A Nydus image of the Debian + python3 root file system (built by
//! `dfagent build --push`) is pulled with `dfagent containerd pull` and run with
//! `ctr run --snapshotter dfagent` (it prints 42; the registry serves a fraction of the image's
//! blobs; a second container shares the image mount); a container's writes survive a kill -9 of
//! the daemon; an ordinary OCI image pulled by containerd itself runs on the same snapshotter;
//! containerd restarts and everything still resolves; removing the image and collecting garbage
//! unmounts the image.
//!
//! Needs root, containerd, runc, skopeo and the cached root file system (`scripts/setup.sh`);
//! without them it fails, naming what is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dfagent_test_support::containerd::{
    prerequisites, unmount_under, Containerd, ProxySnapshotter, DEBIAN_ROOTFS,
};
use dfagent_test_support::daemon::DfagentDaemon;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::mountinfo;
use dfagent_test_support::oci::{gnu_tar, oci_layout};
use dfagent_test_support::proxy::{Corrupt, Proxy};
use dfagent_test_support::registry::Registry;

const ROOTFS: &str = DEBIAN_ROOTFS;
const NS: &str = "dfagent-test";

fn require() {
    prerequisites("containerd test", &["skopeo"], true)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Mounts of ours (nydusfs with a `dfagent:` source) under `dir`.
fn image_mounts(dir: &Path) -> Vec<PathBuf> {
    mountinfo::entries()
        .into_iter()
        .filter(|m| m.source.starts_with("dfagent:") && m.mount_point.starts_with(dir))
        .map(|m| m.mount_point)
        .collect()
}

/// Detaches whatever is still mounted under a directory when dropped (image mounts a killed
/// daemon left, on a failing test's way out): dropped after the daemons and containerd, before
/// the directory itself.
struct UnmountAll(PathBuf);

impl Drop for UnmountAll {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// Polls `f` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn nydus_and_oci_images_run_in_containers_on_the_dfagent_snapshotter() {
    require();
    let cli = dfagent_cli!();
    // Container root file systems live only under directories no other user can enter.
    let work = tempfile::Builder::new()
        .prefix("dfagent-containerd-")
        .tempdir_in("/run")
        .unwrap();
    let dir = work.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let _unmount = UnmountAll(dir.to_path_buf());

    // The images: a gzip OCI layout of the root file system, as Nydus (dfagent build --push)
    // and as itself (skopeo), in one registry read through a counting proxy.
    let reg = Registry::start();
    let proxy = Proxy::start(reg.addr(), Corrupt::Never);
    let layout = dir.join("layout");
    oci_layout(&layout, "v1", &[gnu_tar(Path::new(ROOTFS))], true);
    let nydus = format!("{}/py/nydus:v1", proxy.host());
    let out = cli.run(&[
        "build",
        &format!("oci:{}:v1", layout.display()),
        "--push",
        &format!("{}/py/nydus:v1", reg.host()),
        "-q",
    ]);
    assert!(out.status.success(), "build: {}", text(&out));
    let oci = format!("{}/py/oci:v1", reg.host());
    let out = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{oci}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", text(&out));
    std::fs::remove_dir_all(&layout).unwrap();

    // The daemon (snapshotter on by default: DIR/run/snapshotter.sock, root beside the store),
    // reading lazily (no background prefetch), and containerd with it as a proxy plugin.
    let config = dir.join("dfagent.toml");
    std::fs::write(&config, "[mount]\nprefetch = \"none\"\n").unwrap();
    let store = dir.join("store");
    let config_s = config.display().to_string();
    let mut daemon = DfagentDaemon::start(&cli, dir, &store, &["--config", &config_s]);
    let socket = dir.join("run/snapshotter.sock");
    assert!(socket.exists(), "no snapshotter socket: {}", daemon.log());
    let ctd_dir = dir.join("containerd");
    std::fs::create_dir_all(&ctd_dir).unwrap();
    let mut ctd = Containerd::start(
        &ctd_dir,
        Some(ProxySnapshotter {
            name: "dfagent".into(),
            socket: socket.clone(),
        }),
    )
    .unwrap();
    let address = ctd.address().display().to_string();

    // A Nydus image: pulled through containerd's API, then run.
    let out = cli.run(&[
        "containerd",
        "pull",
        &nydus,
        "--address",
        &address,
        "-n",
        NS,
        "--json",
    ]);
    assert!(out.status.success(), "containerd pull: {}", text(&out));
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(pulled["layers"].as_u64().unwrap() >= 2, "{pulled}");
    let run = ctd
        .run(
            NS,
            &["--snapshotter", "dfagent"],
            &nydus,
            "c1",
            &["/usr/bin/python3", "-c", "print(42)"],
        )
        .unwrap();
    assert!(
        run.status.success() && String::from_utf8_lossy(&run.stdout).trim() == "42",
        "ctr run: {}\ndaemon: {}",
        text(&run),
        daemon.log()
    );
    let blob_bytes: u64 = proxy
        .take_log()
        .iter()
        .filter(|s| s.is_blob_get())
        .map(|s| s.body_len)
        .sum();
    let image_bytes: u64 = blob_sizes(&reg, "py/nydus", "v1");
    eprintln!(
        "registry served {blob_bytes} blob bytes of an image of {image_bytes} ({:.1} %)",
        100.0 * blob_bytes as f64 / image_bytes as f64
    );
    assert!(
        blob_bytes * 4 < image_bytes,
        "the registry served {blob_bytes} of {image_bytes} blob bytes"
    );
    let snap_root = dir.join("snapshotter");
    assert_eq!(image_mounts(&snap_root).len(), 1, "one image mount");

    // A second container of the image shares the mount, and writes a file into its own upper
    // dir (kept: no --rm).
    let mut args: Vec<std::ffi::OsString> = vec!["run".into()];
    args.extend(ctd.run_args());
    for a in [
        "--snapshotter",
        "dfagent",
        &nydus,
        "c2",
        "/bin/sh",
        "-c",
        "echo kept > /marker && python3 -c 'print(7)'",
    ] {
        args.push(a.into());
    }
    let run = ctd.ctr(NS, &args).unwrap();
    assert!(run.status.success(), "c2: {}", text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "7");
    assert_eq!(image_mounts(&snap_root).len(), 1, "the mount is shared");
    let _ = ctd.ctr(NS, ["task", "delete", "c2"]);

    // kill -9 of the daemon: the stopped container's upper dir is intact; a new daemon lists
    // every snapshot and a new container starts.
    let pid = daemon.pid();
    // SAFETY: kill with a valid signal on a pid of ours.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = daemon.terminate();
    drop(daemon);
    let markers: Vec<PathBuf> = std::fs::read_dir(snap_root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs/marker"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(markers.len(), 1, "the container's upper dir holds its file");
    assert_eq!(std::fs::read_to_string(&markers[0]).unwrap(), "kept\n");
    let ls_down = ctd
        .ctr(NS, ["snapshots", "--snapshotter", "dfagent", "ls"])
        .unwrap();
    assert!(
        !ls_down.status.success(),
        "ls with the daemon down: {}",
        text(&ls_down)
    );
    let daemon = DfagentDaemon::start(&cli, dir, &store, &["--config", &config_s]);
    // containerd redials a proxy plugin with a backoff (up to a few seconds after a failure).
    let mut ls = String::new();
    let listed = eventually(Duration::from_secs(60), || {
        match ctd.ctr_ok(NS, ["snapshots", "--snapshotter", "dfagent", "ls"]) {
            Ok(out) => {
                ls = out;
                true
            }
            Err(_) => false,
        }
    });
    assert!(listed, "snapshots ls after the restart: {}", daemon.log());
    assert!(
        ls.contains("c2") && ls.contains(pulled["chain_id"].as_str().unwrap()),
        "{ls}"
    );
    let run = ctd
        .run(
            NS,
            &["--snapshotter", "dfagent"],
            &nydus,
            "c3",
            &["/usr/bin/python3", "-c", "print(43)"],
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&run.stdout).trim() == "43",
        "c3 after the restart: {}\ndaemon: {}",
        text(&run),
        daemon.log()
    );
    assert!(
        std::fs::read_to_string(&markers[0]).unwrap() == "kept\n",
        "the upper dir survived the restart"
    );

    // An ordinary OCI image, pulled and unpacked by containerd itself on the same snapshotter.
    let pull = ctd
        .ctr_within(
            NS,
            [
                "image",
                "pull",
                "--plain-http",
                "--snapshotter",
                "dfagent",
                &oci,
            ],
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(pull.status.success(), "ctr image pull: {}", text(&pull));
    let run = ctd
        .run(
            NS,
            &["--snapshotter", "dfagent"],
            &oci,
            "c4",
            &["/usr/bin/python3", "-c", "print(44)"],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "44",
        "{}",
        text(&run)
    );

    // containerd restarted: everything still resolves through the snapshotter.
    ctd.restart().unwrap();
    let run = ctd
        .run(
            NS,
            &["--snapshotter", "dfagent"],
            &nydus,
            "c5",
            &["/usr/bin/python3", "-c", "print(45)"],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "45",
        "{}",
        text(&run)
    );

    // The Nydus image removed and garbage collected: its mount goes.
    ctd.ctr_ok(NS, ["container", "rm", "c2"]).unwrap();
    ctd.ctr_ok(NS, ["image", "rm", "--sync", &nydus]).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || image_mounts(&snap_root)
            .is_empty()),
        "the image mount stayed after image rm: {:?}\n{}",
        image_mounts(&snap_root),
        daemon.log()
    );
    ctd.stop().unwrap();
    drop(ctd);
    daemon.stop();
}

/// Sum of the sizes of `repo:tag`'s layers, from the registry's manifest.
fn blob_sizes(reg: &Registry, repo: &str, tag: &str) -> u64 {
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", reg.host());
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &url,
        ])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}
