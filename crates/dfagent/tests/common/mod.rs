//! Scaffolding of the registry tests: a real `docker-registry` on 127.0.0.1, the `dfagent`
//! binary, lazy mounts that clean up after themselves, listings, and an HTTP proxy that
//! records (and can corrupt) what dfagent asks the registry for.
#![allow(dead_code)]

pub mod proxy;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The shared folder (fixtures, tools): `DFAGENT_SHARED`, or `../shared` beside the clone.
pub fn shared() -> PathBuf {
    std::env::var_os("DFAGENT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

pub fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures/rafs").join(name)
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How many mounts /proc/self/mountinfo lists at `path`.
pub fn mounts_at(path: &Path) -> usize {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| unescape(mp) == target)
        .count()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `out` after checking that its command succeeded (else fail with its stderr).
pub fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "command failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A docker-registry process on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return r;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not come up on port {port}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dfagent(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfagent"))
        .args(args)
        .env("DFAGENT_STORE", store)
        .output()
        .unwrap()
}

/// `dfagent push` of the local image `img` to `reference`, which must succeed.
pub fn push(img: &Path, reference: &str, store: &Path) {
    let out = dfagent(
        &[
            "push",
            "--bootstrap",
            img.join("bootstrap").to_str().unwrap(),
            "--blob-dir",
            img.join("blobs").to_str().unwrap(),
            reference,
        ],
        store,
    );
    succeeded(out);
}

/// A `dfagent mount` child, unmounted and reaped on drop.
pub struct Mount {
    child: Child,
    mp: PathBuf,
}

impl Mount {
    /// `dfagent mount REFERENCE MP --prefetch PREFETCH`, waiting until `hello.txt` shows.
    pub fn start(reference: &str, mp: &Path, store: &Path, prefetch: &str) -> Mount {
        Self::start_with(reference, mp, store, &["--prefetch", prefetch])
    }

    /// `dfagent -v mount REFERENCE MP ARGS...`; its stderr goes to [`Mount::log`].
    pub fn start_with(reference: &str, mp: &Path, store: &Path, args: &[&str]) -> Mount {
        let log = std::fs::File::create(mp.with_extension("log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .args(["-v", "mount", reference])
            .arg(mp)
            .args(args)
            .env("DFAGENT_STORE", store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mp.join("hello.txt").exists() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "dfagent mount {reference} exited with {st}: {}",
                    std::fs::read_to_string(mp.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mount of {reference} did not appear"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Mount {
            child,
            mp: mp.to_path_buf(),
        }
    }

    /// What the mount process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.mp.with_extension("log")).unwrap_or_default()
    }

    /// `dfagent umount`, then wait for the mount process to exit successfully.
    pub fn stop(mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .arg("umount")
            .arg(&self.mp)
            .output()
            .unwrap();
        succeeded(out);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "dfagent mount exited with {st}");
                break;
            }
            assert!(Instant::now() < deadline, "dfagent mount did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new(env!("CARGO_BIN_EXE_dfagent"))
                .args(["umount", "--lazy"])
                .arg(&self.mp)
                .output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The listing of `dir` without the root line (its mtime is not meaningful).
pub fn listing(dir: &Path) -> Vec<String> {
    let out = Command::new("python3")
        .arg(shared().join("tools/list-tree.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

pub fn expected(name: &str) -> Vec<String> {
    std::fs::read_to_string(shared().join("fixtures/rafs").join(name))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// `dfagent cache verify` of `store` finds every chunk intact (its report on failure).
pub fn assert_store_verifies(store: &Path) {
    let out = dfagent(&["cache", "verify"], store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub fn stat_json(store: &Path) -> serde_json::Value {
    let out = succeeded(dfagent(&["cache", "stat", "--json"], store));
    serde_json::from_slice(&out.stdout).unwrap()
}
