//! dfagent-bench: every benchmark scenario of dfagent against its baseline, on one machine.
//!
//! It sets everything up itself on 127.0.0.1: a `docker-registry`, the workload images (an
//! OCI image made with umoci, its Nydus conversion) and a link-shaping proxy in front of the
//! registry (bandwidth and added round-trip time). Each scenario runs baseline and dfagent
//! alternately for several rounds, prints one summary line per measured quantity
//! (`NAME: dfagent X UNIT, baseline Y UNIT, ratio Z`, ratio = dfagent / baseline) and writes
//! `NAME.md`, `NAME.png` and `NAME.json` under the results directory. `--quick` runs every
//! scenario on the small fixture tree in seconds (what CI runs). Needs root.

mod build_bench;
mod cleanup;
mod cold_start;
mod containerd;
mod daemon_bench;
mod dragonfly;
mod env;
mod mount;
mod nydusd;
mod outcome;
mod procs;
mod reads;
mod store_bench;
mod swarm;
mod ttfb;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::env::Env;
use crate::outcome::Outcome;

/// Options shared by every scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// Rounds per scenario (each runs baseline and dfagent once, alternating which goes
    /// first). Default 5, or 3 with --quick (`containerd`: 3, or 1 with --quick).
    #[arg(long = "rounds", global = true, value_name = "N")]
    pub rounds_opt: Option<usize>,
    /// Rounds actually used (from --rounds or the mode's default).
    #[arg(skip)]
    pub rounds: usize,
    /// The quick mode: the small fixture tree, small sizes (seconds per scenario; CI runs it).
    #[arg(long, global = true)]
    pub quick: bool,
    /// Link bandwidth of the shaping proxy, in MB/s (10^6 bytes per second).
    #[arg(long, global = true, default_value_t = 100.0)]
    pub bandwidth_mbps: f64,
    /// Round-trip time the proxy adds, in milliseconds.
    #[arg(long, global = true, default_value_t = 2.0)]
    pub rtt_ms: f64,
    /// Shape each connection on its own instead of one link shared by all connections.
    #[arg(long, global = true)]
    pub per_connection: bool,
    /// `--prefetch` of the cold-start mounts (dfagent's default is `all`).
    #[arg(long, global = true, default_value = "all")]
    pub prefetch: String,
    /// Where tables, plots and JSON go (default: bench/results, or bench/results/quick with
    /// --quick).
    #[arg(long, global = true)]
    pub results_dir: Option<PathBuf>,
    /// Parent of the scratch directory (registry data, layouts, stores, mount points).
    #[arg(long, global = true, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// The dfagent binary (default: the release build in the target dir when it exists, in
    /// full mode; otherwise, and with --quick, the one beside this binary).
    #[arg(long, global = true)]
    pub dfagent: Option<PathBuf>,
    /// Upstream nydusd: run it as a third side of cold-start, cold-start-warm, seq-read,
    /// rand-read and metadata (lines `NAME-vs-nydusd`, whose baseline is nydusd).
    #[arg(long, global = true, value_name = "PATH")]
    pub nydusd: Option<PathBuf>,
    /// nydusd's FUSE worker threads (`--fuse-threads`).
    #[arg(long, global = true, default_value_t = 4, value_name = "N")]
    pub nydusd_fuse_threads: usize,
    /// nydusd's cache type (`blobcache`, or `filecache`: the same cache).
    #[arg(long, global = true, default_value = "blobcache", value_name = "TYPE")]
    pub nydusd_cache: String,
    /// nydusd's fs prefetch of all data: its thread count, 0 = off.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub nydusd_prefetch_threads: usize,
    /// nydusd's `amplify_io` (bytes a user read is widened to), 0 = off.
    #[arg(long, global = true, default_value_t = 1 << 20, value_name = "BYTES")]
    pub nydusd_amplify_io: u64,
}

#[derive(Parser)]
#[command(name = "dfagent-bench", about, long_about = None)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Lazy mount + start vs skopeo pull + umoci unpack + start, empty node.
    ColdStart,
    /// The same with the image's data already on the node.
    ColdStartWarm,
    /// Sequential reads of the big files through a warm-store mount vs local disk.
    SeqRead,
    /// Random 4 KiB reads through a warm-store mount vs local disk.
    RandRead,
    /// A stat walk of the whole tree through the mount vs local disk.
    Metadata,
    /// First byte and whole file through a cold mount vs plain HTTP range GETs.
    Ttfb,
    /// Chunk store put/get vs one file per chunk.
    Store,
    /// dfagent build throughput vs recompression, and chunk-dictionary dedup.
    Build,
    /// `dfagent mount` through the daemon vs in-process, and 16 mounts at once vs one.
    MountLatency,
    /// The daemon's memory with 16 images mounted and read, beyond its configured cache.
    DaemonMemory,
    /// N daemons in network namespaces start the image with the peer network on vs off:
    /// registry egress and start times, nodes one after another and all at once. Not part of
    /// `all` (it needs network namespaces and runs several clusters per round).
    Swarm {
        /// Nodes (daemons, each in its own network namespace).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
    },
    /// N daemons in network namespaces start the image straight from the registry, through
    /// one cold Dragonfly seed peer, and through a preheated one (peer network off): registry
    /// egress and start times. Not part of `all` (network namespaces, dfdaemon).
    Dragonfly {
        /// Nodes (daemons, each in its own network namespace).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// `ctr run` of the workload's start on a cold node: through the dfagent snapshotter
    /// (`dfagent containerd pull` of the Nydus image, lazy mount by a fresh `dfagent daemon`) vs
    /// containerd's overlayfs after `ctr image pull` of the OCI image; time to the output and
    /// registry bytes. Not part of `all` (it needs containerd and runc).
    Containerd,
    /// nydusd alone under several settings (needs --nydusd; one knob changed at a time from
    /// the `--nydusd-*` options): seq-read and cold-start medians, to choose its best settings
    /// here. Not part of `all`.
    NydusdTune,
}

