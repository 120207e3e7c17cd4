//! `dragonfly`: N nodes cold-start the workload's image straight from the registry (baseline)
//! and through one Dragonfly seed peer, cold and preheated (issue 14's benchmark).
//!
//! Set-up, like `swarm`: a Linux bridge with one network namespace per node; the shaping proxy
//! listens on the bridge address in front of the bench registry and records who asked for what.
//! Each node is a real `dfagent daemon` in its namespace with its own store and the peer
//! network off (this measures Dragonfly alone). In the Dragonfly modes the root namespace also
//! runs, on the bridge address, test-support's `TestScheduler` (a test fixture standing in for
//! Dragonfly's Go scheduler) and one real `dfdaemon` seed peer (`DfdaemonSeed`, dfdaemon 1.5.10
//! as a super seed, announcing the bridge address); the nodes have `[dragonfly] enable = true`
//! naming that scheduler. The seed fetches from the registry through the same shaped proxy, so
//! its fetches are counted by the bridge address. Modes, each a fresh cluster (proxy, scheduler,
//! seed, nodes):
//! - **direct**: no Dragonfly; every node fetches from the registry;
//! - **seed**: a cold seed; every node's reads go through it;
//! - **preheated**: the same after `dfagent seed REF --scheduler ADDR --no-pull` finished (the
//!   preheat's registry bytes are counted apart, its time is not in the start time).
//!
//! Once every daemon is up (and, with Dragonfly, knows a healthy seed), all nodes mount and
//! start at once; the start time is from that common launch until the last node's start
//! finished. Registry egress is the data-blob bytes the proxy sent (nodes and seed) once every
//! node's store holds the image.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dfagent_bench::proxy::{Exchange, Proxy};
use dfagent_bench::report::{fmt_value, Series, Table};
use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::cluster::metric_with;
use dfagent_test_support::dragonfly::{
    dfdaemon_path, DfdaemonSeed, SeedOptions, TestScheduler, DFDAEMON_VERSION,
};
use dfagent_test_support::netns::{self, Bridge, NetNode};
use plotters::prelude::*;

use crate::cleanup::{self, Action};
use crate::cold_start::link_desc;
use crate::env::{drop_caches, Env, NYDUS_REPO, TAG};
use crate::outcome::{hash_files, mb, Outcome};
use crate::procs;
use crate::swarm::{data_blobs, start_desc, ClusterNode, Ctx};

/// Prefix of the bridge's interface and namespace names.
const BRIDGE_PREFIX: &str = "dfdf";
/// Port of each node's `/metrics` (on its own address).
const METRICS_PORT: u16 = 9464;
/// Bound of the preheat (`dfagent seed`).
const PREHEAT_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound of waiting for a node to know a healthy seed.
const SEEDS_KNOWN: Duration = Duration::from_secs(60);
/// Most nodes.
const MAX_NODES: usize = 16;
/// The bundled plot font (registered again here for the per-node plot).
static FONT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/DejaVuSans.ttf"
));

/// Where the nodes' data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Seed,
    Preheated,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Seed => "seed",
            Mode::Preheated => "preheated",
        }
    }
}

/// What one node did in one cluster run.
#[derive(Clone, Debug)]
struct NodeResult {
    addr: Ipv4Addr,
    mount_s: f64,
    start_s: f64,
    /// From the common launch until its start finished.
    started_at_s: f64,
    output: String,
    /// Stored bytes fetched per tier (`dfagent ps --json`).
    tiers: BTreeMap<String, u64>,
    /// Registry data-blob bytes sent to this node.
    registry_data: u64,
    chunks_cached: u64,
    chunks_total: u64,
    settle_timed_out: bool,
}

/// One cluster run.
#[derive(Clone, Debug)]
struct RunResult {
    mode: Mode,
    nodes: Vec<NodeResult>,
    /// Registry data-blob bytes sent to the seed during the nodes' starts.
    seed_data: u64,
    /// Registry data-blob bytes of the preheat (sent to the seed before the nodes started).
    preheat_data: u64,
    /// Seconds the preheat took (`dfagent seed` until it exited).
    preheat_s: f64,
    /// Seconds from launching the seed until it was ready.
    seed_ready_s: f64,
}

