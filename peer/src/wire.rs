//! The chunk protocol `/dfagent/chunks/1` on the wire, without any network: frames (a u32
//! big-endian length, then one protobuf message), the limits every message is held to, and the
//! checks that turn wire messages into typed requests and answers. Pure and synchronous, so the
//! fuzz target and tests can drive it from plain bytes.
//!
//! A request is one [`ChunkRequest`](proto::ChunkRequest) frame. The answer is one
//! [`ResponseHeader`](proto::ResponseHeader) frame (per chunk FOUND / MISSING / BUSY, or a
//! [`Refusal`] of the whole request), then, for each FOUND chunk in request order, its stored
//! bytes as [`Piece`](proto::Piece) frames of at most [`PIECE_SIZE`] bytes. [`Assembler`]
//! checks the pieces against the header as they arrive, so nothing beyond one chunk is held.

use bytes::Bytes;
use dfagent_core::{BlobId, ChunkDigest, ChunkRef, Compression, DigestAlgo, MAX_CHUNK_SIZE};
use prost::Message;

use crate::proto;

/// Name of the chunk protocol on a libp2p stream.
pub const PROTOCOL: &str = "/dfagent/chunks/1";

/// Data bytes in one piece frame.
pub const PIECE_SIZE: usize = 64 << 10;

/// Largest stored chunk accepted: the largest chunk Nydus allows plus room for a compressor
/// that made it slightly bigger.
pub const MAX_STORED_CHUNK: u32 = MAX_CHUNK_SIZE + (64 << 10);

/// Most chunks one request may name.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;

/// Most stored bytes one request may ask for (sum of the compressed sizes; a single chunk up to
/// [`MAX_STORED_CHUNK`] is always allowed), and the most its answer may carry.
pub const MAX_BYTES_PER_REQUEST: u64 = 16 << 20;

/// Largest frame: a full request of 64 chunks is ~5 KiB, a piece 64 KiB; 1 MiB leaves room.
pub const MAX_FRAME: usize = (1 << 20) + 1024;

/// The limits a peer holds requests and answers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most chunks per request.
    pub max_chunks: usize,
    /// Most stored bytes per request and per answer.
    pub max_bytes: u64,
    /// Largest frame body.
    pub max_frame: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunks: MAX_CHUNKS_PER_REQUEST,
            max_bytes: MAX_BYTES_PER_REQUEST,
            max_frame: MAX_FRAME,
        }
    }
}

/// Why a whole request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// More chunks than [`Limits::max_chunks`].
    TooManyChunks,
    /// More bytes than [`Limits::max_bytes`].
    TooManyBytes,
    /// Every upload slot is taken.
    Busy,
    /// The request was malformed.
    BadRequest,
}

/// A refusal of a whole request: reason and a short text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// Human-readable detail.
    pub detail: String,
}

/// Something on the wire broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame longer than allowed.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Bytes end inside a frame.
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    /// Protobuf that does not decode.
    #[error("malformed {what}: {detail}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// What prost said.
        detail: String,
    },
    /// A field with a value the protocol does not allow.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// A request beyond the limits (answered with a [`Refusal`]).
    #[error("request refused: {0:?}")]
    OverLimit(RefusalReason),
    /// An answer that does not match its request (count, chunks or sizes).
    #[error("answer does not match the request: {0}")]
    Mismatch(String),
}

fn invalid(field: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// A request for chunks of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The blob.
    pub blob: BlobId,
    /// The chunks wanted, each of `blob`.
    pub chunks: Vec<ChunkRef>,
}

/// The answer for one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkStatus {
    /// Its stored bytes follow: `size` bytes encoded as `compression`.
    Found {
        /// Stored size.
        size: u32,
        /// Encoding of the stored bytes.
        compression: Compression,
    },
    /// Not held.
    Missing,
    /// The server is at its limit for this chunk.
    Busy,
}

/// The first frame of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// One status per requested chunk, in request order.
    Answers(Vec<ChunkStatus>),
    /// The whole request refused; nothing follows.
    Refused(Refusal),
}

/// `msg` as a frame: u32 big-endian length, then the message.
pub fn frame<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    // Messages we build are far below 4 GiB (the limits above); saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode_raw(&mut out);
    out
}

