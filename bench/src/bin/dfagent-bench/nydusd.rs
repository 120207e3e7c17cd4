//! Upstream nydusd as a third side of the scenarios that mount the image (`--nydusd PATH`).
//!
//! nydusd gets what nydus-snapshotter would give it: the bootstrap taken from the image's
//! manifest (the layer annotated `containerd.io/snapshot/nydus-bootstrap: "true"`, downloaded
//! through the shaping proxy and unpacked from its tar), a registry backend pointed at the same
//! proxy, and a blob cache in a work directory. Warm scenarios fill one blob cache before the
//! rounds and start a fresh nydusd on it each round; cold starts begin with an empty one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};

use crate::cleanup::{self, Action};
use crate::env::{Env, NYDUS_REPO, TAG};
use crate::mount::is_fuse_mounted;
use crate::procs::{self, Service};

/// The annotation marking the bootstrap layer of a Nydus manifest.
pub const BOOTSTRAP_ANNOTATION: &str = "containerd.io/snapshot/nydus-bootstrap";
/// Where the bootstrap sits inside that layer's tar.
const BOOTSTRAP_IN_LAYER: &str = "image/image.boot";
/// Largest manifest or bootstrap layer accepted (and largest bootstrap unpacked).
const MAX_BODY: u64 = 512 << 20;
/// Bound of every socket read or write of the bootstrap fetch.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nydusd may take to mount.
const MOUNT_READY: Duration = Duration::from_secs(120);
/// How long nydusd may take to go after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Bound of the cache-filling walk (entries visited).
const MAX_ENTRIES: usize = 1_000_000;

/// How nydusd is configured (the `--nydusd-*` options).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `--fuse-threads`: FUSE worker threads.
    pub fuse_threads: usize,
    /// `device.cache.type` (`blobcache`; `filecache` is the same cache under its newer name).
    pub cache_type: String,
    /// `fs_prefetch.threads_count`; 0 turns fs prefetch (of all data) off.
    pub prefetch_threads: usize,
    /// `amplify_io`: bytes each user read is widened to when fetching from backend or cache.
    pub amplify_io: u64,
}

/// The nydusd binary and its settings, with the warm cache once it is filled.
pub struct Nydusd {
    /// The binary.
    pub bin: PathBuf,
    /// First line of `nydusd --version`.
    pub version: String,
    /// Its configuration.
    pub settings: Settings,
    warm: Option<WarmCache>,
}

/// A bootstrap on the node and a blob cache holding every chunk of the image.
#[derive(Clone, Debug)]
pub struct WarmCache {
    /// The bootstrap (`image.boot`).
    pub bootstrap: PathBuf,
    /// The blob cache's work directory.
    pub cache: PathBuf,
}

impl Nydusd {
    /// Check the binary (asks it for its version).
    pub fn new(bin: PathBuf, settings: Settings) -> anyhow::Result<Nydusd> {
        ensure!(bin.is_file(), "no nydusd binary at {}", bin.display());
        let out = procs::run(Command::new(&bin).arg("--version"), Duration::from_secs(30))?;
        // `Version: \tX` first, then `Git Commit: \tY`, ...: the first line, and the commit.
        let lines: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect();
        let mut version = lines
            .first()
            .cloned()
            .unwrap_or_else(|| "unknown version".into());
        if let Some(c) = lines.iter().find(|l| l.starts_with("Git Commit:")) {
            version = format!("{version}, {c}");
        }
        Ok(Nydusd {
            bin,
            version,
            settings,
            warm: None,
        })
    }

    /// The settings in words (for notes and the context line).
    pub fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "nydusd `{}` ({}): FUSE daemon, `--fuse-threads {}`, registry backend (http, through \
             the shaping proxy), cache `{}`, `amplify_io` {}, fs_prefetch {}, `digest_validate` \
             false (nydusd refuses it for RAFS v6, so unlike dfagent it does not verify chunk \
             digests)",
            self.bin.display(),
            self.version,
            s.fuse_threads,
            s.cache_type,
            s.amplify_io,
            if s.prefetch_threads == 0 {
                "off".to_owned()
            } else {
                format!("on (all data, {} threads)", s.prefetch_threads)
            }
        )
    }
}

