//! `dfagent seed`: warm a cluster before a rollout. For each image, (1) when a Dragonfly
//! scheduler is configured, ask it to preheat the image on its seed peers and wait (with a
//! progress bar) until they hold every layer; (2) pull the whole image into this node's store —
//! through the daemon when one answers, which then serves it to the peer network (a seed node).
//!
//! Exit codes (for a Kubernetes Job's `podFailurePolicy`): see [`Outcome`].

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dfagent_node::config::Overrides;
use dfagent_node::control::client::Client;
use dfagent_node::control::proto;
use dfagent_node::{NodeError, PreheatOptions};
use dfagent_registry::RegistryError;
use dfagent_scheduler_client::{DragonflyError, ImageStatus, PreheatScope};
use serde::Serialize;

use crate::client::DaemonArgs;
use crate::node_args::{load, open_node, ConfigArgs, RegistryArgs, StoreArgs};
use crate::pull::{progress_bar, PULL_BAR};

/// Which peers a preheat reaches.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Scope {
    /// One seed peer per layer.
    SingleSeedPeer,
    /// Every seed peer.
    AllSeedPeers,
    /// Every Dragonfly peer.
    AllPeers,
}

impl From<Scope> for PreheatScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::SingleSeedPeer => PreheatScope::SingleSeedPeer,
            Scope::AllSeedPeers => PreheatScope::AllSeedPeers,
            Scope::AllPeers => PreheatScope::AllPeers,
        }
    }
}

/// `dfagent seed` flags.
#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// Images to seed, e.g. registry.lan/app:v2.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// A Dragonfly scheduler (`host:port`) to preheat through, instead of `[dragonfly]
    /// schedulers` (enables the preheat).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Which peers the preheat reaches.
    #[arg(long, value_enum, default_value = "all-seed-peers")]
    pub scope: Scope,
    /// Longest wait per image for the seed peers to hold every layer (`30m`, `90s`).
    #[arg(long, default_value = "30m", value_parser = dfagent_node::config::parse_duration)]
    pub timeout: Duration,
    /// Times an unreachable scheduler is asked again (with backoff) before giving up.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Skip the preheat, even with a scheduler configured.
    #[arg(long)]
    pub no_preheat: bool,
    /// Skip the pull into this node's store.
    #[arg(long)]
    pub no_pull: bool,
    /// One JSON summary on stdout instead of progress and text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How one image's seeding ended, and the exit code it asks for. The process exits with the
/// highest code of its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 0: seeded.
    Done,
    /// 1: anything else (a chunk that could not be had, an I/O error, the daemon failed).
    Failed,
    /// 2: the configuration or the flags are wrong (no scheduler, nothing to do).
    Usage,
    /// 3: the image does not exist (or is not a Nydus image): do not retry.
    UnknownImage,
    /// 4: the registry refused the credentials: do not retry until they are fixed.
    Refused,
    /// 5: the scheduler or the registry could not be reached: retry later.
    Unreachable,
    /// 6: the seed peers did not hold every layer within `--timeout`: retry.
    TimedOut,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::UnknownImage => 3,
            Outcome::Refused => 4,
            Outcome::Unreachable => 5,
            Outcome::TimedOut => 6,
        }
    }

    /// The outcome an error stands for (node errors by kind; anything else fails).
    fn of(e: &anyhow::Error) -> Self {
        for cause in e.chain() {
            if let Some(n) = cause.downcast_ref::<NodeError>() {
                return match n {
                    NodeError::Registry(r) => Self::of_registry(r),
                    NodeError::Resolve { .. } => Outcome::Unreachable,
                    NodeError::Timeout { .. } => Outcome::TimedOut,
                    NodeError::Dragonfly(d) => Self::of_dragonfly(d),
                    NodeError::Unsupported(_) => Outcome::Usage,
                    NodeError::BadImage { .. } | NodeError::Rafs(_) => Outcome::UnknownImage,
                    _ => Outcome::Failed,
                };
            }
            if let Some(s) = cause.downcast_ref::<tonic::Status>() {
                return match s.code() {
                    tonic::Code::NotFound | tonic::Code::InvalidArgument => Outcome::UnknownImage,
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                        Outcome::Refused
                    }
                    tonic::Code::Unavailable => Outcome::Unreachable,
                    tonic::Code::DeadlineExceeded => Outcome::TimedOut,
                    _ => Outcome::Failed,
                };
            }
        }
        Outcome::Failed
    }

    fn of_dragonfly(d: &DragonflyError) -> Self {
        match d {
            DragonflyError::Scheduler { code, .. } => match code.as_str() {
                "NotFound" | "InvalidArgument" | "FailedPrecondition" => Outcome::UnknownImage,
                "PermissionDenied" | "Unauthenticated" => Outcome::Refused,
                "DeadlineExceeded" => Outcome::TimedOut,
                _ => Outcome::Unreachable,
            },
            DragonflyError::Config(_) => Outcome::Usage,
            _ => Outcome::Unreachable,
        }
    }

    fn of_registry(r: &RegistryError) -> Self {
        match r {
            RegistryError::NotFound { .. } | RegistryError::NotNydus { .. } => {
                Outcome::UnknownImage
            }
            RegistryError::Auth { .. } => Outcome::Refused,
            RegistryError::Reference { .. } | RegistryError::InvalidRequest(_) => Outcome::Usage,
            _ => Outcome::Unreachable,
        }
    }
}

