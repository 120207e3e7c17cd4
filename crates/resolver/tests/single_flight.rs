//! Single flight: one fetch per chunk node-wide however many readers (of however many chains)
//! want it, counted as `coalesced`; and a leader whose read is cancelled mid-fetch (its task
//! aborted, its future dropped) leaves its followers a clean retry, not a hang, and nothing in
//! flight.
//!
//! Readers are held at a [`GatedTier`]'s gate, and the test waits (bounded) until the counters
//! show every reader in place before it opens the gate or cancels the leader: no sleeps stand
//! in for synchronisation. Every await of a reader is bounded, as a failure guard.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfagent_core::{ChunkRef, ChunkTier, ReadError};
use dfagent_resolver::{Resolver, ResolverConfig, ResolverCore};
use dfagent_test_support::tiers::{raw_chunk, GatedTier, MemTier, OpenOnDrop};
use dfagent_test_support::wait::{poll_until, within};
use tokio::task::JoinHandle;

/// Poll `cond` until it holds, failing the test (naming `what`) after 20 s.
async fn until(what: &str, cond: impl FnMut() -> bool) {
    poll_until(what, Duration::from_secs(20), cond).await
}

fn spawn_read(r: &Arc<Resolver>, c: ChunkRef) -> JoinHandle<Result<Bytes, ReadError>> {
    let r = r.clone();
    tokio::spawn(async move { r.read(&c).await })
}

/// A gated tier in front of an in-memory one holding `c`.
fn gated(c: ChunkRef, data: &Bytes) -> (Arc<GatedTier>, Arc<MemTier>) {
    let inner = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let inner_dyn: Arc<dyn ChunkTier> = inner.clone();
    (Arc::new(GatedTier::new(inner_dyn, c.digest)), inner)
}

/// One chunk, a node's resolver core, chain `a` reading it through a gated tier (`gate` in
/// front of `inner`) and chain `b` through an ungated one (`other`); the gate opens on drop.
struct Chains {
    c: ChunkRef,
    data: Bytes,
    core: Arc<ResolverCore>,
    gate: Arc<GatedTier>,
    inner: Arc<MemTier>,
    other: Arc<MemTier>,
    a: Arc<Resolver>,
    b: Arc<Resolver>,
    _open: OpenOnDrop,
}

