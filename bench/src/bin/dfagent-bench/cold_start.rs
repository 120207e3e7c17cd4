//! `cold-start` and `cold-start-warm`: from nothing (or from data already on the node) to a
//! command's output in the image's root filesystem.
//!
//! cold-start: baseline = `skopeo copy` of the OCI image (through the proxy) to a fresh layout,
//! `umoci unpack`, `chroot ROOT CMD`; dfagent = `dfagent mount REF DIR` (through the proxy,
//! empty store), `chroot DIR CMD`.
//!
//! cold-start-warm: baseline = the layout already on the node: `umoci unpack` + the command
//! (the same state as dfagent's: compressed data on the node, no filesystem yet); the table
//! also shows the command alone on an unpacked directory. dfagent = the store already filled by
//! `dfagent pull`: mount + command (the mount still resolves the tag through the proxy).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use dfagent_bench::proxy::CounterSnapshot;
use dfagent_bench::report::{fmt_value, Series, Table};

use crate::env::{drop_caches, umoci_unpack, Env, NYDUS_REPO, OCI_REPO, TAG};
use crate::mount::{Mount, MountSpec};
use crate::nydusd::{self, fetch_bootstrap, rotate_sides, NydusdMount, SideFn};
use crate::outcome::{hash_files, mb, Outcome};
use crate::procs;

const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Run the workload's start in `root`: the chroot command (its stdout), or, for trees without a
/// userland, read the check files (their hashes).
fn start(env: &Env, root: &Path) -> anyhow::Result<String> {
    match &env.workload.start {
        Some(cmd) => {
            let out = procs::run(Command::new("chroot").arg(root).args(cmd), START_TIMEOUT)?;
            Ok(out.stdout.trim().to_owned())
        }
        None => hash_files(root, &env.workload.check_files),
    }
}

pub(crate) struct Side {
    pub(crate) secs: f64,
    pub(crate) output: String,
    pub(crate) check: String,
    pub(crate) bytes: u64,
    pub(crate) connections: u64,
    /// dfagent: seconds until the mount appeared.
    pub(crate) mount_secs: f64,
}

fn baseline_cold(env: &Env) -> anyhow::Result<Side> {
    let layout = env.scratch("pulled-layout");
    let bundle = env.scratch("bundle");
    drop_caches()?;
    let before = env.counters();
    let t0 = Instant::now();
    procs::run(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}", env.via_proxy(OCI_REPO)),
            &format!("oci:{}:{TAG}", layout.display()),
        ]),
        START_TIMEOUT,
    )?;
    umoci_unpack(&layout, &bundle)?;
    let root = bundle.join("rootfs");
    let output = start(env, &root)?;
    let secs = t0.elapsed().as_secs_f64();
    let d = env.counters().since(&before);
    let check = hash_files(&root, &env.workload.check_files)?;
    std::fs::remove_dir_all(&layout)?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(Side {
        secs,
        output,
        check,
        bytes: d.to_client,
        connections: d.connections,
        mount_secs: 0.0,
    })
}

fn dfagent_start(env: &Env, store: &Path, reference: &str) -> anyhow::Result<Side> {
    let mp = env.scratch("mnt");
    let log = env.scratch("mount.log");
    drop_caches()?;
    let before = env.counters();
    let t0 = Instant::now();
    let m = Mount::start(&MountSpec {
        dfagent: &env.dfagent,
        reference,
        store,
        prefetch: &env.opts.prefetch,
        mp: &mp,
        log: &log,
    })?;
    let side = started(env, &before, t0, m.path())?;
    m.unmount()?;
    Ok(side)
}

/// The rest of a lazy side's round once its mount at `mp` is up (`t0` and `before` taken
/// before it was started): the start through it, timed from `t0`, the bytes through the
/// proxy since `before`, and the check files' hashes (untimed).
fn started(env: &Env, before: &CounterSnapshot, t0: Instant, mp: &Path) -> anyhow::Result<Side> {
    let mount_secs = t0.elapsed().as_secs_f64();
    let output = start(env, mp)?;
    let secs = t0.elapsed().as_secs_f64();
    let d = env.counters().since(before);
    let check = hash_files(mp, &env.workload.check_files)?;
    Ok(Side {
        secs,
        output,
        check,
        bytes: d.to_client,
        connections: d.connections,
        mount_secs,
    })
}

