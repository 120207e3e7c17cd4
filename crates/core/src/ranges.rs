//! Byte ranges for a batch of chunks: chunks of one blob sorted by offset and neighbours merged
//! into one range, so a tier that reads blobs over HTTP (the registry, a Dragonfly seed peer)
//! issues few requests and cuts each response back into chunks without copying.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::{BlobId, ChunkRef};

/// Default largest merged range request: 4 MiB.
pub const DEFAULT_MAX_MERGE: u64 = 4 << 20;

/// Largest hole between two chunks that is still read through (and thrown away) to save a
/// request: 64 KiB.
pub const MAX_MERGE_GAP: u64 = 64 << 10;
/// One range request of a batch and the chunks it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePlan {
    /// The blob.
    pub blob: BlobId,
    /// Bytes to read from it.
    pub range: Range<u64>,
    /// `(index into the request, range relative to the start of `range`)` of each chunk.
    pub members: Vec<(usize, Range<usize>)>,
}

/// Group `chunks` by blob, sort by offset and merge neighbours whose gap is at most
/// [`MAX_MERGE_GAP`] while the merged range stays within `max_merge` bytes (a single chunk
/// larger than that gets a request of its own).
pub fn plan_ranges(chunks: &[ChunkRef], max_merge: u64) -> Vec<RangePlan> {
    let mut by_blob: BTreeMap<BlobId, Vec<usize>> = BTreeMap::new();
    for (i, c) in chunks.iter().enumerate() {
        by_blob.entry(c.blob).or_default().push(i);
    }
    let mut plans = Vec::new();
    for (blob, mut idx) in by_blob {
        idx.sort_by_key(|&i| (chunks[i].compressed_offset, chunks[i].compressed_size));
        let mut current: Option<(Range<u64>, Vec<usize>)> = None;
        for i in idx {
            let r = chunks[i].blob_range();
            current = match current.take() {
                Some((cur, mut members))
                    if r.start <= cur.end.saturating_add(MAX_MERGE_GAP)
                        && r.end.max(cur.end) - cur.start <= max_merge =>
                {
                    members.push(i);
                    Some((cur.start..cur.end.max(r.end), members))
                }
                Some(done) => {
                    plans.push(finish(blob, done, chunks));
                    Some((r, vec![i]))
                }
                None => Some((r, vec![i])),
            };
        }
        if let Some(done) = current {
            plans.push(finish(blob, done, chunks));
        }
    }
    plans
}

fn finish(
    blob: BlobId,
    (range, members): (Range<u64>, Vec<usize>),
    chunks: &[ChunkRef],
) -> RangePlan {
    let members = members
        .into_iter()
        .map(|i| {
            let r = chunks[i].blob_range();
            let start = (r.start - range.start) as usize;
            (i, start..start + (r.end - r.start) as usize)
        })
        .collect();
    RangePlan {
        blob,
        range,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, DigestAlgo};

    fn chunk(blob: u8, off: u64, size: u32) -> ChunkRef {
        ChunkRef {
            digest: DigestAlgo::Sha256.digest(&off.to_le_bytes()),
            blob: BlobId::from_bytes([blob; 32]),
            compressed_offset: off,
            compressed_size: size,
            uncompressed_size: size,
            compression: Compression::None,
        }
    }

    #[test]
    fn merges_neighbours_within_gap_and_size() {
        let chunks = vec![
            chunk(1, 10_000, 1000),
            chunk(1, 0, 1000),
            chunk(1, 1000 + MAX_MERGE_GAP, 1000), // gap of exactly 64 KiB: merged
            chunk(1, 200_000, 1000),              // too far: new range
            chunk(2, 0, 500),
            chunk(1, 0, 1000), // duplicate
        ];
        let plans = plan_ranges(&chunks, 1 << 20);
        assert_eq!(plans.len(), 3);
        let p = &plans[0];
        assert_eq!(p.range, 0..1000 + MAX_MERGE_GAP + 1000);
        let idx: Vec<usize> = p.members.iter().map(|m| m.0).collect();
        assert_eq!(idx, vec![1, 5, 0, 2]);
        assert_eq!(p.members[2].1, 10_000..11_000);
        assert_eq!(plans[1].range, 200_000..201_000);
        assert_eq!(plans[2].blob, BlobId::from_bytes([2; 32]));
    }

    #[test]
    fn respects_max_merge() {
        let chunks: Vec<ChunkRef> = (0..10).map(|i| chunk(1, i * 1000, 1000)).collect();
        let plans = plan_ranges(&chunks, 3000);
        assert_eq!(
            plans.iter().map(|p| p.range.clone()).collect::<Vec<_>>(),
            vec![0..3000, 3000..6000, 6000..9000, 9000..10_000]
        );
        // A chunk larger than max_merge still gets a request.
        let plans = plan_ranges(&[chunk(1, 0, 5000)], 1000);
        assert_eq!(plans[0].range, 0..5000);
    }
}
