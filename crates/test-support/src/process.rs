//! Child processes with bounded waits: run to completion within a time limit, wait for an exit
//! within one, and check that a command succeeded.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// `out` after checking that its command succeeded (else fail with its stderr).
pub fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "command failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `cmd` to completion with its output captured and stdin closed; kill it and fail after
/// `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    match output_within(cmd, timeout) {
        Ok(Some(out)) => out,
        Ok(None) => panic!("{cmd:?} did not finish within {timeout:?}"),
        Err(e) => panic!("spawning {cmd:?}: {e}"),
    }
}

/// Like [`run_bounded`] but without failing: `None` when it was killed at `timeout` (for drop
/// handlers, which must not panic).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = wait_exit(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    };
    Ok(Some(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

/// Wait up to `timeout` for `child` to exit; its status, or `None` if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kill `child` if it still runs, and reap it.
pub fn kill(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