const ORDER: [Scenario; 10] = [
    Scenario::ColdStart,
    Scenario::ColdStartWarm,
    Scenario::SeqRead,
    Scenario::RandRead,
    Scenario::Metadata,
    Scenario::Ttfb,
    Scenario::Store,
    Scenario::Build,
    Scenario::MountLatency,
    Scenario::DaemonMemory,
];

fn run_one(env: &mut Env, s: Scenario, results: &Path) -> anyhow::Result<Outcome> {
    match s {
        Scenario::ColdStart => cold_start::cold(env),
        Scenario::ColdStartWarm => cold_start::warm(env),
        Scenario::SeqRead => reads::seq(env),
        Scenario::RandRead => reads::rand(env),
        Scenario::Metadata => reads::metadata(env),
        Scenario::Ttfb => ttfb::run(env),
        Scenario::Store => store_bench::run(env),
        Scenario::Build => build_bench::run(env),
        Scenario::MountLatency => daemon_bench::latency(env),
        Scenario::DaemonMemory => daemon_bench::memory(env),
        Scenario::Swarm { nodes } => swarm::run(env, nodes, results),
        Scenario::Dragonfly { nodes } => dragonfly::run(env, nodes, results),
        Scenario::Containerd => containerd::run(env),
        Scenario::All | Scenario::NydusdTune => {
            anyhow::bail!("{s:?} is not a scenario with an outcome")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut opts = cli.opts;
    let default_rounds = match (cli.command, opts.quick) {
        (Scenario::Containerd, true) => 1,
        (Scenario::Containerd, false) => 3,
        (_, true) => 3,
        (_, false) => 5,
    };
    opts.rounds = opts.rounds_opt.unwrap_or(default_rounds).max(1);
    if let Err(e) = cleanup::install_signal_handler() {
        eprintln!("dfagent-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let code = match run(cli.command, opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dfagent-bench: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Anything a failure left registered (guards normally undo their own).
    cleanup::run_all();
    code
}

/// Run the scenarios; false when one failed (the others still run under `all`).
fn run(command: Scenario, opts: Opts) -> anyhow::Result<bool> {
    let results = opts.results_dir.clone().unwrap_or_else(|| {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
        if opts.quick {
            base.join("quick")
        } else {
            base
        }
    });
    let mut env = Env::new(opts)?;
    let context = format!(
        "Machine: {}. dfagent: `{}` ({}).{} Link: {}. Made by `dfagent-bench {}` with {} rounds.",
        outcome::machine(),
        env.dfagent.display(),
        outcome::profile_of(&env.dfagent),
        env.nydusd
            .as_ref()
            .map(|n| format!(" Upstream: {}.", n.describe()))
            .unwrap_or_default(),
        cold_start::link_desc(&env),
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        env.opts.rounds
    );
    eprintln!("dfagent-bench: {context}");
    if command == Scenario::NydusdTune {
        let table = nydusd::tune(&mut env)?;
        println!("{table}");
        std::fs::create_dir_all(&results)?;
        std::fs::write(
            results.join("nydusd-tune.md"),
            format!("# nydusd settings tried\n\n{context}\n\n{table}"),
        )?;
        return Ok(true);
    }
    let list: Vec<Scenario> = if command == Scenario::All {
        ORDER.to_vec()
    } else {
        vec![command]
    };
    let mut lines = Vec::new();
    let mut ok = true;
    for s in list {
        if cleanup::stopping() {
            break;
        }
        eprintln!("dfagent-bench: == {s:?}");
        match run_one(&mut env, s, &results).and_then(|o| outcome::write(&o, &results, &context)) {
            Ok(l) => {
                for line in &l {
                    println!("{line}");
                }
                lines.extend(l);
            }
            Err(e) => {
                eprintln!("dfagent-bench: {s:?} failed: {e:#}");
                println!("{s:?}: FAILED: {e:#}");
                ok = false;
            }
        }
    }
    if command == Scenario::All {
        let summary = format!(
            "# dfagent benchmark summary\n\n{context}\n\n```\n{}\n```\n",
            lines.join("\n")
        );
        std::fs::write(results.join("summary.md"), summary)?;
        eprintln!(
            "dfagent-bench: summary in {}",
            results.join("summary.md").display()
        );
    }
    Ok(ok)
}
