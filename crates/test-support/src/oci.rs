//! OCI images made by hand for tests: a layer tar of a directory as GNU tar writes it, layers
//! compressed by the system's gzip/zstd, and an OCI image layout holding one image — the inputs
//! of `dfagent build`.

use std::path::Path;
use std::process::Command;

use crate::fixtures::sha256_hex;
use crate::process::succeeded;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// A layer tar of `dir` the way GNU tar writes it with xattrs (PAX, binary values included).
pub fn gnu_tar(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
        ])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    succeeded(out).stdout
}

/// `data` through a compressor command (`gzip -n -c`, `zstd -q -c`) reading stdin.
pub fn pipe_through(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    pipe_through("gzip", &["-n", "-c"], data)
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    pipe_through("zstd", &["-q", "-c"], data)
}

/// An OCI image layout at `dir` holding one image tagged `tag` with `layers` (tar, or tar.gz
/// when `gz`).
pub fn oci_layout(dir: &Path, tag: &str, layers: &[Vec<u8>], gz: bool) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(blobs.join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(sha256(l));
        let (d, s) = if gz { put(&gzip(l)) } else { put(l) };
        descs.push(serde_json::json!({
            "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": d, "size": s}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Env": ["A=1"]},
        "history": [{"created_by": "test"}],
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .unwrap();
    let (cd, cs) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs}))
    .unwrap();
    let (md, ms) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap(),
    )
    .unwrap();
}

/// An archive for `ctr image import`: an OCI image layout (one gzip layer of `rootfs`, a
/// config with its diff_id, `index.json`, `oci-layout`) built in `work/layout` and tarred to
/// `work/image.tar`; that path. `name` is the `org.opencontainers.image.ref.name` annotation:
/// a full reference (`dfagent.test/py:1`), which `ctr image import` keeps as the image's name.
pub fn import_archive(rootfs: &Path, name: &str, work: &Path) -> std::path::PathBuf {
    let layout = work.join("layout");
    oci_layout(&layout, name, &[gnu_tar(rootfs)], true);
    let archive = work.join("image.tar");
    let out = Command::new("tar")
        .args(["--format=pax", "--numeric-owner", "-C"])
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .output()
        .unwrap();
    succeeded(out);
    archive
}
