//! `dfagent mount` / `dfagent umount` as a user runs them: a foreground child serving a real
//! FUSE mount, ended by `umount`, by SIGTERM, or killed (leaving a stale mount that `--force`
//! recovers); who may use the mount and what of the image it honours (nosuid, nodev, owner only
//! unless asked); and mounts that are not dfagent's, which `umount` and `--force` leave alone.
//! Needs root and /dev/fuse.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{expected_file, fixture, sha256_hex};
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::mountinfo::{entry_at, mounts_at, MountEntry};
use dfagent_test_support::process::{run_bounded, succeeded, wait_exit};
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::wait_until;

const IMAGE: &str = "v6-zstd-blake3";

/// A temporary directory with a mount point in it. Dropping it kills any child still running
/// and detaches whatever is still mounted, so a failed test leaves nothing behind.
struct Scene {
    // Dropped first: kills the mount processes, detaches the mount point.
    guard: MountGuard,
    mounts: usize,
    cli: Dfagent,
    dir: tempfile::TempDir,
    mp: PathBuf,
}

impl Scene {
    fn new() -> Self {
        Self::in_dir(tmp_dir("dfagent-mount-cli-"))
    }

    /// A scene whose mount point is `dir/mnt`.
    fn in_dir(dir: tempfile::TempDir) -> Self {
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        Scene {
            guard: MountGuard::new(&mp),
            mounts: 0,
            cli: dfagent_cli!(),
            dir,
            mp,
        }
    }

    fn log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("mount-{n}.log"))
    }

    fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    /// Start `dfagent mount` (plus `extra` arguments) in the background; its index.
    fn start_mount(&mut self, extra: &[&str]) -> usize {
        let n = self.mounts;
        let log = std::fs::File::create(self.log(n)).unwrap();
        let fx = fixture(IMAGE);
        let child = self
            .cli
            .command()
            .arg("mount")
            .arg("--bootstrap")
            .arg(fx.join("bootstrap"))
            .arg("--blob-dir")
            .arg(fx.join("blobs"))
            .args(extra)
            .arg(&self.mp)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning dfagent mount");
        assert_eq!(self.guard.adopt(child), n);
        self.mounts += 1;
        n
    }

    fn pid(&mut self, n: usize) -> libc::pid_t {
        self.guard.child(n).id() as libc::pid_t
    }

    /// Wait (bounded) until hello.txt reads correctly through the mount of child `n`.
    fn wait_serving(&mut self, n: usize) {
        let want = expected_file(IMAGE, "hello.txt").sha256;
        let hello = self.mp.join("hello.txt");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(d) = std::fs::read(&hello) {
                assert_eq!(sha256_hex(&d), want, "hello.txt through the mount");
                return;
            }
            if let Some(st) = self.guard.child(n).try_wait().unwrap() {
                panic!("dfagent mount exited early ({st}): {}", self.log_text(n));
            }
            assert!(
                Instant::now() < deadline,
                "mount not serving within 10 s: {}",
                self.log_text(n)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for child `n` to exit.
    fn wait_exit(&mut self, n: usize, timeout: Duration) -> ExitStatus {
        match wait_exit(self.guard.child(n), timeout) {
            Some(st) => st,
            None => panic!(
                "dfagent mount still running {timeout:?} later: {}",
                self.log_text(n)
            ),
        }
    }

    fn signal(&mut self, n: usize, sig: libc::c_int) {
        let pid = self.pid(n);
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Run `dfagent umount MP` to completion (bounded).
    fn umount(&self) -> std::process::Output {
        run_bounded(
            self.cli.command().arg("umount").arg(&self.mp),
            Duration::from_secs(10),
        )
    }

    /// `dfagent umount MP`, which must succeed, and child `n` then exits 0 with nothing left
    /// mounted.
    fn stop(&mut self, n: usize) {
        succeeded(self.umount());
        let st = self.wait_exit(n, Duration::from_secs(10));
        assert_eq!(st.code(), Some(0), "dfagent mount: {}", self.log_text(n));
        assert_eq!(mounts_at(&self.mp), 0, "mount left behind");
    }

    /// Let other users reach the mount point (the temporary directory is 0700).
    fn open_to_all(&self) {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The topmost mount at the mount point, which must be a nydusfs FUSE mount.
    fn fuse_entry(&self) -> MountEntry {
        let e = entry_at(&self.mp).expect("something is mounted at the mount point");
        assert!(
            e.fs_type == "fuse" || e.fs_type == "fuse.nydus",
            "{}",
            e.line
        );
        e
    }

    /// Child `n` must exit unsuccessfully (bounded), leaving `mounts` mounts at the mount
    /// point; its log.
    fn refused(&mut self, n: usize, mounts: usize) -> String {
        let st = self.wait_exit(n, Duration::from_secs(10));
        assert!(
            !st.success(),
            "dfagent mount succeeded: {}",
            self.log_text(n)
        );
        assert_eq!(mounts_at(&self.mp), mounts, "{}", self.log_text(n));
        self.log_text(n)
    }
}

/// Whether the FUSE superblock options of `e` hold `allow_other`.
fn allows_others(e: &MountEntry) -> bool {
    e.super_options.split(',').any(|o| o == "allow_other")
}

/// `ARGS...` run as user nobody (65534, no supplementary groups).
fn as_nobody(args: &[&std::ffi::OsStr]) -> Output {
    run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args),
        Duration::from_secs(10),
    )
}

/// `mount -t tmpfs -o size=1m SOURCE MP`: a mount that is not dfagent's.
fn mount_tmpfs(source: &str, mp: &Path) {
    succeeded(run_bounded(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", source])
            .arg(mp),
        Duration::from_secs(10),
    ));
    assert_eq!(entry_at(mp).expect("tmpfs mounted").fs_type, "tmpfs");
}

#[test]
fn umount_ends_the_mount_process() {
    let mut s = Scene::new();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    assert_eq!(mounts_at(&s.mp), 1);
    let out = s.umount();
    assert!(
        out.status.success(),
        "dfagent umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = s.wait_exit(n, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "dfagent mount: {}", s.log_text(n));
    assert_eq!(mounts_at(&s.mp), 0, "mount left behind");
    // Nothing is mounted any more: umount says so.
    let again = s.umount();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing is mounted"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let mut s = Scene::new();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    s.signal(n, libc::SIGTERM);
    let st = s.wait_exit(n, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "dfagent mount: {}", s.log_text(n));
    assert_eq!(mounts_at(&s.mp), 0, "mount left behind");
    assert!(s.log_text(n).contains("unmounted"), "{}", s.log_text(n));
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    let mut s = Scene::new();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    s.signal(n, libc::SIGINT);
    let st = s.wait_exit(n, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "dfagent mount: {}", s.log_text(n));
    assert_eq!(mounts_at(&s.mp), 0, "mount left behind");
}

#[test]
fn killed_mount_is_stale_and_force_recovers_it() {
    let mut s = Scene::new();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    s.signal(n, libc::SIGKILL);
    let st = s.wait_exit(n, Duration::from_secs(10));
    assert_eq!(st.code(), None, "killed by a signal");

    // The server is gone, the mount is not: "transport endpoint is not connected".
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = std::fs::metadata(&s.mp)
                .err()
                .and_then(|e| e.raw_os_error());
            last == Some(libc::ENOTCONN)
        }),
        "stat of the mount point after SIGKILL: errno {last:?}, expected ENOTCONN"
    );
    assert_eq!(mounts_at(&s.mp), 1);

    // Without --force a new mount refuses, and says how to proceed.
    let refused = s.start_mount(&[]);
    let st = s.wait_exit(refused, Duration::from_secs(10));
    assert!(
        !st.success(),
        "mount over a stale mount succeeded without --force"
    );
    let msg = s.log_text(refused);
    assert!(
        msg.contains("--force"),
        "message does not mention --force: {msg}"
    );
    assert!(msg.contains("stale"), "{msg}");
    assert_eq!(mounts_at(&s.mp), 1);

    // With --force it replaces the stale mount and serves.
    let forced = s.start_mount(&["--force"]);
    s.wait_serving(forced);
    assert_eq!(mounts_at(&s.mp), 1, "the stale mount was not replaced");

    let out = s.umount();
    assert!(
        out.status.success(),
        "dfagent umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = s.wait_exit(forced, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "dfagent mount --force: {}",
        s.log_text(forced)
    );
    assert_eq!(mounts_at(&s.mp), 0, "mount left behind");
}

