//! `swarm`: N nodes start the workload's image, with the peer network on (dfagent) and off
//! (baseline: every node alone against the registry), in two modes.
//!
//! Set-up: a Linux bridge with one network namespace per node (test-support's `netns`); the
//! shaping proxy listens on the bridge address (the nodes reach nothing else of the root
//! namespace) in front of the bench registry and records which node asked for what. Each node
//! is a real `dfagent daemon` in its namespace, with its own store, started with a config file:
//! `[peer] enable = true`, a cluster secret, listening on its own address and bootstrapping from
//! the nodes started before it (dfagent), or `[peer] enable = false` (baseline). The registry's
//! link (the proxy) is shaped; the bridge between nodes is not (nodes of one cluster share a
//! fast local network, the registry is far).
//!
//! A node "starts" like one cold-start node: `dfagent mount REF MP --prefetch P` through its
//! daemon, then the workload's start in the mount (`chroot MP CMD`, or hashing the check files
//! for trees without a userland). Modes:
//! - **sequential**: node k's daemon starts, mounts and starts the workload after node k-1 has
//!   started and its store holds the whole image (prefetch finished, every chunk stored), so
//!   the first node pulls and the others can take everything from peers;
//! - **concurrent**: every daemon is started first, then all nodes mount and start at once
//!   (all cold; no goal yet, the figures say what happens).
//!
//! Measured, per cluster run, once every node's store holds the image: the registry's
//! data-blob bytes (answer bodies of `GET /v2/.../blobs/sha256:HEX` for the image's data blobs,
//! per node by client address; the bootstrap layer and manifests are counted apart), and each
//! node's stored bytes fetched per tier (`dfagent ps --json`). "Unique stored bytes" = the most
//! stored bytes one node fetched from registry and peers together (every node reads the same).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::proxy::{Proxy, ShapeConfig};
use dfagent_bench::report::{fmt_value, Series, Table};
use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::daemon::DfagentDaemon;
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::netns::{self, Bridge, NetNode};
use plotters::prelude::*;

use crate::cleanup::{self, Action};
use crate::cold_start::link_desc;
use crate::env::{drop_caches, Env, NYDUS_REPO, TAG};
use crate::outcome::{alternate, hash_files, mb, Outcome};
use crate::procs;

/// Port of every node's peer network (each node has its own address).
const PEER_PORT: u16 = 7010;
/// The cluster secret of the dfagent runs.
const SECRET: &str = "dfagent-bench-swarm-secret";
/// Prefix of the bridge's interface and namespace names.
const BRIDGE_PREFIX: &str = "dfsw";
/// Bound of one `dfagent mount` through a daemon.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound of the workload's start.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound of waiting for a node's store to hold the whole image.
const SETTLE: Duration = Duration::from_secs(300);
/// How long a node's stored chunk count must stay unchanged after its prefetch finished to
/// count as final when some chunk is missing.
const STABLE: Duration = Duration::from_secs(3);
/// Bound of the small CLI calls (ps).
const CLI: Duration = Duration::from_secs(60);
/// Most nodes (the bridge's /24 has room for more; the machine has not).
const MAX_NODES: usize = 32;
/// The bundled plot font (registered again here for the per-node plot).
static FONT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/DejaVuSans.ttf"
));

/// How the nodes start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sequential,
    Concurrent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
        }
    }
}

/// What one node did in one cluster run.
#[derive(Clone, Debug)]
struct NodeResult {
    addr: Ipv4Addr,
    /// Seconds until its daemon said "daemon ready".
    daemon_s: f64,
    /// From launching its mount until the mount was served.
    mount_s: f64,
    /// From launching its mount until the start finished.
    start_s: f64,
    /// Concurrent mode: from the common launch until the start finished (= `start_s` in
    /// sequential mode).
    started_at_s: f64,
    output: String,
    /// Stored bytes fetched per tier.
    tiers: BTreeMap<String, u64>,
    /// Registry answer bytes of the image's data blobs (bodies).
    registry_data: u64,
    /// Every other registry answer byte (heads, manifests, the bootstrap layer).
    registry_other: u64,
    /// Whether its store held the whole image within the bound.
    settled: Settled,
}

