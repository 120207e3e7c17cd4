//! Peer chunk-protocol messages as a node receives them from the network: arbitrary bytes
//! decoded as a request frame, as a request followed by an answer to it, and as an answer to a
//! fixed request (`dfagent_peer::wire`, built without libp2p). None may panic, hang or allocate
//! without bound, and whatever decodes must keep the protocol's promises.
#![no_main]

use dfagent_core::{BlobId, ChunkRef, Compression, DigestAlgo};
use dfagent_peer::wire::{self, ChunkStatus, Limits, Request, Response};
use libfuzzer_sys::fuzz_target;

/// What a decoded answer to `req` must satisfy.
fn check(resp: &Response, req: &Request) {
    if let Response::Answers {
        statuses,
        delivered,
    } = resp
    {
        assert_eq!(statuses.len(), req.chunks.len());
        let found = statuses
            .iter()
            .filter(|s| matches!(s, ChunkStatus::Found { .. }))
            .count();
        assert_eq!(delivered.len(), found);
        for d in delivered {
            match statuses[d.index] {
                ChunkStatus::Found { size, compression } => {
                    assert_eq!(d.data.len(), size as usize);
                    assert_eq!(d.compression, compression);
                }
                s => panic!("bytes delivered for a {s:?} chunk"),
            }
        }
    }
}

fn fixed() -> Request {
    let blob = BlobId::from_bytes([7; 32]);
    Request {
        blob,
        chunks: (0..3u8)
            .map(|i| ChunkRef {
                digest: DigestAlgo::Blake3.digest(&[i]),
                blob,
                compressed_offset: u64::from(i) * 4096,
                compressed_size: 100,
                uncompressed_size: 200,
                compression: if i == 2 {
                    Compression::None
                } else {
                    Compression::Zstd
                },
            })
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(req) = wire::decode_request_frame(data, &limits) {
        assert!(!req.chunks.is_empty() && req.chunks.len() <= limits.max_chunks);
        assert!(req.chunks.iter().all(|c| c.blob == req.blob));
    }
    // A request frame, then an answer to it.
    if let Ok((body, rest)) = wire::split_frame(data, limits.max_frame) {
        if let Ok(req) = wire::decode_request(body, &limits) {
            if let Ok(resp) = wire::decode_response(rest, &req, &limits) {
                check(&resp, &req);
            }
        }
    }
    let req = fixed();
    if let Ok(resp) = wire::decode_response(data, &req, &limits) {
        check(&resp, &req);
    }
});
