//! The resolver against in-memory tiers: the tier contract's rules (per-slot answers, errors
//! that reach the reader as themselves, bad answers reported to the tier that gave them, a store
//! role of its own with write-back off the reader's path), bounded retries, background reads
//! and read-ahead that let reads go first, and one fetch per chunk across the chains of a node.

use std::sync::Arc;
use std::time::Duration;

use dfagent_core::{ChunkTier, ReadError, Retry, TierErrorKind};
use dfagent_resolver::{Resolver, ResolverConfig, ResolverCore};
use dfagent_test_support::tiers::{
    raw_chunk, CorruptingTier, FailingTier, GatedTier, MemStore, MemTier, OpenOnDrop,
};
use dfagent_test_support::wait::poll_until;

fn config() -> ResolverConfig {
    ResolverConfig {
        verify_retries: 2,
        ..ResolverConfig::default()
    }
}

fn resolver(tiers: Vec<Arc<dyn ChunkTier>>) -> Resolver {
    Resolver::standalone(tiers, config())
}

#[tokio::test]
async fn a_flipped_byte_is_fetched_again_from_the_same_tier() {
    let (c, data) = raw_chunk(1, 4096);
    let tier = Arc::new(MemTier::new("flaky", &[(c, data.clone())]).corrupt_first(1));
    let r = resolver(vec![tier.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    assert_eq!(tier.record.requests().len(), 2);
    let st = r.metrics().snapshot();
    assert_eq!(st.tiers[0].verify_failures, 1);
    assert_eq!(st.tiers[0].chunks, 1);
}

#[tokio::test]
async fn a_tier_that_keeps_sending_bad_bytes_is_given_up_for_the_next() {
    let (c, data) = raw_chunk(2, 4096);
    let bad = Arc::new(MemTier::new("bad", &[(c, data.clone())]).corrupt_first(u64::MAX));
    let good = Arc::new(MemTier::new("good", &[(c, data.clone())]));
    let r = resolver(vec![bad.clone(), good.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    // Asked once, then twice more (verify_retries), then the next tier.
    assert_eq!(bad.record.requests().len(), 3);
    assert_eq!(good.record.requests().len(), 1);
    let st = r.metrics().snapshot();
    assert_eq!(st.tiers[0].verify_failures, 3);
    assert_eq!(st.tiers[1].chunks, 1);
}

#[tokio::test]
async fn permanent_corruption_is_a_corrupt_error_not_wrong_bytes() {
    let (c, data) = raw_chunk(3, 4096);
    let bad = Arc::new(MemTier::new("bad", &[(c, data)]).corrupt_first(u64::MAX));
    let r = resolver(vec![bad.clone()]);
    match r.read(&c).await {
        Err(ReadError::Corrupt { digest, detail }) => {
            assert_eq!(digest, c.digest);
            assert!(detail.contains("bad sent bad bytes"), "{detail}");
        }
        other => panic!("expected a corrupt error, got {other:?}"),
    }
    assert_eq!(bad.record.requests().len(), 3);
    // Nothing bad was cached: a second read asks again.
    assert!(r.read(&c).await.is_err());
    assert_eq!(bad.record.requests().len(), 6);
}

#[tokio::test]
async fn a_tier_error_reaches_the_reader_as_itself() {
    let (c, _) = raw_chunk(9, 4096);
    let failing = Arc::new(FailingTier::new(
        "registry",
        TierErrorKind::Status,
        "HTTP 503 after 3 tries",
    ));
    let r = resolver(vec![failing.clone()]);
    match r.read(&c).await {
        Err(e @ ReadError::TierFailed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("registry: HTTP 503 after 3 tries"), "{msg}");
            assert!(
                !msg.contains("unavailable") && !msg.contains("not in any tier"),
                "{msg}"
            );
        }
        other => panic!("expected the tier's error, got {other:?}"),
    }
    let st = r.metrics().snapshot();
    let t = st.tier("registry").unwrap();
    assert_eq!(t.errors, 1);
    assert_eq!(t.errors_by_kind, vec![(TierErrorKind::Status, 1)]);
}

#[tokio::test]
async fn a_later_tier_answers_what_an_earlier_one_failed() {
    let (c, data) = raw_chunk(10, 4096);
    let failing = Arc::new(FailingTier::new("peer", TierErrorKind::Network, "reset"));
    let good = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let r = resolver(vec![failing, good]);
    assert_eq!(r.read(&c).await.unwrap(), data);
}

#[tokio::test]
async fn a_chunk_no_tier_has_is_not_found() {
    let (c, _) = raw_chunk(11, 4096);
    let empty = Arc::new(MemTier::new("empty", &[]));
    let r = resolver(vec![empty]);
    assert!(matches!(r.read(&c).await, Err(ReadError::NotFound { .. })));
}

#[tokio::test]
async fn a_bad_answer_is_reported_to_the_tier_that_gave_it() {
    let (c, data) = raw_chunk(12, 4096);
    let liar = Arc::new(
        CorruptingTier::new(
            "peer",
            Arc::new(MemTier::new("inner", &[(c, data.clone())])),
            u64::MAX,
        )
        .on_bad_answer(Retry::Next),
    );
    let honest = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let r = resolver(vec![liar.clone(), honest.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    // The liar heard about its bad answer, once, and was not asked again (it said Next).
    assert_eq!(liar.record.bad_answers(), vec![c.digest]);
    assert_eq!(liar.record.requests().len(), 1);
    // The honest tier heard nothing bad.
    assert!(honest.record.bad_answers().is_empty());
}

fn core_with_store(store: Arc<MemStore>, write_queue: usize) -> Arc<ResolverCore> {
    ResolverCore::with_store(
        store,
        ResolverConfig {
            write_queue,
            ..config()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_write_does_not_delay_a_read() {
    let chunks: Vec<_> = (20..24).map(|s| raw_chunk(s, 4096)).collect();
    let store = Arc::new(MemStore::new());
    store.hold_puts();
    let core = core_with_store(store.clone(), 64);
    let tier = Arc::new(MemTier::new("registry", &chunks));
    let r = Resolver::new(core.clone(), vec![tier]);
    let refs: Vec<_> = chunks.iter().map(|(c, _)| *c).collect();
    // Every write is held inside the store, yet the read completes.
    let got = tokio::time::timeout(Duration::from_secs(10), r.read_batch(&refs))
        .await
        .expect("a read waited for the store");
    for (g, (_, want)) in got.iter().zip(&chunks) {
        assert_eq!(g.as_ref().unwrap(), want);
    }
    assert_eq!(store.puts(), 0);
    store.release_puts();
    tokio::time::timeout(Duration::from_secs(10), r.flush())
        .await
        .unwrap();
    assert_eq!(store.puts(), 4);
    for (c, _) in &chunks {
        assert!(store.contains(&c.digest));
    }
    assert_eq!(r.metrics().snapshot().writes_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_back_queue_drops_and_counts() {
    let chunks: Vec<_> = (30..38).map(|s| raw_chunk(s, 4096)).collect();
    let store = Arc::new(MemStore::new());
    store.hold_puts();
    let core = core_with_store(store.clone(), 2);
    let tier = Arc::new(MemTier::new("registry", &chunks));
    let r = Resolver::new(core.clone(), vec![tier]);
    let refs: Vec<_> = chunks.iter().map(|(c, _)| *c).collect();
    let got = tokio::time::timeout(Duration::from_secs(10), r.read_batch(&refs))
        .await
        .expect("a read waited for a full queue");
    assert!(got.iter().all(|g| g.is_ok()));
    let st = r.metrics().snapshot();
    // One write may be inside the held put, two wait in the queue; the rest were dropped.
    assert!(st.writes_dropped >= 8 - 3, "{st:?}");
    assert_eq!(st.writes_dropped + st.writes_queued, 8);
    assert_eq!(core.stats().writes_dropped, st.writes_dropped);
    store.release_puts();
    r.flush().await;
    assert_eq!(store.puts(), st.writes_queued);
}

#[tokio::test]
async fn a_bad_store_copy_is_rejected_and_fetched_from_the_next_tier() {
    let (c, data) = raw_chunk(40, 4096);
    let store = Arc::new(MemStore::new());
    let mut tampered = data.to_vec();
    tampered[7] ^= 1;
    store.insert(c.digest, tampered.into(), dfagent_core::Compression::None);
    let core = core_with_store(store.clone(), 8);
    let tier = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let r = Resolver::new(core, vec![tier.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    assert_eq!(store.rejected(), vec![c.digest]);
    // The store is asked once and never again for that chunk in this read.
    assert_eq!(store.record.requests().len(), 1);
    assert_eq!(tier.record.requests().len(), 1);
    r.flush().await;
    assert!(store.contains(&c.digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chains_of_a_node_fetch_a_shared_chunk_once() {
    let (c, data) = raw_chunk(50, 4096);
    let core = ResolverCore::without_store(config());
    let inner: Arc<dyn ChunkTier> = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let gated = Arc::new(GatedTier::new(inner, c.digest));
    let _open = OpenOnDrop(gated.clone());
    let other = Arc::new(MemTier::new("registry", &[(c, data.clone())]));
    let a = Arc::new(Resolver::new(core.clone(), vec![gated.clone()]));
    let b = Arc::new(Resolver::new(core.clone(), vec![other.clone()]));
    let ra = a.clone();
    let first = tokio::spawn(async move { ra.read(&c).await });
    for _ in 0..200 {
        if gated.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rb = b.clone();
    let second = tokio::spawn(async move { rb.read(&c).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gated.open();
    assert_eq!(first.await.unwrap().unwrap(), data);
    assert_eq!(second.await.unwrap().unwrap(), data);
    // The second chain waited for the first chain's fetch instead of asking its own tier.
    assert!(other.record.requests().is_empty());
    assert_eq!(b.metrics().snapshot().coalesced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_waits_for_reads_in_flight() {
    let (fg, fg_data) = raw_chunk(4, 4096);
    let (bg, bg_data) = raw_chunk(5, 4096);
    let inner: Arc<dyn ChunkTier> = Arc::new(MemTier::new(
        "mem",
        &[(fg, fg_data.clone()), (bg, bg_data.clone())],
    ));
    let tier = Arc::new(GatedTier::new(inner, fg.digest));
    let _open = OpenOnDrop(tier.clone());
    let r = Arc::new(resolver(vec![tier.clone()]));

    let r1 = r.clone();
    let foreground = tokio::spawn(async move { r1.read_batch(&[fg]).await });
    // The foreground request is with the tier (and held there).
    within_10s("the read at the tier", || tier.record.in_request() == 1).await;
    assert_eq!(tier.record.requests().len(), 1);
    let r2 = r.clone();
    let background = tokio::spawn(async move { r2.read_batch_background(&[bg]).await });
    // While the read is held, the background batch does not reach the tier.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tier.record.requests().len(),
        1,
        "background went ahead of a read"
    );
    tier.open();
    let f = foreground.await.unwrap();
    let b = background.await.unwrap();
    assert_eq!(f[0].as_ref().unwrap(), &fg_data);
    assert_eq!(b[0].as_ref().unwrap(), &bg_data);
    assert_eq!(
        tier.record.requests(),
        vec![vec![fg.digest], vec![bg.digest]]
    );
}

/// Poll `cond` until it holds, failing the test (naming `what`) after 10 s.
async fn within_10s(what: &str, cond: impl FnMut() -> bool) {
    poll_until(what, Duration::from_secs(10), cond).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_lets_the_chains_reads_at_the_tiers_go_first_for_a_bounded_time() {
    let (fg, fg_data) = raw_chunk(60, 4096);
    let (ahead, ahead_data) = raw_chunk(61, 4096);
    let (later, later_data) = raw_chunk(62, 4096);
    let (stored, stored_data) = raw_chunk(63, 4096);
    let inner: Arc<dyn ChunkTier> = Arc::new(MemTier::new(
        "mem",
        &[
            (fg, fg_data.clone()),
            (ahead, ahead_data.clone()),
            (later, later_data.clone()),
        ],
    ));
    let tier = Arc::new(GatedTier::new(inner, fg.digest));
    let _open = OpenOnDrop(tier.clone());
    let store = Arc::new(MemStore::new());
    store.insert(
        stored.digest,
        stored_data.clone(),
        dfagent_core::Compression::None,
    );
    let r = Arc::new(Resolver::new(core_with_store(store, 8), vec![tier.clone()]));

    let r1 = r.clone();
    let read = tokio::spawn(async move { r1.read_batch(&[fg]).await });
    within_10s("the read at the tier", || tier.record.in_request() == 1).await;
    // A chunk the store holds is read ahead at once: only the tiers are yielded.
    let got = r.read_batch_ahead(&[stored]).await;
    assert_eq!(got[0].as_ref().unwrap(), &stored_data);
    // Read-ahead that must ask the tier waits while the read is there...
    let r2 = r.clone();
    let first = tokio::spawn(async move { r2.read_batch_ahead(&[ahead]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tier.record.requests().len(),
        1,
        "read-ahead went ahead of a read"
    );
    // ...but not for ever: past its bound it goes while the read is still held.
    within_10s("read-ahead past its bound", || {
        tier.record.requests().len() == 2
    })
    .await;
    assert_eq!(first.await.unwrap()[0].as_ref().unwrap(), &ahead_data);
    tier.open();
    assert_eq!(read.await.unwrap()[0].as_ref().unwrap(), &fg_data);
    // With no read at the tiers, read-ahead goes straight there.
    assert_eq!(
        r.read_batch_ahead(&[later]).await[0].as_ref().unwrap(),
        &later_data
    );
    assert_eq!(
        tier.record.requests(),
        vec![vec![fg.digest], vec![ahead.digest], vec![later.digest]]
    );
}
