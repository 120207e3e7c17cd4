//! [`DragonflyTier`]: the seeds as a [`ChunkTier`] for one image.
//!
//! A batch becomes merged range requests ([`plan_ranges`], at most `max_range` bytes each). Per
//! blob the origin is asked where the blob lives ([`BlobOrigin::locate`]; `None` leaves its
//! chunks to other tiers). Per range: the seeds the ring gives for the blob's task id (its hex
//! digest), healthy and not avoided, at most `seeds_per_request`, tried in ring order until one
//! answers right (206, the range asked, exactly its bytes); a seed that errs is avoided for
//! `avoid_for_errors` (not for a registry status it relays). A 401 relayed from the registry makes
//! the origin forget its credentials and the range is asked once more with fresh ones. A range no
//! seed answered fails its chunks (so the registry tier is asked). The batch is bounded by
//! `request_timeout` plus a second per MiB asked for; each attempt by the same rule for its
//! range.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfagent_core::ranges::{plan_ranges, RangePlan};
use dfagent_core::{
    BlobId, BlobOrigin, BoxFuture, ChunkRef, ChunkTier, OriginRequest, Retry, Slot, TierError,
};
use futures::StreamExt;

use crate::counters::DragonflyCounters;
use crate::http::{build_request, read_range, Form};
use crate::node::Inner;
use crate::DragonflyError;

/// A range's bytes and the id of the seed that sent them.
type RangeResult = Result<(Bytes, String), DragonflyError>;

/// Range requests of one batch in flight at once.
const CONCURRENT_RANGES: usize = 8;
/// Bytes per second a request is given time for, beyond `request_timeout`.
const MIN_RATE: u64 = 1 << 20;

/// The Dragonfly tier of one image. Made by [`crate::Dragonfly::tier`].
pub struct DragonflyTier {
    inner: Arc<Inner>,
    origin: Arc<dyn BlobOrigin>,
}

impl DragonflyTier {
    pub(crate) fn new(inner: Arc<Inner>, origin: Arc<dyn BlobOrigin>) -> Self {
        Self { inner, origin }
    }

    fn budget(&self, bytes: u64) -> Duration {
        self.inner.config.request_timeout + Duration::from_secs(bytes / MIN_RATE)
    }

