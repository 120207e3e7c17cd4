//! Build a RAFS v6 image of a directory: `write_dir DIR OUT [zstd|lz4|none] [blake3|sha256] [CHUNK]`.
//! Writes `OUT/bootstrap` and `OUT/blobs/<sha256>`.

use std::path::PathBuf;

use dfagent_core::{Compression, DigestAlgo};
use dfagent_rafs::write::{tree_from_dir, write_bootstrap, BlobWriter, BootstrapOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: write_dir DIR OUT [zstd|lz4|none] [blake3|sha256] [CHUNK]".into());
    }
    let compression: Compression = args.get(3).map_or("zstd", String::as_str).parse()?;
    let digest_algo = match args.get(4).map(String::as_str).unwrap_or("blake3") {
        "sha256" => DigestAlgo::Sha256,
        _ => DigestAlgo::Blake3,
    };
    let chunk_size: u32 = args
        .get(5)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1 << 20);
    let out = PathBuf::from(&args[2]);
    std::fs::create_dir_all(out.join("blobs"))?;
    let opts = BootstrapOptions {
        chunk_size,
        digest_algo,
        compression,
        prefetch: Vec::new(),
    };
    let tmp = out.join("blobs/.partial");
    let mut blob = BlobWriter::new(
        std::io::BufWriter::new(std::fs::File::create(&tmp)?),
        chunk_size,
        compression,
        digest_algo,
    );
    let tree = tree_from_dir(std::path::Path::new(&args[1]), &mut blob, &opts)?;
    let (_, spec) = blob.finish()?;
    std::fs::rename(&tmp, out.join("blobs").join(spec.id.hex()))?;
    let boot = write_bootstrap(&tree, &[spec], &opts)?;
    std::fs::write(out.join("bootstrap"), boot)?;
    Ok(())
}
