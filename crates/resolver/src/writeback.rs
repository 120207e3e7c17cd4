//! Write-back of verified chunks to the store, off the reader's path: a bounded queue drained by
//! one thread of its own. A read never waits for the store: when the queue is full its chunk is
//! not written (counted; the chunk is fetched again if it is ever needed after leaving the
//! decoded-chunk cache). Background work (prefetch, pull) waits for room instead, so a pull
//! does store every chunk. The thread runs at a lowered CPU and I/O priority
//! (`dfagent_core::priority`): writing a chunk no reader waits for yields to the readers.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dfagent_core::{ChunkRef, ChunkStore, StoredChunk};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{add, ResolverMetrics};

/// How long dropping the queue waits for the thread to write what is queued.
const DRAIN_ON_DROP: Duration = Duration::from_secs(10);

enum Job {
    Put(ChunkRef, StoredChunk),
    Flush(oneshot::Sender<()>),
}

/// The queue and its writer thread.
pub(crate) struct WriteBack {
    tx: Option<mpsc::Sender<Job>>,
    exited: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WriteBack {
    /// A queue of `capacity` chunks writing into `store`.
    pub(crate) fn start(
        store: Arc<dyn ChunkStore>,
        capacity: usize,
        metrics: Vec<Arc<ResolverMetrics>>,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(capacity.max(1));
        let (exit_tx, exited) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("dfagent-store-writer".into())
            .spawn(move || {
                let lowered = dfagent_core::priority::lower_this_thread(
                    dfagent_core::priority::BACKGROUND_NICE_DELTA,
                    dfagent_core::priority::BackgroundIo::BestEffortLowest,
                );
                if let (Err(e), _) | (_, Err(e)) = (&lowered.nice, &lowered.io) {
                    tracing::debug!(error = %e, "the store writer runs at the node's own priority");
                }
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Put(chunk, stored) => {
                            if let Err(e) = store.put(&chunk, &stored) {
                                for m in &metrics {
                                    add(&m.writes_failed, 1);
                                }
                                tracing::warn!(chunk = %chunk.digest, error = %e, "could not keep a chunk in the store");
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
                let _ = exit_tx.send(());
            })?;
        Ok(Self {
            tx: Some(tx),
            exited: std::sync::Mutex::new(exited),
            thread: Some(thread),
        })
    }

    /// Queue a chunk without waiting; false when the queue is full (or closed).
    pub(crate) fn try_put(&self, chunk: ChunkRef, stored: StoredChunk) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(Job::Put(chunk, stored)).is_ok(),
            None => false,
        }
    }

    /// Queue a chunk, waiting for room.
    pub(crate) async fn put(&self, chunk: ChunkRef, stored: StoredChunk) -> bool {
        match &self.tx {
            Some(tx) => tx.send(Job::Put(chunk, stored)).await.is_ok(),
            None => false,
        }
    }

    /// Wait until everything queued before this call is written.
    pub(crate) async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = oneshot::channel();
        if tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

impl Drop for WriteBack {
    /// Close the queue and give the thread a bounded time to write what is queued.
    fn drop(&mut self) {
        self.tx = None;
        let exited = self
            .exited
            .get_mut()
            .map(|rx| rx.recv_timeout(DRAIN_ON_DROP).is_ok())
            .unwrap_or(false);
        if exited {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!("the store writer did not finish within {DRAIN_ON_DROP:?}; leaving it");
        }
    }
}
