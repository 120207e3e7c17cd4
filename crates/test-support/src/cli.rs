//! The `dfagent` binary as the CLI tests run it. Only a test of the dfagent crate knows where
//! the binary is (`CARGO_BIN_EXE_dfagent`), so [`dfagent_cli!`](crate::dfagent_cli) builds a
//! [`Dfagent`] there, and everything else takes it from that.
//!
//! Every command starts without the caller's `DFAGENT_*` variables and `RUST_LOG`, and with
//! `DFAGENT_SOCKET` naming a socket that does not exist: a daemon running on the machine is
//! never asked (the CLI runs in-process when no daemon answers), and the machine's environment
//! changes nothing. `DFAGENT_CONFIG` stays unset (a missing default file is no configuration).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mount::MountGuard;
use crate::process::{run_bounded, succeeded, wait_exit};

/// Bound of one CLI command (a build of a texture tree, a pull of a fixture image).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a `dfagent mount` may take to show the image.
const MOUNT_READY: Duration = Duration::from_secs(30);
/// How long a `dfagent mount` may take to exit after `dfagent umount`.
const MOUNT_EXIT: Duration = Duration::from_secs(15);

/// `Dfagent::new(env!("CARGO_BIN_EXE_dfagent"))`, for the dfagent crate's tests (the macro
/// expands there, where cargo sets that variable).
#[macro_export]
macro_rules! dfagent_cli {
    () => {
        $crate::cli::Dfagent::new(env!("CARGO_BIN_EXE_dfagent"))
    };
}

/// The `dfagent` binary, isolated from the machine's daemon and environment.
#[derive(Clone)]
pub struct Dfagent {
    bin: PathBuf,
    store: Option<PathBuf>,
    // Holds the directory the never-created socket would be in; removed when the last clone goes.
    scratch: Arc<tempfile::TempDir>,
}

impl Dfagent {
    /// The binary at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Dfagent {
        Dfagent {
            bin: bin.into(),
            store: None,
            scratch: Arc::new(
                tempfile::Builder::new()
                    .prefix("dfagent-cli-")
                    .tempdir()
                    .expect("creating a scratch directory"),
            ),
        }
    }

    /// The same binary with `DFAGENT_STORE` set to `store` in every command.
    pub fn with_store(&self, store: &Path) -> Dfagent {
        Dfagent {
            store: Some(store.to_path_buf()),
            ..self.clone()
        }
    }

    /// The binary's path.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The control socket every command is pointed at; nothing ever listens there.
    pub fn no_daemon_socket(&self) -> PathBuf {
        self.scratch.path().join("no-daemon/dfagent.sock")
    }

    /// A command of the binary: stdin closed, the caller's `DFAGENT_*` and `RUST_LOG` removed,
    /// `DFAGENT_SOCKET` at [`Dfagent::no_daemon_socket`], `DFAGENT_STORE` if set. A test may
    /// set variables of its own on top.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DFAGENT_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("DFAGENT_SOCKET", self.no_daemon_socket())
            .stdin(Stdio::null());
        if let Some(s) = &self.store {
            cmd.env("DFAGENT_STORE", s);
        }
        cmd
    }

    /// Run `dfagent ARGS...` to completion (bounded by [`CLI_TIMEOUT`]).
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_bounded(self.command().args(args), CLI_TIMEOUT)
    }

    /// [`Dfagent::run`], which must succeed (else fail with its stderr).
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        succeeded(self.run(args))
    }

    /// `dfagent push --bootstrap IMG/bootstrap --blob-dir IMG/blobs REFERENCE`, which must
    /// succeed.
    pub fn push(&self, img: &Path, reference: &str) {
        self.ok(&[
            OsStr::new("push"),
            OsStr::new("--bootstrap"),
            img.join("bootstrap").as_os_str(),
            OsStr::new("--blob-dir"),
            img.join("blobs").as_os_str(),
            OsStr::new(reference),
        ]);
    }

    /// `dfagent cache stat --json`, parsed.
    pub fn cache_stat(&self) -> serde_json::Value {
        let out = self.ok(&["cache", "stat", "--json"]);
        serde_json::from_slice(&out.stdout).expect("cache stat --json prints JSON")
    }

    /// `dfagent cache verify` finds every chunk of the store intact (its report on failure).
    pub fn assert_store_verifies(&self) {
        let out = self.run(&["cache", "verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// `dfagent -v mount REFERENCE MP --prefetch PREFETCH`, waiting until `hello.txt` shows.
    pub fn mount(&self, reference: &str, mp: &Path, prefetch: &str) -> DfagentMount {
        self.mount_with(reference, mp, &["--prefetch", prefetch])
    }

    /// `dfagent -v mount REFERENCE MP ARGS...`, waiting (bounded) until `hello.txt` shows; its
    /// stderr goes to `MP.log` ([`DfagentMount::log`]).
    pub fn mount_with(&self, reference: &str, mp: &Path, args: &[&str]) -> DfagentMount {
        let log_path = mp.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("creating the mount's log");
        let child = self
            .command()
            .args(["-v", "mount", reference])
            .arg(mp)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning dfagent mount");
        let mut guard = MountGuard::new(mp);
        guard.adopt(child);
        let deadline = Instant::now() + MOUNT_READY;
        while !mp.join("hello.txt").exists() {
            if let Ok(Some(st)) = guard.child(0).try_wait() {
                panic!(
                    "dfagent mount {reference} exited with {st}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mount of {reference} did not appear within {MOUNT_READY:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        DfagentMount {
            cli: self.clone(),
            guard,
            log: log_path,
        }
    }
}

/// A `dfagent mount` child serving a mount point; killed and detached on drop.
pub struct DfagentMount {
    cli: Dfagent,
    guard: MountGuard,
    log: PathBuf,
}

impl DfagentMount {
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }

    /// The mount process.
    pub fn child(&mut self) -> &mut Child {
        self.guard.child(0)
    }

    /// Its log file (`MP.log`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the mount process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dfagent umount MP`, then wait (bounded) for the mount process to exit successfully.
    pub fn stop(mut self) {
        let mp = self.path().to_path_buf();
        self.cli.ok(&[OsStr::new("umount"), mp.as_os_str()]);
        let st = wait_exit(self.child(), MOUNT_EXIT)
            .unwrap_or_else(|| panic!("dfagent mount did not exit within {MOUNT_EXIT:?}"));
        assert!(st.success(), "dfagent mount exited with {st}");
    }
}
