//! The registry client against a real `docker-registry` on 127.0.0.1 that misbehaves the way
//! registries do: Bearer tokens that expire while an image is being read (Docker Hub's last
//! minutes; here 2 s), whether the token service announces that or not; many reads refused at
//! once; 503 and 429 answers with `Retry-After` (delta-seconds and HTTP-dates) from a registry
//! that refuses a retry that comes too early; a registry that stays busy; and faults on the
//! wire (a body cut short, a dropped connection, a slow trickle, a flipped byte). That logs and
//! errors carry no secret is checked in `secrets.rs`.
//!
//! No assertion is about time: the tests count attempts, tokens, 401s and bytes. Every wait is
//! bounded (`within`), every pause is fixed.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{anonymous_client, blob_bytes, client_with, fixture, token_setup, IMAGE};
use dfagent_core::{decode_chunk, slots_for, Answer, ChunkRef, ChunkTier, TierErrorKind};
use dfagent_registry::{NydusImage, RegistryError, RegistryTier};
use dfagent_test_support::proxy::{first_n, Action, Proxy, Request, RetryAfter, Seen};
use dfagent_test_support::registry::Registry as RegistryProc;
use dfagent_test_support::token::ExpiresIn;
use dfagent_test_support::wait::within;

/// Chunks per tier batch while reading slowly.
const BATCH: usize = 8;
/// How long the slow reads are spread over (at least): four lifetimes of a 2 s token.
const SPAN: Duration = Duration::from_millis(8500);

/// Every distinct chunk of every regular file of `bootstrap`.
fn all_chunks(bootstrap: &Path) -> Vec<ChunkRef> {
    let image = dfagent_rafs::Image::open(bootstrap).expect("open fixture bootstrap");
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    image
        .walk(|e| {
            if e.inode.file_type == dfagent_rafs::FileType::File && e.inode.size > 0 {
                for c in image.chunks(&e.inode, 0, e.inode.size)? {
                    if seen.insert((c.chunk.blob, c.chunk.compressed_offset)) {
                        out.push(c.chunk);
                    }
                }
            }
            Ok(())
        })
        .expect("walk");
    out
}

/// Read `chunks` through `tier` in batches of [`BATCH`], pausing between batches so that the
/// whole read spans at least [`SPAN`], and check that every chunk decodes and verifies.
/// Returns the number of batches.
async fn read_slowly(tier: &RegistryTier, chunks: &[ChunkRef]) -> usize {
    let batches = chunks.len().div_ceil(BATCH);
    let pause = SPAN / u32::try_from(batches.max(1)).expect("batch count");
    for (b, batch) in chunks.chunks(BATCH).enumerate() {
        let mut slots = slots_for(batch);
        within("fetch", tier.fetch(&mut slots)).await;
        for (slot, c) in slots.iter().zip(batch) {
            match slot.answer() {
                Answer::Found(sc) => {
                    let data = decode_chunk(c, &sc.data).unwrap_or_else(|e| {
                        panic!("batch {b}: chunk {} does not verify: {e}", c.digest)
                    });
                    assert_eq!(data.len(), c.uncompressed_size as usize);
                }
                other => panic!("batch {b}: chunk {} not read: {other:?}", c.digest),
            }
        }
        tokio::time::sleep(pause).await;
    }
    batches
}

fn refused_blob_gets(log: &[Seen]) -> usize {
    log.iter()
        .filter(|r| r.is_blob_get() && r.status == 401)
        .count()
}

/// Read the whole image slowly through tokens living 2 s (the run spans four lifetimes);
/// returns (tokens issued during the read, blob GETs refused with 401, blob GETs).
async fn read_through_short_tokens(expires_in: ExpiresIn) -> (usize, usize, usize) {
    let s = token_setup(Duration::from_secs(2), expires_in).await;
    let img = within("resolve", s.client.resolve(&s.reference))
        .await
        .expect("resolve");
    let chunks = all_chunks(&fixture(IMAGE).0);
    assert!(chunks.len() > 100, "a many-chunk image: {}", chunks.len());
    let tier = RegistryTier::new(Arc::new(s.client), Arc::new(img));
    let before = s.tokens.issued();
    s.proxy.take_log();
    let started = Instant::now();
    let batches = read_slowly(&tier, &chunks).await;
    let issued = s.tokens.issued() - before;
    let log = s.proxy.take_log();
    let gets = log.iter().filter(|r| r.is_blob_get()).count();
    let refused = refused_blob_gets(&log);
    eprintln!(
        "{expires_in:?}: {} chunks in {batches} batches over {:?}: {gets} blob GETs, \
         {refused} refused (401), {issued} tokens issued ({} token requests in all)",
        chunks.len(),
        started.elapsed(),
        s.tokens.requests(),
    );
    (issued, refused, gets)
}