/// The body length a frame prefix announces, checked against `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Split the first frame off `buf`: its body and the rest.
pub fn split_frame(buf: &[u8], max: usize) -> Result<(&[u8], &[u8]), WireError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<4>() else {
        return Err(WireError::Truncated("length prefix"));
    };
    let len = frame_len(*prefix, max)?;
    if rest.len() < len {
        return Err(WireError::Truncated("frame body"));
    }
    Ok(rest.split_at(len))
}

fn algo_to_wire(algo: DigestAlgo) -> i32 {
    match algo {
        DigestAlgo::Blake3 => proto::DigestAlgo::Blake3 as i32,
        DigestAlgo::Sha256 => proto::DigestAlgo::Sha256 as i32,
    }
}

fn digest_from_wire(algo: i32, bytes: &[u8]) -> Result<ChunkDigest, WireError> {
    let algo = match proto::DigestAlgo::try_from(algo) {
        Ok(proto::DigestAlgo::Blake3) => DigestAlgo::Blake3,
        Ok(proto::DigestAlgo::Sha256) => DigestAlgo::Sha256,
        _ => return Err(invalid("digest algo", format!("unknown value {algo}"))),
    };
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid("digest", format!("{} bytes, expected 32", bytes.len())))?;
    Ok(ChunkDigest::new(algo, bytes))
}

fn compression_from_wire(id: u32) -> Result<Compression, WireError> {
    Compression::from_rafs_id(id).map_err(|e| invalid("compression", e.to_string()))
}

/// The wire message of `request`.
pub fn request_message(request: &Request) -> proto::ChunkRequest {
    proto::ChunkRequest {
        blob: Bytes::copy_from_slice(request.blob.bytes()),
        chunks: request
            .chunks
            .iter()
            .map(|c| proto::ChunkWanted {
                algo: algo_to_wire(c.digest.algo()),
                digest: Bytes::copy_from_slice(c.digest.bytes()),
                compressed_offset: c.compressed_offset,
                compressed_size: c.compressed_size,
                uncompressed_size: c.uncompressed_size,
                compression: c.compression.rafs_id(),
            })
            .collect(),
    }
}

/// Check the sizes of `chunks` against `limits`: what a server refuses and what a client must
/// not send.
pub fn check_request_limits(chunks: &[ChunkRef], limits: &Limits) -> Result<(), RefusalReason> {
    if chunks.len() > limits.max_chunks {
        return Err(RefusalReason::TooManyChunks);
    }
    let total: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
    if total > limits.max_bytes && chunks.len() > 1 {
        return Err(RefusalReason::TooManyBytes);
    }
    Ok(())
}

/// Decode and check a request frame body: every field valid, every chunk within
/// [`MAX_CHUNK_SIZE`], the batch within `limits` ([`WireError::OverLimit`] otherwise, which the
/// server answers with a refusal).
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<Request, WireError> {
    let msg = proto::ChunkRequest::decode(body).map_err(|e| WireError::Decode {
        what: "chunk request",
        detail: e.to_string(),
    })?;
    // Count first: do not validate (or allocate for) a batch we refuse anyway.
    if msg.chunks.len() > limits.max_chunks {
        return Err(WireError::OverLimit(RefusalReason::TooManyChunks));
    }
    let blob: [u8; 32] = msg
        .blob
        .as_ref()
        .try_into()
        .map_err(|_| invalid("blob", format!("{} bytes, expected 32", msg.blob.len())))?;
    let blob = BlobId::from_bytes(blob);
    if msg.chunks.is_empty() {
        return Err(invalid("chunks", "empty batch"));
    }
    let mut chunks = Vec::with_capacity(msg.chunks.len());
    for w in &msg.chunks {
        let digest = digest_from_wire(w.algo, &w.digest)?;
        let compression = compression_from_wire(w.compression)?;
        if w.uncompressed_size > MAX_CHUNK_SIZE {
            return Err(invalid(
                "uncompressed size",
                format!("{} exceeds {MAX_CHUNK_SIZE}", w.uncompressed_size),
            ));
        }
        if w.compressed_size == 0 || w.compressed_size > MAX_STORED_CHUNK {
            return Err(invalid(
                "compressed size",
                format!("{} not in 1..={MAX_STORED_CHUNK}", w.compressed_size),
            ));
        }
        chunks.push(ChunkRef {
            digest,
            blob,
            compressed_offset: w.compressed_offset,
            compressed_size: w.compressed_size,
            uncompressed_size: w.uncompressed_size,
            compression,
        });
    }
    check_request_limits(&chunks, limits).map_err(WireError::OverLimit)?;
    Ok(Request { blob, chunks })
}

