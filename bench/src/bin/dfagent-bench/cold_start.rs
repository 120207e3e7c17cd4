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
use dfagent_bench::report::{fmt_value, Series, Table};

use crate::env::{drop_caches, umoci_unpack, Env, NYDUS_REPO, OCI_REPO, TAG};
use crate::mount::{Mount, MountSpec};
use crate::outcome::{alternate, hash_files, mb, Outcome};
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

struct Side {
    secs: f64,
    output: String,
    check: String,
    bytes: u64,
    connections: u64,
    /// dfagent: seconds until the mount appeared.
    mount_secs: f64,
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
    let mount_secs = t0.elapsed().as_secs_f64();
    let output = start(env, m.path())?;
    let secs = t0.elapsed().as_secs_f64();
    let d = env.counters().since(&before);
    let check = hash_files(m.path(), &env.workload.check_files)?;
    m.unmount()?;
    Ok(Side {
        secs,
        output,
        check,
        bytes: d.to_client,
        connections: d.connections,
        mount_secs,
    })
}

fn same(what: &str, d: &Side, b: &Side) -> anyhow::Result<()> {
    ensure!(
        d.output == b.output,
        "{what}: dfagent's start printed {:?}, the baseline's {:?}",
        d.output,
        b.output
    );
    ensure!(
        d.check == b.check,
        "{what}: file checksums differ: dfagent {}, baseline {}",
        d.check,
        b.check
    );
    Ok(())
}

/// The cold-start scenario.
pub fn cold(env: &mut Env) -> anyhow::Result<Outcome> {
    let how = env.nydus()?;
    let layer_bytes = env.oci()?.layer_bytes;
    let reference = env.via_proxy(NYDUS_REPO);
    let mut time = Series::new("cold-start", "s", false);
    let mut table = Table::new(&[
        "round",
        "dfagent: mount ready, s",
        "dfagent MB fetched (until output)",
        "baseline MB fetched",
        "dfagent connections",
        "baseline connections",
        "output",
    ]);
    let mut rounds = Vec::new();
    for r in 0..env.opts.rounds {
        let store = env.scratch("empty-store");
        let (d, b) = alternate(
            r,
            || dfagent_start(env, &store, &reference),
            || baseline_cold(env),
        )?;
        std::fs::remove_dir_all(&store).ok();
        same("cold-start", &d, &b)?;
        ensure!(
            b.bytes >= layer_bytes,
            "the baseline fetched {} bytes through the proxy, less than the {layer_bytes}-byte layer",
            b.bytes
        );
        ensure!(d.bytes > 0, "dfagent fetched nothing through the proxy");
        eprintln!(
            "dfagent-bench: cold-start round {}: dfagent {:.2} s (mount ready {:.2} s, {:.1} MB), baseline {:.2} s ({:.1} MB)",
            r + 1,
            d.secs,
            d.mount_secs,
            mb(d.bytes),
            b.secs,
            mb(b.bytes)
        );
        time.push(d.secs, b.secs);
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d.mount_secs),
            fmt_value(mb(d.bytes)),
            fmt_value(mb(b.bytes)),
            d.connections.to_string(),
            b.connections.to_string(),
            format!("`{}`", d.output.chars().take(40).collect::<String>()),
        ]);
        rounds.push(serde_json::json!({
            "dfagent_s": d.secs, "dfagent_mount_s": d.mount_secs, "baseline_s": b.secs,
            "dfagent_bytes": d.bytes, "baseline_bytes": b.bytes,
            "output_match": d.output == b.output, "checksums_match": d.check == b.check,
        }));
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
             then the start in the mount. Timed from launching the mount to the start's exit.\n\n\
             Bytes are what the proxy wrote to the client between start and output. After each round \
             the check files ({}) are hashed on both sides and must match.",
            env.workload.label,
            link_desc(env),
            env.opts.prefetch,
            env.workload.check_files.join(", ")
        ),
        series: vec![time],
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
    let mut time = Series::new("cold-start-warm", "s", false);
    let mut table = Table::new(&[
        "round",
        "dfagent: mount ready, s",
        "start alone on an unpacked dir, s",
        "dfagent MB fetched",
    ]);
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
        let (d, b) = alternate(
            r,
            || dfagent_start(env, &store, &reference),
            || baseline(env),
        )?;
        same("cold-start-warm", &d, &b)?;
        drop_caches()?;
        let t0 = Instant::now();
        let out = start(env, &unpacked)?;
        let alone = t0.elapsed().as_secs_f64();
        ensure!(out == b.output, "start on the unpacked dir printed {out:?}");
        eprintln!(
            "dfagent-bench: cold-start-warm round {}: dfagent {:.3} s (mount ready {:.3} s), baseline {:.3} s (start alone {alone:.3} s)",
            r + 1,
            d.secs,
            d.mount_secs,
            b.secs
        );
        time.push(d.secs, b.secs);
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d.mount_secs),
            fmt_value(alone),
            fmt_value(mb(d.bytes)),
        ]);
        rounds.push(serde_json::json!({
            "dfagent_s": d.secs, "dfagent_mount_s": d.mount_secs, "baseline_s": b.secs, "start_alone_s": alone,
            "dfagent_bytes": d.bytes, "checksums_match": d.check == b.check,
        }));
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
             `dfagent mount --prefetch {}` (it still resolves the tag through the proxy) + the start.",
            env.workload.label,
            start_desc(env),
            link_desc(env),
            env.opts.prefetch
        ),
        series: vec![time],
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