/// Tokens whose service announces their real 2 s lifetime: renewed as they come due (or when
/// the registry refuses one a little early), and the whole image reads without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outlive_tokens_that_expire_as_announced() {
    let (issued, _, _) = read_through_short_tokens(ExpiresIn::Lifetime).await;
    // A token lives at most 2 s and the reads span 8.5 s: at least four were needed.
    assert!(issued >= 3, "the token service was asked again: {issued}");
}

/// Tokens announced to live 600 s that the registry drops after 2 s (revoked, clocks apart,
/// Docker Hub's expiry without leeway): every refusal is answered by one renewal and a retry,
/// and the whole image reads without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outlive_tokens_that_die_before_their_announced_time() {
    let (issued, refused, _) = read_through_short_tokens(ExpiresIn::Seconds(600)).await;
    assert!(issued >= 3, "the token service was asked again: {issued}");
    // Nothing renews these tokens before the registry refuses them: each renewal follows a
    // 401, which the reader never saw.
    assert!(refused >= 2, "the registry refused stale tokens: {refused}");
    assert!(refused >= issued, "{refused} refusals, {issued} renewals");
}

/// Sixteen reads refused together (their token died meanwhile) renew it once: one trip to the
/// token service, not sixteen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refused_reads_renew_the_token_once() {
    let s = token_setup(Duration::from_secs(5), ExpiresIn::Seconds(600)).await;
    let img = within("resolve", s.client.resolve(&s.reference))
        .await
        .expect("resolve");
    let (id, size) = img.blobs[0];
    let data = blob_bytes(IMAGE, &id);
    within("first read", s.client.read_range(&img, &id, 0..4096))
        .await
        .expect("first read");
    // The token dies 5 s after issue at the latest (the client thinks 600 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = s.tokens.issued();
    s.proxy.take_log();
    let step = size / 16;
    let reads = (0..16u64).map(|i| {
        let range = i * step..i * step + 1000;
        let (client, img) = (&s.client, &img);
        async move { (range.clone(), client.read_range(img, &id, range).await) }
    });
    let results = within("16 reads", futures::future::join_all(reads)).await;
    for (range, got) in results {
        let got = got.unwrap_or_else(|e| panic!("read {range:?}: {e}"));
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    let log = s.proxy.take_log();
    let refused = refused_blob_gets(&log);
    let renewals = s.tokens.issued() - before;
    eprintln!("16 concurrent reads: {refused} refused, {renewals} renewal(s)");
    assert!(refused >= 1, "the dead token was refused: {log:#?}");
    assert_eq!(renewals, 1, "one renewal for every refused read");
}

// ---------------------------------------------------------------------------------------------
// Busy registries

/// A registry that is busy once: the first request `matching` picks gets `status` with
/// `after`, and so does every such request until that wait is over (a retry that ignores
/// `Retry-After` is refused again); then requests are forwarded.
fn busy_once(
    matching: impl Fn(&Request) -> bool + Send + Sync + 'static,
    status: u16,
    after: RetryAfter,
) -> impl Fn(&Request) -> Action + Send + Sync + 'static {
    let wait = Duration::from_secs(match after {
        RetryAfter::Seconds(s) | RetryAfter::DateIn(s) => s,
    });
    let until: Mutex<Option<Instant>> = Mutex::new(None);
    move |r: &Request| {
        if !matching(r) {
            return Action::Forward;
        }
        let mut until = until.lock().expect("busy state");
        let now = Instant::now();
        match *until {
            Some(t) if now >= t => Action::Forward,
            Some(_) => Action::StatusRetryAfter(status, after),
            None => {
                *until = Some(now + wait);
                Action::StatusRetryAfter(status, after)
            }
        }
    }
}