/// nydusd's start: cold (`bootstrap` None: empty cache, the bootstrap fetched from the image
/// manifest's bootstrap layer inside the timed part) or warm (the bootstrap on the node, the
/// blob cache `cache` full).
pub(crate) fn nydusd_start(
    env: &Env,
    cache: &Path,
    warm_bootstrap: Option<&Path>,
) -> anyhow::Result<Side> {
    let fetched = env.scratch("nydusd.boot");
    drop_caches()?;
    let before = env.counters();
    let t0 = Instant::now();
    let bootstrap = match warm_bootstrap {
        Some(b) => b,
        None => {
            fetch_bootstrap(env.proxy.addr(), NYDUS_REPO, &fetched)?;
            fetched.as_path()
        }
    };
    let m = NydusdMount::start(env, bootstrap, cache)?;
    let side = started(env, &before, t0, m.path())?;
    m.unmount()?;
    let _ = std::fs::remove_file(&fetched);
    Ok(side)
}

/// nydusd's side of a round in the round's JSON.
fn add_nydusd(json: &mut serde_json::Value, n: &Side) {
    if let Some(o) = json.as_object_mut() {
        o.insert("nydusd_s".into(), n.secs.into());
        o.insert("nydusd_mount_s".into(), n.mount_secs.into());
        o.insert("nydusd_bytes".into(), n.bytes.into());
    }
}

fn same(what: &str, side: &str, d: &Side, b: &Side) -> anyhow::Result<()> {
    ensure!(
        d.output == b.output,
        "{what}: {side}'s start printed {:?}, the baseline's {:?}",
        d.output,
        b.output
    );
    ensure!(
        d.check == b.check,
        "{what}: file checksums differ: {side} {}, baseline {}",
        d.check,
        b.check
    );
    Ok(())
}

