//! Reads through a mount whose store is warm (every chunk on the node), against the same reads
//! on the image unpacked to local disk: `seq-read` (every file of 1 MiB or more, start to end),
//! `rand-read` (4 KiB reads at random aligned offsets of those files) and `metadata` (a walk of
//! the whole tree with `symlink_metadata`).
//!
//! Cold variant: each round remounts (a new dfagent process, so its decoded-chunk cache is
//! empty and every chunk comes from the store through decode and verify) and drops the page,
//! dentry and inode caches before each side, so every read and lookup reaches dfagent or ext4.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use dfagent_bench::report::{fmt_value, Series, Table};
use sha2::{Digest, Sha256};

use crate::env::{drop_caches, Env, NYDUS_REPO};
use crate::mount::{Mount, MountSpec};
use crate::nydusd::{self, rotate_sides, NydusdMount, SideFn, WarmCache};
use crate::outcome::{mb, Outcome};

/// Smallest file the sequential and random reads use.
const BIG_FILE: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// Regular files of at least [`BIG_FILE`] bytes under `root` (one path per inode), sorted.
pub(crate) fn big_files(root: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    walk(root, root, &mut |rel, md| {
        if md.file_type().is_file() && md.len() >= BIG_FILE && seen.insert(md.ino()) {
            out.push((rel.to_owned(), md.len()));
        }
    })?;
    out.sort();
    ensure!(
        !out.is_empty(),
        "no file of 1 MiB or more under {}",
        root.display()
    );
    Ok(out)
}

/// Visit every entry under `dir` (not following symlinks), depth first, names sorted.
fn walk(
    root: &Path,
    dir: &Path,
    f: &mut dyn FnMut(&str, &std::fs::Metadata),
) -> anyhow::Result<u64> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut n = 0;
    for name in names {
        let p = dir.join(&name);
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        f(&rel, &md);
        n += 1;
        if md.file_type().is_dir() {
            n += walk(root, &p, f)?;
        }
    }
    Ok(n)
}

/// One timed read pass of a side.
pub(crate) struct ReadRun {
    /// Bytes read.
    pub(crate) bytes: u64,
    /// Seconds of the timed loop.
    pub(crate) secs: f64,
    /// sha256 of everything read, in order.
    pub(crate) sha: String,
    /// p99 of the single `read`/`pread` calls, milliseconds.
    pub(crate) p99_ms: f64,
    /// CPU seconds the mount process used during the timed loop (`None` for local disk).
    pub(crate) cpu_s: Option<f64>,
}

