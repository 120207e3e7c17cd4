//! The peer network end to end: real `dfagent daemon`s, each in a network namespace of its own
//! on a Linux bridge (test-support's `netns`), with the peer network on and a cluster secret;
//! a real `docker-registry` and a recording proxy listening on the bridge address in the root
//! namespace, so the proxy sees which node asked for what. "Data-blob bytes" are bytes of the
//! image's data blobs (each node fetches the bootstrap layer itself; it does not count).
//!
//! Needs root and iproute2; without them each test fails saying why. Every wait is bounded;
//! namespaces, processes and mounts are cleaned up on drop.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfagent_core::{ChunkRef, ChunkStore, StoredChunk};
use dfagent_peer::{Multiaddr, Peer, PeerConfig};
use dfagent_store::{Store, StoreConfig};

use dfagent_test_support::campaign::read_files;
use dfagent_test_support::cluster::{
    metric_with, registry_hosts, write, ClusterNode as Node, PASS, SETTLE,
};
use dfagent_test_support::dfagent_cli;
use dfagent_test_support::fixtures::{fixture, listing_files, ExpectedFile};
use dfagent_test_support::netns::{self, Bridge, NetNode};
use dfagent_test_support::proxy::{Proxy, Seen};
use dfagent_test_support::registry::Registry;
use dfagent_test_support::tiers::MemStore;
use dfagent_test_support::tmp_dir;

const IMAGE: &str = "v6-chunkdict";
const LISTING: &str = "texture2.expected.jsonl";
/// Port every node's peer network listens on (each node has its own address).
const PEER_PORT: u16 = 7010;
const SECRET: &str = "peers-test-cluster-secret";

/// The image's data blob ids (= their registry digests' hex), from the fixture's blob files.
fn data_blobs() -> Vec<String> {
    let dir = fixture(IMAGE).join("blobs");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no blobs in {}", dir.display());
    v
}

/// Regular files with data.
fn data_files() -> Vec<ExpectedFile> {
    listing_files(LISTING)
        .into_iter()
        .filter(|f| f.size > 0)
        .collect()
}

/// A bridge, the registry and the recording proxy on its address, the image pushed.
struct Cluster {
    bridge: Bridge,
    proxy: Proxy,
    _registry: Registry,
    /// The image through the proxy.
    reference: String,
    /// Everything the proxy answered so far.
    seen: std::sync::Mutex<Vec<Seen>>,
    work: tempfile::TempDir,
}

impl Cluster {
    /// Fails the test when this machine cannot make namespaces.
    fn new() -> Cluster {
        netns::require();
        let bridge = Bridge::create("dfp");
        let registry = Registry::start_on(bridge.free_addr());
        let proxy = Proxy::builder()
            .listen(bridge.free_addr())
            .upstream(registry.addr())
            .start();
        let work = tmp_dir("dfagent-peers-");
        let push_config = write(
            work.path(),
            "push.toml",
            &registry_hosts(&[registry.addr(), proxy.addr()]),
        );
        let repo = format!("peers/{IMAGE}:v1");
        let push = dfagent_cli!().with_store(&work.path().join("push-store"));
        push.ok(&[
            "--config".as_ref(),
            push_config.as_os_str(),
            "push".as_ref(),
            "--bootstrap".as_ref(),
            fixture(IMAGE).join("bootstrap").as_os_str(),
            "--blob-dir".as_ref(),
            fixture(IMAGE).join("blobs").as_os_str(),
            format!("{}/{repo}", registry.host()).as_ref(),
        ]);
        let _ = std::fs::remove_dir_all(work.path().join("push-store"));
        Cluster {
            reference: format!("{}/{repo}", proxy.host()),
            bridge,
            proxy,
            _registry: registry,
            seen: std::sync::Mutex::new(Vec::new()),
            work,
        }
    }

    /// Node `k` (1-based) with its own namespace, store and configuration: peers on, the
    /// cluster secret `secret`, bootstrapping from the nodes at `bootstrap` (addresses).
    fn node(&self, k: usize, secret: Option<&str>, bootstrap: &[Ipv4Addr]) -> Node {
        self.node_in(k, secret, bootstrap, false)
    }