impl RunResult {
    /// Registry data-blob bytes during the starts (nodes and seed; not the preheat).
    fn egress(&self) -> u64 {
        self.nodes.iter().map(|n| n.registry_data).sum::<u64>() + self.seed_data
    }

    fn last_started(&self) -> f64 {
        self.nodes
            .iter()
            .map(|n| n.started_at_s)
            .fold(f64::NAN, f64::max)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode.name(),
            "registry_data_bytes": self.egress(),
            "seed_registry_data_bytes": self.seed_data,
            "preheat_registry_data_bytes": self.preheat_data,
            "preheat_s": self.preheat_s,
            "seed_ready_s": self.seed_ready_s,
            "last_started_s": self.last_started(),
            "nodes": self.nodes.iter().map(|n| serde_json::json!({
                "addr": n.addr.to_string(),
                "mount_s": n.mount_s,
                "start_s": n.start_s,
                "started_at_s": n.started_at_s,
                "tiers": n.tiers,
                "registry_data_bytes": n.registry_data,
                "chunks_cached": n.chunks_cached,
                "chunks_total": n.chunks_total,
                "settle_timed_out": n.settle_timed_out,
                "output": n.output,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Where a node's `/metrics` are served: its address, the default port.
fn metrics_addr(net: &NetNode) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(net.addr()), METRICS_PORT)
}

/// The Dragonfly side of a run: the test scheduler and one seed peer.
struct Dragonfly {
    // The seed first: it is killed before its scheduler stops. Only held (killed on drop).
    _seed: DfdaemonSeed,
    scheduler: TestScheduler,
    /// The seed's process in the bench's cleanup list (killed there on an interrupt).
    reg: Option<u64>,
}

impl Drop for Dragonfly {
    fn drop(&mut self) {
        if let Some(r) = self.reg.take() {
            cleanup::deregister(r);
        }
    }
}

/// Start the seed (test-support's fixture waits until it is ready, about 4 s) and put its
/// process in the bench's cleanup list, so an interrupt kills it too. Returns the seed and the
/// cleanup registration.
fn start_seed(
    scheduler: &TestScheduler,
    ip: Ipv4Addr,
) -> anyhow::Result<(DfdaemonSeed, Option<u64>)> {
    cleanup::check_not_stopping()?;
    let seed = DfdaemonSeed::start_with(
        scheduler,
        SeedOptions {
            ip: Some(IpAddr::V4(ip)),
            ..SeedOptions::default()
        },
    );
    let reg = seed
        .pid()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(|pid| cleanup::register(Action::Kill(pid)));
    Ok((seed, reg))
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Ctx<'_> {
    /// The node's config: peers off; Dragonfly on with `scheduler` when given.
    fn config(scheduler: Option<SocketAddr>, proxy: SocketAddr) -> String {
        let mut text = "[peer]\nenable = false\n".to_owned();
        if let Some(s) = scheduler {
            text.push_str(&format!(
                "[dragonfly]\nenable = true\nschedulers = [\"{s}\"]\nrefresh_interval = \"2s\"\nhealth_interval = \"2s\"\n"
            ));
        }
        text.push_str(&format!(
            "[registry.hosts.\"{proxy}\"]\nplain_http = true\n"
        ));
        text
    }

    /// A node with `config`, its metrics on its address (for the seed wait).
    fn start_df_node(&self, dir: &Path, name: &str, config: &str) -> anyhow::Result<ClusterNode> {
        cleanup::check_not_stopping()?;
        let net = self.bridge.add_node(name);
        let metrics = metrics_addr(&net).to_string();
        self.start_daemon_node(net, &dir.join(name), config, &["--metrics-addr", &metrics])
    }

    /// Wait (bounded) until the node's Dragonfly client knows a healthy seed.
    fn wait_for_seed(&self, node: &ClusterNode) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let m = dfagent_test_support::net::http_get_body(metrics_addr(&node.net), "/metrics");
            if metric_with(&m, "dfagent_dragonfly_seeds", "state=\"healthy\"") >= 1 {
                return Ok(());
            }
            ensure!(
                t0.elapsed() < SEEDS_KNOWN,
                "node {} knows no healthy seed after {SEEDS_KNOWN:?}",
                node.net.name()
            );
            cleanup::check_not_stopping()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Registry data-blob bytes sent to `ip` in `exchanges`.
    fn data_to(&self, exchanges: &[Exchange], ip: Ipv4Addr) -> u64 {
        exchanges
            .iter()
            .filter(|e| e.client.ip() == IpAddr::V4(ip))
            .filter(|e| {
                e.blob_get()
                    .is_some_and(|h| self.data_blobs.iter().any(|b| b == h))
            })
            .map(|e| e.body_bytes)
            .sum()
    }

    /// `dfagent seed REF --scheduler ADDR --no-pull` from the root namespace.
    fn preheat(
        &self,
        dir: &Path,
        reference: &str,
        df: &Dragonfly,
        proxy: SocketAddr,
    ) -> anyhow::Result<()> {
        let cfg = dir.join("seed.toml");
        std::fs::write(
            &cfg,
            format!("[registry.hosts.\"{proxy}\"]\nplain_http = true\n"),
        )?;
        let mut cmd = self.cli.with_store(&dir.join("seed-store")).command();
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--no-daemon")
            .arg("seed")
            .arg(reference)
            .arg("--scheduler")
            .arg(df.scheduler.addr().to_string())
            .arg("--no-pull")
            .arg("--timeout")
            .arg(format!("{}s", PREHEAT_TIMEOUT.as_secs() - 30))
            .arg("--json");
        let out = procs::run(&mut cmd, PREHEAT_TIMEOUT)?;
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).context("parsing seed --json")?;
        let image = &v["images"][0];
        ensure!(
            v["exit_code"] == 0 && image["outcome"] == "done",
            "the preheat did not finish: {v}"
        );
        ensure!(
            image["preheat"]["layers_done"] == image["preheat"]["layers"],
            "the preheat did not cover every layer: {v}"
        );
        Ok(())
    }

    /// One cluster run in `mode` with `n` nodes.
    fn run_dragonfly(&self, mode: Mode, n: usize) -> anyhow::Result<RunResult> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let env = self.env;
        let bridge_ip = self.bridge.addr();
        let listen = SocketAddr::new(IpAddr::V4(bridge_ip), 0);
        let proxy: Proxy = env
            .rt
            .block_on(Proxy::start_on(listen, env.registry, self.shape(), true))
            .context("starting the recording proxy on the bridge")?;
        let reference = format!("{}/{NYDUS_REPO}:{TAG}", proxy.addr());
        let dir = env.scratch(&format!("dragonfly-{}", mode.name()));
        std::fs::create_dir_all(&dir)?;
        let (df, seed_ready_s) = if mode == Mode::Direct {
            (None, 0.0)
        } else {
            let t0 = Instant::now();
            let scheduler = TestScheduler::start_on(self.bridge.free_addr());
            let (seed, reg) = start_seed(&scheduler, bridge_ip)?;
            (
                Some(Dragonfly {
                    _seed: seed,
                    scheduler,
                    reg,
                }),
                t0.elapsed().as_secs_f64(),
            )
        };
        let (mut preheat_s, mut preheat_data) = (0.0, 0);
        if mode == Mode::Preheated {
            let d = df.as_ref().context("no seed")?;
            let t0 = Instant::now();
            self.preheat(&dir, &reference, d, proxy.addr())?;
            preheat_s = t0.elapsed().as_secs_f64();
            preheat_data = self.data_to(&proxy.exchanges(), bridge_ip);
            eprintln!(
                "dfagent-bench: dragonfly preheat: {preheat_s:.2} s, {:.1} MB of data blobs from the registry",
                mb(preheat_data)
            );
        }
        let config = Self::config(df.as_ref().map(|d| d.scheduler.addr()), proxy.addr());
        let mut nodes = Vec::new();
        for k in 1..=n {
            nodes.push(self.start_df_node(&dir, &format!("r{run}n{k}"), &config)?);
        }
        if df.is_some() {
            for node in &nodes {
                self.wait_for_seed(node)?;
            }
        }
        drop_caches()?;
        let barrier = Barrier::new(n + 1);
        let results: Vec<anyhow::Result<(f64, f64, f64, String)>> = std::thread::scope(|s| {
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
                    Ok(r) => r.map(|(m, st, done, out)| (m, st, (done - t0).as_secs_f64(), out)),
                    Err(_) => Err(anyhow::anyhow!("a node's start thread panicked")),
                })
                .collect()
        });
        let mut timings = Vec::new();
        for (k, r) in results.into_iter().enumerate() {
            let t = r.with_context(|| format!("node {}", k + 1))?;
            eprintln!(
                "dfagent-bench: dragonfly {} node {}: mount {:.2} s, started {:.2} s after the launch",
                mode.name(),
                k + 1,
                t.0,
                t.2
            );
            timings.push(t);
        }
        let mut settled = Vec::new();
        for node in &nodes {
            settled.push(self.settle(node)?);
        }
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
            let check = hash_files(&node.mp, &env.workload.check_files)?;
            ensure!(
                check == self.expected_check,
                "node {}: the check files differ from the source tree: {check} vs {}",
                node.net.name(),
                self.expected_check
            );
            out.push(NodeResult {
                addr: node.net.addr(),
                mount_s,
                start_s,
                started_at_s,
                output,
                tiers,
                registry_data: self.data_to(&exchanges, node.net.addr()),
                chunks_cached: settled.cached,
                chunks_total: settled.total,
                settle_timed_out: settled.timed_out,
            });
        }
        // Every registry request came from a node, or (with Dragonfly) from the seed and the
        // preheat on the bridge address.
        let strangers = exchanges
            .iter()
            .filter(|e| {
                let ip = e.client.ip();
                !(nodes.iter().any(|n| ip == IpAddr::V4(n.net.addr()))
                    || (df.is_some() && ip == IpAddr::V4(bridge_ip)))
            })
            .count();
        ensure!(
            strangers == 0,
            "{strangers} registry requests came from no node's or seed's address"
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
        let seed_data = self
            .data_to(&exchanges, bridge_ip)
            .saturating_sub(preheat_data);
        drop(nodes);
        drop(df);
        drop(proxy);
        std::fs::remove_dir_all(&dir).ok();
        Ok(RunResult {
            mode,
            nodes: out,
            seed_data,
            preheat_data,
            preheat_s,
            seed_ready_s,
        })
    }
}

