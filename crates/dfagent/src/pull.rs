//! `dfagent pull` (with a progress bar) and `dfagent push`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use dfagent_node::config::Overrides;

use crate::node_args::{load, open_node, ConfigArgs, RegistryArgs, StoreArgs};

/// `dfagent pull`: fill the store with every chunk of an image.
pub fn pull(
    reference: &str,
    store: &StoreArgs,
    reg: &RegistryArgs,
    config: &ConfigArgs,
) -> anyhow::Result<ExitCode> {
    let rt = dfagent_node::runtime()?;
    let mut cfg = load(config, reg.overrides(store.overrides(Overrides::new())))?;
    // A pull streams the image through: a small decoded-chunk cache is enough.
    cfg.cache.decoded_mib = cfg.cache.decoded_mib.min(64);
    let node = open_node(&rt, &cfg, true)?;
    let started = Instant::now();
    let bar = progress_bar(false, PULL_BAR);
    let report = rt
        .block_on(node.pull(reference, |p| {
            bar.set_length(p.total_bytes);
            bar.set_position(p.done_bytes);
        }))
        .with_context(|| format!("pulling {reference}"))?;
    bar.finish_and_clear();
    if report.offline {
        eprintln!("dfagent: registry unreachable; used the stored copy of {reference}");
    }
    let p = report.progress;
    Ok(finish(
        &format!(
            "dfagent: pulled {reference}: {} chunks, {} bytes from the registry",
            p.total_chunks, report.fetched_bytes
        ),
        started,
        p.failed_chunks,
    ))
}

/// The progress bar of a pull: bytes of the image stored so far.
pub const PULL_BAR: &str =
    "{spinner} pulling [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// A progress bar drawn with `template` (nothing drawn when `hidden`, e.g. for `--json`).
pub fn progress_bar(hidden: bool, template: &str) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Print a pull's last line (`summary`, the time, failures) and give its exit code: failure
/// when any chunk could not be had.
pub fn finish(summary: &str, started: Instant, failed_chunks: u64) -> ExitCode {
    let failed = if failed_chunks > 0 {
        format!(", {failed_chunks} chunks FAILED")
    } else {
        String::new()
    };
    eprintln!(
        "{summary}, in {:.1} s{failed}",
        started.elapsed().as_secs_f64()
    );
    if failed_chunks > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `dfagent push`: publish a local Nydus image in nydusify's layout.
pub fn push(
    bootstrap: &Path,
    blob_dir: &Path,
    reference: &str,
    reg: &RegistryArgs,
    config: &ConfigArgs,
) -> anyhow::Result<ExitCode> {
    let rt = dfagent_node::runtime()?;
    let cfg = load(config, reg.overrides(Overrides::new()))?;
    let node = open_node(&rt, &cfg, false)?;
    let digest = rt
        .block_on(node.push(bootstrap, blob_dir, reference))
        .with_context(|| format!("pushing {} to {reference}", bootstrap.display()))?;
    println!("{reference}@{digest}");
    Ok(ExitCode::SUCCESS)
}