/// What the preheat of one image did.
#[derive(Debug, Serialize)]
struct PreheatSummary {
    layers: usize,
    layers_done: usize,
    seed_peers: usize,
    seconds: f64,
}

/// What the pull of one image did.
#[derive(Debug, Serialize)]
struct PullSummary {
    through_daemon: bool,
    chunks: u64,
    failed_chunks: u64,
    seconds: f64,
}

/// One image's line of the summary.
#[derive(Debug, Serialize)]
struct ImageSummary {
    reference: String,
    outcome: Outcome,
    exit_code: u8,
    preheat: Option<PreheatSummary>,
    pull: Option<PullSummary>,
    error: Option<String>,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
struct Summary {
    exit_code: u8,
    images: Vec<ImageSummary>,
}

/// `dfagent seed`.
pub fn run(args: SeedArgs, daemon: &DaemonArgs, config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let mut o = args
        .registry
        .overrides(args.store.overrides(Overrides::new()));
    if let Some(s) = &args.scheduler {
        o = o.set("--scheduler", "dragonfly.enable", true).set(
            "--scheduler",
            "dragonfly.schedulers",
            vec![s.clone()],
        );
    }
    let cfg = match load(config, daemon.overrides(o)) {
        Ok(c) => c,
        Err(e) => return Ok(finish(&args, usage_failure(&args.images, e))),
    };
    let dragonfly = match cfg.dragonfly_config() {
        Ok(d) => d.filter(|_| !args.no_preheat),
        Err(e) => return Ok(finish(&args, usage_failure(&args.images, e.into()))),
    };
    if dragonfly.is_none() && args.no_pull {
        let e = anyhow::anyhow!(
            "nothing to do: no Dragonfly scheduler to preheat through ([dragonfly] or --scheduler) and --no-pull"
        );
        return Ok(finish(&args, usage_failure(&args.images, e)));
    }
    let rt = dfagent_node::runtime()?;
    // The preheat runs in this process (no store needed); the pull goes to the daemon when one
    // answers (it stores and serves the image), else into the store in this process.
    let preheater = match dragonfly {
        Some(d) => {
            let node = open_node(&rt, &cfg, false)?;
            node.start_dragonfly(d)
                .context("starting the Dragonfly client")?;
            Some(node)
        }
        None => None,
    };
    let mut client = if args.no_pull {
        None
    } else {
        daemon.client(&rt, config)?
    };
    let local = if args.no_pull || client.is_some() {
        None
    } else {
        Some(open_node(&rt, &cfg, true)?)
    };
    let options = PreheatOptions {
        scope: args.scope.into(),
        timeout: args.timeout,
        retries: args.retries,
    };
    let mut images = Vec::new();
    for reference in &args.images {
        let mut summary = ImageSummary {
            reference: reference.clone(),
            outcome: Outcome::Done,
            exit_code: 0,
            preheat: None,
            pull: None,
            error: None,
        };
        let result = (|| -> anyhow::Result<()> {
            if let Some(node) = &preheater {
                summary.preheat = Some(preheat(&rt, node, reference, &options, args.json)?);
            }
            if let Some(c) = client.as_mut() {
                summary.pull = Some(pull_through_daemon(&rt, c, reference, args.json)?);
            } else if let Some(node) = &local {
                summary.pull = Some(pull_here(&rt, node, reference, args.json)?);
            }
            if summary.pull.as_ref().is_some_and(|p| p.failed_chunks > 0) {
                anyhow::bail!("some chunks of {reference} could not be had");
            }
            Ok(())
        })();
        if let Err(e) = result {
            summary.outcome = Outcome::of(&e);
            summary.error = Some(format!("{e:#}"));
        }
        summary.exit_code = summary.outcome.code();
        if !args.json {
            match &summary.error {
                None => eprintln!("dfagent: seeded {reference}"),
                Some(e) => eprintln!(
                    "dfagent: seeding {reference} failed ({:?}, exit code {}): {e}",
                    summary.outcome, summary.exit_code
                ),
            }
        }
        images.push(summary);
    }
    if let Some(node) = &preheater {
        node.stop_dragonfly();
    }
    Ok(finish(&args, images))
}

/// Every image failed for the same usage reason.
fn usage_failure(images: &[String], e: anyhow::Error) -> Vec<ImageSummary> {
    images
        .iter()
        .map(|r| ImageSummary {
            reference: r.clone(),
            outcome: Outcome::Usage,
            exit_code: Outcome::Usage.code(),
            preheat: None,
            pull: None,
            error: Some(format!("{e:#}")),
        })
        .collect()
}

/// Print the summary (JSON, or a usage error as text) and give the highest exit code.
fn finish(args: &SeedArgs, images: Vec<ImageSummary>) -> ExitCode {
    let code = images.iter().map(|i| i.exit_code).max().unwrap_or(0);
    if args.json {
        let s = Summary {
            exit_code: code,
            images,
        };
        match serde_json::to_string(&s) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("dfagent: printing the summary: {e}"),
        }
    } else {
        for i in images.iter().filter(|i| i.outcome == Outcome::Usage) {
            if let Some(e) = &i.error {
                eprintln!("dfagent: seed {}: {e}", i.reference);
            }
        }
    }
    ExitCode::from(code)
}