/// nydusd's configuration file (the v1 `device` layout): registry backend at `host` (the
/// proxy) for `repo`, blob cache in `cache_dir`.
pub fn config_json(s: &Settings, host: &str, repo: &str, cache_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "device": {
            "backend": {
                "type": "registry",
                "config": {
                    "scheme": "http",
                    "host": host,
                    "repo": repo,
                    "timeout": 60,
                    "connect_timeout": 10,
                    "retry_limit": 2,
                }
            },
            "cache": {
                "type": s.cache_type,
                "config": { "work_dir": cache_dir.to_string_lossy() }
            }
        },
        "mode": "direct",
        // nydusd refuses `true` for RAFS v6 ("Rafs v6 doesn't support integrity validation yet").
        "digest_validate": false,
        "iostats_files": false,
        "enable_xattr": false,
        "amplify_io": s.amplify_io,
        "fs_prefetch": {
            "enable": s.prefetch_threads > 0,
            "prefetch_all": true,
            "threads_count": s.prefetch_threads.max(1),
            "merging_size": 1 << 20,
            "bandwidth_rate": 0,
        }
    })
}

/// One HTTP/1.1 GET of `path` from `addr` (`Connection: close`): the body of a 200 answer with
/// a `Content-Length` of at most [`MAX_BODY`] bytes.
fn http_get(addr: SocketAddr, path: &str, accept: &str) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nUser-Agent: dfagent-bench\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_BODY + (64 << 10))
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path}: no complete response head"))?
        + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    ensure!(status == "200", "GET {path}: status {status}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    ensure!(
        header("transfer-encoding").is_none(),
        "GET {path}: chunked answers are not handled"
    );
    let len: u64 = header("content-length")
        .with_context(|| format!("GET {path}: no Content-Length"))?
        .parse()
        .with_context(|| format!("GET {path}: bad Content-Length"))?;
    ensure!(
        len <= MAX_BODY,
        "GET {path}: {len} bytes is over {MAX_BODY}"
    );
    let body = raw.split_off(head_end);
    ensure!(
        body.len() as u64 == len,
        "GET {path}: got {} of {len} body bytes",
        body.len()
    );
    Ok(body)
}

/// The digest and size of the bootstrap layer in an image manifest.
pub fn bootstrap_layer(manifest: &[u8]) -> anyhow::Result<(String, u64)> {
    let m: serde_json::Value = serde_json::from_slice(manifest).context("manifest JSON")?;
    let layers = m["layers"]
        .as_array()
        .context("the manifest has no layers (an index?)")?;
    let l = layers
        .iter()
        .find(|l| l["annotations"][BOOTSTRAP_ANNOTATION].as_str() == Some("true"))
        .with_context(|| format!("no layer annotated {BOOTSTRAP_ANNOTATION}"))?;
    let digest = l["digest"].as_str().context("bootstrap layer digest")?;
    let size = l["size"].as_u64().context("bootstrap layer size")?;
    Ok((digest.to_owned(), size))
}

/// `image/image.boot` out of a bootstrap layer (a tar, gzip'd or not).
pub fn bootstrap_from_layer(layer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let reader: Box<dyn Read + '_> = if layer.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let mut archive = tar::Archive::new(reader.take(MAX_BODY + (1 << 20)));
    for entry in archive.entries().context("not a tar")? {
        let mut e = entry.context("corrupt tar")?;
        let path = e.path()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./").trim_start_matches('/') != BOOTSTRAP_IN_LAYER {
            continue;
        }
        ensure!(
            e.header().entry_type().is_file(),
            "{BOOTSTRAP_IN_LAYER} is not a regular file"
        );
        let size = e.header().size()?;
        ensure!(size <= MAX_BODY, "{BOOTSTRAP_IN_LAYER} of {size} bytes");
        let mut out = Vec::with_capacity(usize::try_from(size)?);
        e.read_to_end(&mut out)?;
        return Ok(out);
    }
    bail!("the bootstrap layer has no {BOOTSTRAP_IN_LAYER}")
}

