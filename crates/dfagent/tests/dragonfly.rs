//! Dragonfly end to end: real `dfdaemon` seed peers (Dragonfly's own client from crates.io,
//! installed by `scripts/setup.sh`) registered with the test scheduler
//! (`test_support::dragonfly::TestScheduler`, which stands in for Dragonfly's Go scheduler), a
//! real `docker-registry` behind a recording proxy, and `dfagent daemon`s with the peer network
//! off, each in a network namespace of its own, so the proxy sees who asked: the seeds from the
//! bridge's own address, each node from its namespace's. The image's data blob is larger than
//! 4 MiB (Dragonfly hands smaller content to no scheduler). "Data-blob bytes" are bytes of the
//! image's data blob (each node fetches the bootstrap layer itself; it does not count).
//!
//! Needs root, iproute2, /dev/fuse and dfdaemon; without them each test fails saying why.
//! Every wait is bounded; namespaces, processes and mounts are cleaned up on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use dfagent_test_support::cluster::{
    metric, metric_with, registry_hosts, write, ClusterNode as Node, PASS, SETTLE,
};
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::dragonfly::{DfdaemonSeed, SeedOptions, TestScheduler};
use dfagent_test_support::fixtures::{sha256_hex, ExpectedFile};
use dfagent_test_support::netns::{self, Bridge};
use dfagent_test_support::oci::{gnu_tar, oci_layout};
use dfagent_test_support::proxy::{Corrupt, Proxy, Seen};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tmp_dir;

/// Sizes of the image's large files: together well above Dragonfly's 4 MiB floor.
const BIG_FILES: &[(&str, usize)] = &[("big/a.bin", 6 << 20), ("big/b.bin", 5 << 20)];

/// Deterministic incompressible bytes (xorshift64*), so the blob is as large as the files.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The image's tree under `dir`: the big files and a few small ones; their expected reads.
fn make_tree(dir: &Path) -> Vec<ExpectedFile> {
    let mut files = Vec::new();
    let mut add = |path: &str, data: Vec<u8>| {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("tree dir");
        std::fs::write(&p, &data).expect("tree file");
        files.push(ExpectedFile {
            path: path.to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(&data),
        });
    };
    for (i, (path, len)) in BIG_FILES.iter().enumerate() {
        add(path, noise(i as u64 + 1, *len));
    }
    for i in 0..8u64 {
        add(
            &format!("small/f{i}.txt"),
            noise(100 + i, 3000 + i as usize * 700),
        );
    }
    files
}

/// A bridge with the registry, the recording proxy, the test scheduler and the seeds on its
/// address, and one Nydus image built and pushed (to `repos`).
struct Cluster {
    bridge: Bridge,
    proxy: Proxy,
    _registry: Registry,
    scheduler: TestScheduler,
    seeds: Vec<DfdaemonSeed>,
    /// Each repository's image reference, through the proxy.
    references: Vec<String>,
    /// The image's data blob (hex).
    blob: String,
    /// Its size in bytes.
    blob_size: u64,
    files: Vec<ExpectedFile>,
    seen: std::sync::Mutex<Vec<Seen>>,
    work: tempfile::TempDir,
}