    async fn fetch_all(&self, slots: &mut [Slot]) {
        if slots.is_empty() || self.inner.usable_count() == 0 {
            return;
        }
        let wanted: u64 = slots
            .iter()
            .map(|s| u64::from(s.chunk().compressed_size))
            .sum();
        let deadline = tokio::time::Instant::now() + self.budget(wanted);
        // Where each blob lives; blobs the origin does not know are left to other tiers.
        let mut origins: HashMap<BlobId, OriginRequest> = HashMap::new();
        let mut blobs: Vec<BlobId> = slots.iter().map(|s| s.chunk().blob).collect();
        blobs.sort();
        blobs.dedup();
        for blob in blobs {
            match tokio::time::timeout_at(deadline, self.origin.locate(&blob)).await {
                Ok(Ok(Some(req))) => {
                    origins.insert(blob, req);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%blob, error = %e, "origin cannot locate the blob; left to the next tier");
                }
                Err(_) => {
                    tracing::debug!(%blob, "origin locate timed out; left to the next tier");
                    break;
                }
            }
        }
        let known: Vec<usize> = (0..slots.len())
            .filter(|&i| origins.contains_key(&slots[i].chunk().blob))
            .collect();
        if known.is_empty() {
            return;
        }
        let chunks: Vec<ChunkRef> = known.iter().map(|&i| *slots[i].chunk()).collect();
        let max = self.inner.config.max_range.max(1);
        let plans = plan_ranges(&chunks, max);
        tracing::debug!(
            chunks = chunks.len(),
            requests = plans.len(),
            "dragonfly batch planned"
        );
        let origins = &origins;
        let cfg = &self.inner.config;
        // A range only background work wants (prefetch, pull) goes at the prefetch priority,
        // as upstream Nydus marks its prefetch traffic; a range a reader waits for does not.
        let priorities: Vec<i32> = plans
            .iter()
            .map(|plan| {
                let background = plan
                    .members
                    .iter()
                    .all(|(i, _)| slots[known[*i]].is_background());
                if background {
                    cfg.prefetch_priority
                } else {
                    cfg.priority
                }
            })
            .collect();
        let results: Vec<(RangePlan, RangeResult)> =
            futures::stream::iter(plans.into_iter().zip(priorities))
                .map(|(plan, priority)| async move {
                    let res = match origins.get(&plan.blob) {
                        Some(o) => self.fetch_range(&plan, o.clone(), priority, deadline).await,
                        None => Err(DragonflyError::NoSeed),
                    };
                    (plan, res)
                })
                .buffer_unordered(CONCURRENT_RANGES)
                .collect()
                .await;
        for (plan, res) in results {
            match res {
                Ok((data, seed)) => {
                    for (i, rel) in plan.members {
                        let slot = &mut slots[known[i]];
                        let chunk = *slot.chunk();
                        self.inner
                            .record_answer(chunk.blob, chunk.compressed_offset, &seed);
                        DragonflyCounters::inc(&self.inner.counters.chunks);
                        slot.found(data.slice(rel), chunk.compression);
                    }
                }
                Err(DragonflyError::NoSeed) => {}
                Err(e) => {
                    let err = TierError::new("dragonfly", e.kind(), e.to_string());
                    for (i, _) in plan.members {
                        slots[known[i]].failed(err.clone());
                    }
                }
            }
        }
    }

    /// One range from the first seed that answers it right. `Ok((bytes, seed id))`.
    async fn fetch_range(
        &self,
        plan: &RangePlan,
        mut origin: OriginRequest,
        priority: i32,
        deadline: tokio::time::Instant,
    ) -> RangeResult {
        let cfg = &self.inner.config;
        let task_id = plan.blob.hex();
        let seeds = self.inner.select(&task_id, cfg.seeds_per_request.max(1));
        if seeds.is_empty() {
            return Err(DragonflyError::NoSeed);
        }
        let len = plan.range.end - plan.range.start;
        let mut last = DragonflyError::NoSeed;
        let mut reauthenticated = false;
        for (id, proxy, client) in seeds {
            // A seed answers once, or twice when the registry refused the credentials.
            for _ in 0..2 {
                if tokio::time::Instant::now() >= deadline {
                    return Err(last);
                }
                let attempt_end = deadline.min(tokio::time::Instant::now() + self.budget(len));
                let res = self
                    .attempt((&id, proxy, &client), &origin, plan, priority, attempt_end)
                    .await;
                match res {
                    Ok(data) => {
                        DragonflyCounters::inc(&self.inner.counters.requests_ok);
                        DragonflyCounters::add(&self.inner.counters.bytes, len);
                        tracing::debug!(seed = %id, blob = %plan.blob, start = plan.range.start, len, "range from seed");
                        return Ok((data, id));
                    }
                    Err(e) => {
                        self.inner.counters.error(e.kind());
                        tracing::debug!(seed = %id, blob = %plan.blob, start = plan.range.start, len, error = %e, "seed range failed");
                        if matches!(e, DragonflyError::Unauthorized { .. }) && !reauthenticated {
                            reauthenticated = true;
                            DragonflyCounters::inc(&self.inner.counters.credentials_refused);
                            self.origin.credentials_refused();
                            match tokio::time::timeout_at(deadline, self.origin.locate(&plan.blob))
                                .await
                            {
                                Ok(Ok(Some(fresh))) => {
                                    origin = fresh;
                                    last = e;
                                    continue;
                                }
                                _ => return Err(e),
                            }
                        }
                        if matches!(
                            e,
                            DragonflyError::InvalidHeader { .. } | DragonflyError::BadUrl(_)
                        ) {
                            // Our request cannot be sent to any seed.
                            return Err(e);
                        }
                        if e.blames_seed() {
                            self.inner.avoid(
                                &id,
                                cfg.avoid_for_errors,
                                &format!("request failed: {e}"),
                            );
                        }
                        last = e;
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// One request for `plan`'s range to seed `(id, proxy, client)`, at `priority`.
    async fn attempt(
        &self,
        (id, proxy, client): (&str, SocketAddr, &reqwest::Client),
        origin: &OriginRequest,
        plan: &RangePlan,
        priority: i32,
        until: tokio::time::Instant,
    ) -> Result<Bytes, DragonflyError> {
        let cfg = &self.inner.config;
        let req = build_request(origin, &plan.range, cfg, priority, proxy)?;
        let client = match req.form {
            Form::Forward => client,
            Form::Mirror => &self.inner.direct,
        };
        DragonflyCounters::inc(&self.inner.counters.requests);
        let work = async {
            let resp = client
                .get(&req.url)
                .headers(req.headers)
                .send()
                .await
                .map_err(|e| DragonflyError::Network {
                    seed: id.to_string(),
                    detail: network_detail(&e),
                })?;
            read_range(resp, &plan.range, id).await
        };
        match tokio::time::timeout_at(until, work).await {
            Ok(r) => r,
            Err(_) => Err(DragonflyError::Timeout {
                seed: id.to_string(),
            }),
        }
    }
}

/// A reqwest error said without its URL (a presigned URL could carry a secret in its query).
fn network_detail(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "connect failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() {
        "body failed"
    } else {
        "failed"
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut inner = String::new();
    // Bounded: error chains are short, and at most four levels are said.
    for _ in 0..4 {
        let Some(s) = src else { break };
        inner = s.to_string();
        src = s.source();
    }
    if inner.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {inner}")
    }
}

impl ChunkTier for DragonflyTier {
    fn name(&self) -> &str {
        "dragonfly"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(self.fetch_all(slots))
    }

    /// The seed that answered `chunk` sent bytes that failed verification: avoid it for
    /// `avoid_for_bad_bytes`, count it, and go on to the next tier.
    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        DragonflyCounters::inc(&self.inner.counters.verification_failures);
        let Some(seed) = self.inner.take_answer(chunk.blob, chunk.compressed_offset) else {
            tracing::warn!(chunk = %chunk.digest, blob = %chunk.blob, detail, "bad chunk from an unknown seed");
            return Retry::Next;
        };
        tracing::warn!(%seed, chunk = %chunk.digest, blob = %chunk.blob, offset = chunk.compressed_offset, detail, "seed peer sent a chunk that failed verification");
        self.inner.avoid(
            &seed,
            self.inner.config.avoid_for_bad_bytes,
            "sent a chunk that failed verification",
        );
        Retry::Next
    }
}

#[cfg(test)]
mod tests {
    //! Against tiny HTTP servers that stand in for *misbehaving* seeds: a plain TCP listener
    //! answering canned responses (no real component misbehaves on demand).
    use super::*;
    use crate::node::tests::client_with;
    use crate::{Dragonfly, DragonflyConfig};
    use dfagent_core::{Answer, Compression, DigestAlgo, TierErrorKind};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Behavior {
        Good,
        WrongRange,
        NoContentRange,
        Ok200,
        ShortBody,
        LongBodyNoLength,
        LongContentLength,
        Unauthorized,
        BackendError,
        Corrupt,
    }

    struct FakeSeed {
        port: u16,
        behavior: Arc<Mutex<Vec<Behavior>>>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl FakeSeed {
        /// Answer the next requests with `b` (the last one repeats).
        fn set(&self, b: &[Behavior]) {
            *self.behavior.lock().unwrap() = b.to_vec();
        }
        fn count(&self) -> usize {
            self.requests.lock().unwrap().len()
        }
        fn last(&self) -> String {
            self.requests
                .lock()
                .unwrap()
                .last()
                .cloned()
                .unwrap_or_default()
        }
    }

    fn blob_bytes() -> Arc<Vec<u8>> {
        Arc::new(
            (0..300_000u32)
                .map(|i| (i.wrapping_mul(7) % 251) as u8)
                .collect(),
        )
    }

    async fn fake_seed(blob: Arc<Vec<u8>>) -> FakeSeed {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let behavior = Arc::new(Mutex::new(vec![Behavior::Good]));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (behavior.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (b, r, blob) = (b.clone(), r.clone(), blob.clone());
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), serve(s, b, r, blob)).await;
                });
            }
        });
        FakeSeed {
            port,
            behavior,
            requests,
        }
    }

    async fn serve(
        mut s: tokio::net::TcpStream,
        behavior: Arc<Mutex<Vec<Behavior>>>,
        requests: Arc<Mutex<Vec<String>>>,
        blob: Arc<Vec<u8>>,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let b = {
            let mut v = behavior.lock().unwrap();
            if v.len() > 1 {
                v.remove(0)
            } else {
                v[0]
            }
        };
        requests.lock().unwrap().push(head.clone());
        let range = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("range: bytes=")
                    .map(str::to_string)
            })
            .and_then(|r| {
                let (a, b) = r.trim().split_once('-')?;
                Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
            });
        let Some((a, e)) = range else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let mut body = blob[a..=e].to_vec();
        let total = blob.len();
        let ok_head = |cr: &str, len: usize| {
            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: {cr}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        };
        let resp: Vec<u8> = match b {
            Behavior::Good | Behavior::Corrupt => {
                if b == Behavior::Corrupt {
                    body[0] ^= 0xff;
                }
                [ok_head(&format!("bytes {a}-{e}/{total}"), body.len()).into_bytes(), body].concat()
            }
            Behavior::WrongRange => [
                ok_head(&format!("bytes {}-{}/{total}", a + 1, e + 1), body.len()).into_bytes(),
                blob[a + 1..=e + 1].to_vec(),
            ]
            .concat(),
            Behavior::NoContentRange => [
                format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes(),
                body,
            ]
            .concat(),
            Behavior::Ok200 => [
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes(),
                body,
            ]
            .concat(),
            Behavior::ShortBody => {
                let n = body.len();
                body.truncate(n / 2);
                [ok_head(&format!("bytes {a}-{e}/{total}"), n).into_bytes(), body].concat()
            }
            Behavior::LongBodyNoLength => {
                body.extend_from_slice(&[0u8; 1000]);
                [
                    format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{e}/{total}\r\nConnection: close\r\n\r\n").into_bytes(),
                    body,
                ]
                .concat()
            }
            Behavior::LongContentLength => {
                body.extend_from_slice(&[0u8; 10]);
                [ok_head(&format!("bytes {a}-{e}/{total}"), body.len()).into_bytes(), body].concat()
            }
            Behavior::Unauthorized => b"HTTP/1.1 401 Unauthorized\r\nX-Dragonfly-Error-Type: backend\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            Behavior::BackendError => b"HTTP/1.1 404 Not Found\r\nX-Dragonfly-Error-Type: backend\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        };
        let _ = s.write_all(&resp).await;
        let _ = s.shutdown().await;
    }

    struct TestOrigin {
        url: String,
        locates: AtomicUsize,
        refused: AtomicUsize,
    }

    impl BlobOrigin for TestOrigin {
        fn locate<'a>(
            &'a self,
            _blob: &'a BlobId,
        ) -> BoxFuture<'a, Result<Option<OriginRequest>, TierError>> {
            let n = self.locates.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(Some(OriginRequest {
                    url: self.url.clone(),
                    headers: vec![("Authorization".into(), format!("Bearer token-{n}"))],
                }))
            })
        }
        fn credentials_refused(&self) {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
    }

    const BLOB: [u8; 32] = [0xab; 32];

    fn origin(scheme: &str) -> Arc<TestOrigin> {
        Arc::new(TestOrigin {
            url: format!(
                "{scheme}://registry.invalid:5000/v2/app/blobs/sha256:{}",
                BlobId::from_bytes(BLOB).hex()
            ),
            locates: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }

    fn chunk(off: u64, size: u32) -> ChunkRef {
        ChunkRef {
            digest: DigestAlgo::Sha256.digest(&off.to_le_bytes()),
            blob: BlobId::from_bytes(BLOB),
            compressed_offset: off,
            compressed_size: size,
            uncompressed_size: size,
            compression: Compression::None,
        }
    }

    fn chunks() -> Vec<ChunkRef> {
        vec![chunk(0, 1000), chunk(1000, 3000), chunk(200_000, 5000)]
    }

    struct Setup {
        df: Arc<Dragonfly>,
        /// In ring order for the blob.
        seeds: Vec<FakeSeed>,
        ids: Vec<String>,
        blob: Arc<Vec<u8>>,
    }

    async fn setup(n: usize, cfg: DragonflyConfig) -> Setup {
        let blob = blob_bytes();
        let mut fakes = Vec::new();
        for _ in 0..n {
            fakes.push(fake_seed(blob.clone()).await);
        }
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let list: Vec<(&str, u16)> = names
            .iter()
            .zip(&fakes)
            .map(|(id, f)| (id.as_str(), f.port))
            .collect();
        let df = client_with(&list, cfg);
        let order = df.inner.select(&BlobId::from_bytes(BLOB).hex(), n);
        assert_eq!(order.len(), n);
        let mut seeds = Vec::new();
        let mut ids = Vec::new();
        for (id, addr, _) in order {
            let i = fakes.iter().position(|f| f.port == addr.port()).unwrap();
            seeds.push(fakes.remove(i));
            ids.push(id);
        }
        Setup {
            df,
            seeds,
            ids,
            blob,
        }
    }

    async fn fetch(tier: &Arc<dyn ChunkTier>, wanted: &[ChunkRef]) -> Vec<Slot> {
        let mut slots = dfagent_core::slots_for(wanted);
        tokio::time::timeout(Duration::from_secs(30), tier.fetch(&mut slots))
            .await
            .expect("fetch bounded");
        slots
    }

    fn assert_found(slots: &[Slot], blob: &[u8]) {
        for s in slots {
            let r = s.chunk().blob_range();
            match s.answer() {
                Answer::Found(c) => {
                    assert_eq!(&c.data[..], &blob[r.start as usize..r.end as usize])
                }
                other => panic!("chunk at {} not found: {other:?}", r.start),
            }
        }
    }

    #[tokio::test]
    async fn good_seed_answers_with_dragonfly_headers() {
        let s = setup(2, DragonflyConfig::default()).await;
        let o = origin("http");
        let tier = s.df.tier(o.clone());
        assert_eq!(tier.name(), "dragonfly");
        let slots = fetch(&tier, &chunks()).await;
        assert_found(&slots, &s.blob);
        // Two merged ranges (0..4000 and 200000..205000), both from the first seed of the ring.
        assert_eq!(s.seeds[0].count(), 2);
        assert_eq!(s.seeds[1].count(), 0);
        let req = s.seeds[0].last().to_ascii_lowercase();
        assert!(
            req.starts_with("get http://registry.invalid:5000/v2/app/blobs/sha256:"),
            "{req}"
        );
        for h in [
            "x-dragonfly-use-p2p: true",
            "x-dragonfly-prefetch: true",
            "x-dragonfly-enable-task-id-based-blob-digest: true",
            "x-dragonfly-priority: 6",
            "authorization: bearer token-0",
        ] {
            assert!(req.contains(h), "{h} missing in {req}");
        }
        let c = s.df.counters();
        assert_eq!((c.requests, c.requests_ok, c.chunks), (2, 2, 3));
        assert_eq!(c.bytes, 4000 + 5000);
    }

    #[tokio::test]
    async fn background_batches_go_at_the_prefetch_priority() {
        let s = setup(1, DragonflyConfig::default()).await;
        let tier = s.df.tier(origin("http"));
        let mut slots = dfagent_core::slots_for(&chunks()[..1]);
        for slot in &mut slots {
            slot.set_background(true);
        }
        tokio::time::timeout(Duration::from_secs(30), tier.fetch(&mut slots))
            .await
            .expect("fetch bounded");
        assert_found(&slots, &s.blob);
        let req = s.seeds[0].last().to_ascii_lowercase();
        assert!(req.contains("x-dragonfly-priority: 5"), "{req}");
    }

    #[tokio::test]
    async fn https_origin_uses_registry_mirror_form() {
        let s = setup(1, DragonflyConfig::default()).await;
        let tier = s.df.tier(origin("https"));
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert_found(&slots, &s.blob);
        let req = s.seeds[0].last().to_ascii_lowercase();
        assert!(req.starts_with("get /v2/app/blobs/sha256:"), "{req}");
        assert!(
            req.contains("x-dragonfly-registry: https://registry.invalid:5000"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn misbehaving_seeds_fall_through_to_the_next() {
        for bad in [
            Behavior::WrongRange,
            Behavior::NoContentRange,
            Behavior::Ok200,
            Behavior::ShortBody,
            Behavior::LongBodyNoLength,
            Behavior::LongContentLength,
        ] {
            let s = setup(2, DragonflyConfig::default()).await;
            s.seeds[0].set(&[bad]);
            let tier = s.df.tier(origin("http"));
            let slots = fetch(&tier, &chunks()[..2]).await;
            assert_found(&slots, &s.blob);
            assert_eq!(s.seeds[0].count(), 1, "{bad:?}");
            assert_eq!(s.seeds[1].count(), 1, "{bad:?}");
            let st = s.df.status();
            let first = st.seeds.iter().find(|x| x.id == s.ids[0]).unwrap();
            assert!(first.avoided.is_some(), "{bad:?}: seed not avoided");
            assert_eq!(st.counters.avoidances, 1);
            let errors: u64 = st.counters.errors.iter().map(|(_, n)| n).sum();
            assert_eq!(errors, 1, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn all_seeds_bad_fails_the_slots_with_a_typed_error() {
        let s = setup(2, DragonflyConfig::default()).await;
        s.seeds[0].set(&[Behavior::ShortBody]);
        s.seeds[1].set(&[Behavior::WrongRange]);
        let tier = s.df.tier(origin("http"));
        let slots = fetch(&tier, &chunks()[..1]).await;
        match slots[0].answer() {
            Answer::Failed(e) => {
                assert_eq!(e.tier, "dragonfly");
                assert_eq!(e.kind, TierErrorKind::Protocol);
                assert!(!e.message.contains("token"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        // Both avoided now: the next batch is left to the next tier without asking.
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert!(matches!(slots[0].answer(), Answer::Missing));
        assert_eq!(s.seeds[0].count() + s.seeds[1].count(), 2);
    }

    #[tokio::test]
    async fn backend_status_does_not_blame_the_seed() {
        let s = setup(1, DragonflyConfig::default()).await;
        s.seeds[0].set(&[Behavior::BackendError]);
        let tier = s.df.tier(origin("http"));
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert!(matches!(slots[0].answer(), Answer::Failed(e) if e.kind == TierErrorKind::Status));
        assert!(s.df.status().seeds[0].avoided.is_none());
    }

    #[tokio::test]
    async fn unauthorized_refreshes_credentials_once() {
        let s = setup(1, DragonflyConfig::default()).await;
        s.seeds[0].set(&[Behavior::Unauthorized, Behavior::Good]);
        let o = origin("http");
        let tier = s.df.tier(o.clone());
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert_found(&slots, &s.blob);
        assert_eq!(o.refused.load(Ordering::SeqCst), 1);
        assert_eq!(o.locates.load(Ordering::SeqCst), 2);
        assert!(s.seeds[0].last().contains("token-1"));
        assert_eq!(s.df.counters().credentials_refused, 1);
        // Refused again after the fresh credentials: an Auth failure, no loop.
        s.seeds[0].set(&[Behavior::Unauthorized]);
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert!(matches!(slots[0].answer(), Answer::Failed(e) if e.kind == TierErrorKind::Auth));
        assert_eq!(o.refused.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bad_answer_avoids_the_seed_and_the_next_is_chosen() {
        let s = setup(3, DragonflyConfig::default()).await;
        s.seeds[0].set(&[Behavior::Corrupt]);
        let tier = s.df.tier(origin("http"));
        let wanted = chunks();
        let slots = fetch(&tier, &wanted[..1]).await;
        assert!(matches!(slots[0].answer(), Answer::Found(_)));
        assert_eq!(tier.bad_answer(&wanted[0], "digest mismatch"), Retry::Next);
        let st = s.df.status();
        let first = st.seeds.iter().find(|x| x.id == s.ids[0]).unwrap();
        let (left, why) = first.avoided.clone().expect("avoided");
        assert!(left > Duration::from_secs(60) && why.contains("verification"));
        assert_eq!(st.counters.verification_failures, 1);
        assert_eq!(st.counters.avoidances, 1);
        // Asked again: the next seed of the ring answers, right.
        let slots = fetch(&tier, &wanted[..1]).await;
        assert_found(&slots, &s.blob);
        assert_eq!(s.seeds[0].count(), 1);
        assert_eq!(s.seeds[1].count(), 1);
        assert_eq!(s.seeds[2].count(), 0);
        // A second bad_answer for a chunk nobody answered since is a no-op for avoidance.
        assert_eq!(tier.bad_answer(&wanted[2], "x"), Retry::Next);
        assert_eq!(s.df.counters().avoidances, 1);
    }

    #[tokio::test]
    async fn no_seed_leaves_slots_unanswered() {
        let s = setup(1, DragonflyConfig::default()).await;
        for e in s.df.inner.state().seeds.values_mut() {
            e.healthy = false;
        }
        let tier = s.df.tier(origin("http"));
        let slots = fetch(&tier, &chunks()).await;
        assert!(slots.iter().all(|s| matches!(s.answer(), Answer::Missing)));
        assert_eq!(s.seeds[0].count(), 0);
    }

    #[tokio::test]
    async fn dead_seed_times_out_or_fails_then_next() {
        // A seed whose port refuses connections: a network error, then the next seed.
        let s = setup(2, DragonflyConfig::default()).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let resp = dragonfly_api::scheduler::v2::ListHostsResponse {
            hosts: vec![
                crate::node::tests::seed_host(&s.ids[0], "127.0.0.1", dead),
                crate::node::tests::seed_host(&s.ids[1], "127.0.0.1", s.seeds[1].port),
            ],
        };
        s.df.inner.apply_hosts(&resp);
        for e in s.df.inner.state().seeds.values_mut() {
            e.healthy = true;
        }
        let tier = s.df.tier(origin("http"));
        let slots = fetch(&tier, &chunks()[..1]).await;
        assert_found(&slots, &s.blob);
        let c = s.df.counters();
        assert_eq!(
            c.errors
                .iter()
                .find(|(k, _)| *k == TierErrorKind::Network)
                .unwrap()
                .1,
            1
        );
    }
}