fn preheat(
    rt: &tokio::runtime::Runtime,
    node: &std::sync::Arc<dfagent_node::Node>,
    reference: &str,
    options: &PreheatOptions,
    json: bool,
) -> anyhow::Result<PreheatSummary> {
    let started = Instant::now();
    let b = progress_bar(
        json,
        "{spinner} preheating [{bar:40}] {pos}/{len} layers on the seed peers {msg}",
    );
    let status: ImageStatus = rt
        .block_on(node.preheat(reference, options, |s| {
            b.set_length(s.layers.len() as u64);
            b.set_position(s.layers_done() as u64);
            b.set_message(format!("({} peers)", s.peers.len()));
        }))
        .with_context(|| format!("preheating {reference}"))?;
    b.finish_and_clear();
    Ok(PreheatSummary {
        layers: status.layers.len(),
        layers_done: status.layers_done(),
        seed_peers: status.peers.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn pull_through_daemon(
    rt: &tokio::runtime::Runtime,
    c: &mut Client,
    reference: &str,
    json: bool,
) -> anyhow::Result<PullSummary> {
    let started = Instant::now();
    let b = progress_bar(json, PULL_BAR);
    let last = rt
        .block_on(async {
            let mut stream = c
                .pull(proto::PullRequest {
                    reference: reference.to_string(),
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(p) = stream.message().await? {
                b.set_length(p.total_bytes);
                b.set_position(p.done_bytes);
                let finished = p.finished;
                last = Some(p);
                if finished {
                    break;
                }
            }
            Ok::<_, tonic::Status>(last)
        })
        .with_context(|| format!("pulling {reference} through the daemon"))?;
    b.finish_and_clear();
    let Some(p) = last.filter(|p| p.finished) else {
        anyhow::bail!("the daemon ended the pull of {reference} without finishing it");
    };
    Ok(PullSummary {
        through_daemon: true,
        chunks: p.total_chunks,
        failed_chunks: p.failed_chunks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn pull_here(
    rt: &tokio::runtime::Runtime,
    node: &std::sync::Arc<dfagent_node::Node>,
    reference: &str,
    json: bool,
) -> anyhow::Result<PullSummary> {
    let started = Instant::now();
    let b = progress_bar(json, PULL_BAR);
    let report = rt
        .block_on(node.pull(reference, |p| {
            b.set_length(p.total_bytes);
            b.set_position(p.done_bytes);
        }))
        .with_context(|| format!("pulling {reference}"))?;
    b.finish_and_clear();
    Ok(PullSummary {
        through_daemon: false,
        chunks: report.progress.total_chunks,
        failed_chunks: report.progress.failed_chunks,
        seconds: started.elapsed().as_secs_f64(),
    })
}
