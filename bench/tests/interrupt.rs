//! SIGINT in the middle of a scenario, while a dfagent mount is live, tears everything down:
//! the harness exits 130, and no mount, process or scratch file it made is left. Needs root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dfagent_test_support::mountinfo::mounts_under;

/// Processes whose command line mentions `dir` (the registry's config, mounts, stores).
fn processes_using(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(dir) {
                out.push(format!("{}: {cmd}", name.to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn sigint_during_a_mount_leaves_nothing_behind() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the bench needs root");
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_dfagent-bench"));
    let dfagent = bench.with_file_name("dfagent");
    assert!(
        dfagent.is_file(),
        "no dfagent beside {} (cargo build --workspace)",
        bench.display()
    );
    let results = tempfile::tempdir().unwrap();
    // seq-read mounts and unmounts once per round; many rounds keep a mount around.
    let mut child = Command::new(&bench)
        .args(["seq-read", "--quick", "--rounds", "50", "--results-dir"])
        .arg(results.path())
        .arg("--dfagent")
        .arg(&dfagent)
        // Its dfagent commands never reach a daemon running on this machine.
        .env(
            "DFAGENT_SOCKET",
            results.path().join("no-daemon/dfagent.sock"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut work = None;
    let mut seen = Vec::new();
    while work.is_none() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(w) = l.split("work dir ").nth(1) {
                work = Some(w.trim().to_owned());
            }
            seen.push(l);
        }
    }
    let work = work.unwrap_or_else(|| panic!("no work dir announced: {seen:?}"));
    // Wait for a live FUSE mount under the work dir.
    while mounts_under(Path::new(&work)) == 0 {
        assert!(Instant::now() < deadline, "no mount appeared under {work}");
        assert!(child.try_wait().unwrap().is_none(), "the bench ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the bench did not exit within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(
        mounts_under(Path::new(&work)),
        0,
        "a mount is left under {work}"
    );
    assert!(!std::path::Path::new(&work).exists(), "{work} is left");
    let procs = processes_using(&work);
    assert!(procs.is_empty(), "processes left: {procs:?}");
}
