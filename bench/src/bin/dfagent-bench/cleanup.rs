//! Everything the harness starts is registered here (processes to stop, mounts to detach,
//! directories to remove) so that it is torn down on every way out: normal return (the RAII
//! guards deregister and undo their own), an error (the guards' `Drop`), and SIGINT, SIGTERM or
//! SIGHUP (a watcher thread runs every registered action, then exits the process).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Something to undo.
#[derive(Clone, Debug)]
pub enum Action {
    /// A child process: SIGTERM, then SIGKILL after a grace period.
    Kill(i32),
    /// A mount point: detach it (MNT_DETACH).
    Unmount(PathBuf),
    /// A scratch directory: remove it with everything below.
    RemoveDir(PathBuf),
}

static ACTIONS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);
/// Set once teardown began: nothing new may start, and whatever registers now is undone at once.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether the harness is being torn down (after a signal).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Fail if the harness is being torn down (called before starting anything).
pub fn check_not_stopping() -> anyhow::Result<()> {
    anyhow::ensure!(!stopping(), "interrupted");
    Ok(())
}

fn actions() -> std::sync::MutexGuard<'static, Vec<(u64, Action)>> {
    ACTIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Register `a`; the id deregisters it. During teardown `a` is carried out at once instead
/// (teardown drained the list under the same lock, so nothing slips between the two).
pub fn register(a: Action) -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut list = actions();
    if stopping() {
        drop(list);
        undo(&[a]);
        return id;
    }
    list.push((id, a));
    id
}

/// Forget action `id` (its owner undid it already).
pub fn deregister(id: u64) {
    actions().retain(|(i, _)| *i != id);
}

/// Stop process `pid`: SIGTERM, wait up to `grace` for it to go, then SIGKILL. Only for
/// processes this harness started (their pids are registered here).
pub fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: plain syscalls on a pid we started.
    unsafe {
        if libc::kill(pid, libc::SIGTERM) != 0 {
            return;
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: non-blocking wait on our own child; 0 means still running.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid || r < 0 {
            // Gone (or not our child any more: reaped elsewhere); check it really is.
            // SAFETY: signal 0 only tests for existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Detach the mount at `mp` (lazy unmount); errors (nothing mounted) are ignored.
pub fn detach(mp: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// Stop further starts and run every registered action.
pub fn run_all() {
    let all: Vec<Action> = {
        let mut list = actions();
        STOPPING.store(true, Ordering::SeqCst);
        list.drain(..).map(|(_, a)| a).collect()
    };
    undo(&all);
}

/// Carry out `actions`: processes first, then mounts, then directories.
fn undo(actions: &[Action]) {
    for a in actions {
        if let Action::Kill(pid) = a {
            stop_pid(*pid, Duration::from_secs(3));
        }
    }
    for a in actions {
        if let Action::Unmount(mp) = a {
            detach(mp);
        }
    }
    for a in actions {
        if let Action::RemoveDir(d) = a {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Watch for SIGINT, SIGTERM and SIGHUP on a thread of its own; on one, tear everything down
/// and exit with 130.
pub fn install_signal_handler() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut i), Ok(mut t), Ok(mut h)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                    _ = h.recv() => {}
                }
            });
            eprintln!("dfagent-bench: interrupted; stopping everything it started");
            let dirs: Vec<PathBuf> = actions()
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::RemoveDir(d) => Some(d.clone()),
                    _ => None,
                })
                .collect();
            run_all();
            // The main thread may have written into a scratch directory meanwhile (it fails
            // fast now that nothing may start): remove them once more, then leave.
            std::thread::sleep(Duration::from_millis(200));
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
            std::process::exit(130);
        })?;
    Ok(())
}