/// What nydus-snapshotter does before starting nydusd: get the manifest of `repo:TAG` from
/// `proxy`, download the bootstrap layer (sha256 checked), and write its `image.boot` to `to`.
pub fn fetch_bootstrap(proxy: SocketAddr, repo: &str, to: &Path) -> anyhow::Result<()> {
    let manifest = http_get(
        proxy,
        &format!("/v2/{repo}/manifests/{TAG}"),
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    )?;
    let (digest, size) = bootstrap_layer(&manifest)?;
    let layer = http_get(proxy, &format!("/v2/{repo}/blobs/{digest}"), "*/*")?;
    ensure!(
        layer.len() as u64 == size,
        "bootstrap layer {digest}: {} bytes, the manifest says {size}",
        layer.len()
    );
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    ensure!(
        actual == digest,
        "bootstrap layer: sha256 {actual}, expected {digest}"
    );
    let boot = bootstrap_from_layer(&layer)?;
    std::fs::write(to, boot).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

/// A running nydusd serving the image at a mount point.
pub struct NydusdMount {
    service: Option<Service>,
    mp: PathBuf,
    unmount_reg: u64,
    pid: u32,
}

impl NydusdMount {
    /// Write the config, start nydusd on `bootstrap` with its cache in `cache`, and wait until
    /// the mount is there.
    pub fn start(env: &Env, bootstrap: &Path, cache: &Path) -> anyhow::Result<NydusdMount> {
        let n = env
            .nydusd
            .as_ref()
            .context("no --nydusd given (internal error)")?;
        std::fs::create_dir_all(cache)?;
        let mp = env.scratch("nydusd-mnt");
        std::fs::create_dir_all(&mp)?;
        let mp = mp.canonicalize()?;
        let config = env.scratch("nydusd-config.json");
        let cfg = config_json(
            &n.settings,
            &env.proxy.addr().to_string(),
            NYDUS_REPO,
            cache,
        );
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg)?)?;
        let log = env.scratch("nydusd.log");
        let unmount_reg = cleanup::register(Action::Unmount(mp.clone()));
        let mut service = Service::start(
            Command::new(&n.bin)
                .arg("--config")
                .arg(&config)
                .arg("--mountpoint")
                .arg(&mp)
                .arg("--bootstrap")
                .arg(bootstrap)
                .arg("--fuse-threads")
                .arg(n.settings.fuse_threads.to_string())
                .arg("--rlimit-nofile")
                .arg("0")
                .arg("--log-level")
                .arg("warn"),
            "nydusd",
            &log,
        )?;
        let pid = service.pid();
        let deadline = Instant::now() + MOUNT_READY;
        while !is_fuse_mounted(&mp) {
            if let Some(st) = service.exited()? {
                cleanup::deregister(unmount_reg);
                bail!(
                    "nydusd exited ({st}) before mounting: {}",
                    crate::mount::log_tail(&log)
                );
            }
            if Instant::now() > deadline {
                cleanup::detach(&mp);
                cleanup::deregister(unmount_reg);
                bail!("nydusd did not mount within {MOUNT_READY:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(NydusdMount {
            service: Some(service),
            mp,
            unmount_reg,
            pid,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mp
    }

    /// nydusd's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM (nydusd unmounts on it), bounded wait; fails if it had to be killed or the mount
    /// stayed (then it is detached).
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut s) = self.service.take() else {
            return Ok(());
        };
        let ended = s.stop(STOP_GRACE);
        let still = is_fuse_mounted(&self.mp);
        if still {
            cleanup::detach(&self.mp);
        }
        cleanup::deregister(self.unmount_reg);
        let _ = std::fs::remove_dir(&self.mp);
        match ended {
            Some(_) if !still => Ok(()),
            Some(st) => bail!(
                "nydusd at {} ended with {st} and left the mount",
                self.mp.display()
            ),
            None => bail!("had to kill nydusd at {}", self.mp.display()),
        }
    }
}

impl Drop for NydusdMount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Read every regular file under `root` to its end (fills nydusd's blob cache); bytes read.
fn read_all(root: &Path) -> anyhow::Result<u64> {
    let mut stack = vec![root.to_path_buf()];
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            seen += 1;
            ensure!(seen <= MAX_ENTRIES, "more than {MAX_ENTRIES} entries");
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                total += crate::outcome::read_through(&e.path(), &mut buf, |_| {})?;
            }
        }
    }
    Ok(total)
}