/// An anonymous registry with `IMAGE` pushed; the reference path.
async fn pushed_registry(tmp: &Path) -> (RegistryProc, String) {
    let registry = RegistryProc::start();
    let (bootstrap, blobs) = fixture(IMAGE);
    let path = "busy/app:v1";
    within(
        "push",
        anonymous_client(tmp).push_nydus(
            &format!("{}/{path}", registry.host()),
            &bootstrap,
            &blobs,
        ),
    )
    .await
    .expect("push");
    (registry, path.to_string())
}

/// `(status, requests)` of the log's entries `matching` picks.
fn statuses(log: &[Seen], matching: impl Fn(&Seen) -> bool) -> Vec<u16> {
    log.iter()
        .filter(|s| matching(s))
        .map(|s| s.status)
        .collect()
}

/// 503 with `Retry-After: 1` for a manifest, 429 with an HTTP-date for a blob range: each is
/// waited for (an early retry would be refused again, and with two retries the read would
/// fail), and the read succeeds on its second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_after_their_retry_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (registry, path) = pushed_registry(tmp.path()).await;
    let is_manifest = |r: &Request| r.method == "GET" && r.path.contains("/manifests/");

    let proxy = Proxy::builder()
        .upstream(registry.addr())
        .policy(busy_once(is_manifest, 503, RetryAfter::Seconds(1)))
        .start();
    let client = client_with(tmp.path().join("none.json"), 2);
    let img = within(
        "resolve",
        client.resolve(&format!("{}/{path}", proxy.host())),
    )
    .await
    .expect("resolve after one 503");
    let log = proxy.take_log();
    assert_eq!(
        statuses(&log, |s| s.path.contains("/manifests/")),
        vec![503, 200],
        "{log:#?}"
    );

    let proxy = Proxy::builder()
        .upstream(registry.addr())
        .policy(busy_once(Request::is_blob_get, 429, RetryAfter::DateIn(1)))
        .start();
    let client = client_with(tmp.path().join("none.json"), 2);
    let img = NydusImage {
        registry: proxy.host(),
        ..img
    };
    let (id, _) = img.blobs[1];
    let data = blob_bytes(IMAGE, &id);
    let got = within("read_range", client.read_range(&img, &id, 100..50_000))
        .await
        .expect("read after one 429");
    assert_eq!(&got[..], &data[100..50_000]);
    let log = proxy.take_log();
    assert_eq!(
        statuses(&log, Seen::is_blob_get),
        vec![429, 206],
        "{log:#?}"
    );
}

