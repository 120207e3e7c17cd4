//! The peer tier: fetch a batch from the peers that provide its blobs.
//!
//! Per blob: find providers (Kademlia `get_providers`, bounded by [`LOOKUP_TIMEOUT`], cached for
//! `provider_ttl`, skipped when no peer is connected), leave out self and banned peers, split
//! the chunks across up to `providers_asked` of them (each request within the wire limits, at
//! most `max_inflight_per_peer` open to one peer), and fill the slots with what arrives. Chunks
//! a provider lacks or is too busy for are asked of another provider in a later round (at most
//! [`ROUNDS`]); when every cached provider lacked them, the cache is dropped and the DHT asked
//! again once. Whatever is still missing is left unanswered for the next tier; network errors
//! are counted, not reported as failures (the registry has every chunk). A request whose stream
//! opened but broke before any answer is sent again up to [`STREAM_RETRIES`] times after a short
//! pause: libp2p-stream 0.5's inbound channel holds one stream, so of several streams that reach
//! a peer at once (a batch split across requests, other requesters) all but one may be reset. A whole fetch is
//! bounded by `request_timeout` plus a second per MiB asked for, every read of an answer by its
//! own timeout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use dfagent_core::{BlobId, BoxFuture, ChunkRef, ChunkTier, Retry, Slot};
use libp2p::PeerId;
use tokio::sync::oneshot;

use crate::counters::PeerCounters;
use crate::io::{finish, read_frame, write_all, StreamError};
use crate::node::{Command, Inner, LOOKUP_TIMEOUT};
use crate::wire::{
    check_request_limits, decode_header, frame, request_message, Assembler, ChunkStatus, Header,
    RefusalReason, Request, WireError,
};

/// Rounds of asking per blob in one fetch.
const ROUNDS: usize = 3;
/// How long "no provider" is believed (at most; `provider_ttl` if shorter).
const NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes per second a fetch is given time for, beyond `request_timeout`.
const MIN_RATE: u64 = 1 << 20;
/// Bound on one read of a peer's answer.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Times one request is sent again after its stream broke before any answer.
const STREAM_RETRIES: u32 = 3;
/// Pause before such a retry (times the retry's number, plus a spread per request).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(15);

/// The resolver's tier over the peer network.
pub struct PeerTier {
    inner: Arc<Inner>,
}

/// What one request to a peer gave.
enum Outcome {
    /// Per requested chunk: its status, and the bytes of the FOUND ones that arrived.
    Answers(Vec<(ChunkStatus, Option<bytes::Bytes>)>),
    Refused(RefusalReason),
}