fn reason_to_wire(reason: RefusalReason) -> i32 {
    (match reason {
        RefusalReason::TooManyChunks => proto::RefusalReason::TooManyChunks,
        RefusalReason::TooManyBytes => proto::RefusalReason::TooManyBytes,
        RefusalReason::Busy => proto::RefusalReason::Busy,
        RefusalReason::BadRequest => proto::RefusalReason::BadRequest,
    }) as i32
}

/// The wire message of an answer to `request`: one status per chunk.
pub fn header_message(request: &Request, statuses: &[ChunkStatus]) -> proto::ResponseHeader {
    let chunks = request
        .chunks
        .iter()
        .zip(statuses)
        .map(|(c, s)| {
            let (status, stored_size, compression) = match *s {
                ChunkStatus::Found { size, compression } => {
                    (proto::ChunkStatus::Found, size, compression.rafs_id())
                }
                ChunkStatus::Missing => (proto::ChunkStatus::Missing, 0, 0),
                ChunkStatus::Busy => (proto::ChunkStatus::Busy, 0, 0),
            };
            proto::ChunkAnswer {
                algo: algo_to_wire(c.digest.algo()),
                digest: Bytes::copy_from_slice(c.digest.bytes()),
                status: status as i32,
                stored_size,
                compression,
            }
        })
        .collect();
    proto::ResponseHeader {
        result: Some(proto::response_header::Result::Answers(
            proto::ChunkAnswers { chunks },
        )),
    }
}

/// The wire message of a refusal.
pub fn refusal_message(reason: RefusalReason, detail: &str) -> proto::ResponseHeader {
    proto::ResponseHeader {
        result: Some(proto::response_header::Result::Refused(proto::Refusal {
            reason: reason_to_wire(reason),
            detail: detail.chars().take(200).collect(),
        })),
    }
}

/// Decode and check an answer's header frame body against the request it answers: one status
/// per requested chunk, naming that chunk, FOUND sizes plausible for it, the FOUND total within
/// `limits`.
pub fn decode_header(body: &[u8], request: &Request, limits: &Limits) -> Result<Header, WireError> {
    let msg = proto::ResponseHeader::decode(body).map_err(|e| WireError::Decode {
        what: "response header",
        detail: e.to_string(),
    })?;
    let answers = match msg.result {
        None => return Err(invalid("response header", "empty")),
        Some(proto::response_header::Result::Refused(r)) => {
            let reason = match proto::RefusalReason::try_from(r.reason) {
                Ok(proto::RefusalReason::TooManyChunks) => RefusalReason::TooManyChunks,
                Ok(proto::RefusalReason::TooManyBytes) => RefusalReason::TooManyBytes,
                Ok(proto::RefusalReason::Busy) => RefusalReason::Busy,
                Ok(proto::RefusalReason::BadRequest) => RefusalReason::BadRequest,
                _ => {
                    return Err(invalid(
                        "refusal reason",
                        format!("unknown value {}", r.reason),
                    ))
                }
            };
            let detail = r.detail.chars().take(200).collect();
            return Ok(Header::Refused(Refusal { reason, detail }));
        }
        Some(proto::response_header::Result::Answers(a)) => a.chunks,
    };
    if answers.len() != request.chunks.len() {
        return Err(WireError::Mismatch(format!(
            "{} answers for {} chunks",
            answers.len(),
            request.chunks.len()
        )));
    }
    let mut total = 0u64;
    let mut statuses = Vec::with_capacity(answers.len());
    for (a, c) in answers.iter().zip(&request.chunks) {
        let digest = digest_from_wire(a.algo, &a.digest)?;
        if digest != c.digest {
            return Err(WireError::Mismatch(format!(
                "answer names {digest} where {} was asked",
                c.digest
            )));
        }
        let status = match proto::ChunkStatus::try_from(a.status) {
            Ok(proto::ChunkStatus::Found) => {
                let compression = compression_from_wire(a.compression)?;
                let size = a.stored_size;
                let plausible = if compression == c.compression {
                    size == c.compressed_size
                } else if compression == Compression::None {
                    size == c.uncompressed_size
                } else {
                    size > 0 && size <= MAX_STORED_CHUNK
                };
                if !plausible {
                    return Err(WireError::Mismatch(format!(
                        "chunk {}: stored size {size} ({compression}) does not fit {} ({}) / {}",
                        c.digest, c.compressed_size, c.compression, c.uncompressed_size
                    )));
                }
                total += u64::from(size);
                ChunkStatus::Found { size, compression }
            }
            Ok(proto::ChunkStatus::Missing) => ChunkStatus::Missing,
            Ok(proto::ChunkStatus::Busy) => ChunkStatus::Busy,
            _ => {
                return Err(invalid(
                    "chunk status",
                    format!("unknown value {}", a.status),
                ))
            }
        };
        statuses.push(status);
    }
    let found = statuses
        .iter()
        .filter(|s| matches!(s, ChunkStatus::Found { .. }))
        .count();
    if total > limits.max_bytes.max(u64::from(MAX_STORED_CHUNK)) && found > 1 {
        return Err(WireError::Mismatch(format!(
            "answer carries {total} bytes, limit {}",
            limits.max_bytes
        )));
    }
    Ok(Header::Answers(statuses))
}

