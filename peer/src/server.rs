//! Serving chunks to peers. Each incoming stream gets a task of its own; at most `max_uploads`
//! are served at once (the rest get a BUSY refusal from a small pool of responders, beyond that
//! their streams are dropped). Stored bytes are read from the store the node was handed, and
//! decoded and verified, on the serve threads ([`crate::pool`], at lowered CPU and I/O
//! priority; a full queue is answered BUSY) before any byte is sent: a local copy that fails
//! is rejected (dropped from the store), counted in `tampered_local` and answered MISSING.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfagent_core::{decode_chunk, slots_for, Answer, ChunkRef, ChunkStore, Slot, TierErrorKind};
use futures::StreamExt;
use libp2p::PeerId;
use libp2p_stream::IncomingStreams;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::counters::PeerCounters;
use crate::io::{finish, read_frame, write_all, StreamError};
use crate::node::Inner;
use crate::pool::{Job, Rejected};
use crate::wire::{
    decode_request, frame, header_message, pieces, refusal_message, ChunkStatus, RefusalReason,
    WireError, MAX_STORED_CHUNK,
};

/// Bound on waiting for a request or for one write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve_loop(inner: Arc<Inner>, mut incoming: IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        match inner.uploads.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(handle(inner.clone(), peer, stream, Some(permit)));
            }
            Err(_) => match inner.busy.clone().try_acquire_owned() {
                Ok(permit) => {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        handle(inner, peer, stream, None).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    PeerCounters::inc(&inner.counters.busy_answers_sent);
                    tracing::debug!(%peer, "every upload and responder slot taken: stream dropped");
                }
            },
        }
    }
}

fn io_timeout(inner: &Inner) -> Duration {
    inner
        .config
        .request_timeout
        .min(IO_TIMEOUT)
        .max(Duration::from_millis(100))
}

async fn refuse(
    inner: &Inner,
    stream: &mut libp2p::Stream,
    reason: RefusalReason,
    detail: &str,
) -> Result<(), StreamError> {
    write_all(
        stream,
        &frame(&refusal_message(reason, detail)),
        io_timeout(inner),
    )
    .await
}

/// Serve one request on `stream`; `permit` is `None` when every upload slot is taken (the
/// request is read, then refused BUSY).
async fn handle(
    inner: Arc<Inner>,
    peer: PeerId,
    mut stream: libp2p::Stream,
    permit: Option<OwnedSemaphorePermit>,
) {
    if let Err(e) = serve_one(&inner, peer, &mut stream, permit).await {
        match e {
            StreamError::Wire(_) | StreamError::Timeout => {
                PeerCounters::inc(&inner.counters.protocol_errors)
            }
            StreamError::Io(_) => PeerCounters::inc(&inner.counters.network_errors),
        }
        tracing::debug!(%peer, error = %e, "serving a peer failed");
    }
    finish(&mut stream, io_timeout(&inner)).await;
}

async fn serve_one(
    inner: &Inner,
    peer: PeerId,
    stream: &mut libp2p::Stream,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<(), StreamError> {
    let t = io_timeout(inner);
    let body = read_frame(stream, inner.limits.max_frame, t).await?;
    let request = match decode_request(&body, &inner.limits) {
        Ok(r) => r,
        Err(WireError::OverLimit(reason)) => {
            PeerCounters::inc(&inner.counters.refused_requests);
            tracing::info!(%peer, ?reason, "refused an over-limit request");
            return refuse(inner, stream, reason, "request over limit").await;
        }
        Err(e) => {
            refuse(inner, stream, RefusalReason::BadRequest, &e.to_string()).await?;
            return Err(e.into());
        }
    };
    let Some(_permit) = permit else {
        PeerCounters::inc(&inner.counters.busy_answers_sent);
        return refuse(
            inner,
            stream,
            RefusalReason::Busy,
            "every upload slot is taken",
        )
        .await;
    };
    // Read and verify on the serve threads (below the node's own reads); the answer comes back
    // on a channel. A full queue is a BUSY answer, like a full upload cap.
    let (tx, rx) = oneshot::channel();
    let job = serve_job(inner, request.chunks.clone(), tx);
    match inner.pool.try_submit(job) {
        Ok(()) => {}
        Err(Rejected::Full) => {
            PeerCounters::inc(&inner.counters.busy_answers_sent);
            tracing::debug!(%peer, queued = inner.pool.pending(), "serve queue full: busy");
            return refuse(inner, stream, RefusalReason::Busy, "serve queue full").await;
        }
        Err(Rejected::Closed) => {
            return refuse(inner, stream, RefusalReason::Busy, "shutting down").await;
        }
    }
    // The job bounds its store read by `request_timeout` (from when it was queued); the wait
    // also covers the queue and the verification.
    let wait = inner.config.request_timeout.saturating_mul(2);
    let (checked, tampered) = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => {
            tracing::error!(%peer, "a serve job ended without an answer");
            (nothing(&request.chunks), 0)
        }
        Err(_) => {
            tracing::warn!(%peer, "serving took too long: answering missing");
            (nothing(&request.chunks), 0)
        }
    };
    PeerCounters::add(&inner.counters.tampered_local, tampered);
    let busy = checked
        .iter()
        .filter(|(s, _)| *s == ChunkStatus::Busy)
        .count() as u64;
    PeerCounters::add(&inner.counters.busy_answers_sent, busy);
    let statuses: Vec<ChunkStatus> = checked.iter().map(|(s, _)| *s).collect();
    write_all(stream, &frame(&header_message(&request, &statuses)), t).await?;
    for (_, data) in &checked {
        let Some(data) = data else { continue };
        for piece in pieces(data) {
            write_all(stream, &piece, t).await?;
        }
        inner.count_out(peer, data.len() as u64);
    }
    Ok(())
}

