//! The shared folder beside the clone: the upstream-built RAFS fixture images, their expected
//! listings (`*.expected.jsonl`) and the tools that make and list trees (`make-texture.py`,
//! `list-tree.py`). One place decides where it is: `$DFAGENT_SHARED`, else `../shared` beside
//! the clone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::Digest as _;

use crate::process::run_bounded;

/// The environment variable naming the shared folder.
pub const SHARED_ENV: &str = "DFAGENT_SHARED";

/// The three fixture images built from texture tree 1 (one listing, three encodings).
pub const TEXTURE_IMAGES: [&str; 3] = ["v6-zstd-blake3", "v6-lz4-sha256", "v6-none-64k"];

/// Every fixture image.
pub const ALL_IMAGES: [&str; 5] = [
    "v6-zstd-blake3",
    "v6-lz4-sha256",
    "v6-none-64k",
    "v6-chunkdict",
    "v6-nydusify-2layer",
];

/// How long a tool of the shared folder may run (a listing of a mount reads every file).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared folder: `$DFAGENT_SHARED`, else `../shared` beside the clone (this crate lives in
/// `<clone>/crates/test-support`).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_ENV) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// `fixtures/rafs` of the shared folder; fails with a hint when it is not there.
pub fn fixtures_dir() -> PathBuf {
    let dir = shared_dir().join("fixtures/rafs");
    assert!(
        dir.is_dir(),
        "fixtures not found at {}; set {SHARED_ENV} to the shared folder",
        dir.display()
    );
    dir
}

/// Folder of fixture image `name` (holding `bootstrap` and `blobs/`).
pub fn fixture(name: &str) -> PathBuf {
    let d = fixtures_dir().join(name);
    assert!(
        d.join("bootstrap").is_file(),
        "fixture {} not found (set {SHARED_ENV} to the shared folder)",
        d.display()
    );
    d
}

/// The file name of fixture image `image`'s expected listing.
pub fn listing_of(image: &str) -> &'static str {
    match image {
        "v6-zstd-blake3" | "v6-lz4-sha256" | "v6-none-64k" => "texture.expected.jsonl",
        "v6-chunkdict" => "texture2.expected.jsonl",
        "v6-nydusify-2layer" => "v6-nydusify-2layer.expected.jsonl",
        other => panic!("{other} is not a fixture image"),
    }
}

/// Every line of the listing file `listing` (such as `texture.expected.jsonl`), root included.
pub fn listing_lines(listing: &str) -> Vec<String> {
    let p = fixtures_dir().join(listing);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The listing file `listing` without its root line (whose mtime is not meaningful), to compare
/// with [`list_tree_without_root`].
pub fn listing_without_root(listing: &str) -> Vec<String> {
    listing_lines(listing).into_iter().skip(1).collect()
}

/// Every line of fixture image `image`'s expected listing, root included.
pub fn expected_lines(image: &str) -> Vec<String> {
    listing_lines(listing_of(image))
}

/// A regular file of an expected listing.
#[derive(Clone, Debug)]
pub struct ExpectedFile {
    /// Path relative to the root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of its bytes, in hex.
    pub sha256: String,
}

/// Regular files of fixture image `image`'s expected listing, in listing order.
pub fn expected_files(image: &str) -> Vec<ExpectedFile> {
    files_of(&expected_lines(image))
}

/// Regular files of the listing file `listing`, in listing order.
pub fn listing_files(listing: &str) -> Vec<ExpectedFile> {
    files_of(&listing_lines(listing))
}

fn files_of(lines: &[String]) -> Vec<ExpectedFile> {
    lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("listing line is JSON"))
        .filter(|v| v["type"] == "file")
        .map(|v| ExpectedFile {
            path: v["path"].as_str().unwrap().to_owned(),
            size: v["size"].as_u64().unwrap(),
            sha256: v["sha256"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The expected regular file at `path` of fixture image `image`.
pub fn expected_file(image: &str, path: &str) -> ExpectedFile {
    expected_files(image)
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not a file of {image}'s listing"))
}

/// A listing line as JSON without its `mtime` (for the root, whose mtime is not meaningful).
pub fn without_mtime(line: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("listing line is not JSON ({e}): {line}"));
    v.as_object_mut()
        .expect("listing line is an object")
        .remove("mtime");
    v
}

/// sha256 of `data`, in hex (the form of the listings).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// `tools/list-tree.py DIR`: every line of the listing of `dir`, root included (bounded; fails
/// with the tool's stderr).
pub fn list_tree(dir: &Path) -> Vec<String> {
    let tool = shared_dir().join("tools/list-tree.py");
    let out = run_bounded(
        Command::new("python3")
            .arg(&tool)
            .arg(dir)
            .env("PYTHONIOENCODING", "utf-8"),
        TOOL_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "list-tree.py {} failed ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("listing is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The listing of `dir` without the root line (its mtime is not meaningful), to compare with
/// [`listing_without_root`].
pub fn list_tree_without_root(dir: &Path) -> Vec<String> {
    list_tree(dir).into_iter().skip(1).collect()
}

/// `tools/make-texture.py DIR SEED`: the texture tree `seed` at `dir` (needs root for owners
/// and device files; bounded; fails with the tool's stderr).
pub fn make_texture(dir: &Path, seed: u32) {
    let out = run_bounded(
        Command::new("python3")
            .arg(shared_dir().join("tools/make-texture.py"))
            .arg(dir)
            .arg(seed.to_string()),
        TOOL_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "make-texture.py {} {seed} failed ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
