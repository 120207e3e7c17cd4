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

/// Run a multi-node scenario (`swarm`, `dragonfly`) in quick mode with `nodes` nodes and one
/// round, which must succeed: its results directory, stdout and stderr.
fn run_cluster_scenario(scenario: &str, nodes: u64) -> (tempfile::TempDir, String, String) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the bench needs root (network namespaces, FUSE mounts)"
    );
    let nodes = nodes.to_string();
    run_quick(&[scenario, "--nodes", &nodes, "--quick", "--rounds", "1"])
}

/// `dfagent-bench ARGS... --results-dir TMP --dfagent DFAGENT` with no daemon to talk to, which
/// must succeed: its results directory, stdout and stderr.
fn run_quick(args: &[&str]) -> (tempfile::TempDir, String, String) {
    let results = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dfagent-bench"))
        .args(args)
        .arg("--results-dir")
        .arg(results.path())
        .arg("--dfagent")
        .arg(dfagent_binary())
        .env(
            "DFAGENT_SOCKET",
            results.path().join("no-daemon/dfagent.sock"),
        )
        .output()
        .expect("running dfagent-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (results, stdout, stderr)
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

/// `dfagent-bench swarm --quick` with 3 nodes and one round: the summary lines, and what the
/// JSON says of every cluster run (each node's check files matched the source tree inside the
/// scenario; here: every prefetch finished, the bytes add up). Alone, every node fetches its own
/// copy of the data blobs; with peers, the sequential nodes after the first take data from
/// peers and the registry sends less. No timing is asserted. Run alone with
/// `cargo test -p dfagent-bench --test quick swarm`.
#[test]
fn swarm_quick_reports_egress_and_start() {
    let nodes = 3u64;
    let (results, stdout, stderr) = run_cluster_scenario("swarm", nodes);
    let lines: Vec<_> = stdout.lines().filter_map(parse_summary_line).collect();
    assert_eq!(lines.len(), stdout.lines().count(), "stdout:\n{stdout}");
    let line = |name: &str| {
        lines.iter().find(|l| l.name == name).unwrap_or_else(|| {
            panic!("no summary line for {name}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        })
    };
    for name in ["swarm-start", "swarm-start-sequential"] {
        let l = line(name);
        assert!(l.dfagent > 0.0 && l.baseline > 0.0, "{l:?}");
    }
    for name in ["swarm-egress-sequential", "swarm-egress-concurrent"] {
        let l = line(name);
        assert_eq!(l.unit, "x");
        // Alone, each node fetched the data blobs once: about `nodes` times the unique bytes.
        assert!(
            (l.baseline - nodes as f64).abs() <= 0.05 * nodes as f64,
            "{name}: {l:?}"
        );
        assert!(l.dfagent > 0.0 && l.dfagent <= l.baseline, "{name}: {l:?}");
    }
    assert!(
        line("swarm-egress-sequential").dfagent < line("swarm-egress-sequential").baseline,
        "with peers the registry sent less in sequential mode:\n{stdout}"
    );

    let dir = results.path();
    let md = std::fs::read_to_string(dir.join("swarm.md")).unwrap();
    assert!(md.contains("| median |"), "swarm.md has no medians row");
    for png in ["swarm.png", "swarm-nodes.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is not a PNG");
    }
    let j = json(dir, "swarm");
    assert_eq!(j["nodes"], nodes);
    let rounds = j["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1);
    for mode in ["sequential", "concurrent"] {
        let m = &rounds[0][mode];
        let unique = m["unique_stored_bytes"].as_u64().unwrap();
        assert!(unique > 0, "{m}");
        for side in ["dfagent", "baseline"] {
            let run = &m[side];
            let ns = run["nodes"].as_array().unwrap();
            assert_eq!(ns.len() as u64, nodes, "{run}");
            let mut sum = 0;
            for n in ns {
                assert_eq!(n["settle_timed_out"], false, "{mode} {side}: {n}");
                assert!(n["chunks_total"].as_u64().unwrap() > 0, "{n}");
                let tiers = n["tiers"].as_object().unwrap();
                let tier = |t: &str| tiers.get(t).and_then(|v| v.as_u64()).unwrap_or(0);
                if side == "baseline" {
                    assert_eq!(tier("peer"), 0, "no peer bytes without peers: {n}");
                    // Alone, the proxy's count of a node's data bytes is what it fetched.
                    assert_eq!(
                        n["registry_data_bytes"].as_u64(),
                        Some(tier("registry")),
                        "{n}"
                    );
                }
                sum += n["registry_data_bytes"].as_u64().unwrap();
            }
            assert_eq!(run["registry_data_bytes"].as_u64(), Some(sum), "{run}");
        }
        if mode == "sequential" {
            // Nodes after the first took data from peers.
            for n in &m["dfagent"]["nodes"].as_array().unwrap()[1..] {
                assert!(n["tiers"]["peer"].as_u64().unwrap_or(0) > 0, "{n}");
            }
        }
    }
}

/// The tests that run real dfdaemon processes: `scripts/test.sh` runs them after the rest of
/// the suite (`--skip with_dfdaemon::`), once the dfdaemon install that a fresh machine starts
/// in the background has finished.
mod with_dfdaemon {
    use super::*;

    /// `dfagent-bench dragonfly --quick` with 2 nodes and one round: the three summary lines, and
    /// what the JSON says of each mode's cluster run (every node settled and its bytes add up;
    /// direct nodes took nothing from Dragonfly, seeded nodes did). With a seed the registry sent
    /// less than with every node alone. No timing is asserted. Run alone with
    /// `cargo test -p dfagent-bench --test quick with_dfdaemon`.
    #[test]
    fn dragonfly_quick_reports_egress_and_start() {
        let nodes = 2u64;
        let (results, stdout, stderr) = run_cluster_scenario("dragonfly", nodes);
        let lines: Vec<_> = stdout.lines().filter_map(parse_summary_line).collect();
        assert_eq!(lines.len(), stdout.lines().count(), "stdout:\n{stdout}");
        assert_eq!(lines.len(), 3, "stdout:\n{stdout}");
        let line = |name: &str| {
            lines.iter().find(|l| l.name == name).unwrap_or_else(|| {
                panic!("no summary line for {name}\nstdout:\n{stdout}\nstderr:\n{stderr}")
            })
        };
        for name in ["dragonfly-start", "dragonfly-start-preheated"] {
            let l = line(name);
            assert_eq!(l.unit, "s");
            assert!(l.dfagent > 0.0 && l.baseline > 0.0, "{l:?}");
        }
        let e = line("dragonfly-egress");
        assert_eq!(e.unit, "MB");
        assert!(e.baseline > 0.0, "{e:?}");
        assert!(
            e.ratio < 1.0 && e.dfagent < e.baseline,
            "with a seed the registry sent less than to every node alone: {e:?}\nstderr:\n{stderr}"
        );

        let dir = results.path();
        let md = std::fs::read_to_string(dir.join("dragonfly.md")).unwrap();
        assert!(md.contains("| median |"), "dragonfly.md has no medians row");
        assert!(
            md.contains("TestScheduler"),
            "dragonfly.md names the scheduler"
        );
        for png in ["dragonfly.png", "dragonfly-nodes.png"] {
            let bytes = std::fs::read(dir.join(png)).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is not a PNG");
        }
        let j = json(dir, "dragonfly");
        assert_eq!(j["nodes"], nodes);
        assert_eq!(j["dfdaemon_version"], "1.5.10");
        let rounds = j["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 1);
        for mode in ["direct", "seed", "preheated"] {
            let run = &rounds[0][mode];
            let ns = run["nodes"].as_array().unwrap();
            assert_eq!(ns.len() as u64, nodes, "{run}");
            let mut sum = 0;
            for n in ns {
                assert_eq!(n["settle_timed_out"], false, "{mode}: {n}");
                assert!(n["chunks_total"].as_u64().unwrap() > 0, "{n}");
                let tiers = n["tiers"].as_object().unwrap();
                let tier = |t: &str| tiers.get(t).and_then(|v| v.as_u64()).unwrap_or(0);
                assert_eq!(tier("peer"), 0, "the peer network is off: {mode}: {n}");
                if mode == "direct" {
                    assert_eq!(tier("dragonfly"), 0, "{n}");
                    assert_eq!(
                        n["registry_data_bytes"].as_u64(),
                        Some(tier("registry")),
                        "{n}"
                    );
                } else {
                    assert!(tier("dragonfly") > 0, "{mode}: {n}");
                }
                sum += n["registry_data_bytes"].as_u64().unwrap();
            }
            sum += run["seed_registry_data_bytes"].as_u64().unwrap();
            assert_eq!(run["registry_data_bytes"].as_u64(), Some(sum), "{run}");
        }
        assert_eq!(rounds[0]["direct"]["seed_registry_data_bytes"], 0);
        assert!(
            rounds[0]["preheated"]["preheat_registry_data_bytes"]
                .as_u64()
                .unwrap()
                > 0,
            "the preheat fetched the image's data through the seed"
        );
    }
}

/// `dfagent-bench containerd --quick` (one round, a tiny image of the host's dash): the two
/// summary lines, the results files, and what the JSON says of the round — both containers
/// printed 42, dfagent's ran on an image mount of its daemon, the baseline fetched at least
/// the OCI image's layers and dfagent something. No timing is asserted. Needs root,
/// containerd, ctr, runc, skopeo and umoci (`scripts/setup.sh`); without them it fails. Run alone
/// with `cargo test -p dfagent-bench --test quick
/// containerd`.
#[test]
fn containerd_quick_reports_start_and_egress() {
    dfagent_test_support::containerd::prerequisites(
        "the containerd scenario",
        &["skopeo", "umoci"],
        false,
    );
    let (results, stdout, stderr) = run_quick(&["containerd", "--quick"]);
    let lines: Vec<_> = stdout.lines().filter_map(parse_summary_line).collect();
    assert_eq!(lines.len(), 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = |name: &str| {
        lines
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no summary line for {name}\nstdout:\n{stdout}"))
    };
    let s = line("containerd-start");
    assert_eq!(s.unit, "s");
    assert!(s.dfagent > 0.0 && s.baseline > 0.0, "{s:?}");
    let e = line("containerd-egress");
    assert_eq!(e.unit, "MB");
    assert!(e.dfagent > 0.0 && e.baseline > 0.0, "{e:?}");

    let dir = results.path();
    let md = std::fs::read_to_string(dir.join("containerd.md")).unwrap();
    assert!(
        md.contains("| median |"),
        "containerd.md has no medians row"
    );
    let png = std::fs::read(dir.join("containerd.png")).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "containerd.png is not a PNG"
    );
    let j = json(dir, "containerd");
    let layer = j["oci_layer_bytes"].as_u64().unwrap();
    assert!(layer > 0, "{j}");
    let rounds = j["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1, "quick mode runs one round");
    for r in rounds {
        assert_eq!(r["dfagent_output"], "42", "{r}");
        assert_eq!(r["baseline_output"], "42", "{r}");
        assert!(r["dfagent_image_mounts"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["baseline_bytes"].as_u64().unwrap() >= layer, "{r}");
        assert!(r["dfagent_bytes"].as_u64().unwrap() > 0, "{r}");
        // The output came before (or as) ctr exited, on both sides.
        for side in ["dfagent", "baseline"] {
            let at = r[format!("{side}_s")].as_f64().unwrap();
            let exit = r[format!("{side}_exit_s")].as_f64().unwrap();
            let pull = r[format!("{side}_pull_s")].as_f64().unwrap();
            assert!(pull <= at && at <= exit, "{side}: {r}");
        }
    }
}