/// The piece frames carrying `data` (a FOUND chunk's stored bytes).
pub fn pieces(data: &Bytes) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..data.len()).step_by(PIECE_SIZE).map(move |start| {
        let end = (start + PIECE_SIZE).min(data.len());
        frame(&proto::Piece {
            data: data.slice(start..end),
        })
    })
}

/// Decode a piece frame body: its data, non-empty and at most [`PIECE_SIZE`] bytes.
pub fn decode_piece(body: &[u8]) -> Result<Bytes, WireError> {
    let p = proto::Piece::decode(body).map_err(|e| WireError::Decode {
        what: "piece",
        detail: e.to_string(),
    })?;
    if p.data.is_empty() || p.data.len() > PIECE_SIZE {
        return Err(invalid(
            "piece",
            format!("{} bytes, expected 1..={PIECE_SIZE}", p.data.len()),
        ));
    }
    Ok(p.data)
}

/// A FOUND chunk, complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Position in the request.
    pub index: usize,
    /// Stored bytes (not verified: the resolver does that).
    pub data: Bytes,
    /// Their encoding.
    pub compression: Compression,
}

/// Puts a FOUND chunk's pieces together, in request order, checking every piece against the
/// header: no piece past a chunk's stored size, no piece after the last chunk. Holds at most one
/// chunk's bytes.
#[derive(Debug)]
pub struct Assembler {
    /// (index, size, compression) of each FOUND chunk, in order.
    found: Vec<(usize, u32, Compression)>,
    next: usize,
    buf: Vec<u8>,
}

impl Assembler {
    /// An assembler for the FOUND chunks of `statuses`.
    pub fn new(statuses: &[ChunkStatus]) -> Self {
        let found = statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match *s {
                ChunkStatus::Found { size, compression } => Some((i, size, compression)),
                _ => None,
            })
            .collect();
        Self {
            found,
            next: 0,
            buf: Vec::new(),
        }
    }

    /// Whether every FOUND chunk is complete.
    pub fn done(&self) -> bool {
        self.next >= self.found.len()
    }

    /// Take one piece frame body; returns the chunk it completes, if it does.
    pub fn piece(&mut self, body: &[u8]) -> Result<Option<Delivered>, WireError> {
        let data = decode_piece(body)?;
        let Some(&(index, size, compression)) = self.found.get(self.next) else {
            return Err(WireError::Mismatch("piece after the last chunk".into()));
        };
        let size = size as usize;
        if self.buf.len() + data.len() > size {
            return Err(WireError::Mismatch(format!(
                "chunk {index}: more than its {size} stored bytes"
            )));
        }
        if self.buf.is_empty() {
            self.buf.reserve_exact(size);
        }
        self.buf.extend_from_slice(&data);
        if self.buf.len() < size {
            return Ok(None);
        }
        self.next += 1;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        Ok(Some(Delivered {
            index,
            data,
            compression,
        }))
    }
}

