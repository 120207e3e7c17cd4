//! `dfagent mount` / `dfagent umount` as a user runs them: a foreground child serving a real
//! FUSE mount, ended by `umount`, by SIGTERM, or killed (leaving a stale mount that `--force`
//! recovers). Needs root and /dev/fuse.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{expected_file, fixture, sha256_hex};
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::mountinfo::mounts_at;
use dfagent_test_support::process::{run_bounded, wait_exit};
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
        let dir = tmp_dir("dfagent-mount-cli-");
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
