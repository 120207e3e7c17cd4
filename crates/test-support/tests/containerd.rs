//! The private containerd fixture with Debian's containerd 1.6 and runc: an OCI image of the
//! cached Debian + python3 root file system imported, a real container run (`print(42)`),
//! containerd killed with SIGKILL and restarted (the image and a running task survive), and
//! nothing left behind on drop — no mount under the directory, no shim, no cgroup, no shim
//! socket — whether containerd still runs at drop or was killed. A second test checks that a
//! proxy snapshotter is registered under its name.
//!
//! Needs root, containerd, runc and the cached root file system (`scripts/setup.sh`); without
//! them it fails, naming what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dfagent_test_support::containerd::{
    prerequisites, shim_socket, shims_of, Containerd, ProxySnapshotter, DEBIAN_ROOTFS,
};
use dfagent_test_support::oci::import_archive;
use dfagent_test_support::tmp_dir;

const ROOTFS: &str = DEBIAN_ROOTFS;
const IMAGE: &str = "dfagent.test/bookworm-python3:1";

/// Whether the test can run here; says why not (and fails under CI).
fn require(rootfs: bool) {
    prerequisites("containerd test", &[], rootfs)
}

/// What a fixture leaves to check after it is dropped.
struct Traces {
    address: PathBuf,
    dir: PathBuf,
    ns: String,
    shim_sockets: Vec<PathBuf>,
    pids: Vec<u32>,
}

impl Traces {
    fn of(c: &Containerd, ns: &str) -> Traces {
        let shims = c.shims();
        let mut pids: Vec<u32> = shims.iter().map(|s| s.pid).collect();
        for s in &shims {
            pids.extend(children(s.pid));
        }
        Traces {
            address: c.address().to_path_buf(),
            dir: c.dir().to_path_buf(),
            ns: ns.to_owned(),
            shim_sockets: shims
                .iter()
                .map(|s| shim_socket(&s.address, &s.namespace, &s.id))
                .collect(),
            pids,
        }
    }

    /// Nothing of the dropped fixture remains.
    fn assert_gone(&self) {
        assert!(
            shims_of(&self.address, &self.dir).is_empty(),
            "a shim survived the drop"
        );
        for p in &self.pids {
            assert!(
                !running(*p),
                "process {p} (shim or container) survived the drop"
            );
        }
        let mounts = dfagent_test_support::mountinfo::mounts_under(&self.dir);
        assert_eq!(mounts, 0, "mounts left under {}", self.dir.display());
        for s in &self.shim_sockets {
            assert!(!s.exists(), "shim socket {} left behind", s.display());
        }
        let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| rd.flatten().map(|e| e.path().join(&self.ns)).collect())
            .unwrap_or_default();
        for cg in cgroups
            .iter()
            .chain([&Path::new("/sys/fs/cgroup").join(&self.ns)])
        {
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
        assert!(
            !Path::new("/run/containerd/runc").join(&self.ns).exists(),
            "runc state in the machine's /run/containerd/runc"
        );
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()
                .map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn task_status(c: &Containerd, ns: &str, id: &str) -> Option<String> {
    let out = c.ctr_ok(ns, ["tasks", "ls"]).expect("ctr tasks ls");
    out.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
    })
}