/// A whole answer decoded from one buffer (tests and the fuzz target; the network reads frame by
/// frame with the same checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Statuses and the FOUND chunks.
    Answers {
        /// One per requested chunk.
        statuses: Vec<ChunkStatus>,
        /// FOUND chunks, in order.
        delivered: Vec<Delivered>,
    },
    /// The request was refused.
    Refused(Refusal),
}

/// Decode a whole answer to `request` from `buf`: header, then every FOUND chunk's pieces,
/// nothing after.
pub fn decode_response(
    buf: &[u8],
    request: &Request,
    limits: &Limits,
) -> Result<Response, WireError> {
    let (body, mut rest) = split_frame(buf, limits.max_frame)?;
    let statuses = match decode_header(body, request, limits)? {
        Header::Refused(r) => {
            if !rest.is_empty() {
                return Err(WireError::Mismatch("bytes after a refusal".into()));
            }
            return Ok(Response::Refused(r));
        }
        Header::Answers(s) => s,
    };
    let mut asm = Assembler::new(&statuses);
    let mut delivered = Vec::new();
    while !asm.done() {
        let (body, r) = split_frame(rest, limits.max_frame)?;
        rest = r;
        if let Some(d) = asm.piece(body)? {
            delivered.push(d);
        }
    }
    if !rest.is_empty() {
        return Err(WireError::Mismatch("bytes after the last chunk".into()));
    }
    Ok(Response::Answers {
        statuses,
        delivered,
    })
}

