//! What a scenario hands back, and how it is written: summary lines on stdout, and under the
//! results directory `NAME.md` (tables and notes), `NAME.png` (plot) and `NAME.json` (per-round
//! details the quick-mode test checks).

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use dfagent_bench::report::{plot, series_table, Series, Table};
use sha2::{Digest, Sha256};

/// A finished scenario.
pub struct Outcome {
    /// File stem under the results directory.
    pub file: &'static str,
    /// Title of the page and plot.
    pub title: String,
    /// The measured quantities; each gives one summary line.
    pub series: Vec<Series>,
    /// Further per-round or per-case figures.
    pub extra: Vec<(String, Table)>,
    /// How it was measured (Markdown).
    pub notes: String,
    /// Machine-readable details (byte counts, checksums).
    pub json: serde_json::Value,
}

/// The machine the figures come from, in one line.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs ({cpu}), {mem_gib:.1} GiB RAM, kernel {kernel}")
}

/// Which build profile `dfagent` comes from (by its path in the target dir).
pub fn profile_of(bin: &Path) -> &'static str {
    let s = bin.to_string_lossy();
    if s.contains("/release/") {
        "release profile"
    } else if s.contains("/debug/") {
        "dev profile (dependencies at opt-level 2, dfagent's own crates at opt-level 0)"
    } else {
        "unknown profile"
    }
}

/// Write the outcome's files and return its summary lines.
pub fn write(o: &Outcome, dir: &Path, context: &str) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let lines: Vec<String> = o.series.iter().map(|s| s.summary_line()).collect();
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", o.title);
    let _ = writeln!(md, "{}\n", o.notes.trim());
    let _ = writeln!(md, "{context}\n");
    for s in &o.series {
        let _ = writeln!(
            md,
            "## {} ({}, {} is better)\n\n{}",
            s.name,
            s.unit,
            if s.higher_is_better {
                "higher"
            } else {
                "lower"
            },
            series_table(s).markdown()
        );
    }
    for (title, t) in &o.extra {
        let _ = writeln!(md, "## {title}\n\n{}", t.markdown());
    }
    let _ = writeln!(md, "```\n{}\n```", lines.join("\n"));
    let md_path = dir.join(format!("{}.md", o.file));
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let refs: Vec<&Series> = o.series.iter().collect();
    plot(&dir.join(format!("{}.png", o.file)), &o.title, &refs)?;
    let mut json = o.json.clone();
    if let Some(obj) = json.as_object_mut() {
        obj.insert("summary".into(), serde_json::json!(lines));
    }
    std::fs::write(
        dir.join(format!("{}.json", o.file)),
        serde_json::to_vec_pretty(&json)?,
    )?;
    Ok(lines)
}

/// Read the file at `p` start to end through `buf`, handing each piece to `each`; its bytes.
pub fn read_through(p: &Path, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut total = 0u64;
    loop {
        let n = f
            .read(buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            return Ok(total);
        }
        each(&buf[..n]);
        total += n as u64;
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    read_through(p, &mut vec![0u8; 1 << 20], |b| h.update(b))?;
    Ok(hex::encode(h.finalize()))
}

/// `name=sha256` of each of `files` under `root`, joined (what both sides must agree on).
pub fn hash_files(root: &Path, files: &[String]) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for f in files {
        out.push(format!("{f}={}", sha256_file(&root.join(f))?));
    }
    Ok(out.join(" "))
}

/// Megabytes (10^6 bytes).
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Run both sides of round `round`, the baseline first in even rounds and dfagent first in odd
/// ones, so neither side always meets a warmer or cooler machine. Returns (dfagent, baseline).
pub fn alternate<D, B>(
    round: usize,
    dfagent: impl FnOnce() -> anyhow::Result<D>,
    baseline: impl FnOnce() -> anyhow::Result<B>,
) -> anyhow::Result<(D, B)> {
    if round.is_multiple_of(2) {
        let b = baseline()?;
        Ok((dfagent()?, b))
    } else {
        let d = dfagent()?;
        Ok((d, baseline()?))
    }
}
