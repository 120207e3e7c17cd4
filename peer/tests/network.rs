//! Peer nodes in one process, on 127.0.0.1: fetching through the tier, liars, tampered local
//! chunks, secrets, busy servers, identities, over-limit requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{
    decode_chunk, encode_chunk, slots_for, Answer, BlobId, ChunkRef, Compression, DigestAlgo, Retry,
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
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), bootstrap);
    tweak(&mut cfg);
    let peer = Peer::start(cfg, store).await.unwrap();
    assert!(!peer.status().listen.is_empty());
    Node { peer, _dir: dir }
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
    let start = Instant::now();
    let mut bad = 0;
    while bad == 0 {
        for (g, r) in fetch(&c.peer, &refs).await.into_iter().zip(&refs) {
            match g {
                Some(Err(detail)) => {
                    bad += 1;
                    // No other provider is known yet.
                    assert_eq!(tier.bad_answer(r, &detail), Retry::Next);
                }
                Some(Ok(_)) => panic!("a flipped chunk verified"),
                None => {}
            }
        }
        assert!(start.elapsed() < WAIT, "the liar was never asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