/// What the notes say about nydusd, when it runs.
fn nydusd_notes(env: &Env, cold: bool) -> String {
    match &env.nydusd {
        Some(n) => format!(
            "\n- **nydusd** (third side; lines `*-vs-nydusd` have nydusd as their baseline): {}. {}",
            n.describe(),
            if cold {
                "Timed from fetching the image manifest and its bootstrap layer (annotated \
                 `containerd.io/snapshot/nydus-bootstrap`, through the proxy, as nydus-snapshotter \
                 gets it) with an empty blob cache, through nydusd's start and mount, to the \
                 start's exit. The three sides rotate which goes first."
            } else {
                "The bootstrap is already on the node and the blob cache full (filled once \
                 before the rounds by a mount that read every file); timed: a fresh nydusd's \
                 start and mount + the start. The three sides rotate which goes first."
            }
        ),
        None => String::new(),
    }
}
/// The cold-start scenario.
pub fn cold(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let layer_bytes = env.oci()?.layer_bytes;
    let reference = env.via_proxy(NYDUS_REPO);
    let with_n = env.nydusd.is_some();
    let mut time = Series::new("cold-start", "s", false);
    let mut time_n = Series::new("cold-start-vs-nydusd", "s", false);
    let mut header = vec![
        "round",
        "dfagent: mount ready, s",
        "dfagent MB fetched (until output)",
        "baseline MB fetched",
        "dfagent connections",
        "baseline connections",
    ];
    if with_n {
        header.extend([
            "nydusd: mount ready (incl. bootstrap fetch), s",
            "nydusd MB fetched (until output)",
            "nydusd connections",
        ]);
    }
    header.push("output");
    let mut table = Table::new(&header);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let store = env.scratch("empty-store");
        let ncache = env.scratch("nydusd-empty-cache");
        let e: &Env = env;
        let mut sides: Vec<SideFn<'_, Side>> = vec![
            Box::new(|| baseline_cold(e)),
            Box::new(|| dfagent_start(e, &store, &reference)),
        ];
        if with_n {
            sides.push(Box::new(|| nydusd_start(e, &ncache, None)));
        }
        let (b, d, n) = rotate_sides(r, sides)?;
        std::fs::remove_dir_all(&store).ok();
        std::fs::remove_dir_all(&ncache).ok();
        same("cold-start", "dfagent", &d, &b)?;
        ensure!(
            b.bytes >= layer_bytes,
            "the baseline fetched {} bytes through the proxy, less than the {layer_bytes}-byte layer",
            b.bytes
        );
        ensure!(d.bytes > 0, "dfagent fetched nothing through the proxy");
        let mut line = format!(
            "dfagent {:.2} s (mount ready {:.2} s, {:.1} MB), baseline {:.2} s ({:.1} MB)",
            d.secs,
            d.mount_secs,
            mb(d.bytes),
            b.secs,
            mb(b.bytes)
        );
        time.push(d.secs, b.secs);
        let mut row = vec![
            (r + 1).to_string(),
            fmt_value(d.mount_secs),
            fmt_value(mb(d.bytes)),
            fmt_value(mb(b.bytes)),
            d.connections.to_string(),
            b.connections.to_string(),
        ];
        let mut json = serde_json::json!({
            "dfagent_s": d.secs, "dfagent_mount_s": d.mount_secs, "baseline_s": b.secs,
            "dfagent_bytes": d.bytes, "baseline_bytes": b.bytes,
            "output_match": d.output == b.output, "checksums_match": d.check == b.check,
        });
        if let Some(n) = n {
            same("cold-start", "nydusd", &n, &b)?;
            ensure!(n.bytes > 0, "nydusd fetched nothing through the proxy");
            time_n.push(d.secs, n.secs);
            row.extend([
                fmt_value(n.mount_secs),
                fmt_value(mb(n.bytes)),
                n.connections.to_string(),
            ]);
            line.push_str(&format!(
                ", nydusd {:.2} s (mount ready {:.2} s, {:.1} MB)",
                n.secs,
                n.mount_secs,
                mb(n.bytes)
            ));
            add_nydusd(&mut json, &n);
        }
        row.push(format!(
            "`{}`",
            d.output.chars().take(40).collect::<String>()
        ));
        table.row(row);
        rounds.push(json);
        eprintln!("dfagent-bench: cold-start round {}: {line}", r + 1);
    }
    let mut series = vec![time];
    if with_n {
        series.push(time_n);
    }
    let start_desc = start_desc(env);
    Ok(Outcome {
        file: "cold-start",
        title: "Cold start: lazy mount vs full pull and unpack".into(),
        notes: format!(
            "Workload: {}. Start: {start_desc}. Every transfer goes through the shaping proxy ({}). \
             Each round, page caches are dropped before each side; sides alternate which goes first.\n\n\
             - **baseline**: `skopeo copy docker://PROXY/{OCI_REPO}:{TAG} oci:FRESH:{TAG}` (one gzip layer, {layer_bytes} bytes), \
             `umoci unpack`, then the start in the unpacked root.\n\
             - **dfagent**: `dfagent mount --store EMPTY --prefetch {} PROXY/{NYDUS_REPO}:{TAG} MP` (Nydus image: {how}), \
             then the start in the mount. Timed from launching the mount to the start's exit.{}\n\n\
             Bytes are what the proxy wrote to the client between start and output. After each round \
             the check files ({}) are hashed on every side and must match.",
            env.workload.label,
            link_desc(env),
            env.opts.prefetch,
            nydusd_notes(env, true),
            env.workload.check_files.join(", ")
        ),
        series,
        extra: vec![("Bytes and connections".into(), table)],
        json: serde_json::json!({ "layer_bytes": layer_bytes, "rounds": rounds }),
    })
}