/// The dragonfly scenario with `n` nodes.
pub fn run(env: &mut Env, n: usize, results: &Path) -> anyhow::Result<Outcome> {
    ensure!(
        (2..=MAX_NODES).contains(&n),
        "--nodes must be 2 to {MAX_NODES}, not {n}"
    );
    if let Err(why) = netns::available() {
        bail!("dragonfly needs network namespaces: {why}");
    }
    let dfdaemon = dfdaemon_path();
    ensure!(
        dfdaemon.is_file(),
        "dfdaemon {DFDAEMON_VERSION} not found at {} (run scripts/setup.sh or set DFAGENT_DFDAEMON)",
        dfdaemon.display()
    );
    let how = env.nydus()?;
    let blobs = data_blobs(env)?;
    let expected_check = hash_files(&env.workload.tree, &env.workload.check_files)?;
    // test-support's fixtures fail by panicking: turn that into this scenario's error (their
    // guards clean up while unwinding).
    let env_ref: &Env = env;
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(env_ref, n, blobs, expected_check, &how, &dfdaemon, results)
    }));
    match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            bail!("dragonfly: {msg}")
        }
    }
}

fn run_inner(
    env: &Env,
    n: usize,
    data_blobs: Vec<String>,
    expected_check: String,
    how: &str,
    dfdaemon: &Path,
    results: &Path,
) -> anyhow::Result<Outcome> {
    let load_before = loadavg();
    let ctx = Ctx {
        env,
        bridge: Bridge::create(BRIDGE_PREFIX),
        cli: Dfagent::new(&env.dfagent),
        data_blobs,
        expected_check,
        runs: AtomicUsize::new(0),
    };
    let mut egress = Series::new("dragonfly-egress", "MB", false);
    let mut start_seed = Series::new("dragonfly-start", "s", false);
    let mut start_pre = Series::new("dragonfly-start-preheated", "s", false);
    let mut table = Table::new(&[
        "round",
        "mode",
        "registry data MB (start)",
        "seed's share MB",
        "preheat MB / s",
        "last started, s",
        "per node: started, s",
        "per node: registry MB",
        "per node: dragonfly MB",
        "per node: chunks stored / image",
    ]);
    let modes = [Mode::Direct, Mode::Seed, Mode::Preheated];
    let mut rounds = Vec::new();
    let mut last: Vec<RunResult> = Vec::new();
    for r in 0..env.opts.rounds {
        // Rotate which mode goes first.
        let mut by_mode: BTreeMap<&str, RunResult> = BTreeMap::new();
        for i in 0..modes.len() {
            let mode = modes[(r + i) % modes.len()];
            let x = ctx.run_dragonfly(mode, n)?;
            eprintln!(
                "dfagent-bench: dragonfly round {} {}: registry data {:.1} MB (seed {:.1} MB, preheat {:.1} MB); last node started {:.2} s",
                r + 1,
                mode.name(),
                mb(x.egress()),
                mb(x.seed_data),
                mb(x.preheat_data),
                x.last_started()
            );
            by_mode.insert(mode.name(), x);
        }
        let get = |m: Mode| by_mode.get(m.name()).context("a mode's run is missing");
        let (d, s, p) = (get(Mode::Direct)?, get(Mode::Seed)?, get(Mode::Preheated)?);
        egress.push(mb(s.egress()), mb(d.egress()));
        start_seed.push(s.last_started(), d.last_started());
        start_pre.push(p.last_started(), d.last_started());
        for x in [d, s, p] {
            let per = |f: &dyn Fn(&NodeResult) -> String| {
                x.nodes.iter().map(f).collect::<Vec<_>>().join(" / ")
            };
            table.row(vec![
                (r + 1).to_string(),
                x.mode.name().into(),
                fmt_value(mb(x.egress())),
                fmt_value(mb(x.seed_data)),
                if x.mode == Mode::Preheated {
                    format!(
                        "{} / {}",
                        fmt_value(mb(x.preheat_data)),
                        fmt_value(x.preheat_s)
                    )
                } else {
                    "-".into()
                },
                fmt_value(x.last_started()),
                per(&|nr| fmt_value(nr.started_at_s)),
                per(&|nr| fmt_value(mb(nr.tiers.get("registry").copied().unwrap_or(0)))),
                per(&|nr| fmt_value(mb(nr.tiers.get("dragonfly").copied().unwrap_or(0)))),
                per(&|nr| format!("{}/{}", nr.chunks_cached, nr.chunks_total)),
            ]);
        }
        rounds.push(serde_json::json!({
            "direct": d.json(),
            "seed": s.json(),
            "preheated": p.json(),
        }));
        last = vec![d.clone(), s.clone(), p.clone()];
    }
    let load_after = loadavg();
    std::fs::create_dir_all(results)?;
    plot_nodes(&results.join("dragonfly-nodes.png"), n, &last)?;
    Ok(Outcome {
        file: "dragonfly",
        title: format!("Dragonfly: {n} nodes through one seed peer vs straight from the registry"),
        notes: format!(
            "Workload: {}. Nydus image: {how}. Start of one node: `dfagent mount --prefetch {} PROXY/{NYDUS_REPO}:{TAG} MP` \
             through the node's daemon, then {}. {n} nodes, each a `dfagent daemon` with its own store in a network \
             namespace on a Linux bridge, peer network off in every mode (this measures Dragonfly alone); the registry's \
             link is the shaping proxy on the bridge address ({}); the bridge is not shaped.\n\n\
             Dragonfly: one real `dfdaemon` {DFDAEMON_VERSION} (`{}`) as a super seed peer on the bridge address, \
             configured by test-support's `DfdaemonSeed` (`seedPeer: {{enable: true, type: super}}`, no manager, \
             `proxy.prefetch: false` — dfagent's range requests carry `X-Dragonfly-Prefetch: true`, so the seed fetches the whole blob once — announce interval 10 s, no GC during \
             a run), registered with test-support's `TestScheduler`, a **test fixture** standing in for Dragonfly's Go \
             scheduler (not Dragonfly's scheduler). Nodes: `[dragonfly] enable = true`, `schedulers = [that scheduler]`, \
             `refresh_interval = \"2s\"`, `health_interval = \"2s\"`, the rest default (`seeds_per_request = 2`, \
             `max_range = \"4M\"`). The seed fetches from the registry through the same shaped proxy.\n\n\
             Modes, each a fresh cluster (proxy, scheduler, seed, nodes, empty stores), in an order rotating per round:\n\
             - **direct** (baseline): no Dragonfly; every node alone against the registry.\n\
             - **seed**: a cold seed; nodes read through it.\n\
             - **preheated**: the same after `dfagent seed REF --scheduler ADDR --no-pull` finished; the preheat's \
             registry bytes and time are reported apart (table), not in the start time or the start's egress.\n\n\
             Once every daemon is up (with Dragonfly: knows a healthy seed), all {n} nodes mount and start at once.\n\
             - `dragonfly-egress`: the registry's data-blob bytes (answer bodies of blob GETs of the image's data blobs, \
             nodes and seed, counted by the proxy once every node's store holds the image), seed mode vs direct. The \
             bootstrap layer and manifests are not data blobs.\n\
             - `dragonfly-start`: from the common launch until the last node's start finished, seed mode vs direct.\n\
             - `dragonfly-start-preheated`: the same, preheated vs direct.\n\n\
             Every node's check files ({}) must hash as in the source tree, and every node's start must print the \
             same. Load average (1/5/15 min) at the start: {load_before}; at the end: {load_after}. \
             `dragonfly-nodes.png`: the last round's per-node start times and stored bytes by tier.",
            env.workload.label,
            env.opts.prefetch,
            start_desc(env),
            link_desc(env),
            dfdaemon.display(),
            env.workload.check_files.join(", "),
        ),
        series: vec![egress, start_seed, start_pre],
        extra: vec![("Per round and node".into(), table)],
        json: serde_json::json!({
            "nodes": n,
            "dfdaemon_version": DFDAEMON_VERSION,
            "dfdaemon": dfdaemon.display().to_string(),
            "scheduler": "dfagent-test-support TestScheduler (test fixture)",
            "data_blobs": ctx.data_blobs,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "rounds": rounds,
        }),
    })
}

