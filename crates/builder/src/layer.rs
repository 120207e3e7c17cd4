//! Opening one layer as a tar stream: the byte range of its file, hashed as it is read (to
//! check the layer's digest at the end), decompressed by what its first bytes say (gzip, zstd
//! or plain tar). Nothing is held in memory beyond read buffers.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::Digest as _;

use crate::error::{BuildError, Result};
use crate::source::Layer;

/// Compression of a layer, from its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Recognise the compression from the first bytes of a layer.
pub fn detect(head: &[u8]) -> Result<LayerCompression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(LayerCompression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(LayerCompression::Zstd)
    } else if head.starts_with(b"BZh") {
        Err(BuildError::Unsupported("bzip2-compressed layer".into()))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(BuildError::Unsupported("xz-compressed layer".into()))
    } else {
        Ok(LayerCompression::None)
    }
}

/// Hashes and counts the bytes read through it.
pub struct Hashing<R> {
    inner: R,
    state: Rc<RefCell<sha2::Sha256>>,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.borrow_mut().update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

type Raw<R> = BufReader<Hashing<R>>;

/// A decompressing reader over a layer's raw bytes.
pub enum Decoder<R: Read> {
    /// Plain tar.
    Plain(Raw<R>),
    /// gzip.
    Gzip(Box<flate2::bufread::MultiGzDecoder<Raw<R>>>),
    /// zstd.
    Zstd(Box<zstd::Decoder<'static, Raw<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    /// The raw reader underneath (to hash what the decompressor did not consume).
    fn into_raw(self) -> Raw<R> {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.finish(),
        }
    }
}

/// Hashes the decompressed tar too (for the diff id of plain layers).
pub struct TarStream<R: Read> {
    decoder: Decoder<R>,
    tar_hash: Option<sha2::Sha256>,
    /// Bytes of tar read.
    pub tar_bytes: u64,
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.decoder.read(buf)?;
        if let Some(h) = self.tar_hash.as_mut() {
            h.update(&buf[..n]);
        }
        self.tar_bytes += n as u64;
        Ok(n)
    }
}

/// An open layer.
pub struct OpenLayer<R: Read> {
    /// The tar stream (decompressed).
    pub stream: TarStream<R>,
    /// Detected compression.
    pub compression: LayerCompression,
    raw_hash: Rc<RefCell<sha2::Sha256>>,
    expected: Option<String>,
    expected_diff_id: Option<String>,
    what: String,
}

/// Open `layer`; `count` is advanced by every raw byte read (for progress).
pub fn open(
    layer: &Layer,
    count: Arc<AtomicU64>,
) -> Result<OpenLayer<std::io::Take<std::fs::File>>> {
    let what = format!(
        "layer {}",
        layer
            .digest
            .as_deref()
            .unwrap_or(&layer.file.display().to_string())
    );
    let mut f =
        std::fs::File::open(&layer.file).map_err(|e| BuildError::io(layer.file.display(), e))?;
    f.seek(SeekFrom::Start(layer.offset))
        .map_err(|e| BuildError::io(layer.file.display(), e))?;
    open_reader(
        f.take(layer.size),
        layer.digest.clone(),
        layer.diff_id.clone(),
        count,
        what,
    )
}

/// Open a layer read from `raw` (its stored bytes); `digest` and `diff_id`, when known, are
/// checked by [`OpenLayer::finish`].
pub fn open_reader<R: Read>(
    raw: R,
    digest: Option<String>,
    diff_id: Option<String>,
    count: Arc<AtomicU64>,
    what: String,
) -> Result<OpenLayer<R>> {
    let state = Rc::new(RefCell::new(sha2::Sha256::new()));
    let hashing = Hashing {
        inner: raw,
        state: state.clone(),
        count,
    };
    let mut raw = BufReader::with_capacity(1 << 20, hashing);
    let buffered = raw.fill_buf().map_err(|e| BuildError::io(&what, e))?;
    let head = buffered[..buffered.len().min(6)].to_vec();
    let compression = detect(&head)?;
    let decoder = match compression {
        LayerCompression::None => Decoder::Plain(raw),
        LayerCompression::Gzip => {
            Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(raw)))
        }
        LayerCompression::Zstd => Decoder::Zstd(Box::new(
            zstd::Decoder::with_buffer(raw).map_err(|e| BuildError::io(&what, e))?,
        )),
    };
    // A compressed layer's tar is hashed (for its diff id) only when nothing else checks the
    // layer: hashing every decompressed byte costs the reader thread time.
    let tar_hash = (compression != LayerCompression::None && digest.is_none() && diff_id.is_some())
        .then(sha2::Sha256::new);
    Ok(OpenLayer {
        stream: TarStream {
            decoder,
            tar_hash,
            tar_bytes: 0,
        },
        compression,
        raw_hash: state,
        expected: digest,
        expected_diff_id: diff_id,
        what,
    })
}

impl<R: Read> OpenLayer<R> {
    /// Read the rest of the layer (padding after the tar's end, the gzip trailer, which
    /// checks the CRC) and check the layer's digest and diff id.
    pub fn finish(mut self) -> Result<()> {
        let what = self.what.clone();
        std::io::copy(&mut self.stream, &mut std::io::sink())
            .map_err(|e| BuildError::io(format!("{what} (decompressing)"), e))?;
        let tar_hash = self.stream.tar_hash.take();
        let mut raw = self.stream.decoder.into_raw();
        std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| BuildError::io(&what, e))?;
        drop(raw);
        let raw_digest = format!(
            "sha256:{}",
            hex::encode(self.raw_hash.borrow().clone().finalize())
        );
        if let Some(exp) = &self.expected {
            if *exp != raw_digest {
                return Err(BuildError::Digest {
                    what,
                    expected: exp.clone(),
                    actual: raw_digest,
                });
            }
        }
        let diff_id = match tar_hash {
            Some(h) => Some(format!("sha256:{}", hex::encode(h.finalize()))),
            None if self.compression == LayerCompression::None => Some(raw_digest),
            None => None,
        };
        if let (Some(exp), Some(actual)) = (&self.expected_diff_id, diff_id) {
            if *exp != actual {
                return Err(BuildError::Digest {
                    what: format!("{what} (uncompressed, the config's diff id)"),
                    expected: exp.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Map a decompression error (surfacing through the tar reader) to a clear message.
pub fn describe(compression: LayerCompression) -> &'static str {
    match compression {
        LayerCompression::None => "tar",
        LayerCompression::Gzip => "gzip",
        LayerCompression::Zstd => "zstd",
    }
}
