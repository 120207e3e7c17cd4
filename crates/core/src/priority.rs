//! Background work yields to reads: a thread that does work no reader waits for (serving other
//! nodes, writing verified chunks into the store) lowers its own CPU priority (nice + a delta)
//! and I/O priority (best-effort level 7, or the idle class). On Linux both are per thread, so
//! the node's FUSE readers and fetches keep their priority. The one definition of how, for every
//! crate that runs such threads.

/// How much a background thread raises its nice value.
pub const BACKGROUND_NICE_DELTA: i32 = 10;
/// The best-effort I/O level background threads take (7: the lowest).
pub const IO_BEST_EFFORT_LOWEST: u32 = 7;
/// The best-effort I/O class (`ioprio_set`).
pub const IOPRIO_CLASS_BE: u32 = 2;
/// The idle I/O class: served only when the disk has nothing else to do.
pub const IOPRIO_CLASS_IDLE: u32 = 3;
/// Where the class sits in an I/O priority value.
const IOPRIO_CLASS_SHIFT: u32 = 13;
/// `ioprio_set`'s "which": one thread (a task id).
#[cfg(target_os = "linux")]
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The I/O priority a background thread takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackgroundIo {
    /// Best effort, lowest level: still progresses when readers keep the disk busy.
    BestEffortLowest,
    /// The idle class: only when nothing else uses the disk.
    Idle,
}

/// What lowering did: the new nice value, and whether the I/O priority was set.
#[derive(Debug)]
pub struct Lowered {
    /// The thread's nice value now, or why it could not be changed.
    pub nice: std::io::Result<i32>,
    /// Whether the I/O priority was set, or why not.
    pub io: std::io::Result<()>,
}

/// An I/O priority value as `ioprio_set` takes it.
pub fn ioprio_value(class: u32, level: u32) -> libc::c_int {
    ((class << IOPRIO_CLASS_SHIFT) | level) as libc::c_int
}

/// Lower the calling thread's CPU priority by `nice_delta` (capped at 19) and set its I/O
/// priority to `io`. Failures are returned, not fatal: the work still runs, at the node's own
/// priority.
#[cfg(target_os = "linux")]
pub fn lower_this_thread(nice_delta: i32, io: BackgroundIo) -> Lowered {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // The raw getpriority system call answers 20 - nice (1..=40), so a negative answer is
    // always an error (the libc wrapper's -1 is ambiguous).
    // SAFETY: getpriority on this thread's id; no memory is passed.
    let raw = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid) };
    let nice = if raw < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        let target = (20 - raw as i32).saturating_add(nice_delta).min(19);
        // SAFETY: setpriority on this thread's id; no memory is passed.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, target) };
        if rc == 0 {
            Ok(target)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let value = match io {
        BackgroundIo::Idle => ioprio_value(IOPRIO_CLASS_IDLE, 0),
        BackgroundIo::BestEffortLowest => ioprio_value(IOPRIO_CLASS_BE, IO_BEST_EFFORT_LOWEST),
    };
    // SAFETY: ioprio_set on this thread's id with an integer priority; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, value) };
    let io = if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    Lowered { nice, io }
}

/// Elsewhere threads keep the node's priority.
#[cfg(not(target_os = "linux"))]
pub fn lower_this_thread(_nice_delta: i32, _io: BackgroundIo) -> Lowered {
    let unsupported = || std::io::Error::other("per-thread priorities are Linux only");
    Lowered {
        nice: Err(unsupported()),
        io: Err(unsupported()),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_itself_and_no_other() {
        let own = || {
            // SAFETY: as above.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            // SAFETY: as above.
            let raw = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid) };
            // SAFETY: as above.
            let io = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
            (20 - raw, io)
        };
        let (before, _) = own();
        let (nice, io, lowered) = std::thread::spawn(move || {
            let l = lower_this_thread(BACKGROUND_NICE_DELTA, BackgroundIo::Idle);
            let (nice, io) = own();
            (nice, io, l)
        })
        .join()
        .unwrap();
        assert_eq!(nice, (before + i64::from(BACKGROUND_NICE_DELTA)).min(19));
        assert_eq!(lowered.nice.unwrap() as i64, nice);
        assert!(lowered.io.is_ok());
        assert_eq!(io, i64::from(ioprio_value(IOPRIO_CLASS_IDLE, 0)));
        assert_eq!(own().0, before, "the calling thread keeps its priority");
    }
}