/// A node's store when the run stopped waiting for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settled {
    /// Chunks of the image in its store.
    pub(crate) cached: u64,
    /// Chunks of the image.
    pub(crate) total: u64,
    /// Whether the wait hit [`SETTLE`] with the prefetch still running.
    pub(crate) timed_out: bool,
}

impl NodeResult {
    /// Stored bytes it read from the network (registry and peers).
    fn read_bytes(&self) -> u64 {
        ["registry", "peer"]
            .iter()
            .map(|t| self.tiers.get(*t).copied().unwrap_or(0))
            .sum()
    }
}

/// One cluster run: N nodes, one mode, peers on or off.
#[derive(Clone, Debug)]
struct RunResult {
    mode: Mode,
    nodes: Vec<NodeResult>,
}

impl RunResult {
    fn registry_data(&self) -> u64 {
        self.nodes.iter().map(|n| n.registry_data).sum()
    }

    fn unique(&self) -> u64 {
        self.nodes.iter().map(|n| n.read_bytes()).max().unwrap_or(0)
    }

    /// Sequential: the last node's own start time; concurrent: when the last of the nodes
    /// launched together had started.
    fn last_started(&self) -> f64 {
        match self.mode {
            Mode::Sequential => self.nodes.last().map(|n| n.start_s).unwrap_or(f64::NAN),
            Mode::Concurrent => self
                .nodes
                .iter()
                .map(|n| n.started_at_s)
                .fold(f64::NAN, f64::max),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "registry_data_bytes": self.registry_data(),
            "unique_stored_bytes": self.unique(),
            "nodes": self.nodes.iter().map(|n| serde_json::json!({
                "addr": n.addr.to_string(),
                "daemon_ready_s": n.daemon_s,
                "mount_s": n.mount_s,
                "start_s": n.start_s,
                "started_at_s": n.started_at_s,
                "tiers": n.tiers,
                "registry_data_bytes": n.registry_data,
                "registry_other_bytes": n.registry_other,
                "chunks_cached": n.settled.cached,
                "chunks_total": n.settled.total,
                "settle_timed_out": n.settled.timed_out,
                "output": n.output,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What every cluster run shares (this scenario's and `dragonfly`'s).
pub(crate) struct Ctx<'a> {
    pub(crate) env: &'a Env,
    pub(crate) bridge: Bridge,
    pub(crate) cli: Dfagent,
    /// The image's data blobs (digest hex).
    pub(crate) data_blobs: Vec<String>,
    /// The check files' hashes in the source tree.
    pub(crate) expected_check: String,
    /// Cluster runs so far (part of node names).
    pub(crate) runs: AtomicUsize,
}

/// A node of a cluster run: its daemon in its namespace, its mount.
pub(crate) struct ClusterNode {
    pub(crate) daemon: Option<DfagentDaemon>,
    pub(crate) mount: Option<MountGuard>,
    pub(crate) net: NetNode,
    pub(crate) mp: PathBuf,
    /// Seconds its daemon took to start.
    pub(crate) daemon_s: f64,
    pub(crate) regs: Vec<u64>,
}

impl ClusterNode {
    pub(crate) fn daemon(&self) -> anyhow::Result<&DfagentDaemon> {
        self.daemon
            .as_ref()
            .context("the node's daemon is not running")
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // The daemon unmounts on SIGTERM; the guard detaches whatever is left.
        self.daemon = None;
        self.mount = None;
        for r in self.regs.drain(..) {
            cleanup::deregister(r);
        }
    }
}

/// The workload's start in `root` (what cold-start does for one node): the chroot command's
/// stdout, or the check files' hashes for trees without a userland.
pub(crate) fn start(env: &Env, root: &Path) -> anyhow::Result<String> {
    match &env.workload.start {
        Some(cmd) => {
            let out = procs::run(Command::new("chroot").arg(root).args(cmd), START_TIMEOUT)?;
            Ok(out.stdout.trim().to_owned())
        }
        None => hash_files(root, &env.workload.check_files),
    }
}

pub(crate) fn start_desc(env: &Env) -> String {
    match &env.workload.start {
        Some(c) => format!("`chroot MP {}`", c.join(" ")),
        None => format!(
            "no userland in this tree: read and hash {}",
            env.workload.check_files.join(", ")
        ),
    }
}

impl Ctx<'_> {
    pub(crate) fn shape(&self) -> ShapeConfig {
        let o = &self.env.opts;
        ShapeConfig {
            bytes_per_sec: o.bandwidth_mbps * 1e6,
            rtt: Duration::from_secs_f64(o.rtt_ms / 1e3),
            per_connection: o.per_connection,
        }
    }

    /// `dfagent ARGS` as the client of `node`'s daemon.
    pub(crate) fn client(
        &self,
        node: &ClusterNode,
        args: &[&std::ffi::OsStr],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut cmd = self.cli.command();
        cmd.env("DFAGENT_SOCKET", node.daemon()?.socket())
            .args(args);
        Ok(procs::run(&mut cmd, timeout)?.stdout)
    }

    /// The node's only mount as `dfagent ps --json` shows it.
    pub(crate) fn ps(&self, node: &ClusterNode) -> anyhow::Result<serde_json::Value> {
        let out = self.client(node, &["ps".as_ref(), "--json".as_ref()], CLI)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing ps --json")?;
        Ok(v[0].clone())
    }

    /// Start node `k`'s daemon: peers on (bootstrapping from `seeds`) or off.
    fn start_node(
        &self,
        dir: &Path,
        name: &str,
        peers: bool,
        seeds: &[Ipv4Addr],
        proxy: SocketAddr,
    ) -> anyhow::Result<ClusterNode> {
        cleanup::check_not_stopping()?;
        let net = self.bridge.add_node(name);
        let node_dir = dir.join(name);
        let mut text = if peers {
            format!(
                "[peer]\nenable = true\nlisten = [\"/ip4/{}/tcp/{PEER_PORT}\"]\nbootstrap = [{}]\nsecret = \"{SECRET}\"\n",
                net.addr(),
                seeds
                    .iter()
                    .map(|a| format!("\"/ip4/{a}/tcp/{PEER_PORT}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "[peer]\nenable = false\n".to_owned()
        };
        text.push_str(&format!(
            "[registry.hosts.\"{}\"]\nplain_http = true\n",
            proxy
        ));
        self.start_daemon_node(net, &node_dir, &text, &[])
    }

    /// Start a `dfagent daemon` in `net` with `config` as its configuration file and `extra`
    /// flags, its store and mount point under `node_dir`, killed and unmounted on an interrupt.
    pub(crate) fn start_daemon_node(
        &self,
        net: NetNode,
        node_dir: &Path,
        config: &str,
        extra: &[&str],
    ) -> anyhow::Result<ClusterNode> {
        let mp = node_dir.join("mnt");
        std::fs::create_dir_all(&mp)?;
        let path = node_dir.join("config.toml");
        std::fs::write(&path, config)?;
        let path = path.display().to_string();
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        let daemon =
            DfagentDaemon::start_in(&net, &self.cli, node_dir, &node_dir.join("store"), &args);
        let daemon_s = t0.elapsed().as_secs_f64();
        let regs = vec![
            cleanup::register(Action::Kill(daemon.pid() as i32)),
            cleanup::register(Action::Unmount(mp.clone())),
        ];
        Ok(ClusterNode {
            daemon: Some(daemon),
            mount: None,
            net,
            mp,
            daemon_s,
            regs,
        })
    }

    /// Mount the image on `node` and run the start: (mount s, start s, output).
    pub(crate) fn mount_and_start(
        &self,
        node: &mut ClusterNode,
        reference: &str,
    ) -> anyhow::Result<(f64, f64, String)> {
        node.mount = Some(MountGuard::new(&node.mp));
        let t0 = Instant::now();
        self.client(
            node,
            &[
                "mount".as_ref(),
                reference.as_ref(),
                node.mp.as_os_str(),
                "--prefetch".as_ref(),
                self.env.opts.prefetch.as_ref(),
            ],
            MOUNT_TIMEOUT,
        )?;
        let mount_s = t0.elapsed().as_secs_f64();
        let output = start(self.env, &node.mp)?;
        Ok((mount_s, t0.elapsed().as_secs_f64(), output))
    }

    /// Wait (bounded) until the node's mount has finished prefetching and its store is done
    /// writing: with `--prefetch all`, every chunk of the image stored, or the stored count
    /// unchanged for [`STABLE`] (the store may drop a write it cannot queue: that chunk stays
    /// missing). Returns (chunks stored, chunks of the image); `Settled::timed_out` when the
    /// bound passed.
    pub(crate) fn settle(&self, node: &ClusterNode) -> anyhow::Result<Settled> {
        let all = self.env.opts.prefetch == "all";
        let t0 = Instant::now();
        let mut last = (u64::MAX, Instant::now());
        loop {
            let m = self.ps(node)?;
            let state = m["prefetch"]["state"].as_str().unwrap_or_default();
            let cached = m["chunks_cached"].as_u64().unwrap_or(0);
            let total = m["chunks_total"].as_u64().unwrap_or(u64::MAX);
            if cached != last.0 {
                last = (cached, Instant::now());
            }
            let settled = Settled {
                cached,
                total,
                timed_out: false,
            };
            if state != "running" && (!all || cached >= total) {
                return Ok(settled);
            }
            if state != "running" && last.1.elapsed() >= STABLE {
                procs::warn(&format!(
                    "node {}: prefetch {state}, but its store holds {cached} of the image's {total} chunks",
                    node.net.name()
                ));
                return Ok(settled);
            }
            if t0.elapsed() > SETTLE {
                procs::warn(&format!(
                    "node {} did not settle within {SETTLE:?} (prefetch {state}, {cached}/{total} chunks)",
                    node.net.name()
                ));
                return Ok(Settled {
                    timed_out: true,
                    ..settled
                });
            }
            cleanup::check_not_stopping()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One cluster run.
    fn run(&self, mode: Mode, peers: bool, n: usize) -> anyhow::Result<RunResult> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let env = self.env;
        let listen = SocketAddr::new(IpAddr::V4(self.bridge.addr()), 0);
        let proxy: Proxy = env
            .rt
            .block_on(Proxy::start_on(listen, env.registry, self.shape(), true))
            .context("starting the recording proxy on the bridge")?;
        let reference = format!("{}/{NYDUS_REPO}:{TAG}", proxy.addr());
        let dir = env.scratch(&format!(
            "swarm-{}-{}",
            mode.name(),
            if peers { "peers" } else { "alone" }
        ));
        std::fs::create_dir_all(&dir)?;
        drop_caches()?;
        let mut nodes: Vec<ClusterNode> = Vec::new();
        let mut timings: Vec<(f64, f64, f64, String)> = Vec::new();
        let mut settled = Vec::new();
        match mode {
            Mode::Sequential => {
                for k in 1..=n {
                    let seeds: Vec<Ipv4Addr> = nodes.iter().map(|x| x.net.addr()).collect();
                    let mut node =
                        self.start_node(&dir, &format!("r{run}n{k}"), peers, &seeds, proxy.addr())?;
                    let (m, s, out) = self.mount_and_start(&mut node, &reference)?;
                    eprintln!(
                        "dfagent-bench: swarm {} {} node {k}: mount {m:.2} s, started {s:.2} s",
                        mode.name(),
                        if peers { "peers" } else { "alone" }
                    );
                    timings.push((m, s, s, out));
                    settled.push(self.settle(&node)?);
                    nodes.push(node);
                }
            }
            Mode::Concurrent => {
                for k in 1..=n {
                    let seeds: Vec<Ipv4Addr> = nodes.iter().map(|x| x.net.addr()).collect();
                    nodes.push(self.start_node(
                        &dir,
                        &format!("r{run}n{k}"),
                        peers,
                        &seeds,
                        proxy.addr(),
                    )?);
                }
                let barrier = Barrier::new(n + 1);
                let results: Vec<anyhow::Result<(f64, f64, f64, String)>> =
                    std::thread::scope(|s| {
                        let handles: Vec<_> = nodes
                            .iter_mut()
                            .map(|node| {
                                let barrier = &barrier;
                                let reference = &reference;
                                s.spawn(move || {
                                    barrier.wait();
                                    let (m, st, out) = self.mount_and_start(node, reference)?;
                                    Ok((m, st, Instant::now(), out))
                                })
                            })
                            .collect();
                        let t0 = Instant::now();
                        barrier.wait();
                        handles
                            .into_iter()
                            .map(|h| match h.join() {
                                Ok(r) => r.map(|(m, st, done, out)| {
                                    (m, st, (done - t0).as_secs_f64(), out)
                                }),
                                Err(_) => Err(anyhow::anyhow!("a node's start thread panicked")),
                            })
                            .collect()
                    });
                for (k, r) in results.into_iter().enumerate() {
                    let t = r.with_context(|| format!("node {}", k + 1))?;
                    eprintln!(
                        "dfagent-bench: swarm concurrent {} node {}: mount {:.2} s, started {:.2} s after the launch",
                        if peers { "peers" } else { "alone" },
                        k + 1,
                        t.0,
                        t.2
                    );
                    timings.push(t);
                }
                for node in &nodes {
                    settled.push(self.settle(node)?);
                }
            }
        }
        // Every store holds the image: count.
        let exchanges = proxy.exchanges();
        let mut out = Vec::new();
        for ((node, (mount_s, start_s, started_at_s, output)), settled) in
            nodes.iter().zip(timings).zip(settled)
        {
            let m = self.ps(node)?;
            let mut tiers = BTreeMap::new();
            for t in m["fetched"].as_array().into_iter().flatten() {
                *tiers
                    .entry(t["tier"].as_str().unwrap_or_default().to_owned())
                    .or_insert(0u64) += t["bytes"].as_u64().unwrap_or(0);
            }
            let addr = node.net.addr();
            let (mut data, mut other) = (0u64, 0u64);
            for e in exchanges
                .iter()
                .filter(|e| e.client.ip() == IpAddr::V4(addr))
            {
                if e.blob_get()
                    .is_some_and(|h| self.data_blobs.iter().any(|b| b == h))
                {
                    data += e.body_bytes;
                    other += e.head_bytes;
                } else {
                    other += e.head_bytes + e.body_bytes;
                }
            }
            let check = hash_files(&node.mp, &env.workload.check_files)?;
            ensure!(
                check == self.expected_check,
                "node {}: the check files differ from the source tree: {check} vs {}",
                node.net.name(),
                self.expected_check
            );
            out.push(NodeResult {
                addr,
                daemon_s: node.daemon_s,
                mount_s,
                start_s,
                started_at_s,
                output,
                tiers,
                registry_data: data,
                registry_other: other,
                settled,
            });
        }
        // Exchanges from an address that is no node's would be a counting error.
        let strangers = exchanges
            .iter()
            .filter(|e| {
                !nodes
                    .iter()
                    .any(|n| e.client.ip() == IpAddr::V4(n.net.addr()))
            })
            .count();
        ensure!(
            strangers == 0,
            "{strangers} registry requests came from no node's address"
        );
        let first = out.first().map(|n| n.output.clone()).unwrap_or_default();
        for (k, r) in out.iter().enumerate() {
            ensure!(
                r.output == first,
                "node {}'s start printed {:?}, node 1's {first:?}",
                k + 1,
                r.output
            );
        }
        drop(nodes);
        drop(proxy);
        std::fs::remove_dir_all(&dir).ok();
        Ok(RunResult { mode, nodes: out })
    }
}

/// The image's data blobs (digest hex): the blob files `dfagent build` wrote beside the
/// bootstrap.
pub(crate) fn data_blobs(env: &Env) -> anyhow::Result<Vec<String>> {
    let dir = env.work.join("nydus-build/blobs");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    ensure!(!v.is_empty(), "no data blobs in {}", dir.display());
    Ok(v)
}

/// The swarm scenario with `n` nodes.
pub fn run(env: &mut Env, n: usize, results: &Path) -> anyhow::Result<Outcome> {
    ensure!(
        (2..=MAX_NODES).contains(&n),
        "--nodes must be 2 to {MAX_NODES}, not {n}"
    );
    if let Err(why) = netns::available() {
        bail!("swarm needs network namespaces: {why}");
    }
    let how = env.nydus()?;
    let blobs = data_blobs(env)?;
    let expected_check = hash_files(&env.workload.tree, &env.workload.check_files)?;
    // test-support's helpers fail by panicking: turn that into this scenario's error (their
    // guards clean up while unwinding).
    let env_ref: &Env = env;
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(env_ref, n, blobs, expected_check, &how, results)
    }));
    match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            bail!("swarm: {msg}")
        }
    }
}

fn run_inner(
    env: &Env,
    n: usize,
    data_blobs: Vec<String>,
    expected_check: String,
    how: &str,
    results: &Path,
) -> anyhow::Result<Outcome> {
    let ctx = Ctx {
        env,
        bridge: Bridge::create(BRIDGE_PREFIX),
        cli: Dfagent::new(&env.dfagent),
        data_blobs,
        expected_check,
        runs: AtomicUsize::new(0),
    };
    let mut egress_seq = Series::new("swarm-egress-sequential", "x", false);
    let mut egress_conc = Series::new("swarm-egress-concurrent", "x", false);
    let mut start_conc = Series::new("swarm-start", "s", false);
    let mut start_seq = Series::new("swarm-start-sequential", "s", false);
    let mut table = Table::new(&[
        "round",
        "mode",
        "side",
        "registry data MB",
        "unique MB",
        "per node: registry data MB",
        "per node: peer-tier MB",
        "per node: started, s",
        "per node: chunks stored / image",
    ]);
    let mut rounds = Vec::new();
    let mut last = Vec::new();
    for r in 0..env.opts.rounds {
        let mut round = serde_json::Map::new();
        last.clear();
        for mode in [Mode::Sequential, Mode::Concurrent] {
            let (d, b) = alternate(r, || ctx.run(mode, true, n), || ctx.run(mode, false, n))?;
            let unique = d.unique().max(b.unique());
            ensure!(
                unique > 0,
                "no node read anything from the registry or peers"
            );
            let ratio = |x: &RunResult| x.registry_data() as f64 / unique as f64;
            eprintln!(
                "dfagent-bench: swarm round {} {}: registry data {:.1} MB with peers, {:.1} MB alone (unique {:.1} MB); last node started {:.2} s vs {:.2} s",
                r + 1,
                mode.name(),
                mb(d.registry_data()),
                mb(b.registry_data()),
                mb(unique),
                d.last_started(),
                b.last_started()
            );
            match mode {
                Mode::Sequential => {
                    egress_seq.push(ratio(&d), ratio(&b));
                    start_seq.push(d.last_started(), b.last_started());
                }
                Mode::Concurrent => {
                    egress_conc.push(ratio(&d), ratio(&b));
                    start_conc.push(d.last_started(), b.last_started());
                }
            }
            for (side, x) in [("dfagent", &d), ("no peers", &b)] {
                let per = |f: &dyn Fn(&NodeResult) -> String| {
                    x.nodes.iter().map(f).collect::<Vec<_>>().join(" / ")
                };
                table.row(vec![
                    (r + 1).to_string(),
                    mode.name().into(),
                    side.into(),
                    fmt_value(mb(x.registry_data())),
                    fmt_value(mb(unique)),
                    per(&|nr| fmt_value(mb(nr.registry_data))),
                    per(&|nr| fmt_value(mb(nr.tiers.get("peer").copied().unwrap_or(0)))),
                    per(&|nr| fmt_value(nr.started_at_s)),
                    per(&|nr| format!("{}/{}", nr.settled.cached, nr.settled.total)),
                ]);
            }
            round.insert(
                mode.name().into(),
                serde_json::json!({ "unique_stored_bytes": unique, "dfagent": d.json(), "baseline": b.json() }),
            );
            last.push((mode, d, b));
        }
        rounds.push(serde_json::Value::Object(round));
    }
    std::fs::create_dir_all(results)?;
    plot_nodes(&results.join("swarm-nodes.png"), n, &last)?;
    Ok(Outcome {
        file: "swarm",
        title: format!("Swarm: {n} nodes, peer network on vs off"),
        notes: format!(
            "Workload: {}. Nydus image: {how}. Start of one node: `dfagent mount --prefetch {} PROXY/{NYDUS_REPO}:{TAG} MP` \
             through the node's daemon, then {}. {n} nodes, each a `dfagent daemon` with its own store in a network \
             namespace on a Linux bridge; the registry's link is the shaping proxy on the bridge address ({}); \
             the bridge between nodes is not shaped.\n\n\
             - **dfagent**: `[peer] enable = true`, a cluster secret, each node bootstrapping from the nodes started before it.\n\
             - **baseline**: the same nodes with `[peer] enable = false` (each node alone against the registry).\n\n\
             Modes: **sequential** — node k starts after node k-1 has started and its store holds the whole image \
             (prefetch done and every chunk stored, or the stored count final: the store drops \
             write-backs it cannot queue, see the chunks column): the first node pulls, the others can take everything from peers. \
             **concurrent** — every daemon is started, then all nodes mount and start at once (all cold; no goal yet).\n\n\
             - `swarm-egress-*`: the registry's data-blob bytes (answer bodies of blob GETs of the image's data blobs, all \
             nodes, counted by the proxy once every store holds the image) over the unique stored bytes read (the most \
             stored bytes one node fetched from registry and peers, `dfagent ps --json`). Alone, each node fetches \
             its own copy: about {n}. The bootstrap layer and manifests are not data blobs (each node fetches those).\n\
             - `swarm-start`: concurrent mode, from the common launch of the {n} mounts until the last node's start \
             finished.\n\
             - `swarm-start-sequential`: sequential mode, the last node's start (from launching its mount), with the \
             image on {m} peers vs only in the registry.\n\n\
             Daemon start-up is not timed (a node's daemon runs before its containers). Every node's check files ({}) \
             must hash as in the source tree, and every node's start must print the same. `swarm-nodes.png`: the \
             last round's per-node start times and stored bytes by tier.",
            env.workload.label,
            env.opts.prefetch,
            start_desc(env),
            link_desc(env),
            env.workload.check_files.join(", "),
            m = n - 1,
        ),
        series: vec![egress_seq, egress_conc, start_conc, start_seq],
        extra: vec![("Per round and node".into(), table)],
        json: serde_json::json!({
            "nodes": n,
            "data_blobs": ctx.data_blobs,
            "rounds": rounds,
        }),
    })
}

/// The last round, per node: start times (top) and stored bytes by tier (bottom), for both
/// modes and sides.
fn plot_nodes(path: &Path, n: usize, last: &[(Mode, RunResult, RunResult)]) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font could not be registered"))?;
    let root = BitMapBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Swarm, {n} nodes: last round per node"),
        ("sans-serif", 24),
    )?;
    let (top, bottom) = root.split_vertically(360);
    let runs: Vec<(String, &RunResult, RGBColor)> = last
        .iter()
        .flat_map(|(mode, d, b)| {
            let (cd, cb) = match mode {
                Mode::Sequential => (RED, BLUE),
                Mode::Concurrent => (RGBColor(230, 140, 0), RGBColor(0, 150, 150)),
            };
            [
                (format!("{} dfagent", mode.name()), d, cd),
                (format!("{} no peers", mode.name()), b, cb),
            ]
        })
        .collect();
    let max_t = runs
        .iter()
        .flat_map(|(_, r, _)| r.nodes.iter().map(|x| x.started_at_s))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "started, s (concurrent: after the common launch)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..(n as f64 + 0.5), 0f64..(max_t * 1.4).max(0.001))?;
    chart
        .configure_mesh()
        .x_desc("node")
        .y_desc("s")
        .x_labels(n.min(20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (label, r, color) in &runs {
        let pts: Vec<(f64, f64)> = r
            .nodes
            .iter()
            .enumerate()
            .map(|(i, x)| ((i + 1) as f64, x.started_at_s))
            .collect();
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    // Bytes by tier: per node, one stacked bar per run (registry blue, peer green, other grey).
    let max_mb = runs
        .iter()
        .flat_map(|(_, r, _)| r.nodes.iter().map(|x| mb(x.tiers.values().sum())))
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "stored MB fetched by tier (bars per node: seq dfagent, seq no peers, conc dfagent, conc no peers; blue registry, green peer, grey other)",
            ("sans-serif", 13),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..(n as f64 + 0.5), 0f64..(max_mb * 1.2).max(0.001))?;
    chart
        .configure_mesh()
        .x_desc("node")
        .y_desc("MB")
        .x_labels(n.min(20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let bars = runs.len().max(1) as f64;
    let width = 0.8 / bars;
    for (j, (_, r, _)) in runs.iter().enumerate() {
        for (i, x) in r.nodes.iter().enumerate() {
            let left = (i + 1) as f64 - 0.4 + j as f64 * width;
            let right = left + width * 0.9;
            let reg = mb(x.tiers.get("registry").copied().unwrap_or(0));
            let peer = mb(x.tiers.get("peer").copied().unwrap_or(0));
            let other = mb(x.tiers.values().sum::<u64>()) - reg - peer;
            let mut y = 0.0;
            for (v, c) in [(reg, BLUE), (peer, GREEN), (other, RGBColor(150, 150, 150))] {
                if v > 0.0 {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(left, y), (right, y + v)],
                        c.filled(),
                    )))?;
                }
                y += v;
            }
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