/// The warm nydusd cache (filled on first use: bootstrap fetched, a mount that reads every
/// file), or `None` without `--nydusd`.
pub fn warm(env: &mut Env) -> anyhow::Result<Option<WarmCache>> {
    let Some(n) = &env.nydusd else {
        return Ok(None);
    };
    if let Some(w) = &n.warm {
        return Ok(Some(w.clone()));
    }
    env.nydus()?;
    let t = Instant::now();
    let bootstrap = env.work.join("nydusd-warm.boot");
    let cache = env.work.join("nydusd-warm-cache");
    fetch_bootstrap(env.proxy.addr(), NYDUS_REPO, &bootstrap)?;
    let m = NydusdMount::start(env, &bootstrap, &cache)?;
    let bytes = read_all(m.path())?;
    m.unmount()?;
    eprintln!(
        "dfagent-bench: nydusd blob cache filled: {bytes} file bytes read ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let w = WarmCache { bootstrap, cache };
    if let Some(n) = &mut env.nydusd {
        n.warm = Some(w.clone());
    }
    Ok(Some(w))
}

/// `dfagent-bench nydusd-tune`: nydusd alone under several settings (the `--nydusd-*` options
/// as the base, one knob changed at a time), each `--rounds` times: seq-read through a fresh
/// nydusd on the warm cache (page caches dropped) and a cold start (empty cache, bootstrap
/// fetched). Returns a Markdown table of medians.
pub fn tune(env: &mut Env) -> anyhow::Result<String> {
    use dfagent_bench::report::{fmt_value, median, Table};
    let base = env
        .nydusd
        .as_ref()
        .context("nydusd-tune needs --nydusd PATH")?
        .settings
        .clone();
    let local = env.unpacked()?;
    let files = crate::reads::big_files(&local)?;
    let w = warm(env)?.context("no warm nydusd cache")?;
    let with = |f: &dyn Fn(&mut Settings)| {
        let mut s = base.clone();
        f(&mut s);
        s
    };
    let grid: Vec<(String, Settings)> = vec![
        ("base".into(), base.clone()),
        ("fuse-threads 1".into(), with(&|s| s.fuse_threads = 1)),
        ("fuse-threads 2".into(), with(&|s| s.fuse_threads = 2)),
        ("fuse-threads 8".into(), with(&|s| s.fuse_threads = 8)),
        (
            "cache filecache".into(),
            with(&|s| s.cache_type = "filecache".into()),
        ),
        (
            "prefetch 2 threads".into(),
            with(&|s| s.prefetch_threads = 2),
        ),
        (
            "prefetch 4 threads".into(),
            with(&|s| s.prefetch_threads = 4),
        ),
        (
            "prefetch 8 threads".into(),
            with(&|s| s.prefetch_threads = 8),
        ),
        ("amplify_io 0".into(), with(&|s| s.amplify_io = 0)),
        (
            "amplify_io 128 KiB".into(),
            with(&|s| s.amplify_io = 128 << 10),
        ),
        ("amplify_io 4 MiB".into(), with(&|s| s.amplify_io = 4 << 20)),
    ];
    let mut table = Table::new(&[
        "settings",
        "seq-read MB/s",
        "seq-read p99 read latency, ms",
        "nydusd CPU s per GB",
        "cold-start s",
        "cold-start mount ready s",
        "cold-start MB fetched",
    ]);
    // Per setting: seq-read MB/s, p99 ms, CPU s per GB, cold-start s, mount ready s, MB fetched.
    let mut results: Vec<[Vec<f64>; 6]> = grid.iter().map(|_| Default::default()).collect();
    // Interleaved (every setting once per pass, the order rotating between passes), so a
    // change in the machine's load spreads over all settings instead of favouring some.
    for pass in 0..env.opts.rounds {
        for k in 0..grid.len() {
            let i = (pass + k) % grid.len();
            if let Some(n) = &mut env.nydusd {
                n.settings = grid[i].1.clone();
            }
            let m = NydusdMount::start(env, &w.bootstrap, &w.cache)?;
            crate::env::drop_caches()?;
            let r = crate::reads::seq_read(m.path(), &files, Some(m.pid()))?;
            m.unmount()?;
            let cache = env.scratch("nydusd-tune-cache");
            let c = crate::cold_start::nydusd_start(env, &cache, None)?;
            let _ = std::fs::remove_dir_all(&cache);
            let gb = r.bytes as f64 / 1e9;
            let v = [
                r.bytes as f64 / 1e6 / r.secs,
                r.p99_ms,
                r.cpu_s.unwrap_or(f64::NAN) / gb,
                c.secs,
                c.mount_secs,
                c.bytes as f64 / 1e6,
            ];
            for (slot, x) in results[i].iter_mut().zip(v) {
                slot.push(x);
            }
        }
        eprintln!(
            "dfagent-bench: nydusd-tune pass {} of {} done",
            pass + 1,
            env.opts.rounds
        );
    }
    for ((label, s), r) in grid.iter().zip(&results) {
        eprintln!(
            "dfagent-bench: nydusd-tune {label}: seq-read {:.0} MB/s, cold-start {:.2} s",
            median(&r[0]),
            median(&r[3])
        );
        let mut row = vec![format!(
            "{label} (threads {}, {}, prefetch {}, amplify_io {})",
            s.fuse_threads, s.cache_type, s.prefetch_threads, s.amplify_io
        )];
        row.extend(r.iter().map(|v| fmt_value(median(v))));
        table.row(row);
    }
    if let Some(n) = &mut env.nydusd {
        n.settings = base;
    }
    Ok(table.markdown())
}

/// A side of a round: run once, its result kept.
pub type SideFn<'a, T> = Box<dyn FnOnce() -> anyhow::Result<T> + 'a>;

/// Run the sides of round `round`, starting with side `round % n` and going round, so every
/// side goes first equally often; the results in the sides' own order.
pub fn rotate<T>(round: usize, sides: Vec<SideFn<'_, T>>) -> anyhow::Result<Vec<T>> {
    let n = sides.len();
    let mut slots: Vec<Option<SideFn<'_, T>>> = sides.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for k in 0..n {
        let i = (round + k) % n;
        if let Some(f) = slots[i].take() {
            out[i] = Some(f()?);
        }
    }
    out.into_iter()
        .map(|o| o.context("a side did not run"))
        .collect()
}