impl Cluster {
    /// Fails the test when this machine cannot make namespaces or run dfdaemon.
    fn new(seeds: usize, repos: &[&str]) -> Cluster {
        netns::require();
        let bridge = Bridge::create("dfd");
        let registry = Registry::start_on(bridge.free_addr());
        let proxy = Proxy::builder()
            .listen(bridge.free_addr())
            .upstream(registry.addr())
            .start();
        let scheduler = TestScheduler::start_on(bridge.free_addr());
        let seeds = (0..seeds)
            .map(|_| {
                DfdaemonSeed::start_with(
                    &scheduler,
                    SeedOptions {
                        ip: Some(IpAddr::V4(bridge.addr())),
                        ..SeedOptions::default()
                    },
                )
            })
            .collect();
        let work = tmp_dir("dfagent-dragonfly-");
        let tree = work.path().join("tree");
        let files = make_tree(&tree);
        let layout = work.path().join("layout");
        oci_layout(&layout, "v1", &[gnu_tar(&tree)], false);
        let out = work.path().join("built");
        let push_config = write(
            work.path(),
            "push.toml",
            &registry_hosts(&[registry.addr(), proxy.addr()]),
        );
        let mut references = Vec::new();
        let mut summary = serde_json::Value::Null;
        for repo in repos {
            let o = dfagent_cli!().ok(&[
                "--config",
                &push_config.display().to_string(),
                "build",
                &format!("oci:{}:v1", layout.display()),
                "--output-dir",
                &out.display().to_string(),
                "--push",
                &format!("{}/{repo}:v1", registry.host()),
                "--json",
                "-q",
            ]);
            summary = serde_json::from_slice(&o.stdout).expect("build --json");
            references.push(format!("{}/{repo}:v1", proxy.host()));
        }
        let blobs: Vec<String> = summary["blobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().or_else(|| b["id"].as_str()).map(str::to_string))
            .collect();
        assert_eq!(blobs.len(), 1, "one data blob: {summary}");
        let blob = blobs[0].trim_start_matches("sha256:").to_string();
        let blob_size = std::fs::metadata(out.join("blobs").join(&blob))
            .unwrap_or_else(|e| panic!("built blob {blob}: {e}"))
            .len();
        assert!(blob_size > 4 << 20, "the data blob is {blob_size} bytes");
        Cluster {
            bridge,
            proxy,
            _registry: registry,
            scheduler,
            seeds,
            references,
            blob,
            blob_size,
            files,
            seen: std::sync::Mutex::new(Vec::new()),
            work,
        }
    }

    /// Node `k`: Dragonfly on (this scheduler), peers off, metrics on its address.
    fn node(&self, k: usize) -> Node {
        let net = self.bridge.add_node(&format!("n{k}"));
        let text = format!(
            "[dragonfly]\nenable = true\nschedulers = [\"{}\"]\nrefresh_interval = \"2s\"\n\
             health_interval = \"2s\"\n{}",
            self.scheduler.addr(),
            registry_hosts(&[self.proxy.addr()])
        );
        let dir = self.work.path().join(format!("node{k}"));
        let node = Node::start(&dfagent_cli!(), net, dir, &text, true);
        wait_for_seeds(&node, self.seeds.len());
        node
    }

    /// Everything the proxy answered so far.
    fn seen(&self) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(self.proxy.take_log());
        seen.clone()
    }

    /// Data-blob bytes the registry sent to `ip` so far (any repository).
    fn data_bytes_to(&self, ip: IpAddr) -> u64 {
        self.seen()
            .iter()
            .filter(|s| s.client.ip() == ip && s.is_blob_get() && s.path.contains(&self.blob))
            .map(|s| s.body_len)
            .sum()
    }

    /// Data-blob bytes the registry sent to the seed peers (the bridge's own address).
    fn data_bytes_to_seeds(&self) -> u64 {
        self.data_bytes_to(IpAddr::V4(self.bridge.addr()))
    }

    /// Mount `reference` on `node` and read every file: all right, none failed.
    fn read_image(&self, node: &mut Node, reference: &str) {
        node.mount(reference);
        let t = node.read_all(&self.files);
        assert_eq!(t.failed, 0, "{}: {:?}", node.net.name(), t.errors);
    }
}