/// The 99th percentile (nearest rank) of `samples`; NaN when empty.
pub fn p99(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (samples.len() as f64 * 0.99).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

impl ReadRun {
    /// A timed loop's outcome: `total` bytes hashed into `h` since `t0`, the single reads'
    /// latencies `lat` (ms), and `pid`'s CPU time since `cpu0`.
    fn done(
        total: u64,
        t0: Instant,
        h: Sha256,
        lat: &mut [f64],
        cpu0: Option<f64>,
        pid: Option<u32>,
    ) -> anyhow::Result<Self> {
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = cpu_now(pid)?;
        Ok(ReadRun {
            bytes: total,
            secs,
            sha: hex::encode(h.finalize()),
            p99_ms: p99(lat),
            cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        })
    }
}

/// CPU seconds of `pid` now (`None` without a process).
fn cpu_now(pid: Option<u32>) -> anyhow::Result<Option<f64>> {
    pid.map(crate::procs::cpu_seconds).transpose()
}

/// Read every file start to end with a 1 MiB buffer, timing each `read`; `pid` is the mount
/// process whose CPU time is taken around the loop.
pub(crate) fn seq_read(
    root: &Path,
    files: &[(String, u64)],
    pid: Option<u32>,
) -> anyhow::Result<ReadRun> {
    let mut buf = vec![0u8; 1 << 20];
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut lat =
        Vec::with_capacity(files.iter().map(|f| f.1 >> 20).sum::<u64>() as usize + 2 * files.len());
    let cpu0 = cpu_now(pid)?;
    let t0 = Instant::now();
    for (f, _) in files {
        let p = root.join(f);
        let mut file = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        loop {
            let t = Instant::now();
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
    }
    ReadRun::done(total, t0, h, &mut lat, cpu0, pid)
}

/// The (file, offset) of each random read: the same sequence for both sides.
fn plan_random(files: &[(String, u64)], n: usize) -> Vec<(usize, u64)> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    (0..n)
        .map(|_| {
            let i = rng.usize(..files.len());
            let blocks = files[i].1 / BLOCK;
            (i, rng.u64(..blocks.max(1)) * BLOCK)
        })
        .collect()
}

/// Open the files (untimed), then do the planned 4 KiB reads, timing each `pread`; `pid` as in
/// [`seq_read`].
fn rand_read(
    root: &Path,
    files: &[(String, u64)],
    plan: &[(usize, u64)],
    pid: Option<u32>,
) -> anyhow::Result<ReadRun> {
    let handles: Vec<File> = files
        .iter()
        .map(|(f, _)| File::open(root.join(f)).with_context(|| format!("opening {f}")))
        .collect::<Result<_, _>>()?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut h = Sha256::new();
    let mut lat = Vec::with_capacity(plan.len());
    let mut total = 0u64;
    let cpu0 = cpu_now(pid)?;
    let t0 = Instant::now();
    for &(i, off) in plan {
        let t = Instant::now();
        let n = handles[i]
            .read_at(&mut buf, off)
            .with_context(|| format!("reading {} at {off}", files[i].0))?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        h.update(&buf[..n]);
        total += n as u64;
    }
    ReadRun::done(total, t0, h, &mut lat, cpu0, pid)
}

/// What a walk saw: per path, what both sides must agree on (type, size of non-directories,
/// symlink target) and what they should (mode, owner, mtime).
type Listing = BTreeMap<String, (String, String)>;

/// Walk the tree stat-ing every entry; entries per second and the listing.
fn metadata_walk(root: &Path) -> anyhow::Result<(u64, f64, Listing)> {
    let mut listing = Listing::new();
    let t0 = Instant::now();
    let n = walk(root, root, &mut |rel, md| {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_symlink() {
            format!("symlink {}", md.len())
        } else {
            format!("{:o} {}", md.mode() & 0o170000, md.len())
        };
        let attrs = format!(
            "{:o} {}:{} {}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime()
        );
        listing.insert(rel.to_owned(), (kind, attrs));
    })?;
    Ok((n, t0.elapsed().as_secs_f64(), listing))
}

fn warm_mount(env: &Env, store: &Path) -> anyhow::Result<Mount> {
    let mp = env.scratch("mnt");
    let log = env.scratch("mount.log");
    Mount::start(&MountSpec {
        dfagent: &env.dfagent,
        reference: &env.via_proxy(NYDUS_REPO),
        store,
        prefetch: "none",
        mp: &mp,
        log: &log,
    })
}

struct Setup {
    store: PathBuf,
    local: PathBuf,
    files: Vec<(String, u64)>,
    how: String,
}

fn setup(env: &mut Env) -> anyhow::Result<Setup> {
    let how = env.nydus()?;
    let store = env.warm_store()?;
    let local = env.unpacked()?;
    let files = big_files(&local)?;
    Ok(Setup {
        store,
        local,
        files,
        how,
    })
}

fn notes(env: &Env, s: &Setup, what: &str) -> String {
    format!(
        "Workload: {}; Nydus image: {}. {what}\n\n\
         **Cold variant** (the one the summary line reports): each round mounts anew \
         (`dfagent mount --prefetch none` over a store filled by `dfagent pull`, so dfagent's \
         in-memory chunk cache starts empty and every chunk is read from the store, decoded and \
         verified) and drops the page, dentry and inode caches (`echo 3 > /proc/sys/vm/drop_caches`) \
         before each side. Baseline: the OCI image unpacked by umoci on the local disk (ext4). \
         Sides alternate which goes first. Note the VM's disk is cached by its host, so \"cold\" \
         local reads are faster than a real disk's.",
        env.workload.label, s.how
    )
}

/// The mount process's CPU seconds per GB (10^9 bytes) served, as a table cell.
fn cpu_per_gb(r: &ReadRun) -> String {
    match r.cpu_s {
        Some(c) if r.bytes > 0 => fmt_value(c / (r.bytes as f64 / 1e9)),
        _ => "-".into(),
    }
}

/// Fail unless `side` read the same bytes as the baseline.
fn same_bytes(what: &str, side: &str, got: &ReadRun, base: &ReadRun) -> anyhow::Result<()> {
    ensure!(
        got.bytes == base.bytes && got.sha == base.sha,
        "{what}: {side} read {} bytes (sha256 {}), the baseline {} bytes (sha256 {})",
        got.bytes,
        got.sha,
        base.bytes,
        base.sha
    );
    Ok(())
}

/// A fresh nydusd on the warm cache, when there is one.
fn nydusd_mount(env: &Env, w: Option<&WarmCache>) -> anyhow::Result<Option<NydusdMount>> {
    w.map(|w| NydusdMount::start(env, &w.bootstrap, &w.cache))
        .transpose()
}

/// What the notes say about nydusd, when it runs.
fn nydusd_notes(env: &Env) -> String {
    match &env.nydusd {
        Some(n) => format!(
            "\n\n**nydusd** (third side, lines `*-vs-nydusd` whose baseline is nydusd): {}. Its \
             bootstrap was taken from the image manifest's bootstrap layer and its blob cache \
             filled once before the rounds (a mount reading every file); each round starts a \
             fresh nydusd on that cache and drops the page caches before it reads. The three \
             sides rotate which goes first.",
            n.describe()
        ),
        None => String::new(),
    }
}

/// Column headers `PREFIX dfagent`, `PREFIX baseline`, and `PREFIX nydusd` when it runs.
fn per_side(prefix: &str, nydusd: bool, baseline: bool) -> Vec<String> {
    let mut v = vec![format!("dfagent {prefix}")];
    if baseline {
        v.push(format!("baseline {prefix}"));
    }
    if nydusd {
        v.push(format!("nydusd {prefix}"));
    }
    v
}

/// The seq-read scenario (and its page-cache-warm variant).
pub fn seq(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let warm = nydusd::warm(env)?;
    let with_n = warm.is_some();
    let mut cold = Series::new("seq-read", "MB/s", true);
    let mut hot = Series::new("seq-read-warm", "MB/s", true);
    let mut cold_n = Series::new("seq-read-vs-nydusd", "MB/s", true);
    let mut hot_n = Series::new("seq-read-warm-vs-nydusd", "MB/s", true);
    let mut header: Vec<String> = vec!["round".into(), "MB per side".into(), "checksums".into()];
    header.extend(per_side("p99 read latency, ms", with_n, true));
    header.extend(per_side("warm p99 read latency, ms", with_n, true));
    header.extend(per_side("mount CPU s per GB", with_n, false));
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&refs);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let nm = nydusd_mount(env, warm.as_ref())?;
        let run = |root: &Path, pid: Option<u32>| -> anyhow::Result<(ReadRun, ReadRun)> {
            drop_caches()?;
            let c = seq_read(root, &s.files, pid)?;
            // Page-cache warm: the same files again, nothing dropped.
            let w = seq_read(root, &s.files, pid)?;
            Ok((c, w))
        };
        let mut sides: Vec<SideFn<'_, (ReadRun, ReadRun)>> = vec![
            Box::new(|| run(&s.local, None)),
            Box::new(|| run(m.path(), Some(m.pid()))),
        ];
        if let Some(n) = &nm {
            sides.push(Box::new(|| run(n.path(), Some(n.pid()))));
        }
        let ((b, bw), (d, dw), n) = rotate_sides(r, sides)?;
        m.unmount()?;
        if let Some(nm) = nm {
            nm.unmount()?;
        }
        same_bytes("seq-read", "dfagent", &d, &b)?;
        same_bytes("seq-read-warm", "dfagent", &dw, &bw)?;
        let rate = |x: &ReadRun| mb(x.bytes) / x.secs;
        cold.push(rate(&d), rate(&b));
        hot.push(rate(&dw), rate(&bw));
        let mut row = vec![(r + 1).to_string(), fmt_value(mb(d.bytes)), "match".into()];
        let mut p99s = vec![fmt_value(d.p99_ms), fmt_value(b.p99_ms)];
        let mut warm_p99s = vec![fmt_value(dw.p99_ms), fmt_value(bw.p99_ms)];
        let mut cpus = vec![cpu_per_gb(&d)];
        let mut line = format!(
            "dfagent {:.0} MB/s (warm {:.0}), baseline {:.0} MB/s (warm {:.0})",
            rate(&d),
            rate(&dw),
            rate(&b),
            rate(&bw)
        );
        let mut json = serde_json::json!({
            "dfagent_mbps": rate(&d), "baseline_mbps": rate(&b),
            "dfagent_warm_mbps": rate(&dw), "baseline_warm_mbps": rate(&bw),
            "dfagent_p99_ms": d.p99_ms, "baseline_p99_ms": b.p99_ms,
            "dfagent_cpu_s": d.cpu_s,
        });
        if let Some((n, nw)) = n {
            same_bytes("seq-read", "nydusd", &n, &b)?;
            same_bytes("seq-read-warm", "nydusd", &nw, &bw)?;
            cold_n.push(rate(&d), rate(&n));
            hot_n.push(rate(&dw), rate(&nw));
            p99s.push(fmt_value(n.p99_ms));
            warm_p99s.push(fmt_value(nw.p99_ms));
            cpus.push(cpu_per_gb(&n));
            line.push_str(&format!(
                ", nydusd {:.0} MB/s (warm {:.0})",
                rate(&n),
                rate(&nw)
            ));
            if let Some(o) = json.as_object_mut() {
                o.insert("nydusd_mbps".into(), rate(&n).into());
                o.insert("nydusd_warm_mbps".into(), rate(&nw).into());
                o.insert("nydusd_p99_ms".into(), n.p99_ms.into());
                o.insert("nydusd_cpu_s".into(), serde_json::json!(n.cpu_s));
            }
        }
        row.extend(p99s);
        row.extend(warm_p99s);
        row.extend(cpus);
        table.row(row);
        rounds.push(json);
        eprintln!("dfagent-bench: seq-read round {}: {line}", r + 1);
    }
    let total: u64 = s.files.iter().map(|f| f.1).sum();
    let n = s.files.len();
    let mut series = vec![cold, hot];
    if with_n {
        series.push(cold_n);
        series.push(hot_n);
    }
    Ok(Outcome {
        file: "seq-read",
        title: "Sequential read through the mount (store warm, caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!(
                "Each side reads every regular file of 1 MiB or more ({n} files, {total} bytes) \
                 start to end with a 1 MiB buffer; the sha256 of all bytes read must match. \
                 `seq-read-warm`: right after its cold read, each side reads the same files \
                 again without dropping any cache (page-cache warm). p99 read latency: over every \
                 `read(2)` call of the timed loop. Mount CPU: user + system time of the mount \
                 process (`/proc/PID/stat`) over the timed loop, per 10^9 bytes read.{}",
                nydusd_notes(env)
            ),
        ),
        series,
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({ "files": n, "bytes": total, "rounds": rounds }),
    })
}