/// Decode a whole request from `buf` (one frame, nothing after).
pub fn decode_request_frame(buf: &[u8], limits: &Limits) -> Result<Request, WireError> {
    let (body, rest) = split_frame(buf, limits.max_frame)?;
    if !rest.is_empty() {
        return Err(WireError::Mismatch("bytes after the request".into()));
    }
    decode_request(body, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, size: u32, compression: Compression) -> ChunkRef {
        ChunkRef {
            digest: DigestAlgo::Blake3.digest(&[seed]),
            blob: BlobId::from_bytes([9; 32]),
            compressed_offset: u64::from(seed) * 1000,
            compressed_size: size,
            uncompressed_size: size * 2,
            compression,
        }
    }

    fn request(n: usize) -> Request {
        Request {
            blob: BlobId::from_bytes([9; 32]),
            chunks: (0..n)
                .map(|i| chunk(i as u8, 100_000 + i as u32, Compression::Zstd))
                .collect(),
        }
    }

    /// An answer to `req` with every chunk FOUND as asked (bytes `i` repeated).
    fn full_answer(req: &Request) -> (Vec<u8>, Vec<ChunkStatus>) {
        let statuses: Vec<ChunkStatus> = req
            .chunks
            .iter()
            .map(|c| ChunkStatus::Found {
                size: c.compressed_size,
                compression: c.compression,
            })
            .collect();
        let mut out = frame(&header_message(req, &statuses));
        for (i, c) in req.chunks.iter().enumerate() {
            let data = Bytes::from(vec![i as u8; c.compressed_size as usize]);
            for p in pieces(&data) {
                out.extend_from_slice(&p);
            }
        }
        (out, statuses)
    }

    #[test]
    fn request_round_trips() {
        let req = request(3);
        let l = Limits::default();
        assert_eq!(
            decode_request_frame(&frame(&request_message(&req)), &l).unwrap(),
            req
        );
    }

    #[test]
    fn response_round_trips() {
        let req = request(3);
        let l = Limits::default();
        let (buf, statuses) = full_answer(&req);
        match decode_response(&buf, &req, &l).unwrap() {
            Response::Answers {
                statuses: s,
                delivered,
            } => {
                assert_eq!(s, statuses);
                assert_eq!(delivered.len(), 3);
                for (i, d) in delivered.iter().enumerate() {
                    assert_eq!(d.index, i);
                    assert_eq!(d.data.len(), req.chunks[i].compressed_size as usize);
                    assert!(d.data.iter().all(|b| *b == i as u8));
                }
            }
            r => panic!("{r:?}"),
        }
        // Mixed statuses: only FOUND chunks carry bytes.
        let statuses = vec![
            ChunkStatus::Missing,
            ChunkStatus::Found {
                size: req.chunks[1].uncompressed_size,
                compression: Compression::None,
            },
            ChunkStatus::Busy,
        ];
        let mut buf = frame(&header_message(&req, &statuses));
        let data = Bytes::from(vec![1u8; req.chunks[1].uncompressed_size as usize]);
        pieces(&data).for_each(|p| buf.extend_from_slice(&p));
        let Response::Answers { delivered, .. } = decode_response(&buf, &req, &l).unwrap() else {
            panic!("refused")
        };
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].index, 1);
        assert_eq!(delivered[0].compression, Compression::None);
    }

    #[test]
    fn truncated_input_is_refused() {
        let req = request(2);
        let l = Limits::default();
        let good = frame(&request_message(&req));
        for cut in [0, 2, 4, good.len() - 1] {
            assert!(decode_request_frame(&good[..cut], &l).is_err(), "cut {cut}");
        }
        let (buf, _) = full_answer(&req);
        for cut in [0, 3, 10, buf.len() / 2, buf.len() - 1] {
            assert!(decode_response(&buf[..cut], &req, &l).is_err(), "cut {cut}");
        }
        // Bytes beyond the answer.
        let mut long = buf.clone();
        long.push(0);
        assert!(matches!(
            decode_response(&long, &req, &l),
            Err(WireError::Truncated(_) | WireError::Mismatch(_))
        ));
    }

    #[test]
    fn oversized_frames_and_requests_are_refused() {
        let l = Limits::default();
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            split_frame(&huge, l.max_frame),
            Err(WireError::FrameTooLarge { .. })
        ));
        let many = request(l.max_chunks + 1);
        assert_eq!(
            decode_request_frame(&frame(&request_message(&many)), &l),
            Err(WireError::OverLimit(RefusalReason::TooManyChunks))
        );
        let mut big = request(2);
        for c in &mut big.chunks {
            c.compressed_size = 10 << 20;
        }
        assert_eq!(
            decode_request_frame(&frame(&request_message(&big)), &l),
            Err(WireError::OverLimit(RefusalReason::TooManyBytes))
        );
        // One chunk of the largest size is fine; one beyond it is not.
        let mut one = request(1);
        one.chunks[0].compressed_size = MAX_STORED_CHUNK;
        assert!(decode_request_frame(&frame(&request_message(&one)), &l).is_ok());
        one.chunks[0].compressed_size = MAX_STORED_CHUNK + 1;
        assert!(matches!(
            decode_request_frame(&frame(&request_message(&one)), &l),
            Err(WireError::Invalid { .. })
        ));
        one.chunks[0].compressed_size = 10;
        one.chunks[0].uncompressed_size = MAX_CHUNK_SIZE + 1;
        assert!(decode_request_frame(&frame(&request_message(&one)), &l).is_err());
        // A piece bigger than PIECE_SIZE.
        let p = frame(&proto::Piece {
            data: Bytes::from(vec![0u8; PIECE_SIZE + 1]),
        });
        assert!(decode_piece(&p[4..]).is_err());
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let l = Limits::default();
        let req = request(1);
        let mut m = request_message(&req);
        m.chunks[0].algo = 7;
        assert!(decode_request_frame(&frame(&m), &l).is_err());
        let mut m = request_message(&req);
        m.chunks[0].algo = 0;
        assert!(decode_request_frame(&frame(&m), &l).is_err());
        let mut m = request_message(&req);
        m.chunks[0].compression = 2; // gzip
        assert!(decode_request_frame(&frame(&m), &l).is_err());
        let mut m = request_message(&req);
        m.chunks[0].digest = Bytes::from_static(&[1, 2, 3]);
        assert!(decode_request_frame(&frame(&m), &l).is_err());
        let mut m = request_message(&req);
        m.blob = Bytes::from_static(&[1; 31]);
        assert!(decode_request_frame(&frame(&m), &l).is_err());
        let mut m = request_message(&req);
        m.chunks.clear();
        assert!(decode_request_frame(&frame(&m), &l).is_err());

        let statuses = [ChunkStatus::Missing];
        let mut h = header_message(&req, &statuses);
        if let Some(proto::response_header::Result::Answers(a)) = &mut h.result {
            a.chunks[0].status = 9;
        }
        assert!(decode_header(&frame(&h)[4..], &req, &l).is_err());
        let mut r = refusal_message(RefusalReason::Busy, "x");
        if let Some(proto::response_header::Result::Refused(f)) = &mut r.result {
            f.reason = 99;
        }
        assert!(decode_header(&frame(&r)[4..], &req, &l).is_err());
        let empty = proto::ResponseHeader { result: None };
        assert!(decode_header(&frame(&empty)[4..], &req, &l).is_err());
        // A known refusal decodes.
        let r = refusal_message(RefusalReason::TooManyBytes, "too big");
        assert_eq!(
            decode_header(&frame(&r)[4..], &req, &l).unwrap(),
            Header::Refused(Refusal {
                reason: RefusalReason::TooManyBytes,
                detail: "too big".into()
            })
        );
    }

    #[test]
    fn answers_that_do_not_fit_the_request_are_refused() {
        let l = Limits::default();
        let req = request(2);
        let found = |c: &ChunkRef| ChunkStatus::Found {
            size: c.compressed_size,
            compression: c.compression,
        };
        // Wrong count.
        let short = Request {
            chunks: req.chunks[..1].to_vec(),
            ..req.clone()
        };
        let h = header_message(&short, &[ChunkStatus::Missing]);
        assert!(matches!(
            decode_header(&frame(&h)[4..], &req, &l),
            Err(WireError::Mismatch(_))
        ));
        // A chunk that was not asked for.
        let other = Request {
            chunks: vec![req.chunks[0], chunk(77, 5, Compression::Zstd)],
            ..req.clone()
        };
        let h = header_message(&other, &[ChunkStatus::Missing, ChunkStatus::Missing]);
        assert!(matches!(
            decode_header(&frame(&h)[4..], &req, &l),
            Err(WireError::Mismatch(_))
        ));
        // A wrong size for the requested encoding.
        let bad = ChunkStatus::Found {
            size: req.chunks[0].compressed_size + 1,
            compression: req.chunks[0].compression,
        };
        let h = header_message(&req, &[bad, ChunkStatus::Missing]);
        assert!(matches!(
            decode_header(&frame(&h)[4..], &req, &l),
            Err(WireError::Mismatch(_))
        ));
        // Raw bytes must be the uncompressed size.
        let bad = ChunkStatus::Found {
            size: 3,
            compression: Compression::None,
        };
        let h = header_message(&req, &[bad, ChunkStatus::Missing]);
        assert!(decode_header(&frame(&h)[4..], &req, &l).is_err());
        // Pieces beyond a chunk's size, and pieces after the last chunk.
        let statuses = [found(&req.chunks[0]), ChunkStatus::Missing];
        let mut asm = Assembler::new(&statuses);
        let too_much = Bytes::from(vec![0u8; PIECE_SIZE]);
        let mut err = None;
        for _ in 0..(req.chunks[0].compressed_size as usize / PIECE_SIZE + 2) {
            if let Err(e) = asm.piece(
                &frame(&proto::Piece {
                    data: too_much.clone(),
                })[4..],
            ) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(WireError::Mismatch(_))));
        let mut asm = Assembler::new(&[ChunkStatus::Missing]);
        assert!(asm.done());
        assert!(asm
            .piece(
                &frame(&proto::Piece {
                    data: Bytes::from_static(b"x")
                })[4..]
            )
            .is_err());
        // Empty pieces are refused (they would let a peer stall us for free).
        let mut asm = Assembler::new(&statuses);
        assert!(asm.piece(&frame(&proto::Piece::default())[4..]).is_err());
    }
}