#[test]
fn containers_run_survive_a_killed_containerd_and_leave_nothing() {
    require(true);
    let work = tmp_dir("ctd-img-");
    let t = Instant::now();
    let archive = import_archive(Path::new(ROOTFS), IMAGE, work.path());
    eprintln!("image archive: {:?}", t.elapsed());
    let ns = format!("dfagent-ctd-{}", std::process::id());

    // Scenario 1: run, kill -9, restart, drop while containerd runs.
    let dir = tmp_dir("ctd-");
    let traces = {
        let t = Instant::now();
        let mut c = Containerd::start(dir.path(), None).expect("containerd starts");
        eprintln!("containerd ready: {:?}", t.elapsed());
        let t = Instant::now();
        c.ctr_ok(
            &ns,
            ["images".as_ref(), "import".as_ref(), archive.as_os_str()],
        )
        .expect("image import");
        eprintln!("ctr image import: {:?}", t.elapsed());
        let listed = c.ctr_ok(&ns, ["images", "ls", "-q"]).expect("images ls");
        assert!(listed.lines().any(|l| l == IMAGE), "{listed}");

        let t = Instant::now();
        let out = c
            .run(
                &ns,
                &["--snapshotter", "overlayfs"],
                IMAGE,
                "c1",
                &["/usr/bin/python3", "-c", "print(42)"],
            )
            .expect("ctr run");
        eprintln!("ctr run --rm python3: {:?}", t.elapsed());
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        assert!(
            c.runc_root().join(&ns).is_dir(),
            "runc state inside the directory"
        );
        assert!(!Path::new("/run/containerd/runc").join(&ns).exists());

        // A long-running container across the kill.
        let mut args = vec!["run".into(), "-d".into()];
        args.extend(c.run_args());
        args.extend(["--snapshotter".into(), "overlayfs".into()]);
        args.extend([
            IMAGE.into(),
            "c2".into(),
            "/usr/bin/sleep".into(),
            "600".into(),
        ]);
        c.ctr_ok(&ns, &args).expect("ctr run -d");
        assert_eq!(task_status(&c, &ns, "c2").as_deref(), Some("RUNNING"));
        assert_eq!(c.shims().len(), 1, "one shim for c2");
        assert!(!c.mounts().is_empty(), "c2's root file system is mounted");

        c.kill9();
        assert!(!c.is_running());
        assert_eq!(c.shims().len(), 1, "the shim outlives containerd");
        let t = Instant::now();
        c.restart().expect("containerd restarts");
        eprintln!("containerd restart: {:?}", t.elapsed());
        let listed = c.ctr_ok(&ns, ["images", "ls", "-q"]).expect("images ls");
        assert!(
            listed.lines().any(|l| l == IMAGE),
            "image after restart: {listed}"
        );
        assert_eq!(
            task_status(&c, &ns, "c2").as_deref(),
            Some("RUNNING"),
            "the task is found again after the restart"
        );
        let traces = Traces::of(&c, &ns);
        assert!(traces.pids.len() >= 2, "shim and container init");
        assert!(c.log().contains("containerd successfully booted"));
        let t = Instant::now();
        drop(c);
        eprintln!("drop (containerd running): {:?}", t.elapsed());
        traces
    };
    traces.assert_gone();

    // Scenario 2: containerd killed and not restarted; drop must clean up by force.
    let dir2 = tmp_dir("ctd-");
    let traces = {
        let mut c = Containerd::start(dir2.path(), None).expect("containerd starts");
        c.ctr_ok(
            &ns,
            ["images".as_ref(), "import".as_ref(), archive.as_os_str()],
        )
        .expect("image import");
        let mut args = vec!["run".into(), "-d".into()];
        args.extend(c.run_args());
        args.extend([
            IMAGE.into(),
            "c3".into(),
            "/usr/bin/sleep".into(),
            "600".into(),
        ]);
        c.ctr_ok(&ns, &args).expect("ctr run -d");
        c.kill9();
        let traces = Traces::of(&c, &ns);
        assert_eq!(c.shims().len(), 1);
        let t = Instant::now();
        drop(c);
        eprintln!("drop (containerd killed): {:?}", t.elapsed());
        traces
    };
    traces.assert_gone();
}

#[test]
fn a_proxy_snapshotter_is_registered_under_its_name() {
    require(false);
    let dir = tmp_dir("ctd-");
    let socket = dir.path().join("nothing-listens.sock");
    let c = Containerd::start(
        dir.path(),
        Some(ProxySnapshotter {
            name: "dfagent".into(),
            socket: socket.clone(),
        }),
    )
    .expect("containerd starts");
    let config = std::fs::read_to_string(c.config_path()).expect("config");
    assert!(
        config.contains(&format!("address = \"{}\"", socket.display())),
        "{config}"
    );
    let plugins = c
        .ctr_ok("dfagent-ctd-plugins", ["plugins", "ls"])
        .expect("plugins ls");
    let line = plugins
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"io.containerd.snapshotter.v1") && f.get(1) == Some(&"dfagent")
        })
        .unwrap_or_else(|| panic!("no dfagent snapshotter in:\n{plugins}"));
    eprintln!("{line}");
    // Without the proxy plugin, no such line.
    let dir2 = tmp_dir("ctd-");
    let plain = Containerd::start(dir2.path(), None).expect("containerd starts");
    let plugins = plain
        .ctr_ok("dfagent-ctd-plugins", ["plugins", "ls"])
        .expect("plugins ls");
    assert!(!plugins.contains(" dfagent "), "{plugins}");
}