/// The rand-read scenario.
pub fn rand(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let warm = nydusd::warm(env)?;
    let with_n = warm.is_some();
    let n = if env.opts.quick { 300 } else { 3000 };
    let plan = plan_random(&s.files, n);
    let mut series = Series::new("rand-read", "reads/s", true);
    let mut series_n = Series::new("rand-read-vs-nydusd", "reads/s", true);
    let mut header: Vec<String> = vec!["round".into()];
    header.extend(per_side("reads/s", with_n, true));
    header.extend(per_side("p99 read latency, ms", with_n, true));
    header.extend(per_side("mount CPU s per GB", with_n, false));
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&refs);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let nm = nydusd_mount(env, warm.as_ref())?;
        let run = |root: &Path, pid: Option<u32>| -> anyhow::Result<ReadRun> {
            drop_caches()?;
            rand_read(root, &s.files, &plan, pid)
        };
        let mut sides: Vec<SideFn<'_, ReadRun>> = vec![
            Box::new(|| run(&s.local, None)),
            Box::new(|| run(m.path(), Some(m.pid()))),
        ];
        if let Some(n) = &nm {
            sides.push(Box::new(|| run(n.path(), Some(n.pid()))));
        }
        let (b, d, nyd) = rotate_sides(r, sides)?;
        m.unmount()?;
        if let Some(nm) = nm {
            nm.unmount()?;
        }
        same_bytes("rand-read", "dfagent", &d, &b)?;
        let rate = |x: &ReadRun| n as f64 / x.secs;
        series.push(rate(&d), rate(&b));
        let mut rates = vec![fmt_value(rate(&d)), fmt_value(rate(&b))];
        let mut p99s = vec![fmt_value(d.p99_ms), fmt_value(b.p99_ms)];
        let mut cpus = vec![cpu_per_gb(&d)];
        let mut line = format!(
            "dfagent {:.0} reads/s, baseline {:.0} reads/s",
            rate(&d),
            rate(&b)
        );
        let mut json = serde_json::json!({
            "dfagent_reads_per_s": rate(&d), "baseline_reads_per_s": rate(&b),
            "dfagent_p99_ms": d.p99_ms, "baseline_p99_ms": b.p99_ms, "dfagent_cpu_s": d.cpu_s,
        });
        if let Some(x) = nyd {
            same_bytes("rand-read", "nydusd", &x, &b)?;
            series_n.push(rate(&d), rate(&x));
            rates.push(fmt_value(rate(&x)));
            p99s.push(fmt_value(x.p99_ms));
            cpus.push(cpu_per_gb(&x));
            line.push_str(&format!(", nydusd {:.0} reads/s", rate(&x)));
            if let Some(o) = json.as_object_mut() {
                o.insert("nydusd_reads_per_s".into(), rate(&x).into());
                o.insert("nydusd_p99_ms".into(), x.p99_ms.into());
                o.insert("nydusd_cpu_s".into(), serde_json::json!(x.cpu_s));
            }
        }
        let mut row = vec![(r + 1).to_string()];
        row.extend(rates);
        row.extend(p99s);
        row.extend(cpus);
        table.row(row);
        rounds.push(json);
        eprintln!("dfagent-bench: rand-read round {}: {line}", r + 1);
    }
    let mut all = vec![series];
    if with_n {
        all.push(series_n);
    }
    Ok(Outcome {
        file: "rand-read",
        title: "Random 4 KiB reads through the mount (store warm, caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!(
                "Each side opens the {} files of 1 MiB or more (untimed), then does the same {n} \
                 `pread`s of 4 KiB at random 4 KiB-aligned offsets (fixed seed); the sha256 of all \
                 bytes read must match. p99 read latency: over every `pread`. Mount CPU: user + \
                 system time of the mount process over the timed loop, per 10^9 bytes of 4 KiB \
                 reads served (the application's bytes, not what the mount read behind them).{}",
                s.files.len(),
                nydusd_notes(env)
            ),
        ),
        series: all,
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({ "reads": n, "files": s.files.len(), "rounds": rounds }),
    })
}

