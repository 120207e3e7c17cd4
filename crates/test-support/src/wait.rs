//! Bounded waits: poll a condition, run a closure that might hang in the kernel (a FUSE bug)
//! on its own thread, or await a future, each with a time limit that turns a hang into a
//! failure.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The bound of one network operation in the registry tests (a push, a resolve, a read).
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Poll `cond` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `cond` every 5 ms from async code until it holds; fail the test, naming `what`, once
/// `timeout` has passed.
pub async fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Run `f` on its own thread and wait at most `timeout` for it: a FUSE bug hangs a test's
/// thread in the kernel, and this turns that into a failure instead of a stuck test run.
pub fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawning a thread");
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the worker thread panicked"),
    }
}

/// Await `fut` for at most [`OP_TIMEOUT`]; fail naming `what` if it takes longer.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {OP_TIMEOUT:?}"))
}