/// Per chunk: its status, and the stored bytes of the found ones.
type Checked = Vec<(ChunkStatus, Option<Bytes>)>;

/// Every chunk missing.
fn nothing(chunks: &[ChunkRef]) -> Checked {
    chunks
        .iter()
        .map(|_| (ChunkStatus::Missing, None))
        .collect()
}

/// The work of one request on a serve thread: read `chunks` from the store (polled here, in
/// the runtime's context, bounded by `request_timeout` from now), verify each, and send the
/// answers and the count of tampered local copies on `tx`.
fn serve_job(inner: &Inner, chunks: Vec<ChunkRef>, tx: oneshot::Sender<(Checked, u64)>) -> Job {
    let serve = inner.serve.clone();
    let runtime = inner.runtime.clone();
    let verify = !inner.config.unsafe_serve_unverified_for_tests;
    let max_bytes = inner.limits.max_bytes.max(u64::from(MAX_STORED_CHUNK));
    let timeout = inner.config.request_timeout;
    let queued = Instant::now();
    Box::new(move || {
        let mut slots = slots_for(&chunks);
        match timeout.checked_sub(queued.elapsed()) {
            Some(left) if !left.is_zero() => {
                // The timer is made inside `block_on`, in the runtime's context.
                let read = runtime
                    .block_on(async { tokio::time::timeout(left, serve.fetch(&mut slots)).await });
                if read.is_err() {
                    tracing::warn!("local store did not answer in time: serving nothing");
                    slots = slots_for(&chunks);
                }
            }
            _ => tracing::warn!("request waited too long for a serve thread: serving nothing"),
        }
        let _ = tx.send(check(&*serve, &mut slots, verify, max_bytes));
    })
}

/// Verify what the store answered: per slot its status and bytes, and how many local copies
/// failed (each rejected from the store). Found chunks beyond `max_bytes` in all are answered
/// missing.
fn check(
    serve: &dyn ChunkStore,
    slots: &mut [Slot],
    verify: bool,
    max_bytes: u64,
) -> (Checked, u64) {
    let mut tampered = 0u64;
    let mut total = 0u64;
    let mut out: Checked = Vec::with_capacity(slots.len());
    for slot in slots.iter_mut() {
        let chunk = *slot.chunk();
        let entry = match slot.take_answer() {
            Answer::Found(stored) => {
                let len = stored.data.len();
                let ok_len = u32::try_from(len)
                    .ok()
                    .filter(|l| *l > 0 && *l <= MAX_STORED_CHUNK);
                match ok_len {
                    None => (ChunkStatus::Missing, None),
                    Some(len32) => {
                        let as_stored = chunk.with_encoding(stored.compression, len32);
                        let verdict = if verify {
                            decode_chunk(&as_stored, &stored.data).map(|_| ())
                        } else {
                            Ok(())
                        };
                        match verdict {
                            Err(e) => {
                                serve.reject(&chunk, &e.to_string());
                                tampered += 1;
                                tracing::warn!(chunk = %chunk.digest, error = %e, "local chunk failed verification: dropped, not served");
                                (ChunkStatus::Missing, None)
                            }
                            Ok(()) if total + u64::from(len32) > max_bytes && total > 0 => {
                                (ChunkStatus::Missing, None)
                            }
                            Ok(()) => {
                                total += u64::from(len32);
                                (
                                    ChunkStatus::Found {
                                        size: len32,
                                        compression: stored.compression,
                                    },
                                    Some(stored.data),
                                )
                            }
                        }
                    }
                }
            }
            Answer::Failed(e) if e.kind == TierErrorKind::Busy => (ChunkStatus::Busy, None),
            Answer::Failed(_) | Answer::Missing => (ChunkStatus::Missing, None),
        };
        out.push(entry);
    }
    (out, tampered)
}