    /// [`Cluster::node`] with the cluster secret and a metrics endpoint on the node's address.
    fn node_with_metrics(&self, k: usize, bootstrap: &[Ipv4Addr]) -> Node {
        self.node_in(k, Some(SECRET), bootstrap, true)
    }

    /// Node 1 with the cluster secret, bootstrapping from no one, having read the whole image
    /// (from the registry) with everything it read stored: the node the others fetch from.
    fn seed_node(&self) -> Node {
        let mut n1 = self.node(1, Some(SECRET), &[]);
        n1.mount(&self.reference);
        let t = n1.read_all(&data_files());
        assert_eq!(t.failed, 0, "{:?}", t.errors);
        n1.settle(distinct_chunks());
        n1
    }

    fn node_in(
        &self,
        k: usize,
        secret: Option<&str>,
        bootstrap: &[Ipv4Addr],
        metrics: bool,
    ) -> Node {
        let net = self.bridge.add_node(&format!("n{k}"));
        let mut text = format!(
            "[peer]\nenable = true\nlisten = [\"/ip4/{}/tcp/{PEER_PORT}\"]\nbootstrap = [{}]\n\
             provider_ttl = \"2s\"\n",
            net.addr(),
            bootstrap
                .iter()
                .map(|a| format!("\"/ip4/{a}/tcp/{PEER_PORT}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(s) = secret {
            text.push_str(&format!("secret = \"{s}\"\n"));
        }
        text.push_str(&registry_hosts(&[self.proxy.addr()]));
        let dir = self.work.path().join(format!("node{k}"));
        Node::start(&dfagent_cli!(), net, dir, &text, metrics)
    }

    /// Data-blob bytes the proxy sent to `addr` so far.
    fn data_bytes_to(&self, addr: Ipv4Addr) -> u64 {
        let blobs = data_blobs();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(self.proxy.take_log());
        seen.iter()
            .filter(|s: &&Seen| {
                s.client.ip() == addr
                    && s.is_blob_get()
                    && blobs.iter().any(|b| s.path.contains(b.as_str()))
            })
            .map(|s| s.body_len)
            .sum()
    }
}

/// Four nodes, one image: node 1 reads it all from the registry; nodes 2–4 then read it all
/// from peers, with no data-blob byte from the registry, and their peer-tier bytes add up to
/// what they read.
#[test]
fn four_nodes_read_one_image_from_each_other() {
    let c = Cluster::new();
    let n1 = c.seed_node();
    let first = n1.fetched();
    let chunks = distinct_chunks();
    let from_registry = first.get("registry").copied().unwrap_or(0);
    assert!(
        from_registry > 0,
        "node 1 read from the registry: {first:?}"
    );
    assert_eq!(c.data_bytes_to(n1.net.addr()), from_registry);

    let seed = [n1.net.addr()];
    let mut others: Vec<Node> = (2..=4).map(|k| c.node(k, Some(SECRET), &seed)).collect();
    for n in &mut others {
        n.mount(&c.reference);
        let t = n.read_all(&data_files());
        assert_eq!(t.failed, 0, "{}: {:?}", n.net.name(), t.errors);
        let fetched = n.fetched();
        eprintln!("{}: fetched by tier {fetched:?}", n.net.name());
        assert_eq!(
            c.data_bytes_to(n.net.addr()),
            0,
            "{} fetched data-blob bytes from the registry",
            n.net.name()
        );
        assert_eq!(
            fetched.get("peer").copied().unwrap_or(0),
            from_registry,
            "{}: peer-tier bytes = the image's stored bytes read",
            n.net.name()
        );
        n.settle(chunks);
    }
    let p1 = n1.peers();
    assert_eq!(p1["enabled"], true);
    assert_eq!(p1["private"], true);
    let served: u64 = p1["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["bytes_out"].as_u64().unwrap_or(0))
        .sum();
    assert!(served > 0, "node 1 served its peers: {p1}");
}

/// A node without the cluster secret gets nothing from the cluster (every data byte from the
/// registry) and serves nothing to it.
#[test]
fn a_node_without_the_secret_gets_and_serves_nothing() {
    let c = Cluster::new();
    let n1 = c.seed_node();
    let registry_bytes = c.data_bytes_to(n1.net.addr());

    let mut outsider = c.node(2, Some("another-secret"), &[n1.net.addr()]);
    outsider.mount(&c.reference);
    let t = outsider.read_all(&data_files());
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    let fetched = outsider.fetched();
    assert_eq!(fetched.get("peer").copied().unwrap_or(0), 0, "{fetched:?}");
    assert_eq!(c.data_bytes_to(outsider.net.addr()), registry_bytes);
    let p = outsider.peers();
    let connected = p["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["connected"] == true)
        .count();
    assert_eq!(connected, 0, "no connection across secrets: {p}");
}

/// A node restarts: same peer id, its blobs provided again, and a new node fetches from it.
#[test]
fn a_restarted_node_keeps_its_peer_id_and_serves_again() {
    let c = Cluster::new();
    let mut n1 = c.seed_node();
    let id = n1.peers()["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty());
    n1.stop_daemon();
    n1.start_daemon();
    assert_eq!(n1.peers()["peer_id"].as_str(), Some(id.as_str()));

    let mut n2 = c.node(2, Some(SECRET), &[n1.net.addr()]);
    n2.mount(&c.reference);
    let t = n2.read_all(&data_files());
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    assert_eq!(c.data_bytes_to(n2.net.addr()), 0);
    assert!(n2.fetched().get("peer").copied().unwrap_or(0) > 0);
}

/// Distinct chunks of the image (what a node that read every file holds once written back).
fn distinct_chunks() -> u64 {
    let mut digests: Vec<String> = image_chunks()
        .iter()
        .map(|c| c.digest.to_string())
        .collect();
    digests.sort();
    digests.dedup();
    digests.len() as u64
}

/// Every chunk of the image, as the bootstrap describes it.
fn image_chunks() -> Vec<ChunkRef> {
    dfagent_rafs::Image::open(fixture(IMAGE).join("bootstrap"))
        .expect("fixture bootstrap")
        .all_chunks()
        .expect("fixture chunks")
}

/// A chunk's stored bytes, read from the fixture's blob file.
fn stored_bytes(c: &ChunkRef) -> Vec<u8> {
    let path = fixture(IMAGE).join("blobs").join(c.blob.to_string());
    let blob = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = c.compressed_offset as usize;
    blob[start..start + c.compressed_size as usize].to_vec()
}

/// A peer that speaks the protocol but flips a byte of every chunk it serves: a `dfagent-peer`
/// node in namespace `net`, on a thread of the test that joined the namespace (threads it makes
/// inherit it), serving from memory with serving-side verification off.
struct Liar {
    id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Liar {
    fn start(net: &NetNode, bootstrap: Ipv4Addr, dir: &Path) -> Liar {
        let ns_path = format!("/run/netns/{}", net.name());
        let listen: Multiaddr = format!("/ip4/{}/tcp/{PEER_PORT}", net.addr())
            .parse()
            .expect("multiaddr");
        let seed: Multiaddr = format!("/ip4/{bootstrap}/tcp/{PEER_PORT}")
            .parse()
            .expect("multiaddr");
        let identity_file = dir.join("liar.key");
        let (id_tx, id_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&ns_path).expect("the node's namespace");
            // SAFETY: setns on a descriptor this thread holds; it changes this thread's network
            // namespace only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let store = Arc::new(MemStore::new());
                let mut blobs = Vec::new();
                for c in image_chunks() {
                    let mut data = stored_bytes(&c);
                    let mid = data.len() / 2;
                    data[mid] ^= 0x40;
                    let stored = StoredChunk {
                        data: data.into(),
                        compression: c.compression,
                    };
                    store.put(&c, &stored).expect("memory store");
                    if !blobs.contains(&c.blob) {
                        blobs.push(c.blob);
                    }
                }
                let config = PeerConfig {
                    listen: vec![listen],
                    bootstrap: vec![seed],
                    secret: Some(SECRET.as_bytes().to_vec()),
                    identity_file,
                    unsafe_serve_unverified_for_tests: true,
                    ..PeerConfig::default()
                };
                let peer = Peer::start(config, store).await.expect("the liar starts");
                for b in blobs {
                    peer.provide(b);
                }
                let _ = id_tx.send(peer.status().peer_id);
                let _ = stopped.await;
                peer.shutdown().await;
            });
        });
        let id = id_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the liar started");
        Liar {
            id,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A peer that flips bytes in what it serves: readers get only right bytes, the liar is
/// banned, and `dfagent_verify_failures_total{tier="peer"}` counts what it sent.
#[test]
fn a_lying_peer_is_banned_and_no_bad_byte_is_read() {
    let c = Cluster::new();
    let n1 = c.seed_node();

    let liar_net = c.bridge.add_node("liar");
    let liar = Liar::start(&liar_net, n1.net.addr(), c.work.path());

    let mut n2 = c.node_with_metrics(2, &[n1.net.addr(), liar_net.addr()]);
    n2.mount(&c.reference);
    let t = n2.read_all(&data_files());
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    let metrics = n2.metrics();
    let failures = metric_with(&metrics, "dfagent_verify_failures_total", "tier=\"peer\"");
    eprintln!("verify failures from peers: {failures}");
    assert!(
        failures >= 1,
        "the liar's chunks failed verification: {metrics}"
    );
    let peers = n2.peers();
    let banned = peers["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peer_id"] == liar.id.as_str())
        .map(|p| p["banned_seconds"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(banned > 0, "the liar {} is banned: {peers}", liar.id);
    // Nothing bad was stored either.
    let out = n2.daemon().ok(&["cache", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 bad"), "cache verify: {text}");
}

/// A chunk tampered with in a serving node's store is not served: that node drops it, the
/// reader gets the right bytes (from the registry) and bans no one.
#[test]
fn a_tampered_chunk_is_not_served() {
    let c = Cluster::new();
    let mut n1 = c.seed_node();
    n1.stop_daemon();
    // One chunk of the image, stored again with a byte flipped.
    let victim = image_chunks()
        .into_iter()
        .max_by_key(|c| c.compressed_size)
        .expect("a chunk");
    {
        let store = Store::open(&n1.dir.join("store"), StoreConfig::default()).expect("store");
        store.remove(&victim.digest).expect("remove");
        let mut data = stored_bytes(&victim);
        data[0] ^= 0x01;
        store
            .put(
                &victim.digest,
                &victim.blob,
                victim.compression,
                victim.uncompressed_size,
                &data,
            )
            .expect("put the tampered chunk");
    }
    n1.start_daemon();

    let mut n2 = c.node(2, Some(SECRET), &[n1.net.addr()]);
    n2.mount(&c.reference);
    let t = n2.read_all(&data_files());
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    let fetched = n2.fetched();
    eprintln!("reader fetched by tier {fetched:?}");
    assert_eq!(
        fetched.get("registry").copied().unwrap_or(0),
        u64::from(victim.compressed_size),
        "only the tampered chunk came from the registry"
    );
    let peers = n2.peers();
    for p in peers["peers"].as_array().into_iter().flatten() {
        assert_eq!(p["banned_seconds"], 0, "nobody is banned: {peers}");
    }
}

/// The serving node is killed while another node reads a large file from it: the read
/// completes with the right bytes (from another peer or the registry).
#[test]
fn killing_the_serving_node_mid_read_costs_no_read() {
    let c = Cluster::new();
    let n1 = c.seed_node();

    let mut n2 = c.node(2, Some(SECRET), &[n1.net.addr()]);
    n2.mount(&c.reference);
    let mut files = data_files();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let big: Vec<ExpectedFile> = files.into_iter().take(8).collect();
    let mp = n2.mp();
    let reader = std::thread::spawn(move || read_files(&mp, &big, PASS));
    // Kill as soon as node 2 has fetched anything from node 1.
    let start = Instant::now();
    while n2.fetched().get("peer").copied().unwrap_or(0) == 0 && start.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = n1.daemon().pid();
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t = reader.join().expect("reader thread");
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    assert_eq!(t.wrong_bytes, 0, "{:?}", t.wrong);
    eprintln!("after the kill: fetched by tier {:?}", n2.fetched());
}