/// Wait (bounded) until `node` knows `n` healthy seeds (its metrics say so).
fn wait_for_seeds(node: &Node, n: usize) {
    let start = Instant::now();
    loop {
        let m = node.metrics();
        let healthy = metric_with(&m, "dfagent_dragonfly_seeds", "state=\"healthy\"");
        if healthy as usize >= n {
            return;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{} knows {healthy} healthy seeds of {n} after {SETTLE:?}:\n{}",
            node.net.name(),
            node.daemon().log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Stored bytes the node's mount fetched from `tier`.
fn tier_bytes(node: &Node, tier: &str) -> u64 {
    node.fetched().get(tier).copied().unwrap_or(0)
}

/// The tests that run real dfdaemon processes: `scripts/test.sh` runs them after the rest of
/// the suite (`--skip with_dfdaemon::`), once the dfdaemon install that a fresh machine starts
/// in the background has finished.
mod with_dfdaemon {
    use super::*;

    /// Two nodes read the image cold, one after the other: every byte right; the registry served
    /// the data blob once, to the seed, and nothing to the nodes; the second node's bytes all came
    /// from `tier="dragonfly"`.
    #[test]
    fn two_nodes_read_through_one_seed_and_the_registry_serves_once() {
        let c = Cluster::new(1, &["dragonfly/app"]);
        let reference = c.references[0].clone();
        let mut n1 = c.node(1);
        c.read_image(&mut n1, &reference);
        let mut n2 = c.node(2);
        c.read_image(&mut n2, &reference);

        for n in [&n1, &n2] {
            assert_eq!(
                c.data_bytes_to(IpAddr::V4(n.net.addr())),
                0,
                "{} fetched data-blob bytes from the registry",
                n.net.name()
            );
            let fetched = n.fetched();
            eprintln!("{}: fetched by tier {fetched:?}", n.net.name());
            assert!(tier_bytes(n, "dragonfly") > 0, "{fetched:?}");
            assert_eq!(tier_bytes(n, "registry"), 0, "{fetched:?}");
        }
        let to_seeds = c.data_bytes_to_seeds();
        eprintln!(
            "registry data-blob bytes to the seed: {to_seeds} (blob {} bytes)",
            c.blob_size
        );
        assert!(
            to_seeds >= c.blob_size && to_seeds < 2 * c.blob_size,
            "the registry served the blob about once to the seed: {to_seeds} bytes of a {}-byte blob",
            c.blob_size
        );
        let m = n2.metrics();
        assert!(metric(&m, "dfagent_dragonfly_requests_total") > 0, "{m}");
        assert!(
            metric_with(&m, "dfagent_tier_bytes_total", "tier=\"dragonfly\"") > 0,
            "tier=\"dragonfly\" rows in the tier families:\n{m}"
        );
    }

    /// Two images in different repositories share their data blob: the registry serves it once
    /// (one Dragonfly task per blob digest, whatever the repository).
    #[test]
    fn a_blob_shared_by_two_repositories_is_served_once() {
        let c = Cluster::new(1, &["dragonfly/one", "dragonfly/two"]);
        let (a, b) = (c.references[0].clone(), c.references[1].clone());
        let mut n1 = c.node(1);
        c.read_image(&mut n1, &a);
        let after_first = c.data_bytes_to_seeds();
        let mut n2 = c.node(2);
        c.read_image(&mut n2, &b);
        let after_second = c.data_bytes_to_seeds();
        eprintln!(
            "registry data-blob bytes: {after_first} after repo one, {after_second} after two"
        );
        assert_eq!(
            after_second, after_first,
            "the second repository's reads cost the registry nothing"
        );
        assert_eq!(c.data_bytes_to(IpAddr::V4(n2.net.addr())), 0);
        assert!(tier_bytes(&n2, "dragonfly") > 0);
    }

    /// `dfagent seed REF` through the scheduler, then a cold mount reads the whole image with no
    /// data-blob byte from the registry during its reads.
    #[test]
    fn seeding_preheats_and_a_cold_mount_costs_the_registry_nothing() {
        let c = Cluster::new(1, &["dragonfly/seeded"]);
        let reference = c.references[0].clone();
        let cfg = write(
            c.work.path(),
            "seed.toml",
            &registry_hosts(&[c.proxy.addr()]),
        );
        let out = dfagent_cli!()
            .with_store(&c.work.path().join("seed-store"))
            .run(&[
                "--config",
                &cfg.display().to_string(),
                "--no-daemon",
                "seed",
                &reference,
                "--scheduler",
                &c.scheduler.addr().to_string(),
                "--no-pull",
                "--timeout",
                "120s",
                "--json",
            ]);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "seed --json ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(out.status.success(), "{summary}");
        assert_eq!(summary["exit_code"], 0, "{summary}");
        let image = &summary["images"][0];
        assert_eq!(image["outcome"], "done", "{summary}");
        assert_eq!(
            image["preheat"]["layers_done"], image["preheat"]["layers"],
            "{summary}"
        );
        let preheated = c.data_bytes_to_seeds();
        assert!(
            preheated >= c.blob_size,
            "the seed fetched the blob: {preheated}"
        );

        let mut n1 = c.node(1);
        c.read_image(&mut n1, &reference);
        assert_eq!(c.data_bytes_to(IpAddr::V4(n1.net.addr())), 0);
        assert_eq!(
            c.data_bytes_to_seeds(),
            preheated,
            "no registry data-blob byte during the reads"
        );
        assert!(tier_bytes(&n1, "dragonfly") > 0);
    }

    /// Exit codes a Kubernetes Job can act on: an unknown image is 3, refused credentials 4, an
    /// unreachable scheduler 5.
    #[test]
    fn seeding_fails_with_exit_codes_a_job_can_act_on() {
        let c = Cluster::new(1, &["dragonfly/known"]);
        let cfg = write(
            c.work.path(),
            "seed.toml",
            &registry_hosts(&[c.proxy.addr()]),
        );
        let seed = |reference: &str, scheduler: &str| {
            dfagent_cli!().run(&[
                "--config",
                &cfg.display().to_string(),
                "--no-daemon",
                "seed",
                reference,
                "--scheduler",
                scheduler,
                "--no-pull",
                "--retries",
                "1",
                "--timeout",
                "20s",
                "--json",
            ])
        };
        let unknown = format!("{}/dragonfly/missing:v1", c.proxy.host());
        let out = seed(&unknown, &c.scheduler.addr().to_string());
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // A scheduler address nobody listens on (a free port of the bridge).
        let nobody = c.bridge.free_addr().to_string();
        let out = seed(&c.references[0], &nobody);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // A registry that wants credentials this node does not have: 4.
        let locked = Registry::builder()
            .addr(c.bridge.free_addr())
            .basic_auth("seeder", "not-configured-here")
            .start();
        let cfg_locked = write(
            c.work.path(),
            "seed-locked.toml",
            &registry_hosts(&[c.proxy.addr(), locked.addr()]),
        );
        let out = dfagent_cli!().run(&[
            "--config",
            &cfg_locked.display().to_string(),
            "--no-daemon",
            "seed",
            &format!("{}/dragonfly/private:v1", locked.host()),
            "--scheduler",
            &c.scheduler.addr().to_string(),
            "--no-pull",
            "--retries",
            "1",
            "--timeout",
            "20s",
            "--json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// A seed peer killed in the middle of a node's reads: the reads complete with the right bytes,
    /// from the next seed or the registry.
    #[test]
    fn a_seed_killed_mid_read_costs_no_read() {
        let mut c = Cluster::new(2, &["dragonfly/kill"]);
        let reference = c.references[0].clone();
        let mut n1 = c.node(1);
        n1.mount(&reference);
        let mp = n1.mp();
        let files = c.files.clone();
        let reader = std::thread::spawn(move || {
            dfagent_test_support::campaign::read_files(&mp, &files, PASS)
        });
        // Once the first bytes came through a seed, kill the seed that holds the blob's task.
        let start = Instant::now();
        while tier_bytes(&n1, "dragonfly") == 0 && start.elapsed() < SETTLE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let at_kill = n1.fetched();
        let holders = c
            .scheduler
            .task(&c.blob)
            .map(|t| t.holders())
            .unwrap_or_default();
        let victim = c
            .seeds
            .iter()
            .position(|s| holders.contains(&s.host_id()))
            .unwrap_or(0);
        c.seeds[victim].kill();
        let t = reader.join().expect("reader thread");
        assert_eq!(t.wrong_bytes, 0, "{:?}", t.wrong);
        assert_eq!(t.failed, 0, "{:?}", t.errors);
        let after = n1.fetched();
        eprintln!("fetched at the kill {at_kill:?}, after the reads {after:?}");
    }

    /// A seed whose bytes are corrupted on the way (a corrupting proxy in front of its proxy
    /// port): no wrong byte reaches a reader, the seed is set aside and counted.
    #[test]
    fn a_corrupting_seed_is_avoided_and_counted() {
        let c = Cluster::new(1, &["dragonfly/corrupt"]);
        let reference = c.references[0].clone();
        let seed = &c.seeds[0];
        let liar = Proxy::builder()
            .listen(SocketAddr::new(IpAddr::V4(c.bridge.addr()), 0))
            .upstream(seed.proxy_addr())
            .corrupt(Corrupt::Always)
            .start();
        c.scheduler
            .set_proxy_port_override(&seed.host_id(), liar.port());
        let mut n1 = c.node(1);
        c.read_image(&mut n1, &reference);
        let m = n1.metrics();
        let failures = metric_with(&m, "dfagent_verify_failures_total", "tier=\"dragonfly\"");
        assert!(
            failures > 0,
            "verification failures counted for the seed:\n{m}"
        );
        assert!(
            metric(&m, "dfagent_dragonfly_seed_avoidances_total") > 0,
            "{m}"
        );
        assert!(
            liar.take_log().iter().any(|s| s.corrupted),
            "the corrupting proxy flipped bytes"
        );
    }

    /// An HTTPS registry with a CA of its own, which the node trusts (`registry.ca_file`) and
    /// the seed does not need to (dfdaemon's back-to-source client does not verify): the node
    /// reads every chunk through the seed, which fetches from the registry over TLS (the
    /// registry-mirror form, `X-Dragonfly-Registry: https://...`); nothing from the registry tier.
    #[test]
    fn an_https_registry_is_read_through_the_seed() {
        let c = Cluster::new(1, &["dragonfly/plain"]);
        let tls = Registry::builder().addr(c.bridge.free_addr()).tls().start();
        let ca = tls.ca_file().display().to_string();
        let trust = format!("[registry]\nca_file = \"{ca}\"\n");
        let push_config = write(c.work.path(), "push-tls.toml", &trust);
        let reference = format!("{}/dragonfly/secure:v1", tls.host());
        dfagent_cli!().ok(&[
            "--config",
            &push_config.display().to_string(),
            "build",
            &format!("oci:{}:v1", c.work.path().join("layout").display()),
            "--push",
            &reference,
            "-q",
        ]);
        let net = c.bridge.add_node("tls");
        let text = format!(
            "[dragonfly]\nenable = true\nschedulers = [\"{}\"]\nrefresh_interval = \"2s\"\n\
             health_interval = \"2s\"\n{trust}",
            c.scheduler.addr(),
        );
        let dir = c.work.path().join("node-tls");
        let mut node = Node::start(&dfagent_cli!(), net, dir, &text, true);
        wait_for_seeds(&node, 1);
        c.read_image(&mut node, &reference);
        let (through_seed, from_registry) = (
            tier_bytes(&node, "dragonfly"),
            tier_bytes(&node, "registry"),
        );
        assert!(
            through_seed > 0 && from_registry == 0,
            "dragonfly {through_seed} bytes, registry {from_registry} bytes:\n{}",
            node.daemon().log()
        );
    }
}