/// The cold-start-warm scenario.
pub fn warm(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let store = env.warm_store()?;
    let layout = env.oci()?.layout.clone();
    let unpacked = env.unpacked()?;
    let reference = env.via_proxy(NYDUS_REPO);
    let nwarm = nydusd::warm(env)?;
    let mut time = Series::new("cold-start-warm", "s", false);
    let mut time_n = Series::new("cold-start-warm-vs-nydusd", "s", false);
    let mut header = vec![
        "round",
        "dfagent: mount ready, s",
        "start alone on an unpacked dir, s",
        "dfagent MB fetched",
    ];
    if nwarm.is_some() {
        header.extend(["nydusd: mount ready, s", "nydusd MB fetched"]);
    }
    let mut table = Table::new(&header);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let baseline = |env: &Env| -> anyhow::Result<Side> {
            let bundle = env.scratch("bundle");
            drop_caches()?;
            let t0 = Instant::now();
            umoci_unpack(&layout, &bundle)?;
            let root = bundle.join("rootfs");
            let output = start(env, &root)?;
            let secs = t0.elapsed().as_secs_f64();
            let check = hash_files(&root, &env.workload.check_files)?;
            std::fs::remove_dir_all(&bundle)?;
            Ok(Side {
                secs,
                output,
                check,
                bytes: 0,
                connections: 0,
                mount_secs: 0.0,
            })
        };
        let e: &Env = env;
        let mut sides: Vec<SideFn<'_, Side>> = vec![
            Box::new(|| baseline(e)),
            Box::new(|| dfagent_start(e, &store, &reference)),
        ];
        if let Some(w) = &nwarm {
            sides.push(Box::new(|| nydusd_start(e, &w.cache, Some(&w.bootstrap))));
        }
        let (b, d, n) = rotate_sides(r, sides)?;
        same("cold-start-warm", "dfagent", &d, &b)?;
        drop_caches()?;
        let t0 = Instant::now();
        let out = start(env, &unpacked)?;
        let alone = t0.elapsed().as_secs_f64();
        ensure!(out == b.output, "start on the unpacked dir printed {out:?}");
        let mut line = format!(
            "dfagent {:.3} s (mount ready {:.3} s), baseline {:.3} s (start alone {alone:.3} s)",
            d.secs, d.mount_secs, b.secs
        );
        time.push(d.secs, b.secs);
        let mut row = vec![
            (r + 1).to_string(),
            fmt_value(d.mount_secs),
            fmt_value(alone),
            fmt_value(mb(d.bytes)),
        ];
        let mut json = serde_json::json!({
            "dfagent_s": d.secs, "dfagent_mount_s": d.mount_secs, "baseline_s": b.secs, "start_alone_s": alone,
            "dfagent_bytes": d.bytes, "checksums_match": d.check == b.check,
        });
        if let Some(n) = n {
            same("cold-start-warm", "nydusd", &n, &b)?;
            time_n.push(d.secs, n.secs);
            row.extend([fmt_value(n.mount_secs), fmt_value(mb(n.bytes))]);
            line.push_str(&format!(
                ", nydusd {:.3} s (mount ready {:.3} s, {:.1} MB)",
                n.secs,
                n.mount_secs,
                mb(n.bytes)
            ));
            add_nydusd(&mut json, &n);
        }
        table.row(row);
        rounds.push(json);
        eprintln!("dfagent-bench: cold-start-warm round {}: {line}", r + 1);
    }
    let mut series = vec![time];
    if nwarm.is_some() {
        series.push(time_n);
    }
    Ok(Outcome {
        file: "cold-start-warm",
        title: "Warm start: data already on the node".into(),
        notes: format!(
            "Workload: {}. Start: {}. Link: {}. Page caches dropped before each side.\n\n\
             - **baseline**: the OCI layout is already on the node (pulled before the rounds); timed: \
             `umoci unpack` + the start. This is the state that matches dfagent's: compressed image \
             data on the node, no filesystem yet. The table also gives the start alone on a \
             directory unpacked beforehand (a runtime that kept its snapshot), which is the floor \
             neither side can beat.\n\
             - **dfagent**: the store was filled once by `dfagent pull` (Nydus image: {how}); timed: \
             `dfagent mount --prefetch {}` (it still resolves the tag through the proxy) + the start.{}",
            env.workload.label,
            start_desc(env),
            link_desc(env),
            env.opts.prefetch,
            nydusd_notes(env, false)
        ),
        series,
        extra: vec![("Start alone and bytes".into(), table)],
        json: serde_json::json!({ "rounds": rounds }),
    })
}

fn start_desc(env: &Env) -> String {
    match &env.workload.start {
        Some(c) => format!("`chroot ROOT {}`", c.join(" ")),
        None => format!(
            "no userland in this tree: read and hash {}",
            env.workload.check_files.join(", ")
        ),
    }
}

/// The link the proxy shapes, in words.
pub fn link_desc(env: &Env) -> String {
    format!(
        "{} MB/s, +{} ms RTT, {}",
        env.opts.bandwidth_mbps,
        env.opts.rtt_ms,
        if env.opts.per_connection {
            "per connection"
        } else {
            "one link shared by all connections"
        }
    )
}
