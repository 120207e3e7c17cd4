//! Peer nodes in one process, on 127.0.0.1: fetching through the tier, liars, tampered local
//! chunks, secrets, busy servers, identities, over-limit requests, serving at lowered priority
//! and its bounded queue, withdrawn blobs, bans that end, a bad chunk asked again of another
//! provider; and mDNS discovery between two network namespaces (needs root and iproute2).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{
    decode_chunk, encode_chunk, slots_for, Answer, BlobId, BoxFuture, ChunkRef, ChunkStore,
    ChunkTier, Compression, DigestAlgo, Retry, Slot, StoredChunk, TierError,
};
use dfagent_peer::wire::{self, Header, RefusalReason, Request};
use dfagent_peer::{Multiaddr, Peer, PeerConfig};
use dfagent_test_support::tiers::MemStore;

const WAIT: Duration = Duration::from_secs(20);

/// `n` real zstd chunks of blob `blob`.
fn chunks(blob: u8, n: usize) -> Vec<(ChunkRef, Bytes)> {
    (0..n)
        .map(|i| {
            let data: Vec<u8> = (0..50_000usize)
                .map(|j| ((j * (i + 3)) % 241) as u8 ^ blob)
                .collect();
            let (stored, compression) = encode_chunk(Compression::Zstd, &data).unwrap();
            let stored = Bytes::copy_from_slice(&stored);
            let c = ChunkRef {
                digest: DigestAlgo::Blake3.digest(&data),
                blob: BlobId::from_bytes([blob; 32]),
                compressed_offset: (i * 100_000) as u64,
                compressed_size: stored.len() as u32,
                uncompressed_size: data.len() as u32,
                compression,
            };
            (c, stored)
        })
        .collect()
}

fn store_with(chunks: &[(ChunkRef, Bytes)], flip: bool) -> Arc<MemStore> {
    let s = Arc::new(MemStore::new());
    for (c, data) in chunks {
        let mut d = data.to_vec();
        if flip {
            let i = d.len() / 2;
            d[i] ^= 0x40;
        }
        s.insert(c.digest, Bytes::from(d), c.compression);
    }
    s
}

struct Node {
    peer: Peer,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, bootstrap: Option<&Peer>) -> PeerConfig {
    PeerConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        identity_file: dir.join("id.key"),
        bootstrap: bootstrap.map(addr_of).into_iter().collect(),
        request_timeout: Duration::from_secs(5),
        provider_ttl: Duration::from_millis(200),
        ..PeerConfig::default()
    }
}

fn addr_of(p: &Peer) -> Multiaddr {
    let s = p.status();
    format!("{}/p2p/{}", s.listen[0], s.peer_id)
        .parse()
        .unwrap()
}

async fn node(
    store: Arc<MemStore>,
    bootstrap: Option<&Peer>,
    tweak: impl FnOnce(&mut PeerConfig),
) -> Node {
    Node::start(store, bootstrap, tweak).await
}

impl Node {
    /// A node serving from any store.
    async fn start(
        store: Arc<dyn ChunkStore>,
        bootstrap: Option<&Peer>,
        tweak: impl FnOnce(&mut PeerConfig),
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), bootstrap);
        tweak(&mut cfg);
        let peer = Peer::start(cfg, store).await.unwrap();
        assert!(!peer.status().listen.is_empty());
        Node { peer, _dir: dir }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(p: &Peer, n: usize) {
    wait_for("connections", || {
        p.status().peers.iter().filter(|i| i.connected).count() >= n
    })
    .await;
}

/// Fetch `refs` through `p`'s tier: the answers (bytes decoded and verified) per chunk.
async fn fetch(p: &Peer, refs: &[ChunkRef]) -> Vec<Option<Result<Vec<u8>, String>>> {
    let tier = p.tier();
    let mut slots = slots_for(refs);
    tier.fetch(&mut slots).await;
    slots
        .iter_mut()
        .map(|s| {
            let c = *s.chunk();
            match s.take_answer() {
                Answer::Found(st) => {
                    let as_stored = c.with_encoding(st.compression, st.data.len() as u32);
                    Some(decode_chunk(&as_stored, &st.data).map_err(|e| e.to_string()))
                }
                Answer::Missing => None,
                Answer::Failed(e) => panic!("peer tier failed a slot: {e}"),
            }
        })
        .collect()
}

