//! The fault campaign's counting (`docs/reliability.md`): read files through a mount and
//! compare each one with its listing's sha256, tally what went wrong, and print the one line
//! per row that the table is made from:
//!
//! `fault-campaign: ROW injected=N wrong_bytes=W reads_failed=M data_lost=L reads=R`
//!
//! `wrong_bytes` counts every byte of a read that returned data whose sha256 differs from the
//! listing's (a read that returns wrong data is wrong as a whole; 0 exactly when every
//! returned byte was right). Also a proxy policy for storms a client must ride out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::fixtures::{sha256_hex, ExpectedFile};
use crate::proxy::{Action, Request};

/// What a pass of reads saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Files read.
    pub reads: u64,
    /// Reads that failed (an error from the file system).
    pub failed: u64,
    /// Bytes returned by reads whose contents were wrong (must be 0).
    pub wrong_bytes: u64,
    /// Bytes returned correctly.
    pub ok_bytes: u64,
    /// `(path, errno)` of each failed read.
    pub errors: Vec<(String, Option<i32>)>,
    /// Paths of reads that returned wrong bytes.
    pub wrong: Vec<String>,
}

impl Tally {
    /// Add another pass.
    pub fn add(&mut self, o: &Tally) {
        self.reads += o.reads;
        self.failed += o.failed;
        self.wrong_bytes += o.wrong_bytes;
        self.ok_bytes += o.ok_bytes;
        self.errors.extend(o.errors.iter().cloned());
        self.wrong.extend(o.wrong.iter().cloned());
    }

    /// Every failed read failed with `errno`.
    pub fn all_failed_with(&self, errno: i32) -> bool {
        self.errors.iter().all(|(_, e)| *e == Some(errno))
    }
}

/// Read each of `files` in full under `mp`, in order, comparing with its sha256; the whole pass
/// runs on its own thread and fails the caller after `limit` (a hung read is a failure, not a
/// stuck test).
pub fn read_files(mp: &Path, files: &[ExpectedFile], limit: Duration) -> Tally {
    let mp = mp.to_path_buf();
    let files = files.to_vec();
    crate::wait::bounded("reading files through the mount", limit, move || {
        let mut t = Tally::default();
        for f in &files {
            t.reads += 1;
            match std::fs::read(mp.join(&f.path)) {
                Ok(data) if data.len() as u64 == f.size && sha256_hex(&data) == f.sha256 => {
                    t.ok_bytes += data.len() as u64;
                }
                Ok(data) => {
                    t.wrong_bytes += data.len().max(1) as u64;
                    t.wrong.push(f.path.clone());
                }
                Err(e) => {
                    t.failed += 1;
                    t.errors.push((f.path.clone(), e.raw_os_error()));
                }
            }
        }
        t
    })
}

/// The campaign's line for a row (printed by the caller).
pub fn line(row: &str, injected: u64, t: &Tally, data_lost: u64) -> String {
    format!(
        "fault-campaign: {row} injected={injected} wrong_bytes={} reads_failed={} data_lost={data_lost} reads={}",
        t.wrong_bytes, t.failed, t.reads
    )
}

/// A request's path and range.
type RangeKey = (String, Option<(u64, u64)>);

/// A policy: the first `k` requests for each distinct `(path, range)` that `matching` picks get
/// `action`, later ones are forwarded — a storm that a client retrying each request more than
/// `k` times rides out (a global "first N" would fail one request every time).
pub fn first_k_of_each_range(
    k: usize,
    matching: impl Fn(&Request) -> bool + Send + Sync + 'static,
    action: Action,
) -> impl Fn(&Request) -> Action + Send + Sync + 'static {
    let seen: Mutex<HashMap<RangeKey, usize>> = Mutex::default();
    move |r: &Request| {
        if !matching(r) {
            return Action::Forward;
        }
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry((r.path.clone(), r.range)).or_default();
        *n += 1;
        if *n <= k {
            action
        } else {
            Action::Forward
        }
    }
}

/// A blob range GET (a read of chunks).
pub fn is_range_get(r: &Request) -> bool {
    r.is_blob_get() && r.range.is_some()
}

/// The decimal number right before `marker` in `text` ("removed 3 bad ones" → 3).
pub fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

/// A Docker `config.json` in `dir` giving `user`/`password` for each of `registries`
/// (`HOST:PORT`), for `--docker-config`; its path.
pub fn write_docker_config(
    dir: &Path,
    registries: &[&str],
    user: &str,
    password: &str,
) -> std::path::PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auths: serde_json::Map<String, serde_json::Value> = registries
        .iter()
        .map(|r| (r.to_string(), serde_json::json!({ "auth": auth })))
        .collect();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::json!({ "auths": auths }).to_string())
        .expect("writing a docker config");
    path
}
