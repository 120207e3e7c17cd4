//! `dfagent push`, `mount IMAGE`, `pull` and an offline mount against a real `docker-registry`
//! on 127.0.0.1, through the binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shared() -> PathBuf {
    std::env::var_os("DFAGENT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures/rafs").join(name)
}

/// A docker-registry process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
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

fn dfagent(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfagent"))
        .args(args)
        .env("DFAGENT_STORE", store)
        .output()
        .unwrap()
}

/// `dfagent push` of the local image `img` to `reference`, which must succeed.
fn push(img: &Path, reference: &str, store: &Path) {
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `dfagent mount` child, unmounted and reaped on drop.
struct Mount {
    child: Child,
    mp: PathBuf,
}

impl Mount {
    fn start(reference: &str, mp: &Path, store: &Path, prefetch: &str) -> Mount {
        let child = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .args(["mount", reference])
            .arg(mp)
            .args(["--prefetch", prefetch])
            .env("DFAGENT_STORE", store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Mount {
            child,
            mp: mp.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mp.join("hello.txt").exists() {
            assert!(
                Instant::now() < deadline,
                "mount of {reference} did not appear"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn stop(mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_dfagent"))
            .arg("umount")
            .arg(&self.mp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
fn listing(dir: &Path) -> Vec<String> {
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

fn expected(name: &str) -> Vec<String> {
    std::fs::read_to_string(shared().join("fixtures/rafs").join(name))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn stat_json(store: &Path) -> serde_json::Value {
    let out = dfagent(&["cache", "stat", "--json"], store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn push_mount_pull_and_offline_mount() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let reference = format!("127.0.0.1:{}/test/chunkdict:v1", reg.port);
    let img = fixture("v6-chunkdict");
    push(&img, &reference, &store);

    // A lazy mount from the registry shows exactly the image.
    let m = Mount::start(&reference, &mp, &store, "none");
    assert_eq!(listing(&mp), expected("texture2.expected.jsonl"));
    m.stop();

    // Pull fills the store; then the registry goes away and a new mount still reads everything.
    let out = dfagent(&["pull", &reference], &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = stat_json(&store);
    let chunks = st["chunks"].as_u64().unwrap();
    assert_eq!(st["pinned_chunks"].as_u64().unwrap(), chunks);
    drop(reg);
    let m = Mount::start(&reference, &mp, &store, "none");
    assert_eq!(listing(&mp), expected("texture2.expected.jsonl"));
    m.stop();
    let out = dfagent(&["cache", "verify"], &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn chunks_shared_by_two_images_are_fetched_and_stored_once() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mut refs = Vec::new();
    for name in ["v6-chunkdict", "v6-zstd-blake3"] {
        let img = fixture(name);
        let r = format!("127.0.0.1:{}/test/{name}:v1", reg.port);
        push(&img, &r, &store);
        refs.push(r);
    }
    let out = dfagent(&["pull", &refs[0]], &store);
    assert!(out.status.success());
    let after_first = stat_json(&store)["chunks"].as_u64().unwrap();
    // v6-chunkdict was built with v6-zstd-blake3 as its chunk dictionary: pulling the second
    // image must fetch and store only the chunks the first lacks.
    let chunks = |name: &str| {
        dfagent_rafs::Image::open(fixture(name).join("bootstrap"))
            .unwrap()
            .all_chunks()
            .unwrap()
    };
    let have: std::collections::HashSet<_> =
        chunks("v6-chunkdict").iter().map(|c| c.digest).collect();
    let new: Vec<_> = chunks("v6-zstd-blake3")
        .into_iter()
        .filter(|c| !have.contains(&c.digest))
        .collect();
    assert!(new.len() < 10, "the fixtures share almost every chunk");
    let new_bytes: u64 = new.iter().map(|c| u64::from(c.compressed_size)).sum();
    let out = dfagent(&["pull", &refs[1]], &store);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(" {new_bytes} bytes from the registry")),
        "expected {new_bytes} bytes from the registry: {stderr}"
    );
    assert_eq!(
        stat_json(&store)["chunks"].as_u64().unwrap(),
        after_first + new.len() as u64
    );
}