/// [`rotate`] over the sides baseline, dfagent and (when given) nydusd, in that order: their
/// results as (baseline, dfagent, nydusd).
pub fn rotate_sides<T>(
    round: usize,
    sides: Vec<SideFn<'_, T>>,
) -> anyhow::Result<(T, T, Option<T>)> {
    let mut out = rotate(round, sides)?.into_iter();
    let b = out.next().context("baseline")?;
    let d = out.next().context("dfagent")?;
    Ok((b, d, out.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            fuse_threads: 4,
            cache_type: "blobcache".into(),
            prefetch_threads: 0,
            amplify_io: 1 << 20,
        }
    }

    #[test]
    fn config_has_registry_backend_cache_and_no_validation() {
        let c = config_json(
            &settings(),
            "127.0.0.1:5000",
            "bench/nydus",
            Path::new("/tmp/c"),
        );
        let b = &c["device"]["backend"];
        assert_eq!(b["type"], "registry");
        assert_eq!(b["config"]["scheme"], "http");
        assert_eq!(b["config"]["host"], "127.0.0.1:5000");
        assert_eq!(b["config"]["repo"], "bench/nydus");
        assert_eq!(c["device"]["cache"]["type"], "blobcache");
        assert_eq!(c["device"]["cache"]["config"]["work_dir"], "/tmp/c");
        assert_eq!(c["digest_validate"], false);
        assert_eq!(c["amplify_io"], 1 << 20);
        assert_eq!(c["fs_prefetch"]["enable"], false);
        let mut s = settings();
        s.prefetch_threads = 4;
        let c = config_json(&s, "h:1", "r", Path::new("/c"));
        assert_eq!(c["fs_prefetch"]["enable"], true);
        assert_eq!(c["fs_prefetch"]["threads_count"], 4);
        assert_eq!(c["fs_prefetch"]["prefetch_all"], true);
    }

    fn layer(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        if !gzip {
            return tar;
        }
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bootstrap_comes_out_of_tar_and_tar_gz() {
        let files: [(&str, &[u8]); 2] = [
            ("image/other", b"nope"),
            ("image/image.boot", b"RAFS bootstrap bytes"),
        ];
        for gz in [false, true] {
            let got = bootstrap_from_layer(&layer(&files, gz)).unwrap();
            assert_eq!(got, b"RAFS bootstrap bytes");
        }
        let e = bootstrap_from_layer(&layer(&[("image/x", b"1")], true)).unwrap_err();
        assert!(e.to_string().contains("no image/image.boot"), "{e}");
        assert!(bootstrap_from_layer(b"not a tar at all, too short").is_err());
    }

    #[test]
    fn bootstrap_layer_is_the_annotated_one() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "layers": [
                {"digest": "sha256:aa", "size": 10},
                {"digest": "sha256:bb", "size": 20,
                 "annotations": {BOOTSTRAP_ANNOTATION: "true"}},
            ]
        });
        let (d, s) = bootstrap_layer(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!((d.as_str(), s), ("sha256:bb", 20));
        let none = serde_json::json!({"layers": [{"digest": "sha256:aa", "size": 1}]});
        assert!(bootstrap_layer(&serde_json::to_vec(&none).unwrap()).is_err());
    }

    #[test]
    fn rotate_starts_at_round_and_keeps_side_order() {
        for round in 0..4 {
            let order = std::cell::RefCell::new(Vec::new());
            let sides: Vec<SideFn<'_, usize>> = (0..3)
                .map(|i| {
                    let o = &order;
                    Box::new(move || {
                        o.borrow_mut().push(i);
                        Ok(i * 10)
                    }) as SideFn<'_, usize>
                })
                .collect();
            let out = rotate(round, sides).unwrap();
            assert_eq!(out, vec![0, 10, 20]);
            let first = order.borrow()[0];
            assert_eq!(first, round % 3);
            assert_eq!(order.borrow().len(), 3);
        }
    }
}
