//! Runs `dfagent-bench all --quick` (every scenario on the fixture tree, real registry, proxy
//! and FUSE mounts; needs root) and checks what it reports: one well-formed summary line per
//! quantity, results files, byte counts and checksum agreement, and the daemon scenarios' mount
//! and file counts. No timing is asserted.
//!
//! The dfagent binary is the one beside dfagent-bench in the target dir; if it is missing
//! (e.g. `cargo test --workspace --test quick` built only this package's targets), the test
//! builds it with `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::Command;

use dfagent_bench::report::parse_summary_line;

fn dfagent_binary() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_dfagent-bench"));
    let dfagent = bench.with_file_name("dfagent");
    if !dfagent.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if bench.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build");
        assert!(st.success(), "cargo build --workspace --bins failed");
    }
    assert!(dfagent.is_file(), "no dfagent at {}", dfagent.display());
    dfagent
}

fn json(dir: &Path, name: &str) -> serde_json::Value {
    let p = dir.join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn quick_mode_reports_every_scenario() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the bench needs root (FUSE mounts, chroot, drop_caches)"
    );
    let dfagent = dfagent_binary();
    let results = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dfagent-bench"))
        .args(["all", "--quick", "--rounds", "2", "--results-dir"])
        .arg(results.path())
        .arg("--dfagent")
        .arg(&dfagent)
        // Its dfagent commands never reach a daemon running on this machine.
        .env(
            "DFAGENT_SOCKET",
            results.path().join("no-daemon/dfagent.sock"),
        )
        .output()
        .expect("running dfagent-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "cold-start",
        "cold-start-warm",
        "seq-read",
        "rand-read",
        "metadata",
        "ttfb",
        "cold-read",
        "store-put",
        "store-get",
        "store-get-under-put",
        "mount-latency",
        "mount-latency-16",
        "daemon-memory",
        "build",
    ];
    let lines: Vec<_> = stdout.lines().filter_map(parse_summary_line).collect();
    for name in &expected {
        let l = lines.iter().find(|l| l.name == *name).unwrap_or_else(|| {
            panic!("no summary line for {name}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
        assert!(l.dfagent > 0.0 && l.dfagent.is_finite(), "{name}: {l:?}");
        assert!(l.baseline > 0.0 && l.baseline.is_finite(), "{name}: {l:?}");
        // The ratio is dfagent / baseline of the printed medians (up to their rounding).
        let r = l.dfagent / l.baseline;
        assert!(
            (l.ratio - r).abs() <= 0.02 * r.max(1.0) + 0.01,
            "{name}: ratio {} vs {r}",
            l.ratio
        );
    }
    // Every stdout line is a summary line: a failed scenario (`NAME: FAILED: ...`) fails the
    // test, and so does a non-zero exit.
    for line in stdout.lines() {
        assert!(
            parse_summary_line(line).is_some(),
            "unexpected output line {line:?}\nstderr:\n{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "exit status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    let dir = results.path();
    for file in [
        "cold-start",
        "cold-start-warm",
        "seq-read",
        "rand-read",
        "metadata",
        "ttfb",
        "store",
        "mount-latency",
        "daemon-memory",
        "build",
    ] {
        let md = std::fs::read_to_string(dir.join(format!("{file}.md"))).unwrap();
        assert!(md.contains("| median |"), "{file}.md has no medians row");
        let png = std::fs::read(dir.join(format!("{file}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{file}.png is not a PNG");
    }
    assert!(std::fs::read_to_string(dir.join("summary.md"))
        .unwrap()
        .contains("cold-start: dfagent "));
    // The mounted Nydus image is the one `dfagent build` made, not the fixture the bench falls
    // back to when it finds no build command.
    let cold_md = std::fs::read_to_string(dir.join("cold-start.md")).unwrap();
    assert!(
        cold_md.contains("built by `dfagent build` from the OCI image"),
        "cold-start.md does not say the image was built by dfagent build:\n{cold_md}"
    );

    // Cold start: the baseline fetched at least its whole layer through the proxy, dfagent
    // something, and both sides' files agreed.
    let cs = json(dir, "cold-start");
    let layer = cs["layer_bytes"].as_u64().unwrap();
    assert!(layer > 0);
    let rounds = cs["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        assert!(r["baseline_bytes"].as_u64().unwrap() >= layer, "{r}");
        assert!(r["dfagent_bytes"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["checksums_match"], true);
        assert_eq!(r["output_match"], true);
    }
    // ttfb: both sides produced the same file bytes; the baseline moved at least the stored
    // ranges, dfagent at least one chunk's worth.
    let t = json(dir, "ttfb");
    let stored = t["stored_bytes"].as_u64().unwrap();
    for r in t["rounds"].as_array().unwrap() {
        assert_eq!(r["sha256_match"], true);
        assert!(r["baseline_bytes"].as_u64().unwrap() >= stored, "{r}");
        assert!(r["dfagent_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(json(dir, "metadata")["attr_differences"], 0);
    let b = json(dir, "build");
    let plain = b["second_image_plain_bytes"].as_u64().unwrap();
    let with_dict = b["second_image_new_bytes_with_dict"].as_u64().unwrap();
    // The second image shares the first's tree: the dictionary must save bytes.
    assert!(with_dict < plain, "dict {with_dict} vs plain {plain}");

    // The daemon's scenarios: 16 mounts through one daemon in every round, each readable and
    // each client returned; in the memory scenario every mount served the whole tree.
    let ml = json(dir, "mount-latency");
    assert_eq!(ml["mounts"], 16);
    let rounds = ml["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        assert_eq!(r["mounts"], 16, "{r}");
        assert_eq!(r["clients_exited"], 16, "{r}");
        assert_eq!(r["sixteen_ready_ms"].as_array().unwrap().len(), 16, "{r}");
    }
    let dm = json(dir, "daemon-memory");
    assert_eq!(dm["mounts"], 16);
    let (files, bytes) = (
        dm["tree_files"].as_u64().unwrap(),
        dm["tree_bytes"].as_u64().unwrap(),
    );
    assert!(files > 0 && bytes > 0, "{dm}");
    let rounds = dm["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        assert_eq!(r["mounts_serving"], 16, "{r}");
        let per_mount = r["per_mount"].as_array().unwrap();
        assert_eq!(per_mount.len(), 16, "{r}");
        for m in per_mount {
            assert_eq!(m["files"].as_u64(), Some(files), "{m}");
            assert_eq!(m["bytes"].as_u64(), Some(bytes), "{m}");
        }
        assert_eq!(r["read_bytes"].as_u64(), Some(16 * bytes), "{r}");
        // Both from one reading of /proc/PID/status: the peak is at least the current RSS.
        assert!(
            r["vmhwm_kib"].as_u64().unwrap() >= r["vmrss_kib"].as_u64().unwrap(),
            "{r}"
        );
    }
}