/// The last round, per node: start times (top) and stored bytes by tier (bottom), per mode.
fn plot_nodes(path: &Path, n: usize, last: &[RunResult]) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font could not be registered"))?;
    let root = BitMapBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Dragonfly, {n} nodes: last round per node"),
        ("sans-serif", 24),
    )?;
    let (top, bottom) = root.split_vertically(360);
    let color = |m: Mode| match m {
        Mode::Direct => BLUE,
        Mode::Seed => RED,
        Mode::Preheated => RGBColor(230, 140, 0),
    };
    let max_t = last
        .iter()
        .flat_map(|r| r.nodes.iter().map(|x| x.started_at_s))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("started, s after the common launch", ("sans-serif", 18))
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
    for r in last {
        let pts: Vec<(f64, f64)> = r
            .nodes
            .iter()
            .enumerate()
            .map(|(i, x)| ((i + 1) as f64, x.started_at_s))
            .collect();
        let c = color(r.mode);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(r.mode.name())
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

    let max_mb = last
        .iter()
        .flat_map(|r| r.nodes.iter().map(|x| mb(x.tiers.values().sum())))
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "stored MB fetched by tier (bars per node: direct, seed, preheated; blue registry, green dragonfly, grey other)",
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
    let bars = last.len().max(1) as f64;
    let width = 0.8 / bars;
    for (j, r) in last.iter().enumerate() {
        for (i, x) in r.nodes.iter().enumerate() {
            let left = (i + 1) as f64 - 0.4 + j as f64 * width;
            let right = left + width * 0.9;
            let reg = mb(x.tiers.get("registry").copied().unwrap_or(0));
            let dfl = mb(x.tiers.get("dragonfly").copied().unwrap_or(0));
            let other = mb(x.tiers.values().sum::<u64>()) - reg - dfl;
            let mut y = 0.0;
            for (v, c) in [(reg, BLUE), (dfl, GREEN), (other, RGBColor(150, 150, 150))] {
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
