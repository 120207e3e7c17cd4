//! Multi-node scaffolding: a `dfagent daemon` in a network namespace of its own
//! ([`ClusterNode`]), with its store, configuration and mount point under one directory, and
//! the questions multi-node tests ask it (what it fetched from which tier, what its store holds,
//! its metrics). Used by the peer-network and Dragonfly tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::campaign::{read_files, Tally};
use crate::cli::Dfagent;
use crate::daemon::DfagentDaemon;
use crate::fixtures::ExpectedFile;
use crate::mount::MountGuard;
use crate::netns::NetNode;

/// Bound of one pass of reads over a whole image.
pub const PASS: Duration = Duration::from_secs(300);
/// Bound of waiting for a node's store to hold what it read.
pub const SETTLE: Duration = Duration::from_secs(60);

/// `[registry.hosts."ADDR"] plain_http = true` for each of `addrs`.
pub fn registry_hosts(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("[registry.hosts.\"{a}\"]\nplain_http = true\n"))
        .collect()
}

/// Write `text` to `dir/name`; the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// One node: a `dfagent daemon` in its namespace, its store, configuration and mount point
/// under `dir`. The daemon and the mount go when it is dropped.
pub struct ClusterNode {
    /// The `dfagent` binary (`dfagent_cli!()` of the calling test).
    pub bin: Dfagent,
    /// Its namespace (its address is `net.addr()`).
    pub net: NetNode,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
    /// Where its `/metrics` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The daemon, while it runs.
    pub daemon: Option<DfagentDaemon>,
    /// The mount of the image, while mounted.
    pub mount: Option<MountGuard>,
}

impl ClusterNode {
    /// A node in `net` running `bin` with `config_text` as its configuration, its daemon
    /// started (with a metrics endpoint on port 9464 of its address when `metrics`).
    pub fn start(
        bin: &Dfagent,
        net: NetNode,
        dir: PathBuf,
        config_text: &str,
        metrics: bool,
    ) -> ClusterNode {
        std::fs::create_dir_all(dir.join("mnt")).expect("node dir");
        let config = write(&dir, "config.toml", config_text);
        let metrics = metrics.then(|| SocketAddr::from((net.addr(), 9464)));
        let mut node = ClusterNode {
            bin: bin.clone(),
            net,
            config,
            dir,
            metrics,
            daemon: None,
            mount: None,
        };
        node.start_daemon();
        node
    }

    /// The CLI on this node's store.
    pub fn cli(&self) -> Dfagent {
        self.bin.with_store(&self.dir.join("store"))
    }

    /// Start (or start again) the daemon.
    pub fn start_daemon(&mut self) {
        let config = self.config.display().to_string();
        let metrics = self.metrics.map(|a| a.to_string());
        let mut extra = vec!["--config", &config];
        if let Some(a) = &metrics {
            extra.extend(["--metrics-addr", a.as_str()]);
        }
        self.daemon = Some(DfagentDaemon::start_in(
            &self.net,
            &self.cli(),
            &self.dir,
            &self.dir.join("store"),
            &extra,
        ));
    }

    /// Unmount and stop the daemon (it must exit cleanly).
    pub fn stop_daemon(&mut self) {
        self.mount = None;
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }

    /// The daemon's `/metrics` text (over the bridge).
    pub fn metrics(&self) -> String {
        let addr = self.metrics.expect("the node serves metrics");
        crate::net::http_get_body(addr, "/metrics")
    }

    /// The running daemon.
    pub fn daemon(&self) -> &DfagentDaemon {
        self.daemon.as_ref().expect("the node's daemon runs")
    }

    /// The mount point.
    pub fn mp(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// Mount `reference` through the daemon, without prefetch (reads fetch what they touch).
    pub fn mount(&mut self, reference: &str) {
        let mp = self.mp();
        self.mount = Some(self.daemon().mount(reference, &mp, &["--prefetch", "none"]));
    }

    /// `dfagent peers --json`.
    pub fn peers(&self) -> serde_json::Value {
        let out = self.daemon().ok(&["peers", "--json"]);
        serde_json::from_slice(&out.stdout).expect("peers --json")
    }

    /// Stored bytes fetched per tier by the node's first mount (`dfagent ps --json`).
    pub fn fetched(&self) -> BTreeMap<String, u64> {
        let out = self.daemon().ok(&["ps", "--json"]);
        let ps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps --json");
        let mut m = BTreeMap::new();
        for t in ps[0]["fetched"].as_array().into_iter().flatten() {
            let tier = t["tier"].as_str().unwrap_or_default().to_string();
            *m.entry(tier).or_insert(0) += t["bytes"].as_u64().unwrap_or(0);
        }
        m
    }

    /// Chunks in the node's store (`dfagent cache stat --json`).
    pub fn stored_chunks(&self) -> u64 {
        let out = self.daemon().ok(&["cache", "stat", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cache stat");
        v["chunks"].as_u64().unwrap_or(0)
    }

    /// Wait (bounded by [`SETTLE`]) until the store holds `chunks` chunks: what was read is
    /// written back.
    pub fn settle(&self, chunks: u64) {
        let start = Instant::now();
        while self.stored_chunks() < chunks {
            assert!(
                start.elapsed() < SETTLE,
                "node {} stored {} of {chunks} chunks after {SETTLE:?}",
                self.net.name(),
                self.stored_chunks()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Read every one of `files` through the mount (bounded by [`PASS`]); no wrong byte.
    pub fn read_all(&self, files: &[ExpectedFile]) -> Tally {
        let t = read_files(&self.mp(), files, PASS);
        assert_eq!(
            t.wrong_bytes,
            0,
            "wrong bytes on {}: {:?}",
            self.net.name(),
            t.wrong
        );
        t
    }
}

/// The value of an unlabelled counter or gauge `name` in a Prometheus text page (0 if absent).
pub fn metric(text: &str, name: &str) -> u64 {
    metric_with(text, name, "")
}

/// The sum of the samples of `name` whose labels contain `labels` (e.g. `tier="peer"`; empty:
/// every sample) in a Prometheus text page.
pub fn metric_with(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, rest) = match key.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (key, ""),
            };
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}