/// Count entries of `got` whose mode/owner/mtime differ from `base`'s; fail when a path is
/// missing or its type or size differs.
fn compare_listing(
    side: &str,
    got: &Listing,
    base: &Listing,
    first_diff: &mut Option<String>,
) -> anyhow::Result<usize> {
    let mut differ = 0;
    for (path, (kind, attrs)) in base {
        let Some((k, a)) = got.get(path) else {
            anyhow::bail!("metadata: {path} is missing from the {side} mount");
        };
        ensure!(k == kind, "metadata: {path}: {side} {k}, baseline {kind}");
        if a != attrs {
            differ += 1;
            first_diff.get_or_insert_with(|| format!("{path}: {side} {a}, baseline {attrs}"));
        }
    }
    Ok(differ)
}

/// The metadata scenario.
pub fn metadata(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let warm = nydusd::warm(env)?;
    let with_n = warm.is_some();
    let mut series = Series::new("metadata", "entries/s", true);
    let mut series_n = Series::new("metadata-vs-nydusd", "entries/s", true);
    let mut header: Vec<String> = vec!["round".into(), "entries".into()];
    header.extend(per_side(
        "entries whose mode/owner/mtime differ",
        with_n,
        false,
    ));
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&refs);
    let mut differ_total = 0usize;
    let mut first_diff = None;
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let nm = nydusd_mount(env, warm.as_ref())?;
        let run = |root: &Path| -> anyhow::Result<(u64, f64, Listing)> {
            drop_caches()?;
            metadata_walk(root)
        };
        let mut sides: Vec<SideFn<'_, (u64, f64, Listing)>> =
            vec![Box::new(|| run(&s.local)), Box::new(|| run(m.path()))];
        if let Some(n) = &nm {
            sides.push(Box::new(|| run(n.path())));
        }
        let (b, d, nyd) = rotate_sides(r, sides)?;
        m.unmount()?;
        if let Some(nm) = nm {
            nm.unmount()?;
        }
        ensure!(
            d.0 == b.0,
            "metadata: dfagent saw {} entries, the baseline {}",
            d.0,
            b.0
        );
        let differ = compare_listing("dfagent", &d.2, &b.2, &mut first_diff)?;
        differ_total += differ;
        series.push(d.0 as f64 / d.1, b.0 as f64 / b.1);
        let mut row = vec![(r + 1).to_string(), d.0.to_string(), differ.to_string()];
        let mut line = format!(
            "dfagent {:.0} entries/s, baseline {:.0} entries/s",
            d.0 as f64 / d.1,
            b.0 as f64 / b.1
        );
        if let Some(x) = nyd {
            ensure!(
                x.0 == b.0,
                "metadata: nydusd saw {} entries, the baseline {}",
                x.0,
                b.0
            );
            let mut nfirst = None;
            let nd = compare_listing("nydusd", &x.2, &b.2, &mut nfirst)?;
            if r == 0 {
                if let Some(f) = nfirst {
                    crate::procs::warn(&format!("metadata: nydusd's attributes differ, e.g. {f}"));
                }
            }
            row.push(nd.to_string());
            series_n.push(d.0 as f64 / d.1, x.0 as f64 / x.1);
            line.push_str(&format!(", nydusd {:.0} entries/s", x.0 as f64 / x.1));
        }
        table.row(row);
        eprintln!(
            "dfagent-bench: metadata round {}: {line} ({} entries)",
            r + 1,
            d.0
        );
    }
    if let Some(d) = &first_diff {
        crate::procs::warn(&format!("metadata: attributes differ, e.g. {d}"));
    }
    let mut all = vec![series];
    if with_n {
        all.push(series_n);
    }
    Ok(Outcome {
        file: "metadata",
        title: "Metadata walk through the mount (caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!(
                "Each side walks the whole tree (`read_dir` + `symlink_metadata` of every entry, names sorted). Paths, types, sizes of non-directories and symlink lengths must match; entries whose mode, owner or mtime differ are counted{}.{}",
                first_diff.map(|d| format!(" (first: {d})")).unwrap_or_default(),
                nydusd_notes(env)
            ),
        ),
        series: all,
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({ "attr_differences": differ_total }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(p99(&mut v), 99.0);
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(p99(&mut v), 990.0);
        assert_eq!(p99(&mut [7.0]), 7.0);
        let mut v = vec![1.0, 2.0, 3.0];
        assert_eq!(p99(&mut v), 3.0);
        assert!(p99(&mut []).is_nan());
    }
}