/// Fetch `refs` from `p` (bounded by [`WAIT`]) until some answer fails verification (only a
/// liar provides them); each bad answer told to `tier`, which must send the chunk on (`Next`).
async fn ask_the_liar(p: &Peer, tier: &Arc<dyn ChunkTier>, refs: &[ChunkRef]) {
    let start = Instant::now();
    let mut bad = 0;
    while bad == 0 {
        for (g, r) in fetch(p, refs).await.into_iter().zip(refs) {
            match g {
                Some(Err(detail)) => {
                    bad += 1;
                    assert_eq!(tier.bad_answer(r, &detail), Retry::Next);
                }
                Some(Ok(_)) => panic!("a flipped chunk verified"),
                None => {}
            }
        }
        assert!(start.elapsed() < WAIT, "the liar was never asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn raw(c: &(ChunkRef, Bytes)) -> Vec<u8> {
    dfagent_core::decompress(c.0.compression, &c.1, c.0.uncompressed_size as usize).unwrap()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_fetch_a_batch() {
    let x = chunks(1, 6);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let a = node(store_with(&x, false), None, |_| {}).await;
    let b = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    let c = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    a.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    connected(&b.peer, 1).await;
    assert_eq!(c.peer.tier().name(), "peer");
    let start = Instant::now();
    let got = loop {
        let got = fetch(&c.peer, &refs).await;
        if got.iter().all(|g| g.is_some()) {
            break got;
        }
        assert!(got.iter().all(|g| g.is_none()), "partial answer: {got:?}");
        assert!(start.elapsed() < WAIT, "C never got blob X");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (g, c) in got.into_iter().zip(&x) {
        assert_eq!(g.unwrap().unwrap(), raw(c));
    }
    let stored: u64 = x.iter().map(|c| c.1.len() as u64).sum();
    let (ac, cc) = (a.peer.counters(), c.peer.counters());
    assert_eq!(get(&cc.chunks_fetched), 6);
    assert_eq!(get(&ac.chunks_served), 6);
    assert_eq!(get(&cc.bytes_fetched), stored);
    assert_eq!(get(&ac.bytes_served), stored);
    assert!(get(&cc.provider_lookups) >= 1);
    assert!(get(&cc.lookup_count) >= 1);
    assert!(get(&cc.peers_connected) >= 1);
    // Loopback addresses are listened on but not advertised.
    assert!(a.peer.status().advertised.is_empty());
    assert_eq!(get(&ac.tampered_local), 0);
    let a_id = a.peer.status().peer_id;
    let seen = c
        .peer
        .status()
        .peers
        .into_iter()
        .find(|p| p.id == a_id)
        .unwrap();
    assert_eq!((seen.chunks_in, seen.bytes_in), (6, stored));
    assert!(seen.banned_for.is_none());
    // Nobody asked B; C asks nothing when the blob has no provider.
    assert_eq!(get(&b.peer.counters().chunks_served), 0);
    let other = chunks(9, 1);
    assert!(fetch(&c.peer, &[other[0].0]).await[0].is_none());
    for n in [a, b, c] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_is_banned_and_an_honest_peer_serves() {
    let x = chunks(2, 3);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let liar = node(store_with(&x, true), None, |c| {
        c.unsafe_serve_unverified_for_tests = true
    })
    .await;
    let honest = node(store_with(&x, false), Some(&liar.peer), |_| {}).await;
    let c = node(Arc::new(MemStore::new()), Some(&liar.peer), |_| {}).await;
    liar.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    let tier = c.peer.tier();
    // Only the liar provides X: its answers fail the requester's verification.
    // No other provider is known yet.
    ask_the_liar(&c.peer, &tier, &refs).await;
    let liar_id = liar.peer.status().peer_id;
    let st = c.peer.status();
    let l = st.peers.iter().find(|p| p.id == liar_id).unwrap();
    assert!(l.banned_for.is_some(), "liar not banned: {l:?}");
    assert_eq!(get(&c.peer.counters().bans), 1);
    // Now the honest peer provides X too: the banned liar is not asked again.
    honest.peer.provide(refs[0].blob);
    let served_by_liar = get(&liar.peer.counters().chunks_served);
    let start = Instant::now();
    loop {
        let got = fetch(&c.peer, &refs).await;
        if got.iter().all(|g| g.is_some()) {
            for (g, c) in got.into_iter().zip(&x) {
                assert_eq!(g.unwrap().unwrap(), raw(c));
            }
            break;
        }
        assert!(start.elapsed() < WAIT, "the honest peer never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&liar.peer.counters().chunks_served), served_by_liar);
    assert_eq!(get(&honest.peer.counters().chunks_served), 3);
    assert_eq!(get(&c.peer.counters().bans), 1);
    for n in [liar, honest, c] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_local_chunk_is_not_served() {
    let x = chunks(3, 1);
    let store = store_with(&x, true);
    let a = node(store.clone(), None, |_| {}).await;
    let b = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    a.peer.provide(x[0].0.blob);
    connected(&b.peer, 1).await;
    let start = Instant::now();
    while get(&a.peer.counters().tampered_local) == 0 {
        let got = fetch(&b.peer, &[x[0].0]).await;
        assert!(got[0].is_none(), "a tampered chunk was served: {got:?}");
        assert!(start.elapsed() < WAIT, "A was never asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&a.peer.counters().tampered_local), 1);
    assert_eq!(store.rejected(), vec![x[0].0.digest]);
    assert!(!store.contains(&x[0].0.digest));
    assert_eq!(get(&a.peer.counters().chunks_served), 0);
    assert_eq!(get(&b.peer.counters().bans), 0);
    assert_eq!(get(&b.peer.counters().chunks_fetched), 0);
    for n in [a, b] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_other_secrets_get_nothing() {
    let x = chunks(4, 2);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let secret = |s: &str| Some(s.as_bytes().to_vec());
    let a = node(store_with(&x, false), None, |c| c.secret = secret("one")).await;
    let other = node(Arc::new(MemStore::new()), Some(&a.peer), |c| {
        c.secret = secret("two")
    })
    .await;
    let open = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    let same = node(Arc::new(MemStore::new()), Some(&a.peer), |c| {
        c.secret = secret("one")
    })
    .await;
    a.peer.provide(refs[0].blob);
    // The peer with the same secret gets the chunks (so the secret is not just blocking all).
    connected(&same.peer, 1).await;
    let start = Instant::now();
    while !fetch(&same.peer, &refs)
        .await
        .iter()
        .all(|g| matches!(g, Some(Ok(_))))
    {
        assert!(
            start.elapsed() < WAIT,
            "a peer with the right secret got nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others never connect, and get nothing within a bounded wait.
    for _ in 0..5 {
        for p in [&other.peer, &open.peer] {
            assert!(fetch(p, &refs).await.iter().all(|g| g.is_none()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in [&other.peer, &open.peer] {
        assert!(p.status().peers.iter().all(|i| !i.connected));
        assert_eq!(get(&p.counters().chunks_fetched), 0);
    }
    assert_eq!(get(&a.peer.counters().chunks_served), 2);
    for n in [a, other, open, same] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_provider_sends_the_requester_elsewhere() {
    let x = chunks(5, 4);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let busy = node(store_with(&x, false), None, |c| c.max_uploads = 0).await;
    let free = node(store_with(&x, false), Some(&busy.peer), |_| {}).await;
    let c = node(Arc::new(MemStore::new()), Some(&busy.peer), |c| {
        c.providers_asked = 2
    })
    .await;
    busy.peer.provide(refs[0].blob);
    free.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    let start = Instant::now();
    loop {
        let got = fetch(&c.peer, &refs).await;
        let all = got.iter().all(|g| matches!(g, Some(Ok(_))));
        if all && get(&busy.peer.counters().busy_answers_sent) > 0 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "never saw a busy answer and a full fetch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get(&c.peer.counters().busy_answers_received) >= 1);
    assert_eq!(get(&busy.peer.counters().chunks_served), 0);
    assert!(get(&free.peer.counters().chunks_served) >= 4);
    assert_eq!(get(&c.peer.counters().bans), 0);
    for n in [busy, free, c] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_peer_id() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    let first = Peer::start(cfg.clone(), Arc::new(MemStore::new()))
        .await
        .unwrap();
    let id = first.status().peer_id;
    // Alone, the tier answers nothing, at once (no lookup).
    let x = chunks(7, 1);
    assert!(fetch(&first, &[x[0].0]).await[0].is_none());
    assert_eq!(get(&first.counters().provider_lookups), 0);
    first.shutdown().await;
    let mode = std::fs::metadata(&cfg.identity_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = Peer::start(cfg, Arc::new(MemStore::new())).await.unwrap();
    assert_eq!(second.status().peer_id, id);
    second.shutdown().await;
    let other = tempfile::tempdir().unwrap();
    let third = Peer::start(config(other.path(), None), Arc::new(MemStore::new()))
        .await
        .unwrap();
    assert_ne!(third.status().peer_id, id);
    third.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_request_is_refused() {
    let x = chunks(6, 1);
    let a = node(store_with(&x, false), None, |c| {
        c.request_timeout = Duration::from_secs(1)
    })
    .await;
    let b = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    connected(&b.peer, 1).await;
    let a_id = a.peer.status().peer_id;
    let limits = wire::Limits::default();
    let too_many = Request {
        blob: x[0].0.blob,
        chunks: vec![x[0].0; limits.max_chunks + 1],
    };
    let big = ChunkRef {
        compressed_size: 10 << 20,
        uncompressed_size: 10 << 20,
        compression: Compression::None,
        ..x[0].0
    };
    let too_big = Request {
        blob: x[0].0.blob,
        chunks: vec![big, big],
    };
    for (req, reason) in [
        (&too_many, RefusalReason::TooManyChunks),
        (&too_big, RefusalReason::TooManyBytes),
    ] {
        let answer = b
            .peer
            .raw_exchange(
                &a_id,
                &wire::frame(&wire::request_message(req)),
                1 << 20,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let (body, rest) = wire::split_frame(&answer, limits.max_frame).unwrap();
        assert!(rest.is_empty());
        match wire::decode_header(body, req, &limits).unwrap() {
            Header::Refused(r) => assert_eq!(r.reason, reason),
            h => panic!("not refused: {h:?}"),
        }
    }
    assert_eq!(get(&a.peer.counters().refused_requests), 2);
    // A well-formed request on the same path is answered, with the chunk.
    let ok = Request {
        blob: x[0].0.blob,
        chunks: vec![x[0].0],
    };
    let answer = b
        .peer
        .raw_exchange(
            &a_id,
            &wire::frame(&wire::request_message(&ok)),
            1 << 20,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    match wire::decode_response(&answer, &ok, &limits).unwrap() {
        wire::Response::Answers { delivered, .. } => {
            assert_eq!(delivered.len(), 1);
            assert_eq!(delivered[0].data, x[0].1);
        }
        r => panic!("refused: {r:?}"),
    }
    // Garbage is a protocol error on the server's side, answered with a refusal.
    let answer = b
        .peer
        .raw_exchange(
            &a_id,
            &[0, 0, 0, 3, 0xff, 0xff, 0xff],
            1 << 20,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (body, _) = wire::split_frame(&answer, limits.max_frame).unwrap();
    assert!(matches!(
        wire::decode_header(body, &ok, &limits).unwrap(),
        Header::Refused(r) if r.reason == RefusalReason::BadRequest
    ));
    assert_eq!(get(&a.peer.counters().protocol_errors), 1);
    // A requester that stalls inside its request frame is cut off (after the server's read
    // timeout) and counted.
    let answer = b
        .peer
        .raw_exchange(
            &a_id,
            &[0, 0, 0, 100, 1, 2],
            1 << 20,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(answer.is_empty(), "answered a stalled request: {answer:?}");
    wait_for("the stall to be counted", || {
        get(&a.peer.counters().protocol_errors) == 2
    })
    .await;
    for n in [a, b] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_bootstrap_finds_a_peer() {
    let a = node(Arc::new(MemStore::new()), None, |_| {}).await;
    let listen = a.peer.status().listen[0].clone();
    let port = listen.rsplit('/').next().unwrap().to_string();
    let b = node(Arc::new(MemStore::new()), None, |c| {
        c.bootstrap_dns = vec![format!("localhost:{port}")];
        c.dns_refresh = Duration::from_secs(1);
    })
    .await;
    connected(&b.peer, 1).await;
    let a_id = a.peer.status().peer_id;
    assert!(b
        .peer
        .status()
        .peers
        .iter()
        .any(|p| p.id == a_id && p.connected));
    for n in [a, b] {
        n.peer.shutdown().await;
    }
}

/// A thread's scheduling as a store read saw it.
#[derive(Clone, Debug)]
struct Probe {
    /// Nice value.
    nice: i64,
    /// I/O priority (`ioprio_get`'s value: class << 13 | level).
    ioprio: i64,
    /// Thread name.
    thread: String,
}

/// The calling thread's scheduling.
fn probe() -> Probe {
    // SAFETY: read-only system calls about the calling thread; no memory is passed.
    let (nice, ioprio) = unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        // The raw call answers 20 - nice.
        let raw = libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid);
        assert!(raw > 0, "getpriority: {}", std::io::Error::last_os_error());
        // IOPRIO_WHO_PROCESS = 1: one thread.
        (20 - raw, libc::syscall(libc::SYS_ioprio_get, 1, tid))
    };
    Probe {
        nice,
        ioprio,
        thread: std::thread::current().name().unwrap_or("").to_string(),
    }
}

/// A memory store that records how the thread of every read was scheduled, and can hold reads
/// (blocking the thread that reads) until released.
struct ProbeStore {
    mem: MemStore,
    probes: std::sync::Mutex<Vec<Probe>>,
    held: (std::sync::Mutex<bool>, std::sync::Condvar),
    entered: std::sync::atomic::AtomicU64,
}

impl ProbeStore {
    fn new(chunks: &[(ChunkRef, Bytes)]) -> Arc<Self> {
        let mem = MemStore::new();
        for (c, data) in chunks {
            mem.insert(c.digest, data.clone(), c.compression);
        }
        Arc::new(Self {
            mem,
            probes: Default::default(),
            held: Default::default(),
            entered: Default::default(),
        })
    }

    fn hold(&self, on: bool) {
        *self.held.0.lock().unwrap() = on;
        self.held.1.notify_all();
    }

    /// Block the calling thread while reads are held (bounded).
    fn wait_while_held(&self) {
        let start = Instant::now();
        let mut held = self.held.0.lock().unwrap();
        while *held {
            assert!(start.elapsed() < WAIT, "a read was held too long");
            held = self
                .held
                .1
                .wait_timeout(held, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    fn probes(&self) -> Vec<Probe> {
        self.probes.lock().unwrap().clone()
    }
}

impl ChunkTier for ProbeStore {
    fn name(&self) -> &str {
        "store"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.probes.lock().unwrap().push(probe());
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.wait_while_held();
            self.mem.fetch(slots).await;
        })
    }
}

impl ChunkStore for ProbeStore {
    fn put(&self, chunk: &ChunkRef, stored: &StoredChunk) -> Result<(), TierError> {
        self.mem.put(chunk, stored)
    }

    fn reject(&self, chunk: &ChunkRef, detail: &str) {
        self.mem.reject(chunk, detail)
    }
}

/// How a serve thread is scheduled: `ioprio_get`'s value for best-effort level 7.
const BEST_EFFORT_7: i64 = (2 << 13) | 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_reads_and_verifies_on_lowered_priority_threads() {
    let own = probe();
    let x = chunks(20, 3);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let store = ProbeStore::new(&x);
    let a = Node::start(store.clone(), None, |_| {}).await;
    let b = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    a.peer.provide(refs[0].blob);
    connected(&b.peer, 1).await;
    let start = Instant::now();
    loop {
        let got = fetch(&b.peer, &refs).await;
        if got.iter().all(|g| g.is_some()) {
            for (g, c) in got.into_iter().zip(&x) {
                assert_eq!(g.unwrap().unwrap(), raw(c));
            }
            break;
        }
        assert!(start.elapsed() < WAIT, "B never got the chunks");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probes = store.probes();
    assert!(!probes.is_empty());
    for p in &probes {
        assert!(
            p.thread.starts_with("dfagent-peer-serve-"),
            "served on {p:?}"
        );
        assert_eq!(p.nice, (own.nice + 10).min(19), "{p:?}");
        assert_eq!(p.ioprio, BEST_EFFORT_7, "{p:?}");
    }
    // Lowered per thread: this thread (like the node's others) keeps its priority.
    let after = probe();
    assert_eq!((after.nice, after.ioprio), (own.nice, own.ioprio));
    for n in [a, b] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_serve_queue_answers_busy() {
    let x = chunks(21, 1);
    let store = ProbeStore::new(&x);
    store.hold(true);
    let a = Node::start(store.clone(), None, |c| {
        c.serve_threads = 1;
        c.serve_queue = 1;
    })
    .await;
    let b = node(Arc::new(MemStore::new()), Some(&a.peer), |_| {}).await;
    connected(&b.peer, 1).await;
    let a_id = a.peer.status().peer_id;
    let req = Request {
        blob: x[0].0.blob,
        chunks: vec![x[0].0],
    };
    let ask = || {
        let (p, id) = (b.peer.clone(), a_id.clone());
        let bytes = wire::frame(&wire::request_message(&req));
        tokio::spawn(async move {
            p.raw_exchange(&id, &bytes, 1 << 20, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    // The one serve thread takes the first request and is held in the store.
    let first = ask();
    wait_for("the first read", || {
        store.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    // The second waits in the queue; the third finds it full. (One after the other: the
    // libp2p-stream inbound channel holds one stream, and drops a second that arrives before
    // the serve loop took the first.)
    let second = ask();
    wait_for("the second request queued", || {
        get(&a.peer.counters().serve_pending) == 2
    })
    .await;
    let third = ask();
    wait_for("a busy answer", || {
        get(&a.peer.counters().busy_answers_sent) == 1
    })
    .await;
    assert_eq!(get(&a.peer.counters().serve_pending), 2);
    assert_eq!(store.entered.load(Ordering::SeqCst), 1);
    store.hold(false);
    let limits = wire::Limits::default();
    let (mut served, mut busy) = (0, 0);
    for t in [first, second, third] {
        let answer = t.await.unwrap();
        match wire::decode_response(&answer, &req, &limits).unwrap() {
            wire::Response::Answers { delivered, .. } => {
                assert_eq!(delivered.len(), 1);
                assert_eq!(delivered[0].data, x[0].1);
                served += 1;
            }
            wire::Response::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::Busy);
                assert!(r.detail.contains("queue"), "{r:?}");
                busy += 1;
            }
        }
    }
    assert_eq!((served, busy), (2, 1));
    wait_for("the queue to drain", || {
        get(&a.peer.counters().serve_pending) == 0
    })
    .await;
    assert_eq!(store.entered.load(Ordering::SeqCst), 2);
    assert_eq!(get(&a.peer.counters().chunks_served), 2);
    for n in [a, b] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_blob_is_no_longer_fetched_from_its_old_provider() {
    let x = chunks(22, 3);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    // Kademlia cannot take a record back: records held by other nodes lapse after the TTL.
    let short = |c: &mut PeerConfig| c.record_ttl = Duration::from_secs(3);
    let a = node(store_with(&x, false), None, short).await;
    let c = node(Arc::new(MemStore::new()), Some(&a.peer), short).await;
    a.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    let start = Instant::now();
    while !fetch(&c.peer, &refs)
        .await
        .iter()
        .all(|g| matches!(g, Some(Ok(_))))
    {
        assert!(start.elapsed() < WAIT, "C never got the chunks from A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A stops providing the blob (the node does so when the store loses its last chunk); its
    // store still holds the chunks, so anything asked of it would be served.
    a.peer.withdraw(refs[0].blob);
    let start = Instant::now();
    while !fetch(&c.peer, &refs).await.iter().all(|g| g.is_none()) {
        assert!(
            start.elapsed() < WAIT,
            "C still fetches a withdrawn blob from A"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // From now on C's lookups (its provider cache lasts 200 ms) find nobody.
    let served = get(&a.peer.counters().chunks_served);
    let lookups = get(&c.peer.counters().provider_lookups);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fetch(&c.peer, &refs).await.iter().all(|g| g.is_none()));
    }
    assert!(get(&c.peer.counters().provider_lookups) > lookups);
    assert_eq!(get(&a.peer.counters().chunks_served), served);
    for n in [a, c] {
        n.peer.shutdown().await;
    }
}

/// Whether `p` has `id` banned now.
fn banned(p: &Peer, id: &str) -> bool {
    p.status()
        .peers
        .iter()
        .any(|i| i.id == id && i.banned_for.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_and_the_peer_is_asked_again() {
    let x = chunks(23, 2);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let store = store_with(&x, true);
    let liar = node(store.clone(), None, |c| {
        c.unsafe_serve_unverified_for_tests = true
    })
    .await;
    let c = node(Arc::new(MemStore::new()), Some(&liar.peer), |c| {
        c.ban = Duration::from_secs(2)
    })
    .await;
    liar.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    let tier = c.peer.tier();
    ask_the_liar(&c.peer, &tier, &refs).await;
    let liar_id = liar.peer.status().peer_id;
    assert!(banned(&c.peer, &liar_id));
    // The peer's copies are repaired: it would serve good bytes from now on.
    for (r, data) in &x {
        store.insert(r.digest, data.clone(), r.compression);
    }
    let served = get(&liar.peer.counters().chunks_served);
    let got = fetch(&c.peer, &refs).await;
    if banned(&c.peer, &liar_id) {
        // That fetch ended inside the ban: the peer was not asked.
        assert!(got.iter().all(|g| g.is_none()), "asked while banned");
        assert_eq!(get(&liar.peer.counters().chunks_served), served);
    }
    // Once the ban ends, the peer is asked again and its (good) chunks arrive.
    let start = Instant::now();
    loop {
        let got = fetch(&c.peer, &refs).await;
        if got.iter().all(|g| g.is_some()) {
            for (g, c) in got.into_iter().zip(&x) {
                assert_eq!(g.unwrap().unwrap(), raw(c));
            }
            break;
        }
        assert!(start.elapsed() < WAIT, "the peer was never asked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!banned(&c.peer, &liar_id));
    assert!(get(&liar.peer.counters().chunks_served) > served);
    assert_eq!(get(&c.peer.counters().bans), 1);
    for n in [liar, c] {
        n.peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_is_asked_again_of_another_provider() {
    let x = chunks(24, 6);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    // L serves whatever its store holds (good at first); H is honest.
    let l_store = store_with(&x, false);
    let l = node(l_store.clone(), None, |c| {
        c.unsafe_serve_unverified_for_tests = true
    })
    .await;
    let h = node(store_with(&x, false), Some(&l.peer), |_| {}).await;
    let c = node(Arc::new(MemStore::new()), Some(&l.peer), |c| {
        c.providers_asked = 2
    })
    .await;
    l.peer.provide(refs[0].blob);
    h.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    // C learns both providers: each has served it.
    let start = Instant::now();
    while get(&l.peer.counters().chunks_served) == 0 || get(&h.peer.counters().chunks_served) == 0 {
        assert!(fetch(&c.peer, &refs)
            .await
            .iter()
            .all(|g| !matches!(g, Some(Err(_)))));
        assert!(
            start.elapsed() < WAIT,
            "C never fetched from both providers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // L's copies go bad. What C gets from L fails verification; the tier bans L and, as H
    // provides the blob too, asks the resolver to ask it again (not the next tier).
    let tier = c.peer.tier();
    for (r, data) in &x {
        let mut d = data.to_vec();
        let i = d.len() / 2;
        d[i] ^= 0x40;
        l_store.insert(r.digest, Bytes::from(d), r.compression);
    }
    let start = Instant::now();
    let again: Vec<ChunkRef> = loop {
        let mut again = Vec::new();
        for (g, r) in fetch(&c.peer, &refs).await.into_iter().zip(&refs) {
            if let Some(Err(detail)) = g {
                assert_eq!(tier.bad_answer(r, &detail), Retry::AskAgain);
                again.push(*r);
            }
        }
        if !again.is_empty() {
            break again;
        }
        assert!(
            start.elapsed() < WAIT,
            "L was never asked after its copies went bad"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let l_id = l.peer.status().peer_id;
    assert!(banned(&c.peer, &l_id));
    assert_eq!(get(&c.peer.counters().bans), 1);
    // Asked again, the tier answers those chunks right, from H; L is not asked.
    let l_served = get(&l.peer.counters().chunks_served);
    let h_served = get(&h.peer.counters().chunks_served);
    let got = fetch(&c.peer, &again).await;
    for (g, r) in got.into_iter().zip(&again) {
        let want = x.iter().find(|c| c.0.digest == r.digest).unwrap();
        assert_eq!(g.expect("asked again, not answered").unwrap(), raw(want));
    }
    assert_eq!(get(&l.peer.counters().chunks_served), l_served);
    assert_eq!(
        get(&h.peer.counters().chunks_served),
        h_served + again.len() as u64
    );
    assert_eq!(get(&c.peer.counters().bans), 1);
    for n in [l, h, c] {
        n.peer.shutdown().await;
    }
}

/// Run `work` on a thread of its own inside network namespace `net` (the thread joins it;
/// threads it makes, the runtime's and the peer node's, inherit it), on a runtime of its own.
fn in_netns<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    net: &dfagent_test_support::netns::NetNode,
    work: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{}", net.name());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("the node's namespace");
        // SAFETY: setns on a descriptor this thread holds; it changes this thread's network
        // namespace only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(work())
    })
}

/// mDNS needs a multicast interface (libp2p's skips loopback, and announces only addresses on
/// the interface it answers on), so the two nodes run in network namespaces on a bridge. They
/// start at the same moment, so each finds the other at once and both dial at the same time
/// (which once met in a TCP simultaneous open that failed both dials).
#[test]
fn mdns_peers_find_each_other_and_fetch() {
    use dfagent_test_support::netns::{require, Bridge};
    require();
    let bridge = Bridge::create("pmd");
    let (n1, n2) = (bridge.add_node("a"), bridge.add_node("b"));
    let x = chunks(25, 3);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let mdns = |addr: std::net::Ipv4Addr| {
        move |c: &mut PeerConfig| {
            c.mdns = true;
            c.listen = vec![format!("/ip4/{addr}/tcp/0").parse().unwrap()];
        }
    };
    // Both threads report ready, then start their node when told to.
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let (go_a_tx, go_a) = std::sync::mpsc::channel::<()>();
    let (go_b_tx, go_b) = std::sync::mpsc::channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (a_addr, b_addr) = (n1.addr(), n2.addr());
    let serving = x.clone();
    let ready_a = ready_tx.clone();
    let a = in_netns(&n1, move || {
        ready_a.send(()).unwrap();
        go_a.recv_timeout(WAIT).expect("go");
        async move {
            let a = node(store_with(&serving, false), None, mdns(a_addr)).await;
            a.peer.provide(serving[0].0.blob);
            let _ = tokio::time::timeout(Duration::from_secs(120), stopped).await;
            let served = get(&a.peer.counters().chunks_served);
            let id = a.peer.peer_id();
            a.peer.shutdown().await;
            (id, served)
        }
    });
    let b = in_netns(&n2, move || {
        ready_tx.send(()).unwrap();
        go_b.recv_timeout(WAIT).expect("go");
        async move {
            // No bootstrap address, static or DNS: only mDNS can find A.
            let b = node(Arc::new(MemStore::new()), None, mdns(b_addr)).await;
            wait_for("B to find a peer by mDNS", || {
                b.peer.status().peers.iter().any(|p| p.connected)
            })
            .await;
            let start = Instant::now();
            let got = loop {
                let got = fetch(&b.peer, &refs).await;
                if got.iter().all(|g| g.is_some()) {
                    break got;
                }
                assert!(start.elapsed() < WAIT, "B never got the chunks from A");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let fetched = get(&b.peer.counters().chunks_fetched);
            let peers: Vec<String> = b.peer.status().peers.into_iter().map(|p| p.id).collect();
            b.peer.shutdown().await;
            (got, fetched, peers)
        }
    });
    for _ in 0..2 {
        ready.recv_timeout(WAIT).expect("both nodes' threads ready");
    }
    go_a_tx.send(()).unwrap();
    go_b_tx.send(()).unwrap();
    let b = b.join();
    let _ = stop.send(());
    let (a_id, served) = a.join().expect("node A");
    let (got, fetched, peers) = b.expect("node B");
    assert_eq!(peers, vec![a_id]);
    for (g, c) in got.into_iter().zip(&x) {
        assert_eq!(g.unwrap().unwrap(), raw(c));
    }
    assert_eq!(fetched, 3);
    assert_eq!(served, 3);
}

/// A batch split into many requests to one provider opens several streams to it at once; every
/// chunk still arrives in one fetch (libp2p-stream's inbound channel holds one stream and
/// drops the others that arrive before the serve loop takes it: the requester asks again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_to_one_provider_is_answered_whole() {
    let x = chunks(26, 8);
    let refs: Vec<ChunkRef> = x.iter().map(|c| c.0).collect();
    let a = node(store_with(&x, false), None, |_| {}).await;
    let c = node(Arc::new(MemStore::new()), Some(&a.peer), |c| {
        c.limits.max_chunks = 1;
        c.max_inflight_per_peer = 8;
    })
    .await;
    a.peer.provide(refs[0].blob);
    connected(&c.peer, 1).await;
    // Wait until C knows A provides the blob (one chunk is enough).
    let start = Instant::now();
    while fetch(&c.peer, &refs[..1]).await[0].is_none() {
        assert!(start.elapsed() < WAIT, "C never found A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let got = fetch(&c.peer, &refs).await;
        for (g, c) in got.into_iter().zip(&x) {
            assert_eq!(
                g.expect("a chunk of the burst went missing").unwrap(),
                raw(c)
            );
        }
    }
    for n in [a, c] {
        n.peer.shutdown().await;
    }
}