#[test]
fn umount_recovers_a_stale_mount() {
    let mut s = Scene::new();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    s.signal(n, libc::SIGKILL);
    s.wait_exit(n, Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::metadata(&s.mp)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    }));
    let out = s.umount();
    assert!(
        out.status.success(),
        "dfagent umount of a stale mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mounts_at(&s.mp), 0);
    assert!(std::fs::metadata(&s.mp).unwrap().is_dir());
}

#[test]
fn mount_over_a_live_mount_needs_force() {
    let mut s = Scene::new();
    let first = s.start_mount(&[]);
    s.wait_serving(first);
    let second = s.start_mount(&[]);
    let st = s.wait_exit(second, Duration::from_secs(10));
    assert!(!st.success());
    assert!(
        s.log_text(second).contains("--force"),
        "{}",
        s.log_text(second)
    );
    // The first mount is untouched.
    s.wait_serving(first);
    let out = s.umount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.wait_exit(first, Duration::from_secs(10)).code(), Some(0));
    assert_eq!(mounts_at(&s.mp), 0);
}

#[test]
fn a_default_mount_is_nosuid_nodev_for_its_owner_only_and_named_by_digest() {
    let mut s = Scene::new();
    s.open_to_all();
    let n = s.start_mount(&[]);
    s.wait_serving(n);
    let e = s.fuse_entry();
    assert!(
        e.has_option("nosuid") && e.has_option("nodev"),
        "{}",
        e.line
    );
    assert!(e.has_option("ro"), "{}", e.line);
    assert!(!allows_others(&e), "{}", e.line);
    // The source is dfagent's and names the image by digest (a local image: its bootstrap's).
    let bootstrap = std::fs::read(fixture(IMAGE).join("bootstrap")).unwrap();
    assert_eq!(
        e.source,
        format!("dfagent:sha256:{}", sha256_hex(&bootstrap)),
        "{}",
        e.line
    );

    // Another user reaches the directory, but not into the mount.
    let dir = s.dir.path().as_os_str();
    succeeded(as_nobody(&["ls".as_ref(), dir]));
    let hello = s.mp.join("hello.txt");
    let out = as_nobody(&["cat".as_ref(), hello.as_os_str()]);
    assert!(
        !out.status.success(),
        "nobody read a mount without --allow-other"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop(n);
}

#[test]
fn allow_other_lets_other_users_read_and_keeps_nosuid_nodev() {
    let mut s = Scene::new();
    s.open_to_all();
    let n = s.start_mount(&["--allow-other"]);
    s.wait_serving(n);
    let e = s.fuse_entry();
    assert!(allows_others(&e), "{}", e.line);
    assert!(
        e.has_option("nosuid") && e.has_option("nodev"),
        "{}",
        e.line
    );
    let hello = s.mp.join("hello.txt");
    let out = succeeded(as_nobody(&["cat".as_ref(), hello.as_os_str()]));
    assert_eq!(
        sha256_hex(&out.stdout),
        expected_file(IMAGE, "hello.txt").sha256
    );
    s.stop(n);
}

#[test]
fn suid_and_dev_are_honoured_only_when_asked() {
    let mut s = Scene::new();
    let n = s.start_mount(&["--suid", "--dev"]);
    s.wait_serving(n);
    let e = s.fuse_entry();
    assert!(
        !e.has_option("nosuid") && !e.has_option("nodev"),
        "{}",
        e.line
    );
    assert!(!allows_others(&e), "{}", e.line);
    s.stop(n);
}

#[test]
fn a_container_rootfs_is_mounted_only_under_a_root_only_directory() {
    // Under /tmp (writable by every user): refused, naming the directory, nothing mounted.
    let mut s = Scene::new();
    let n = s.start_mount(&["--container-rootfs"]);
    let log = s.refused(n, 0);
    assert!(
        log.contains("/tmp is writable by every user"),
        "the refusal does not name /tmp: {log}"
    );

    // Under directories only root can change but every user can walk through (0755 all the
    // way): refused, or any user could run the image's setuid binaries by name.
    let open_dir = tempfile::Builder::new()
        .prefix("dfagent-rootfs-open-")
        .tempdir_in("/run")
        .expect("a temporary directory under /run");
    std::fs::set_permissions(
        open_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod 0755");
    let mut o = Scene::in_dir(open_dir);
    let n = o.start_mount(&["--container-rootfs"]);
    let log = o.refused(n, 0);
    assert!(
        log.contains("closed to other users"),
        "the refusal does not say why: {log}"
    );

    // Under a directory only root can change (/run, and a 0700 directory of root's in it):
    // mounted suid, dev and allow_other.
    let root_only = tempfile::Builder::new()
        .prefix("dfagent-rootfs-")
        .tempdir_in("/run")
        .expect("a temporary directory under /run");
    std::fs::set_permissions(
        root_only.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod 0700");
    let mut r = Scene::in_dir(root_only);
    let n = r.start_mount(&["--container-rootfs"]);
    r.wait_serving(n);
    let e = r.fuse_entry();
    assert!(
        !e.has_option("nosuid") && !e.has_option("nodev"),
        "{}",
        e.line
    );
    assert!(allows_others(&e), "{}", e.line);
    r.stop(n);
}

#[test]
fn umount_leaves_a_mount_that_is_not_dfagents_alone() {
    let s = Scene::new();
    mount_tmpfs("tmpfs", &s.mp);
    let out = s.umount();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dfagent umount removed a tmpfs");
    assert!(
        err.contains("not a dfagent mount") && err.contains("tmpfs"),
        "the refusal does not name what is mounted: {err}"
    );
    let e = entry_at(&s.mp).expect("the tmpfs is still mounted");
    assert_eq!(e.fs_type, "tmpfs");
    assert_eq!(mounts_at(&s.mp), 1);
}

#[test]
fn mount_force_never_replaces_a_mount_that_is_not_dfagents() {
    let mut s = Scene::new();
    // Even one whose source looks like dfagent's: the file system type says it is not.
    mount_tmpfs("dfagent:sha256:imposter", &s.mp);
    let n = s.start_mount(&["--force"]);
    let log = s.refused(n, 1);
    assert!(
        log.contains("not a dfagent mount") && log.contains("tmpfs"),
        "the refusal does not name what is mounted: {log}"
    );
    assert_eq!(entry_at(&s.mp).expect("still mounted").fs_type, "tmpfs");
    // Without --force as well.
    let n = s.start_mount(&[]);
    s.refused(n, 1);
}
