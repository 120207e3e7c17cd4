//! `dfagent mount` / `dfagent umount` as a user runs them: a foreground child serving a real
//! FUSE mount, ended by `umount`, by SIGTERM, or killed (leaving a stale mount that `--force`
//! recovers). Needs root and /dev/fuse.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{mounts_at, shared, wait_until};

const IMAGE: &str = "v6-zstd-blake3";

fn fixture() -> PathBuf {
    let d = shared().join("fixtures/rafs").join(IMAGE);
    assert!(
        d.join("bootstrap").is_file(),
        "fixture {} not found (set DFAGENT_SHARED to the shared folder)",
        d.display()
    );
    d
}

/// sha256 of hello.txt per the expected listing.
fn hello_sha256() -> String {
    let listing =
        std::fs::read_to_string(shared().join("fixtures/rafs/texture.expected.jsonl")).unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains("\"path\": \"hello.txt\""))
        .unwrap();
    let at = line.find("\"sha256\": \"").unwrap() + 11;
    line[at..at + 64].to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A temporary directory with a mount point in it. Dropping it kills any child still running
/// and detaches whatever is still mounted, so a failed test leaves nothing behind.
struct Scene {
    dir: tempfile::TempDir,
    mp: PathBuf,
    children: Vec<Child>,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dfagent-mount-cli-")
            .tempdir_in("/tmp")
            .unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        Scene {
            dir,
            mp,
            children: Vec::new(),
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
        let n = self.children.len();
        let log = std::fs::File::create(self.log(n)).unwrap();
        let fx = fixture();
        let child = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .arg("mount")
            .arg("--bootstrap")
            .arg(fx.join("bootstrap"))
            .arg("--blob-dir")
            .arg(fx.join("blobs"))
            .args(extra)
            .arg(&self.mp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning dfagent mount");
        self.children.push(child);
        n
    }

    fn pid(&self, n: usize) -> libc::pid_t {
        self.children[n].id() as libc::pid_t
    }

    /// Wait (bounded) until hello.txt reads correctly through the mount of child `n`.
    fn wait_serving(&mut self, n: usize) {
        let want = hello_sha256();
        let hello = self.mp.join("hello.txt");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(d) = std::fs::read(&hello) {
                assert_eq!(sha256_hex(&d), want, "hello.txt through the mount");
                return;
            }
            if let Some(st) = self.children[n].try_wait().unwrap() {
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.children[n].try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "dfagent mount still running {timeout:?} later: {}",
                self.log_text(n)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, n: usize, sig: libc::c_int) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(n), sig) }, 0);
    }

    /// Run `dfagent umount MP` to completion (bounded).
    fn umount(&self) -> std::process::Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .arg("umount")
            .arg(&self.mp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || child
                .try_wait()
                .unwrap()
                .is_some()),
            "dfagent umount did not finish within 10 s"
        );
        child.wait_with_output().unwrap()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.children {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let c = std::ffi::CString::new(self.mp.to_string_lossy().as_bytes()).unwrap();
        for _ in 0..8 {
            if mounts_at(&self.mp) == 0 {
                break;
            }
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
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
