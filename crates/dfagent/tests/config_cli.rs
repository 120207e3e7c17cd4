//! One configuration, through the binary: defaults < file < DFAGENT_<SECTION>__<KEY> < flags,
//! errors that name the key and where it came from, the project's other DFAGENT_* variables
//! left alone, secrets never printed, and the systemd unit checked by systemd-analyze.

use std::path::Path;
use std::process::{Command, Output};

fn dfagent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfagent"));
    cmd.args(args);
    // Only what each case sets: no configuration from the calling environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("DFAGENT_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn capacity_of(store: &Path, args: &[&str], env: &[(&str, &str)]) -> u64 {
    let mut a = vec!["--no-daemon", "cache"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["stat", "--json"]);
    let mut e = env.to_vec();
    let s = store.to_str().unwrap();
    e.push(("DFAGENT_STORE", s));
    let out = stdout(&dfagent(&a, &e));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["capacity"].as_u64().unwrap()
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[store]\ncapacity = \"1G\"\n").unwrap();
    let f = file.to_str().unwrap();
    let store = dir.path().join("store");
    const G: u64 = 1 << 30;
    // Defaults.
    assert_eq!(capacity_of(&store, &[], &[]), 10 * G);
    // The file.
    assert_eq!(capacity_of(&store, &["--config", f], &[]), G);
    // The environment over the file.
    let env = [("DFAGENT_STORE__CAPACITY", "2G")];
    assert_eq!(capacity_of(&store, &["--config", f], &env), 2 * G);
    // A flag over both.
    assert_eq!(
        capacity_of(&store, &["--config", f, "--cache-capacity", "3G"], &env),
        3 * G
    );
    // `dfagent config` prints the same effective value.
    let out = stdout(&dfagent(&["config", "--config", f], &env));
    assert!(out.contains("capacity = \"2G\""), "{out}");
    // DFAGENT_CONFIG names the file too.
    let out = stdout(&dfagent(&["config"], &[("DFAGENT_CONFIG", f)]));
    assert!(out.contains("capacity = \"1G\""), "{out}");
}

#[test]
fn bad_keys_and_values_name_the_key_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[store]\ncapcity = 1\n").unwrap();
    let f = file.to_str().unwrap();
    let err = stderr(&dfagent(&["config", "--config", f], &[]));
    assert!(
        err.contains(f) && err.contains("store.capcity") && err.contains("unknown key"),
        "{err}"
    );
    let err = stderr(&dfagent(
        &["config"],
        &[("DFAGENT_STORE__CAPACITY", "lots")],
    ));
    assert!(
        err.contains("DFAGENT_STORE__CAPACITY") && err.contains("store.capacity"),
        "{err}"
    );
    let err = stderr(&dfagent(&["config", "--cache-capacity", "lots"], &[]));
    assert!(err.contains("--cache-capacity"), "{err}");
    // A given file that does not exist is an error, naming it.
    let missing = dir.path().join("nope.toml");
    let err = stderr(&dfagent(
        &["config", "--config", missing.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn the_projects_other_variables_are_not_configuration() {
    // Variables the scripts and tests use, whose names look like configuration but are not.
    let env = [
        ("DFAGENT_SHARED", "/nonexistent/shared"),
        ("DFAGENT_CACHE", "/nonexistent/cache"),
        ("DFAGENT_RELEASE", "1"),
        ("DFAGENT_SKIP_BUILD", "1"),
        ("DFAGENT_BIN", "/bin/false"),
    ];
    let out = stdout(&dfagent(&["config"], &env));
    assert!(out.contains("[store]"), "{out}");
    assert!(!out.contains("nonexistent"), "{out}");
}

#[test]
fn secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[registry.hosts.\"reg.example:5000\"]\nusername = \"bob\"\npassword = \"hunter2-secret\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = stdout(&dfagent(&["config", "--config", f], &[]));
    assert!(!out.contains("hunter2-secret"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    // Nor in an error about the same entry.
    std::fs::write(
        &file,
        "[registry.hosts.\"reg.example:5000\"]\nusername = \"bob\"\npassword = \"hunter2-secret\"\nbogus = 1\n",
    )
    .unwrap();
    let err = stderr(&dfagent(&["config", "--config", f], &[]));
    assert!(!err.contains("hunter2-secret"), "{err}");
}

#[test]
fn the_default_file_documents_and_reproduces_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.toml");
    let text = stdout(&dfagent(&["config", "--default"], &[]));
    std::fs::write(&file, &text).unwrap();
    let from_file = stdout(&dfagent(
        &["config", "--config", file.to_str().unwrap()],
        &[],
    ));
    let defaults = stdout(&dfagent(&["config"], &[]));
    assert_eq!(from_file, defaults);
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    };
    assert!(probe.status.success());
    // The unit names /usr/local/bin/dfagent; check a copy that names this build's binary.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/dfagent.service"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("dfagent.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/dfagent", env!("CARGO_BIN_EXE_dfagent")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
