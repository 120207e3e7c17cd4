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
use crate::outcome::{alternate, mb, Outcome};

/// Smallest file the sequential and random reads use.
const BIG_FILE: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// Regular files of at least [`BIG_FILE`] bytes under `root` (one path per inode), sorted.
fn big_files(root: &Path) -> anyhow::Result<Vec<(String, u64)>> {
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

/// Read every file start to end; bytes and their sha256 (over all files in order).
fn seq_read(root: &Path, files: &[(String, u64)]) -> anyhow::Result<(u64, f64, String)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut h = Sha256::new();
    let mut total = 0u64;
    let t0 = Instant::now();
    for (f, _) in files {
        let p = root.join(f);
        let mut file = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
    }
    Ok((total, t0.elapsed().as_secs_f64(), hex::encode(h.finalize())))
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

/// Open the files (untimed), then do the planned 4 KiB reads; reads per second and a sha256.
fn rand_read(
    root: &Path,
    files: &[(String, u64)],
    plan: &[(usize, u64)],
) -> anyhow::Result<(f64, String)> {
    let handles: Vec<File> = files
        .iter()
        .map(|(f, _)| File::open(root.join(f)).with_context(|| format!("opening {f}")))
        .collect::<Result<_, _>>()?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut h = Sha256::new();
    let t0 = Instant::now();
    for &(i, off) in plan {
        let n = handles[i]
            .read_at(&mut buf, off)
            .with_context(|| format!("reading {} at {off}", files[i].0))?;
        h.update(&buf[..n]);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((plan.len() as f64 / secs, hex::encode(h.finalize())))
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

/// The seq-read scenario.
pub fn seq(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let mut series = Series::new("seq-read", "MB/s", true);
    let mut table = Table::new(&["round", "MB per side", "checksums"]);
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let run = |root: &Path| -> anyhow::Result<(u64, f64, String)> {
            drop_caches()?;
            seq_read(root, &s.files)
        };
        let (d, b) = alternate(r, || run(m.path()), || run(&s.local))?;
        m.unmount()?;
        ensure!(
            d.0 == b.0 && d.2 == b.2,
            "seq-read: dfagent read {} bytes (sha256 {}), the baseline {} bytes (sha256 {})",
            d.0,
            d.2,
            b.0,
            b.2
        );
        series.push(mb(d.0) / d.1, mb(b.0) / b.1);
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(mb(d.0)),
            "match".into(),
        ]);
        eprintln!(
            "dfagent-bench: seq-read round {}: dfagent {:.0} MB/s, baseline {:.0} MB/s",
            r + 1,
            mb(d.0) / d.1,
            mb(b.0) / b.1
        );
    }
    let total: u64 = s.files.iter().map(|f| f.1).sum();
    let n = s.files.len();
    Ok(Outcome {
        file: "seq-read",
        title: "Sequential read through the mount (store warm, caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!("Each side reads every regular file of 1 MiB or more ({n} files, {total} bytes) start to end with a 1 MiB buffer; the sha256 of all bytes read must match."),
        ),
        series: vec![series],
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({ "files": n, "bytes": total }),
    })
}

/// The rand-read scenario.
pub fn rand(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let n = if env.opts.quick { 300 } else { 3000 };
    let plan = plan_random(&s.files, n);
    let mut series = Series::new("rand-read", "reads/s", true);
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let run = |root: &Path| -> anyhow::Result<(f64, String)> {
            drop_caches()?;
            rand_read(root, &s.files, &plan)
        };
        let (d, b) = alternate(r, || run(m.path()), || run(&s.local))?;
        m.unmount()?;
        ensure!(
            d.1 == b.1,
            "rand-read: the bytes read differ (sha256 {} vs {})",
            d.1,
            b.1
        );
        series.push(d.0, b.0);
        eprintln!(
            "dfagent-bench: rand-read round {}: dfagent {:.0} reads/s, baseline {:.0} reads/s",
            r + 1,
            d.0,
            b.0
        );
    }
    Ok(Outcome {
        file: "rand-read",
        title: "Random 4 KiB reads through the mount (store warm, caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!("Each side opens the {} files of 1 MiB or more (untimed), then does the same {n} `pread`s of 4 KiB at random 4 KiB-aligned offsets (fixed seed); the sha256 of all bytes read must match.", s.files.len()),
        ),
        series: vec![series],
        extra: Vec::new(),
        json: serde_json::json!({ "reads": n, "files": s.files.len() }),
    })
}

/// The metadata scenario.
pub fn metadata(env: &mut Env) -> anyhow::Result<Outcome> {
    let s = setup(env)?;
    let mut series = Series::new("metadata", "entries/s", true);
    let mut table = Table::new(&["round", "entries", "entries whose mode/owner/mtime differ"]);
    let mut differ_total = 0usize;
    let mut first_diff = None;
    for r in 0..env.opts.rounds {
        let m = warm_mount(env, &s.store)?;
        let run = |root: &Path| -> anyhow::Result<(u64, f64, Listing)> {
            drop_caches()?;
            metadata_walk(root)
        };
        let (d, b) = alternate(r, || run(m.path()), || run(&s.local))?;
        m.unmount()?;
        ensure!(
            d.0 == b.0,
            "metadata: dfagent saw {} entries, the baseline {}",
            d.0,
            b.0
        );
        let mut differ = 0;
        for (path, (kind, attrs)) in &b.2 {
            let Some((dk, da)) = d.2.get(path) else {
                anyhow::bail!("metadata: {path} is missing from the mount");
            };
            ensure!(
                dk == kind,
                "metadata: {path}: dfagent {dk}, baseline {kind}"
            );
            if da != attrs {
                differ += 1;
                first_diff.get_or_insert_with(|| format!("{path}: dfagent {da}, baseline {attrs}"));
            }
        }
        differ_total += differ;
        series.push(d.0 as f64 / d.1, b.0 as f64 / b.1);
        table.row(vec![
            (r + 1).to_string(),
            d.0.to_string(),
            differ.to_string(),
        ]);
        eprintln!(
            "dfagent-bench: metadata round {}: dfagent {:.0} entries/s, baseline {:.0} entries/s ({} entries)",
            r + 1,
            d.0 as f64 / d.1,
            b.0 as f64 / b.1,
            d.0
        );
    }
    if let Some(d) = &first_diff {
        crate::procs::warn(&format!("metadata: attributes differ, e.g. {d}"));
    }
    Ok(Outcome {
        file: "metadata",
        title: "Metadata walk through the mount (caches cold)".into(),
        notes: notes(
            env,
            &s,
            &format!(
                "Each side walks the whole tree (`read_dir` + `symlink_metadata` of every entry, names sorted). Paths, types, sizes of non-directories and symlink lengths must match; entries whose mode, owner or mtime differ are counted{}.",
                first_diff.map(|d| format!(" (first: {d})")).unwrap_or_default()
            ),
        ),
        series: vec![series],
        extra: vec![("Per round".into(), table)],
        json: serde_json::json!({ "attr_differences": differ_total }),
    })
}
