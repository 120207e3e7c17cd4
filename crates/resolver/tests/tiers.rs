//! The resolver against in-memory tiers: a tier that sends bad bytes is asked again a bounded
//! number of times, then the next tier is tried; background reads let foreground reads go
//! first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dfagent_core::{
    BlobId, BoxFuture, ChunkDigest, ChunkRef, ChunkSource, Compression, DigestAlgo, ReadError,
    SourceError, StoredChunk,
};
use dfagent_resolver::{Resolver, ResolverConfig};
use tokio::sync::Semaphore;

/// A tier holding chunks in memory. It corrupts its first `bad_answers` answers per chunk,
/// records every request, and (when gated) holds requests for `gated` chunks until released.
struct MemTier {
    name: &'static str,
    chunks: HashMap<ChunkDigest, Bytes>,
    bad_answers: u64,
    answered: Mutex<HashMap<ChunkDigest, u64>>,
    requests: Mutex<Vec<Vec<ChunkDigest>>>,
    gated: Option<(ChunkDigest, Arc<Semaphore>)>,
    in_request: AtomicU64,
}

impl MemTier {
    fn new(name: &'static str, chunks: &[(ChunkRef, Bytes)], bad_answers: u64) -> Self {
        MemTier {
            name,
            chunks: chunks.iter().map(|(c, d)| (c.digest, d.clone())).collect(),
            bad_answers,
            answered: Mutex::default(),
            requests: Mutex::default(),
            gated: None,
            in_request: AtomicU64::new(0),
        }
    }

    fn requests(&self) -> Vec<Vec<ChunkDigest>> {
        self.requests.lock().unwrap().clone()
    }
}

impl ChunkSource for MemTier {
    fn name(&self) -> &str {
        self.name
    }

    fn fetch<'a>(
        &'a self,
        chunks: &'a [ChunkRef],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, SourceError>> {
        Box::pin(async move {
            self.requests
                .lock()
                .unwrap()
                .push(chunks.iter().map(|c| c.digest).collect());
            self.in_request.fetch_add(1, Ordering::SeqCst);
            if let Some((d, gate)) = &self.gated {
                if chunks.iter().any(|c| c.digest == *d) {
                    let _ = gate.acquire().await;
                }
            }
            let mut out = Vec::new();
            for (index, c) in chunks.iter().enumerate() {
                let Some(data) = self.chunks.get(&c.digest) else {
                    continue;
                };
                let n = {
                    let mut a = self.answered.lock().unwrap();
                    let n = a.entry(c.digest).or_default();
                    *n += 1;
                    *n
                };
                let mut data = data.to_vec();
                if n <= self.bad_answers {
                    data[0] ^= 1;
                }
                out.push(StoredChunk {
                    index,
                    data: Bytes::from(data),
                    compression: Compression::None,
                });
            }
            Ok(out)
        })
    }
}

fn chunk(seed: u8) -> (ChunkRef, Bytes) {
    let data = Bytes::from(vec![seed; 4096]);
    let c = ChunkRef {
        digest: DigestAlgo::Blake3.digest(&data),
        blob: BlobId::from_bytes([7; 32]),
        compressed_offset: u64::from(seed) * 4096,
        compressed_size: 4096,
        uncompressed_size: 4096,
        compression: Compression::None,
    };
    (c, data)
}

fn resolver(tiers: Vec<Arc<MemTier>>) -> Resolver {
    Resolver::new(
        tiers
            .into_iter()
            .map(|t| t as Arc<dyn ChunkSource>)
            .collect(),
        ResolverConfig {
            verify_retries: 2,
            ..ResolverConfig::default()
        },
    )
}

#[tokio::test]
async fn a_flipped_byte_is_fetched_again_from_the_same_tier() {
    let (c, data) = chunk(1);
    let tier = Arc::new(MemTier::new("flaky", &[(c, data.clone())], 1));
    let r = resolver(vec![tier.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    assert_eq!(tier.requests().len(), 2);
    let st = r.metrics().snapshot();
    assert_eq!(st.tiers[0].verify_failures, 1);
    assert_eq!(st.tiers[0].chunks, 1);
}

#[tokio::test]
async fn a_tier_that_keeps_sending_bad_bytes_is_given_up_for_the_next() {
    let (c, data) = chunk(2);
    let bad = Arc::new(MemTier::new("bad", &[(c, data.clone())], u64::MAX));
    let good = Arc::new(MemTier::new("good", &[(c, data.clone())], 0));
    let r = resolver(vec![bad.clone(), good.clone()]);
    assert_eq!(r.read(&c).await.unwrap(), data);
    // Asked once, then twice more (verify_retries), then the next tier.
    assert_eq!(bad.requests().len(), 3);
    assert_eq!(good.requests().len(), 1);
    let st = r.metrics().snapshot();
    assert_eq!(st.tiers[0].verify_failures, 3);
    assert_eq!(st.tiers[1].chunks, 1);
}

#[tokio::test]
async fn permanent_corruption_is_a_corrupt_error_not_wrong_bytes() {
    let (c, data) = chunk(3);
    let bad = Arc::new(MemTier::new("bad", &[(c, data)], u64::MAX));
    let r = resolver(vec![bad.clone()]);
    match r.read(&c).await {
        Err(ReadError::Corrupt { digest, detail }) => {
            assert_eq!(digest, c.digest);
            assert!(detail.contains("bad sent bad bytes"), "{detail}");
        }
        other => panic!("expected a corrupt error, got {other:?}"),
    }
    assert_eq!(bad.requests().len(), 3);
    // Nothing bad was cached: a second read asks again.
    assert!(r.read(&c).await.is_err());
    assert_eq!(bad.requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_waits_for_reads_in_flight() {
    let (fg, fg_data) = chunk(4);
    let (bg, bg_data) = chunk(5);
    let gate = Arc::new(Semaphore::new(0));
    let mut tier = MemTier::new("gated", &[(fg, fg_data.clone()), (bg, bg_data.clone())], 0);
    tier.gated = Some((fg.digest, gate.clone()));
    let tier = Arc::new(tier);
    let r = Arc::new(resolver(vec![tier.clone()]));

    let r1 = r.clone();
    let foreground = tokio::spawn(async move { r1.read_batch(&[fg]).await });
    // The foreground request is with the tier (and held there).
    for _ in 0..200 {
        if tier.in_request.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tier.requests().len(), 1);
    let r2 = r.clone();
    let background = tokio::spawn(async move { r2.read_batch_background(&[bg]).await });
    // While the read is held, the background batch does not reach the tier.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tier.requests().len(), 1, "background went ahead of a read");
    gate.add_permits(1);
    let f = foreground.await.unwrap();
    let b = background.await.unwrap();
    assert_eq!(f[0].as_ref().unwrap(), &fg_data);
    assert_eq!(b[0].as_ref().unwrap(), &bg_data);
    assert_eq!(tier.requests(), vec![vec![fg.digest], vec![bg.digest]]);
}