impl PeerTier {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Providers of `blob` other than self and banned peers, and whether a new lookup would be
    /// pointless (fresh from the DHT, or a cached "no provider").
    async fn providers(&self, blob: BlobId, refresh: bool) -> (Vec<PeerId>, bool) {
        if !refresh {
            let ttl = self.inner.config.provider_ttl;
            let cached = {
                let st = self.inner.state();
                st.providers.get(&blob).and_then(|(at, p)| {
                    // "Nobody has it" is kept for a shorter while: someone may fetch it soon.
                    let ttl = if p.is_empty() {
                        ttl.min(NEGATIVE_TTL)
                    } else {
                        ttl
                    };
                    (at.elapsed() < ttl).then(|| p.clone())
                })
            };
            match cached {
                // Known to have no provider: no lookup, and no refresh either.
                Some(p) if p.is_empty() => return (p, true),
                Some(p) => return (self.usable(p), false),
                None => {}
            }
        }
        if self.inner.connected_count() == 0 {
            return (Vec::new(), true);
        }
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .cmd
            .try_send(Command::GetProviders(blob, tx))
            .is_err()
        {
            return (Vec::new(), true);
        }
        PeerCounters::inc(&self.inner.counters.provider_lookups);
        let started = Instant::now();
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, rx)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        PeerCounters::add(
            &self.inner.counters.lookup_seconds_sum_micros,
            started.elapsed().as_micros() as u64,
        );
        PeerCounters::inc(&self.inner.counters.lookup_count);
        tracing::debug!(%blob, providers = found.len(), "provider lookup");
        let found: Vec<PeerId> = found
            .into_iter()
            .filter(|p| *p != self.inner.local)
            .collect();
        self.inner
            .state()
            .providers
            .insert(blob, (Instant::now(), found.clone()));
        (self.usable(found), true)
    }

    fn usable(&self, providers: Vec<PeerId>) -> Vec<PeerId> {
        providers
            .into_iter()
            .filter(|p| *p != self.inner.local && !self.inner.is_banned(p))
            .collect()
    }

    async fn fetch_blob(
        &self,
        blob: BlobId,
        idxs: Vec<usize>,
        slots: &mut [Slot],
        deadline: tokio::time::Instant,
    ) {
        let (mut providers, mut fresh) = self.providers(blob, false).await;
        let mut pending = idxs;
        let mut tried: HashMap<usize, HashSet<PeerId>> = HashMap::new();
        for _round in 0..ROUNDS {
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            providers.retain(|p| !self.inner.is_banned(p));
            let asked: Vec<PeerId> = providers
                .iter()
                .copied()
                .take(self.inner.config.providers_asked.max(1))
                .collect();
            // Assign each pending chunk to a provider not yet tried for it, round robin.
            let mut per_peer: HashMap<PeerId, Vec<usize>> = HashMap::new();
            for (n, &i) in pending.iter().enumerate() {
                let seen = tried.entry(i).or_default();
                let choice = (0..asked.len())
                    .map(|k| asked[(n + k) % asked.len()])
                    .find(|p| !seen.contains(p));
                if let Some(p) = choice {
                    seen.insert(p);
                    per_peer.entry(p).or_default().push(i);
                }
            }
            if per_peer.is_empty() {
                if fresh {
                    break;
                }
                // Every cached provider was asked: look again once.
                let (p, f) = self.providers(blob, true).await;
                providers = p;
                fresh = f;
                if providers.is_empty() {
                    break;
                }
                continue;
            }
            let mut requests = Vec::new();
            for (peer, list) in per_peer {
                for batch in self.split(&list, slots) {
                    requests.push((peer, batch));
                }
            }
            let futs = requests.iter().map(|(peer, batch)| {
                let chunks: Vec<ChunkRef> = batch.iter().map(|&i| *slots[i].chunk()).collect();
                self.request(*peer, blob, chunks, deadline)
            });
            let results = futures::future::join_all(futs).await;
            for ((peer, batch), result) in requests.iter().zip(results) {
                match result {
                    Ok(Outcome::Answers(answers)) => {
                        for (&i, (status, data)) in batch.iter().zip(answers) {
                            match (status, data) {
                                (ChunkStatus::Found { compression, .. }, Some(data)) => {
                                    let digest = slots[i].chunk().digest;
                                    self.inner.count_in(*peer, data.len() as u64);
                                    self.inner.record_answer(digest, *peer);
                                    slots[i].found(data, compression);
                                }
                                (ChunkStatus::Busy, _) => {
                                    PeerCounters::inc(&self.inner.counters.busy_answers_received)
                                }
                                _ => {}
                            }
                        }
                    }
                    Ok(Outcome::Refused(reason)) => {
                        if reason == RefusalReason::Busy {
                            PeerCounters::inc(&self.inner.counters.busy_answers_received);
                        } else {
                            tracing::warn!(peer = %peer, ?reason, "peer refused our request");
                        }
                    }
                    Err(StreamError::Wire(e)) => {
                        PeerCounters::inc(&self.inner.counters.protocol_errors);
                        self.inner.ban(*peer, &format!("protocol error: {e}"));
                    }
                    Err(StreamError::Timeout) => {
                        PeerCounters::inc(&self.inner.counters.protocol_errors);
                        tracing::debug!(peer = %peer, "peer request timed out");
                    }
                    Err(StreamError::Io(e)) => {
                        PeerCounters::inc(&self.inner.counters.network_errors);
                        tracing::debug!(peer = %peer, error = %e, "peer request failed");
                    }
                }
            }
            pending.retain(|&i| matches!(slots[i].answer(), dfagent_core::Answer::Missing));
        }
    }

    /// Split `list` (slot indices) into batches within the wire limits.
    fn split(&self, list: &[usize], slots: &[Slot]) -> Vec<Vec<usize>> {
        let limits = &self.inner.limits;
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut bytes = 0u64;
        for &i in list {
            let size = u64::from(slots[i].chunk().compressed_size);
            if !cur.is_empty()
                && (cur.len() >= limits.max_chunks || bytes + size > limits.max_bytes)
            {
                out.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            cur.push(i);
            bytes += size;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// One request to `peer` on a stream of its own.
    async fn request(
        &self,
        peer: PeerId,
        blob: BlobId,
        chunks: Vec<ChunkRef>,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, StreamError> {
        let request = Request { blob, chunks };
        if check_request_limits(&request.chunks, &self.inner.limits).is_err() {
            return Err(StreamError::Wire(WireError::OverLimit(
                RefusalReason::TooManyBytes,
            )));
        }
        let sem = self.inner.inflight(peer);
        let _permit = tokio::time::timeout_at(deadline, sem.acquire_owned())
            .await
            .map_err(|_| StreamError::Timeout)?
            .map_err(|_| StreamError::Timeout)?;
        // Requests spread their retries by their first chunk's digest.
        let spread = u32::from(
            request
                .chunks
                .first()
                .map_or(0, |c| c.digest.bytes()[0] % 4),
        );
        let mut retries = 0u32;
        loop {
            let mut control = self.inner.control.clone();
            let mut stream = tokio::time::timeout_at(
                deadline,
                control.open_stream(peer, libp2p::StreamProtocol::new(crate::wire::PROTOCOL)),
            )
            .await
            .map_err(|_| StreamError::Timeout)?
            .map_err(|e| StreamError::Io(std::io::Error::other(e.to_string())))?;
            let result = self.exchange(&mut stream, &request, deadline).await;
            finish(
                &mut stream,
                READ_TIMEOUT.min(self.inner.config.request_timeout),
            )
            .await;
            // A stream that opened but broke before any answer is most likely one the peer's
            // libp2p-stream dropped: its inbound channel holds a single stream, and one that
            // arrives before the serve loop took the previous is reset. Ask again, briefly (a
            // peer that is gone fails at the next open, which is not retried).
            match result {
                Err(StreamError::Io(e)) if retries < STREAM_RETRIES => {
                    retries += 1;
                    let pause = RETRY_PAUSE * (retries + spread);
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(StreamError::Io(e));
                    }
                    tracing::debug!(%peer, error = %e, retries, "stream broke before an answer: asking again");
                    tokio::time::sleep(pause).await;
                }
                r => return r,
            }
        }
    }

    async fn exchange(
        &self,
        stream: &mut libp2p::Stream,
        request: &Request,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, StreamError> {
        let limits = &self.inner.limits;
        let timeout = || {
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(READ_TIMEOUT)
        };
        write_all(stream, &frame(&request_message(request)), timeout()).await?;
        let body = read_frame(stream, limits.max_frame, timeout()).await?;
        let statuses = match decode_header(&body, request, limits)? {
            Header::Refused(r) => return Ok(Outcome::Refused(r.reason)),
            Header::Answers(s) => s,
        };
        let mut out: Vec<(ChunkStatus, Option<bytes::Bytes>)> =
            statuses.iter().map(|s| (*s, None)).collect();
        let mut asm = Assembler::new(&statuses);
        // Bounded: the assembler refuses anything beyond the header's sizes, and every read has
        // a timeout within the fetch's deadline.
        while !asm.done() {
            let body = match read_frame(stream, limits.max_frame, timeout()).await {
                Ok(b) => b,
                Err(e) => {
                    // Keep what arrived whole before the stall or break.
                    tracing::debug!(error = %e, "peer answer cut short");
                    if out.iter().any(|(_, d)| d.is_some()) {
                        return Ok(Outcome::Answers(out));
                    }
                    return Err(e);
                }
            };
            if let Some(d) = asm.piece(&body)? {
                if let Some(entry) = out.get_mut(d.index) {
                    entry.1 = Some(d.data);
                }
            }
        }
        Ok(Outcome::Answers(out))
    }
}

impl ChunkTier for PeerTier {
    fn name(&self) -> &str {
        "peer"
    }

    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if slots.is_empty() || self.inner.connected_count() == 0 {
                return;
            }
            // `request_timeout`, plus time for the bytes at MIN_RATE: a batch of big chunks that
            // keeps arriving on a loaded node is not cut off and fetched again from the
            // registry; a stalled peer is still cut off by each read's own timeout.
            let wanted: u64 = slots
                .iter()
                .map(|s| u64::from(s.chunk().compressed_size))
                .sum();
            let deadline = tokio::time::Instant::now()
                + self.inner.config.request_timeout
                + std::time::Duration::from_secs(wanted / MIN_RATE);
            let mut by_blob: HashMap<BlobId, Vec<usize>> = HashMap::new();
            let mut order: Vec<BlobId> = Vec::new();
            for (i, s) in slots.iter().enumerate() {
                let blob = s.chunk().blob;
                by_blob
                    .entry(blob)
                    .or_insert_with(|| {
                        order.push(blob);
                        Vec::new()
                    })
                    .push(i);
            }
            for blob in order {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let idxs = by_blob.remove(&blob).unwrap_or_default();
                self.fetch_blob(blob, idxs, slots, deadline).await;
            }
        })
    }

    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        let peer = {
            let mut st = self.inner.state();
            st.answered_by.remove(&chunk.digest)
        };
        let Some(peer) = peer else {
            return Retry::Next;
        };
        tracing::warn!(%peer, chunk = %chunk.digest, detail, "peer sent a bad chunk");
        self.inner
            .ban(peer, "sent a chunk that failed verification");
        let other = {
            let st = self.inner.state();
            st.providers
                .get(&chunk.blob)
                .map(|(_, p)| p.clone())
                .unwrap_or_default()
        };
        if self.usable(other).is_empty() {
            Retry::Next
        } else {
            Retry::AskAgain
        }
    }
}
