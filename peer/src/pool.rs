//! The serve pool: a few threads of the node's own that read chunks from the store and verify
//! them for peers, each at a lowered CPU priority (nice + 10) and I/O priority (best-effort
//! level 7, or the idle class), so that serving other nodes yields to the node's own FUSE reads
//! and fetches (which keep tokio's runtime and blocking pool at normal priority). Jobs wait in
//! a bounded queue; when it is full the request is answered BUSY, like the upload cap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::counters::PeerCounters;

/// One unit of serving work: read a request's chunks and verify them.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

#[cfg(test)]
use dfagent_core::priority::{
    ioprio_value, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE, IO_BEST_EFFORT_LOWEST as IO_BEST_EFFORT_LEVEL,
};
use dfagent_core::priority::{lower_this_thread, BackgroundIo, BACKGROUND_NICE_DELTA};

/// How much the serve threads' nice value is raised.
pub(crate) const NICE_DELTA: i32 = BACKGROUND_NICE_DELTA;

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Every queue slot is taken: answer BUSY.
    Full,
    /// The pool is shut down.
    Closed,
}

/// The serve threads and their queue. Threads end once the pool is closed (or dropped) and
/// the queue drained.
pub(crate) struct ServePool {
    tx: Mutex<Option<SyncSender<Job>>>,
    /// Where `serve_pending` (jobs queued or running) is kept.
    counters: Arc<PeerCounters>,
}

/// Where priority lowering stands, so each kind of failure is logged once per process.
static NICE_FAILED: AtomicBool = AtomicBool::new(false);
static IOPRIO_FAILED: AtomicBool = AtomicBool::new(false);

impl ServePool {
    /// Start `threads` serve threads (at least one) over a queue of `queue` waiting jobs (at
    /// least one); `io_idle` puts them in the idle I/O class instead of best-effort level 7.
    /// Jobs queued or running are counted in `counters.serve_pending`.
    pub(crate) fn start(
        threads: usize,
        queue: usize,
        io_idle: bool,
        counters: Arc<PeerCounters>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("dfagent-peer-serve-{i}"))
                .spawn(move || worker(rx, counters, io_idle))?;
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            counters,
        })
    }

    /// Queue `job` without waiting.
    pub(crate) fn try_submit(&self, job: Job) -> Result<(), Rejected> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(Rejected::Closed);
        };
        PeerCounters::add(&self.counters.serve_pending, 1);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                PeerCounters::sub(&self.counters.serve_pending, 1);
                match e {
                    TrySendError::Full(_) => Err(Rejected::Full),
                    TrySendError::Disconnected(_) => Err(Rejected::Closed),
                }
            }
        }
    }

    /// Jobs queued or running now.
    pub(crate) fn pending(&self) -> u64 {
        PeerCounters::get(&self.counters.serve_pending)
    }

    /// Take no more jobs; the threads finish what is queued and end.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>, counters: Arc<PeerCounters>, io_idle: bool) {
    lower_priority(io_idle);
    loop {
        // Bounded by the pool's life: `recv` fails once every sender is gone.
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { break };
        // A panicking job must not take the thread with it: its requester's answer channel is
        // dropped, and the request is answered MISSING.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a serve job panicked");
        }
        PeerCounters::sub(&counters.serve_pending, 1);
    }
}

/// Lower the calling thread's CPU and I/O priority (`dfagent_core::priority`). Failures are
/// logged once per process and otherwise ignored: serving still works, just not below reads.
fn lower_priority(io_idle: bool) {
    let io = if io_idle {
        BackgroundIo::Idle
    } else {
        BackgroundIo::BestEffortLowest
    };
    let lowered = lower_this_thread(NICE_DELTA, io);
    match lowered.nice {
        Ok(n) => tracing::debug!(nice = n, "serve thread CPU priority lowered"),
        Err(e) => {
            if !NICE_FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "could not lower the serve threads' CPU priority: peers are served at the node's own priority");
            }
        }
    }
    match lowered.io {
        Ok(()) => tracing::debug!(io_idle, "serve thread I/O priority lowered"),
        Err(e) => {
            if !IOPRIO_FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "could not lower the serve threads' I/O priority: peers are served at the node's own I/O priority");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ioprio_get`'s "which": one thread.
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn queue_is_bounded_and_threads_run_lowered() {
        let pool = ServePool::start(1, 1, false, Arc::default()).unwrap();
        let (started_tx, started) = channel::<()>();
        let (release, released) = channel::<()>();
        let (done_tx, done) = channel::<(i64, i64)>();
        let done2 = done_tx.clone();
        pool.try_submit(Box::new(move || {
            started_tx.send(()).unwrap();
            released.recv_timeout(Duration::from_secs(20)).unwrap();
            // SAFETY: read-only calls about this thread.
            let (nice, io) = unsafe {
                let tid = libc::syscall(libc::SYS_gettid);
                (
                    20 - libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid),
                    libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid),
                )
            };
            done_tx.send((nice, io)).unwrap();
        }))
        .unwrap();
        started.recv_timeout(Duration::from_secs(20)).unwrap();
        // One job runs, one waits, the third does not fit.
        pool.try_submit(Box::new(move || done2.send((0, 0)).unwrap()))
            .unwrap();
        assert_eq!(pool.try_submit(Box::new(|| {})), Err(Rejected::Full));
        assert_eq!(pool.pending(), 2);
        release.send(()).unwrap();
        // SAFETY: read-only call about this thread.
        let own = 20 - unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
        let (nice, io) = done.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(nice, (own + i64::from(NICE_DELTA)).min(19));
        assert_eq!(
            io,
            i64::from(ioprio_value(IOPRIO_CLASS_BE, IO_BEST_EFFORT_LEVEL))
        );
        done.recv_timeout(Duration::from_secs(20)).unwrap();
        // The caller's own priority is untouched (per-thread).
        // SAFETY: as above.
        let after = 20 - unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
        assert_eq!(after, own);
        pool.close();
        assert_eq!(pool.try_submit(Box::new(|| {})), Err(Rejected::Closed));
    }

    #[test]
    fn a_panicking_job_keeps_its_thread() {
        let pool = ServePool::start(1, 4, true, Arc::default()).unwrap();
        pool.try_submit(Box::new(|| panic!("boom"))).unwrap();
        let (tx, rx) = channel::<i64>();
        pool.try_submit(Box::new(move || {
            // SAFETY: read-only call about this thread.
            let io = unsafe {
                let tid = libc::syscall(libc::SYS_gettid);
                libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid)
            };
            tx.send(io).unwrap();
        }))
        .unwrap();
        let io = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(io, i64::from(ioprio_value(IOPRIO_CLASS_IDLE, 0)));
    }
}