/// A registry that stays busy: after the retries (each waiting its `Retry-After`), a typed
/// error naming the status; a `Retry-After` beyond the retry budget is not waited for at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_stays_busy_fails_with_a_typed_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (registry, path) = pushed_registry(tmp.path()).await;
    let reference = |p: &Proxy| format!("{}/{path}", p.host());

    let retries = 2;
    let proxy = Proxy::builder()
        .upstream(registry.addr())
        .policy(first_n(
            usize::MAX,
            Request::is_blob_get,
            Action::StatusRetryAfter(503, RetryAfter::Seconds(1)),
        ))
        .start();
    let client = Arc::new(client_with(tmp.path().join("none.json"), retries));
    let img = within("resolve", client.resolve(&reference(&proxy)))
        .await
        .expect("resolve");
    let (id, _) = img.blobs[0];
    let err = within("read_range", client.read_range(&img, &id, 0..100))
        .await
        .expect_err("always 503");
    eprintln!("always 503: {err}");
    match &err {
        RegistryError::RetriesExhausted {
            attempts,
            retry_after,
            ..
        } => {
            assert_eq!(*attempts, retries + 1);
            assert_eq!(*retry_after, None, "every wait was within the budget");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(err.tier_error_kind(), TierErrorKind::Busy);
    assert_eq!(
        statuses(&proxy.take_log(), Seen::is_blob_get),
        vec![503; retries as usize + 1]
    );

    let proxy = Proxy::builder()
        .upstream(registry.addr())
        .policy(first_n(
            usize::MAX,
            Request::is_blob_get,
            Action::StatusRetryAfter(429, RetryAfter::Seconds(3600)),
        ))
        .start();
    let img = within("resolve", client.resolve(&reference(&proxy)))
        .await
        .expect("resolve");
    let err = within("read_range", client.read_range(&img, &id, 0..100))
        .await
        .expect_err("429 for an hour");
    eprintln!("429 for an hour: {err}");
    match &err {
        RegistryError::RetriesExhausted {
            attempts,
            retry_after,
            ..
        } => {
            assert_eq!(*attempts, 1, "an hour is beyond the budget: no retry");
            assert_eq!(*retry_after, Some(Duration::from_secs(3600)));
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(err.to_string().contains("retry after 3600"), "{err}");
    assert_eq!(statuses(&proxy.take_log(), Seen::is_blob_get), vec![429]);

    // Through the tier: each chunk of the range fails with the registry's words, kind busy.
    let chunks = all_chunks(&fixture(IMAGE).0);
    let tier = RegistryTier::new(client, Arc::new(img));
    let mut slots = slots_for(&chunks[..2]);
    within("fetch", tier.fetch(&mut slots)).await;
    for slot in &slots {
        match slot.answer() {
            Answer::Failed(e) => {
                assert_eq!(e.kind, TierErrorKind::Busy, "{e}");
                assert!(e.message.contains("429"), "{e}");
            }
            other => panic!("expected the range's failure, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults on the wire

/// A body cut short and a dropped connection are retried; a slow trickle is read; a flipped
/// byte reaches the caller unnoticed (verification is the resolver's), and fails to decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_wire() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (registry, path) = pushed_registry(tmp.path()).await;
    let client = client_with(tmp.path().join("none.json"), 2);
    let chunks = all_chunks(&fixture(IMAGE).0);
    let chunk = *chunks
        .iter()
        .max_by_key(|c| c.compressed_size)
        .expect("a chunk");
    let data = blob_bytes(IMAGE, &chunk.blob);
    let want = &data[chunk.blob_range().start as usize..chunk.blob_range().end as usize];

    for (action, gets) in [
        (Action::Truncate(100), 2),
        (Action::Close, 2),
        (
            Action::Trickle {
                chunk: 4096,
                pause_ms: 2,
            },
            1,
        ),
        (Action::FlipByte, 1),
    ] {
        let proxy = Proxy::builder()
            .upstream(registry.addr())
            .policy(first_n(1, Request::is_blob_get, action))
            .start();
        let img = within(
            "resolve",
            client.resolve(&format!("{}/{path}", proxy.host())),
        )
        .await
        .expect("resolve");
        let got = within(
            "read_range",
            client.read_range(&img, &chunk.blob, chunk.blob_range()),
        )
        .await
        .unwrap_or_else(|e| panic!("{action:?}: {e}"));
        let log = proxy.take_log();
        assert_eq!(
            log.iter().filter(|s| s.is_blob_get()).count(),
            gets,
            "{action:?}: {log:#?}"
        );
        if action == Action::FlipByte {
            let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 1, "one byte flipped");
            assert!(
                decode_chunk(&chunk, &got).is_err(),
                "and caught by verification"
            );
        } else {
            assert_eq!(&got[..], want, "{action:?}");
            decode_chunk(&chunk, &got).expect("verifies");
        }
    }
}

/// A push whose manifest PUT is refused once with 401 authenticates again and sends it once
/// more; refused twice, it fails with a typed authentication error (no loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_once_authenticates_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = RegistryProc::start();
    let (bootstrap, blobs) = fixture("v6-zstd-blake3");
    let is_manifest_put = |r: &Request| r.method == "PUT" && r.path.contains("/manifests/");
    let manifest_puts =
        |log: &[Seen]| statuses(log, |s| s.method == "PUT" && s.path.contains("/manifests/"));
    for (refusals, outcome) in [(1, vec![401, 201]), (2, vec![401, 401])] {
        let proxy = Proxy::builder()
            .upstream(registry.addr())
            .policy(first_n(refusals, is_manifest_put, Action::Status(401)))
            .start();
        let reference = format!("{}/pushes/app:v{refusals}", proxy.host());
        let pushed = within(
            "push",
            anonymous_client(tmp.path()).push_nydus(&reference, &bootstrap, &blobs),
        )
        .await;
        assert_eq!(manifest_puts(&proxy.take_log()), outcome);
        match (refusals, pushed) {
            (1, Ok(digest)) => assert!(digest.starts_with("sha256:")),
            (2, Err(e)) => assert!(matches!(e, RegistryError::Auth { .. }), "{e:?}"),
            (n, other) => panic!("{n} refusals: {other:?}"),
        }
    }
}