/// [`Chains`] over chunk number `seed`.
fn chains(seed: u8) -> Chains {
    let (c, data) = raw_chunk(seed, 4096);
    let core = ResolverCore::without_store(ResolverConfig::default());
    let (gate, inner) = gated(c, &data);
    let other = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let a = Arc::new(Resolver::new(core.clone(), vec![gate.clone()]));
    let b = Arc::new(Resolver::new(core.clone(), vec![other.clone()]));
    Chains {
        c,
        data,
        core,
        _open: OpenOnDrop(gate.clone()),
        gate,
        inner,
        other,
        a,
        b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_concurrent_reads_across_two_chains_are_one_fetch_and_n_minus_1_coalesced() {
    const N: u64 = 8;
    let Chains {
        c,
        data,
        core,
        gate,
        inner,
        other,
        a,
        b,
        _open,
    } = chains(60);

    // The leader's fetch is held at the gate ...
    let mut readers = vec![spawn_read(&a, c)];
    until("the leader reached the gate", || gate.hits() == 1).await;
    // ... while N - 1 more readers, of both chains, ask for the same chunk.
    for i in 1..N {
        readers.push(spawn_read(if i % 2 == 0 { &a } else { &b }, c));
    }
    until("every other reader waits for the leader", || {
        core.stats().coalesced == N - 1
    })
    .await;
    assert_eq!(core.in_flight(), 1);
    gate.open();
    for r in readers {
        let got = within("a coalesced read", r).await.unwrap();
        assert_eq!(got.unwrap(), data);
    }

    // One fetch, by the leader's chain; the other chain's tier was never asked.
    assert_eq!(gate.record.requests(), vec![vec![c.digest]]);
    assert_eq!(inner.record.requests().len(), 1);
    assert!(other.record.requests().is_empty());
    let st = core.stats();
    assert_eq!(st.fetches, 1);
    assert_eq!(st.cache_misses, N);
    assert_eq!(st.coalesced, N - 1);
    assert_eq!(
        a.metrics().snapshot().coalesced + b.metrics().snapshot().coalesced,
        N - 1
    );
    assert_eq!(b.metrics().snapshot().coalesced, N / 2);
    assert_eq!(core.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_leader_hands_the_fetch_to_a_follower() {
    const FOLLOWERS: u64 = 4;
    let Chains {
        c,
        data,
        core,
        gate,
        inner,
        _open,
        ..
    } = chains(61);
    let r = Arc::new(Resolver::new(core.clone(), vec![gate.clone()]));

    let leader = spawn_read(&r, c);
    until("the leader reached the gate", || gate.hits() == 1).await;
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| spawn_read(&r, c)).collect();
    until("the followers wait for the leader", || {
        core.stats().coalesced == FOLLOWERS
    })
    .await;

    // Cancel the leader mid-fetch: its task is aborted, its read future dropped.
    leader.abort();
    let aborted = within("the aborted leader", leader).await;
    assert!(aborted.is_err_and(|e| e.is_cancelled()));

    // One follower fetches again (held at the still-closed gate); the others wait for it.
    until("a follower took the fetch over", || gate.hits() == 2).await;
    until("the other followers wait for it", || {
        core.stats().coalesced == FOLLOWERS + (FOLLOWERS - 1)
    })
    .await;
    assert_eq!(core.in_flight(), 1);
    gate.open();
    for f in followers {
        let got = within("a follower of an aborted leader", f).await.unwrap();
        assert_eq!(got.unwrap(), data);
    }
    // The aborted fetch never got past the gate; the follower's did, once.
    assert_eq!(gate.record.requests().len(), 2);
    assert_eq!(inner.record.requests().len(), 1);
    assert_eq!(core.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_lets_followers_of_another_chain_fetch_through_theirs() {
    const FOLLOWERS: u64 = 3;
    let Chains {
        c,
        data,
        core,
        gate,
        inner,
        other,
        a,
        b,
        _open,
    } = chains(62);

    // The leader's read is raced against a cancel signal, as a timeout would race it: when the
    // signal wins, the read future is dropped where it stands (at the gate).
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = a.read(&c) => Some(r),
                _ = cancelled => None,
            }
        })
    };
    until("the leader reached the gate", || gate.hits() == 1).await;
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| spawn_read(&b, c)).collect();
    until("the followers wait for the leader", || {
        core.stats().coalesced == FOLLOWERS
    })
    .await;
    cancel.send(()).unwrap();
    let outcome = within("the dropped leader", leader).await.unwrap();
    assert!(
        outcome.is_none(),
        "the leader's read finished instead of being dropped"
    );

    // The gate stays closed: the followers get the chunk through their own chain, fetched once.
    for f in followers {
        let got = within("a follower of a dropped leader", f).await.unwrap();
        assert_eq!(got.unwrap(), data);
    }
    assert_eq!(other.record.requests(), vec![vec![c.digest]]);
    assert!(inner.record.requests().is_empty());
    assert_eq!(core.in_flight(), 0);

    // Nothing of the dropped fetch lingers: a read of the leader's chain is served from the
    // cache without asking its tier (whose gate is still closed).
    let again = within("a read after the drop", a.read(&c)).await;
    assert_eq!(again.unwrap(), data);
    assert_eq!(gate.record.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_without_followers_leaves_nothing_in_flight() {
    let Chains {
        c,
        data,
        core,
        gate,
        inner,
        _open,
        ..
    } = chains(63);
    let r = Arc::new(Resolver::new(core.clone(), vec![gate.clone()]));

    let leader = spawn_read(&r, c);
    until("the leader reached the gate", || gate.hits() == 1).await;
    assert_eq!(core.in_flight(), 1);
    leader.abort();
    assert!(within("the aborted leader", leader)
        .await
        .is_err_and(|e| e.is_cancelled()));
    assert_eq!(core.in_flight(), 0);

    // The next read leads a fetch of its own (nothing stale to wait for) and gets the chunk.
    gate.open();
    let got = within("a read after the abort", r.read(&c)).await;
    assert_eq!(got.unwrap(), data);
    assert_eq!(gate.record.requests().len(), 2);
    assert_eq!(inner.record.requests().len(), 1);
    assert_eq!(core.stats().coalesced, 0);
    assert_eq!(core.in_flight(), 0);
}
