//! `build`: `dfagent build` throughput on the workload's OCI image (default threads and
//! `--threads 1`) against a plain recompression of the same layer (`gzip -dc LAYER | zstd -T0`),
//! and the dedup a chunk dictionary gives a second image (the same tree plus one more layer).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use dfagent_bench::report::{fmt_ratio, fmt_value, Series, Table};

use crate::env::{Env, LONG, TAG};
use crate::outcome::{alternate, mb, Outcome};
use crate::procs;

/// Names of the files in `dir`.
fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// `dfagent build oci:LAYOUT:v1 --output-dir OUT --json [args]`: seconds and the JSON summary.
fn build(env: &Env, layout: &Path, out: &Path, args: &[String]) -> anyhow::Result<(f64, String)> {
    let t0 = Instant::now();
    let o = procs::run(
        Command::new(&env.dfagent)
            .arg("build")
            .arg(format!("oci:{}:{TAG}", layout.display()))
            .arg("--output-dir")
            .arg(out)
            .arg("--json")
            .arg("--quiet")
            .args(args),
        LONG,
    )?;
    Ok((t0.elapsed().as_secs_f64(), o.stdout.trim().to_owned()))
}

/// The build scenario.
pub fn run(env: &mut Env) -> anyhow::Result<Outcome> {
    env.nydus()?;
    let oci = env.oci()?;
    let (layout, layer, tar_bytes) = (oci.layout.clone(), oci.layer.clone(), oci.tar_bytes);
    let mut series = Series::new("build", "MB/s", true);
    let mut table = Table::new(&[
        "round",
        "dfagent --threads 1, MB/s",
        "dfagent default threads, MB/s",
        "baseline MB/s",
    ]);
    let mut one_thread = Vec::new();
    let mut json_default = String::new();
    for r in 0..env.opts.rounds {
        let baseline = |env: &Env| -> anyhow::Result<f64> {
            let out = env.scratch("recompressed.zst");
            let t0 = Instant::now();
            procs::run(
                Command::new("sh")
                    .arg("-c")
                    .arg("gzip -dc \"$1\" | zstd -T0 -3 -q -o \"$2\"")
                    .arg("sh")
                    .arg(&layer)
                    .arg(&out),
                LONG,
            )?;
            let secs = t0.elapsed().as_secs_f64();
            std::fs::remove_file(&out).ok();
            Ok(mb(tar_bytes) / secs)
        };
        let dfagent = |env: &Env, threads: Option<usize>| -> anyhow::Result<(f64, String)> {
            let out = env.scratch("nydus-out");
            let args: Vec<String> = threads
                .map(|t| vec!["--threads".into(), t.to_string()])
                .unwrap_or_default();
            let (secs, json) = build(env, &layout, &out, &args)?;
            std::fs::remove_dir_all(&out).ok();
            Ok((mb(tar_bytes) / secs, json))
        };
        let ((d, d1), b) = alternate(
            r,
            || Ok((dfagent(env, None)?, dfagent(env, Some(1))?)),
            || baseline(env),
        )?;
        series.push(d.0, b);
        one_thread.push(d1.0);
        json_default = d.1;
        table.row(vec![
            (r + 1).to_string(),
            fmt_value(d1.0),
            fmt_value(d.0),
            fmt_value(b),
        ]);
        eprintln!(
            "dfagent-bench: build round {}: dfagent {:.1} MB/s (1 thread {:.1}), baseline {:.1} MB/s",
            r + 1,
            d.0,
            d1.0,
            b
        );
    }

    // Dedup: the same image plus one more layer, built without and with the first image's
    // bootstrap as chunk dictionary.
    let extra = if env.opts.quick {
        let t = env.scratch("texture2");
        procs::run(
            Command::new("python3")
                .arg(crate::env::shared_dir().join("tools/make-texture.py"))
                .arg(&t)
                .arg("2"),
            LONG,
        )?;
        t
    } else {
        std::path::PathBuf::from("/usr/share/doc")
    };
    // One layer holding the tree and the extra one, so that nothing is shared by layer
    // identity: whatever the second image reuses comes from chunk-level dedup.
    let combined = env.scratch("tree-2");
    procs::run(
        Command::new("cp")
            .arg("-a")
            .arg(&env.workload.tree)
            .arg(&combined),
        LONG,
    )?;
    procs::run(
        Command::new("cp")
            .arg("-a")
            .arg(&extra)
            .arg(combined.join("extra")),
        LONG,
    )?;
    let layout2 = env.scratch("oci-layout-2");
    let image2 = format!("{}:{TAG}", layout2.display());
    for args in [
        vec!["init", "--layout", &*layout2.to_string_lossy()],
        vec!["new", "--image", &image2],
        vec![
            "insert",
            "--image",
            &image2,
            &*combined.to_string_lossy(),
            "/",
        ],
    ] {
        procs::run(Command::new("umoci").args(&args), LONG)?;
    }
    std::fs::remove_dir_all(&combined).ok();
    let first = env.work.join("nydus-build");
    let plain = env.scratch("v2-plain");
    let dict = env.scratch("v2-dict");
    let (_, json_plain) = build(env, &layout2, &plain, &[])?;
    let (_, json_dict) = build(
        env,
        &layout2,
        &dict,
        &[
            "--chunk-dict".into(),
            format!("bootstrap={}", first.join("bootstrap").display()),
        ],
    )?;
    let first_blobs = names(&first.join("blobs"))?;
    let new_blob_bytes = |dir: &Path| -> anyhow::Result<u64> {
        let mut n = 0;
        for b in names(&dir.join("blobs"))?
            .iter()
            .filter(|b| !first_blobs.contains(b))
        {
            n += std::fs::metadata(dir.join("blobs").join(b))?.len();
        }
        Ok(n)
    };
    let plain_bytes = new_blob_bytes(&plain)?;
    let new_bytes = new_blob_bytes(&dict)?;
    let mut dedup = Table::new(&[
        "second image",
        "blob bytes it needs beyond the first image",
        "fraction of the plain build",
    ]);
    dedup.row(vec![
        "built alone".into(),
        plain_bytes.to_string(),
        "1.00".into(),
    ]);
    dedup.row(vec![
        "built with `--chunk-dict bootstrap=FIRST`".into(),
        new_bytes.to_string(),
        fmt_ratio(new_bytes as f64 / plain_bytes as f64),
    ]);
    let one = dfagent_bench::report::median(&one_thread);
    Ok(Outcome {
        file: "build",
        title: "dfagent build throughput and chunk-dictionary dedup".into(),
        notes: format!(
            "Workload: {}, as a one-layer gzip OCI image ({tar_bytes} bytes of tar). MB/s = tar bytes / wall time \
             (10^6 bytes/s), on {} CPUs.\n\n\
             - **dfagent**: `dfagent build oci:LAYOUT:{TAG} --output-dir NEW --json --quiet` (gunzip, untar, chunk, \
             hash, zstd, write blob and bootstrap); the summary line is the default thread count, the table also \
             gives `--threads 1` (median {} MB/s).\n\
             - **baseline**: `gzip -dc LAYER | zstd -T0 -3 -q -o FILE`: the same input decompressed and recompressed \
             with zstd on every core, without chunking, hashing or metadata. It is the floor of any conversion of \
             this layer.\n\n\
             Dedup: the second image is the first plus one more layer (one layer: the tree with a copy of {} at /extra). \
             Built alone it needs {plain_bytes} bytes of blobs the first image does not have; built with the first image's bootstrap as chunk \
             dictionary it needs {new_bytes} new blob bytes (ratio {}).\n\n\
             `--json` of the last default build: `{json_default}`\n\n\
             `--json` of the second image alone: `{json_plain}`; with the dictionary: `{json_dict}`",
            env.workload.label,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            fmt_value(one),
            extra.display(),
            fmt_ratio(new_bytes as f64 / plain_bytes as f64),
        ),
        series: vec![series],
        extra: vec![("Per round".into(), table), ("Dedup".into(), dedup)],
        json: serde_json::json!({
            "tar_bytes": tar_bytes, "one_thread_mb_s": one_thread,
            "second_image_plain_bytes": plain_bytes, "second_image_new_bytes_with_dict": new_bytes,
        }),
    })
}
