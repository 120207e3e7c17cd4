//! `dfagent build`: convert an OCI image into a Nydus image (see `dfagent_builder`), then write
//! it as a blob directory, an OCI layout, and/or push it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use dfagent_builder::{
    output, source, BuildOptions, ChunkOptions, Progress, SourceImage, SourceSpec,
};

use crate::node_args::RegistryArgs;

/// Options of `dfagent build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The OCI image: `oci:DIR[:TAG]` (an OCI image layout), `docker-archive:FILE` (a
    /// `docker save` archive) or a registry reference such as `localhost:5000/app:v1`.
    pub source: String,
    /// Write `DIR/bootstrap` and `DIR/blobs/<sha256>` (mount with `dfagent mount --bootstrap
    /// DIR/bootstrap --blob-dir DIR/blobs`, publish with `dfagent push`).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Write the Nydus image into an OCI image layout (created if missing; other tags kept),
    /// tagged TAG (default `latest`).
    #[arg(long, value_name = "DIR[:TAG]")]
    pub oci_layout: Option<String>,
    /// Push the Nydus image to a registry in nydusify's layout.
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Tag an index holding the source manifest and the Nydus manifest (marked
    /// `os.features: ["nydus.remoteimage.v1"]`), as `nydusify --merge-platform`, in the OCI
    /// layout and/or the registry (the source image is copied there too).
    #[arg(long)]
    pub merge_platform: bool,
    /// Chunk size: a power of two from 4 KiB to 16 MiB (`0x100000`, `1048576`, `1M`, `64K`).
    #[arg(long, default_value = "0x100000")]
    pub chunk_size: String,
    /// Chunk digest: blake3 or sha256.
    #[arg(long, default_value = "blake3")]
    pub digester: String,
    /// Chunk compressor: zstd, lz4_block or none (chunks that do not shrink are stored raw).
    #[arg(long, default_value = "zstd")]
    pub compressor: String,
    /// Chunk dictionary: the bootstrap of an earlier image (`bootstrap=PATH` or `PATH`), or a
    /// Nydus image in a registry (`REF`); chunks it has are referenced instead of stored again
    /// (the dictionary blobs the new image uses are put beside its own blobs).
    #[arg(long, value_name = "[bootstrap=]PATH")]
    pub chunk_dict: Option<String>,
    /// Directory of the chunk dictionary's blobs (default: `blobs/` beside its bootstrap); the
    /// blobs the new image uses are copied into the output.
    #[arg(long, value_name = "DIR")]
    pub chunk_dict_blobs: Option<PathBuf>,
    /// File of absolute paths (one a line) for the prefetch table, as nydusify's
    /// --prefetch-patterns.
    #[arg(long, value_name = "FILE")]
    pub prefetch_patterns: Option<PathBuf>,
    /// Worker threads hashing and compressing chunks (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary on stdout (bytes in and out, files, chunks, unique chunks, dedup
    /// ratio, seconds, MiB/s).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Progress on an indicatif bar (hidden when stderr is not a terminal or with --quiet).
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn begin(&self, step: &str, total: u64) {
        self.0.set_message(step.to_string());
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn position(&self, done: u64) {
        self.0.set_position(done);
    }
}

/// Run `dfagent build`.
pub fn run(args: BuildArgs, config: &crate::node_args::ConfigArgs) -> anyhow::Result<ExitCode> {
    if args.output_dir.is_none() && args.oci_layout.is_none() && args.push.is_none() {
        bail!("say where the Nydus image goes: --output-dir DIR, --oci-layout DIR or --push REF");
    }
    if args.merge_platform && args.oci_layout.is_none() && args.push.is_none() {
        bail!("--merge-platform writes an index: add --oci-layout DIR or --push REF");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let chunk = ChunkOptions {
        chunk_size: dfagent_builder::parse_chunk_size(&args.chunk_size)?,
        digest: dfagent_builder::parse_digester(&args.digester)?,
        compression: dfagent_builder::parse_compressor(&args.compressor)?,
        threads,
    };
    dfagent_builder::validate_chunk_options(&chunk)?;
    let prefetch = match &args.prefetch_patterns {
        Some(p) => dfagent_builder::read_prefetch_patterns(p)?,
        None => Vec::new(),
    };
    let layout = args.oci_layout.as_deref().map(output::parse_layout_arg);

    // Where the bootstrap and blobs go: the output dir, else a temporary directory inside the
    // OCI layout (or the system's temp dir for a push only), removed at the end.
    let scratch;
    let out_dir = match (&args.output_dir, &layout) {
        (Some(d), _) => d.clone(),
        (None, Some((l, _))) => {
            std::fs::create_dir_all(l).with_context(|| format!("creating {}", l.display()))?;
            scratch = tempfile::Builder::new()
                .prefix(".dfagent-build-")
                .tempdir_in(l)?;
            scratch.path().to_path_buf()
        }
        (None, None) => {
            scratch = tempfile::Builder::new()
                .prefix("dfagent-build-")
                .tempdir()?;
            scratch.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let mut opts = BuildOptions {
        chunk,
        chunk_dict: None,
        chunk_dict_blobs: args.chunk_dict_blobs.clone(),
        prefetch,
        output_dir: out_dir.clone(),
    };
    opts.validate()?;
    let bar = indicatif::ProgressBar::new(0);
    if args.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = Bar(bar);

    let registry = args.registry.registry(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let platform = registry.config().platform.clone();
    let plat = (platform.0.as_str(), platform.1.as_str());
    // Downloaded layers live in a temporary directory inside the output dir.
    let downloads = tempfile::Builder::new()
        .prefix(".source-")
        .tempdir_in(&out_dir)?;
    let src: SourceImage = match SourceSpec::parse(&args.source)? {
        SourceSpec::OciLayout { dir, tag } => source::open_oci_layout(&dir, tag.as_deref(), plat)?,
        SourceSpec::DockerArchive { file, tag } => {
            source::open_docker_archive(&file, tag.as_deref(), plat)?
        }
        SourceSpec::Registry(r) => rt
            .block_on(source::open_registry(
                &registry,
                &r,
                downloads.path(),
                &progress,
            ))
            .with_context(|| format!("fetching {r}"))?,
    };

    // The chunk dictionary: a local bootstrap, or a Nydus image in a registry (its bootstrap
    // is downloaded now, the blobs the new image uses after the build).
    let mut dict_image = None;
    if let Some(arg) = args.chunk_dict.as_deref() {
        let path = dfagent_builder::dict::parse_arg(arg)?;
        if path.is_file() || arg.starts_with("bootstrap=") {
            opts.chunk_dict = Some(path);
        } else {
            let img = rt
                .block_on(registry.resolve(arg))
                .with_context(|| format!("--chunk-dict {arg}: not a file, nor a Nydus image"))?;
            let boot = rt.block_on(registry.fetch_bootstrap(&img))?;
            let p = downloads.path().join("chunk-dict.boot");
            std::fs::write(&p, boot)?;
            opts.chunk_dict = Some(p);
            if opts.chunk_dict_blobs.is_none() {
                opts.chunk_dict_blobs = Some(downloads.path().join("no-local-dict-blobs"));
            }
            dict_image = Some(img);
        }
    }
    let fetch =
        |id: &dfagent_core::BlobId, dest: &std::path::Path| -> dfagent_builder::Result<()> {
            let img = dict_image.as_ref().ok_or_else(|| {
                dfagent_builder::BuildError::Option(format!(
                    "dictionary blob {id} is not in the dictionary's blob directory; give it with \
                 --chunk-dict-blobs DIR"
                ))
            })?;
            let size = img.blob_size(id).ok_or_else(|| {
                dfagent_builder::BuildError::Source(format!(
                    "dictionary image {} does not list blob {id}",
                    img.reference
                ))
            })?;
            rt.block_on(registry.download_blob(&img.reference, &id.oci_digest(), size, dest))?;
            Ok(())
        };
    let built = dfagent_builder::build_with(&src, &opts, &progress, Some(&fetch))
        .with_context(|| format!("building {}", args.source))?;
    progress.0.finish_and_clear();

    let mut result = serde_json::to_value(&built.summary)?;
    if let Some((dir, tag)) = &layout {
        let digest = dfagent_builder::oci_layout::write_oci_layout(
            dir,
            tag,
            &built,
            &src,
            args.merge_platform,
        )
        .with_context(|| format!("writing the OCI layout {}", dir.display()))?;
        result["oci_layout"] = serde_json::json!({"dir": dir, "tag": tag, "digest": digest});
    }
    if let Some(reference) = &args.push {
        let digest = rt
            .block_on(registry.push_nydus_with_config(
                reference,
                &built.bootstrap,
                &built.blob_dir,
                src.config.as_ref().map(|c| c.bytes.clone()),
            ))
            .with_context(|| format!("pushing to {reference}"))?;
        result["pushed"] = serde_json::json!({"reference": reference, "digest": digest});
        if args.merge_platform {
            let index = rt
                .block_on(push_merged_index(&registry, reference, &digest, &src))
                .with_context(|| format!("pushing the merged index to {reference}"))?;
            result["pushed"]["index_digest"] = serde_json::json!(index);
        }
        if !args.json {
            println!("{reference}@{digest}");
        }
    }
    if args.json {
        println!("{result}");
    } else if !args.quiet {
        let s = &built.summary;
        eprintln!(
            "dfagent: built {} ({} layers, {} files, {} chunks, {} unique, dedup {:.2}x) in \
             {:.1} s, {:.0} MiB/s",
            args.source,
            s.layers,
            s.files,
            s.chunks,
            s.unique_chunks,
            s.dedup_ratio,
            s.seconds,
            s.mib_per_s
        );
    }
    drop(downloads);
    Ok(ExitCode::SUCCESS)
}

/// `--merge-platform --push`: put the source image (blobs and manifest) into the target
/// repository too, then tag an index holding both manifests, the Nydus one marked with
/// `os.features: ["nydus.remoteimage.v1"]`. Returns the index digest.
async fn push_merged_index(
    registry: &dfagent_registry::Registry,
    reference: &str,
    nydus_digest: &str,
    src: &SourceImage,
) -> anyhow::Result<String> {
    let m = src.manifest.as_ref().context(
        "--merge-platform needs a source with a manifest (an OCI layout or a registry image, \
         not a docker archive)",
    )?;
    let files: Vec<(String, u64, PathBuf)> = src
        .blob_files
        .iter()
        .map(|(d, (p, _, size))| (d.clone(), *size, p.clone()))
        .collect();
    registry.push_blob_files(reference, &files).await?;
    let by_digest = |d: &str| dfagent_registry::reference_with_digest(reference, d);
    registry
        .push_manifest(&by_digest(&m.digest)?, m.bytes.clone(), &m.media_type)
        .await?;
    let nydus = registry
        .fetch_manifest_raw(&by_digest(nydus_digest)?)
        .await?;
    let index = dfagent_builder::oci_layout::merged_index(
        (&m.media_type, &m.digest, m.bytes.len() as u64),
        (nydus_digest, nydus.bytes.len() as u64),
        (&src.platform.0, &src.platform.1),
    );
    Ok(registry
        .push_manifest(reference, index, "application/vnd.oci.image.index.v1+json")
        .await?)
}
