//! The store's blob inventory on a real RocksDB: per-blob chunk counts across put, eviction,
//! remove, reject, gc and clear; the listener's Held/Gone events (once each, in order, with no
//! store lock held); counts rebuilt at reopen; access records of the old format still open.

mod common;

use common::{blob, chunk, config};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use dfagent_core::{BlobId, ChunkDigest, Compression, DigestAlgo};
use dfagent_store::{BlobEvent, Store};

fn put(s: &Store, c: &(ChunkDigest, Vec<u8>), b: &BlobId) {
    s.put(&c.0, b, Compression::None, c.1.len() as u32, &c.1)
        .unwrap();
}

/// A listener that records every event, and what the store answered when asked from inside
/// the call (which would hang if the listener ran under a store lock).
fn recorder(store: Weak<Store>) -> (Arc<Mutex<Vec<BlobEvent>>>, dfagent_store::BlobListener) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let listener: dfagent_store::BlobListener = Arc::new(move |e| {
        if let Some(s) = store.upgrade() {
            // Reads from inside the listener: allowed, and they see the committed change.
            let held = s.blobs();
            match e {
                BlobEvent::Held(b) => assert!(held.contains(&b), "{b} held but not listed"),
                BlobEvent::Gone(b) => assert!(!held.contains(&b), "{b} gone but still listed"),
            }
            let _ = s.stats();
        }
        log.lock().unwrap().push(e);
    });
    (seen, listener)
}

fn take(seen: &Mutex<Vec<BlobEvent>>) -> Vec<BlobEvent> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[test]
fn counts_and_events_follow_puts_evictions_removals_and_clear() {
    use BlobEvent::{Gone, Held};
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), config(40_000)).unwrap());
    let (seen, listener) = recorder(Arc::downgrade(&s));
    s.set_blob_listener(Some(listener));
    let c: Vec<_> = (0..8).map(|i| chunk(i, 10_000)).collect();
    let (x, y, z, w, v) = (blob(1), blob(2), blob(3), blob(4), blob(5));

    put(&s, &c[0], &x);
    put(&s, &c[1], &x);
    put(&s, &c[2], &y);
    assert_eq!(take(&seen), vec![Held(x), Held(y)]);
    assert_eq!(s.blobs(), vec![x, y]);
    assert_eq!((s.blob_chunks(&x), s.blob_chunks(&y)), (2, 1));

    // A chunk already held stays counted under the blob it first came from.
    put(&s, &c[1], &z);
    assert_eq!(s.blob_chunks(&z), 0);
    assert!(take(&seen).is_empty());

    put(&s, &c[3], &z); // the store is full now (4 × 10 000)
    assert_eq!(take(&seen), vec![Held(z)]);

    // Eviction: c0 goes first (x keeps c1), then c1 (x is gone).
    put(&s, &c[4], &w);
    assert_eq!(take(&seen), vec![Held(w)]);
    assert_eq!(s.blob_chunks(&x), 1);
    put(&s, &c[5], &w);
    assert_eq!(take(&seen), vec![Gone(x)]);
    assert_eq!(s.blob_chunks(&x), 0);
    assert_eq!(s.blobs(), vec![y, z, w]);

    // Removal and rejection.
    s.remove(&c[2].0).unwrap();
    assert_eq!(take(&seen), vec![Gone(y)]);
    s.reject(&c[3].0).unwrap();
    assert_eq!(take(&seen), vec![Gone(z)]);
    // Removing what is not held announces nothing.
    s.remove(&c[2].0).unwrap();
    assert!(take(&seen).is_empty());

    // gc keeps the pinned chunk's blob, takes w's two chunks; clear takes the rest.
    s.pin("img", &[c[6].0]).unwrap();
    put(&s, &c[6], &v);
    assert_eq!(take(&seen), vec![Held(v)]);
    assert_eq!(s.gc().unwrap().chunks, 2);
    assert_eq!(take(&seen), vec![Gone(w)]);
    assert_eq!(s.blobs(), vec![v]);
    s.clear().unwrap();
    assert_eq!(take(&seen), vec![Gone(v)]);
    assert!(s.blobs().is_empty());

    // Without a listener nothing is delivered (and nothing queues up for a later one).
    s.set_blob_listener(None);
    put(&s, &c[7], &x);
    let (seen2, listener2) = recorder(Arc::downgrade(&s));
    s.set_blob_listener(Some(listener2));
    assert!(take(&seen).is_empty() && take(&seen2).is_empty());
    s.remove(&c[7].0).unwrap();
    assert_eq!(take(&seen2), vec![Gone(x)]);
}

#[test]
fn concurrent_puts_deliver_each_blobs_events_alternating_and_ending_in_its_state() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 8 chunks of 4 KiB: most puts evict.
    let s = Arc::new(Store::open(dir.path(), config(8 * 4096)).unwrap());
    // No reads from inside this listener: with changes on four threads, the state it would
    // read can already be past the event it is given.
    let (seen, listener) = recorder(Weak::new());
    s.set_blob_listener(Some(listener));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..150u32 {
                    let c = chunk(t * 1000 + i, 4096);
                    // Few blobs, shared between threads, so they come and go often.
                    put(&s, &c, &blob((i % 5) as u8 + 10 * (t % 2) as u8));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let events = take(&seen);
    let mut last: HashMap<BlobId, BlobEvent> = HashMap::new();
    for e in &events {
        let (b, held) = match e {
            BlobEvent::Held(b) => (b, true),
            BlobEvent::Gone(b) => (b, false),
        };
        let was_held = matches!(last.get(b), Some(BlobEvent::Held(_)));
        assert_ne!(was_held, held, "{e:?} repeats the blob's previous event");
        last.insert(*b, *e);
    }
    let mut held: Vec<BlobId> = last
        .iter()
        .filter(|(_, e)| matches!(e, BlobEvent::Held(_)))
        .map(|(b, _)| *b)
        .collect();
    held.sort();
    assert_eq!(held, s.blobs(), "the events end in the store's state");
    assert!(
        events.iter().any(|e| matches!(e, BlobEvent::Gone(_))),
        "evictions took some blob's last chunk"
    );
    let counted: u64 = s.blobs().iter().map(|b| s.blob_chunks(b)).sum();
    assert_eq!(counted, s.stats().chunks);
}

#[test]
fn counts_survive_reopen_and_recency_writes() {
    let dir = tempfile::tempdir().unwrap();
    let c: Vec<_> = (0..3).map(|i| chunk(i, 5_000)).collect();
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        put(&s, &c[0], &blob(1));
        put(&s, &c[1], &blob(1));
        put(&s, &c[2], &blob(2));
    }
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        assert_eq!(s.blobs(), vec![blob(1), blob(2)]);
        assert_eq!((s.blob_chunks(&blob(1)), s.blob_chunks(&blob(2))), (2, 1));
        // A read makes the chunk's access record dirty; it is rewritten at close and must
        // keep its blob.
        assert!(s.get(&c[2].0).unwrap().is_some());
    }
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert_eq!(s.blobs(), vec![blob(1), blob(2)]);
    assert_eq!(s.blob_chunks(&blob(2)), 1);
    s.remove(&c[2].0).unwrap();
    drop(s);
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert_eq!(s.blobs(), vec![blob(1)]);
}

/// Overwrite the access record of `d` in the store at `dir` (closed) with the 16-byte form
/// stores wrote before blobs were recorded: last-use tick, stored size.
fn write_old_access_record(dir: &std::path::Path, d: &ChunkDigest, tick: u64, size: u64) {
    let cfs = ["chunks", "access", "pins", "meta"];
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), cfs).unwrap();
    let mut key = vec![match d.algo() {
        DigestAlgo::Blake3 => 0u8,
        DigestAlgo::Sha256 => 1u8,
    }];
    key.extend_from_slice(d.bytes());
    let access = db.cf_handle("access").unwrap();
    let now = db.get_cf(access, &key).unwrap().expect("access record");
    assert_eq!(now.len(), 49, "a new store writes version-2 records");
    let mut old = tick.to_le_bytes().to_vec();
    old.extend_from_slice(&size.to_le_bytes());
    db.put_cf(access, &key, old).unwrap();
    db.flush_cf(access).unwrap();
}

#[test]
fn an_old_format_access_record_still_opens_and_counts_under_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (chunk(1, 3_000), chunk(2, 3_000));
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        put(&s, &a, &blob(1));
        put(&s, &b, &blob(2));
    }
    write_old_access_record(dir.path(), &a.0, 1, a.1.len() as u64);
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert_eq!(s.stats().chunks, 2, "the old record's chunk is still held");
    assert_eq!(s.blobs(), vec![blob(2)]);
    assert_eq!(s.blob_chunks(&blob(1)), 0);
    let v = s
        .get(&a.0)
        .unwrap()
        .expect("chunk with an old access record");
    assert_eq!(&v.data[..], &a.1[..]);
    // Putting it again under a blob changes nothing: it is held already.
    put(&s, &a, &blob(1));
    assert_eq!(s.blobs(), vec![blob(2)]);
    drop(s);
    // Its recency was rewritten at close (in the old form, no blob known): still opens.
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert_eq!(s.stats().chunks, 2);
    assert_eq!(s.blobs(), vec![blob(2)]);
    s.remove(&a.0).unwrap();
    assert_eq!(s.stats().chunks, 1);
}

#[test]
fn the_resolvers_store_role_records_the_chunks_blob() {
    use dfagent_core::{ChunkRef, ChunkStore, StoredChunk};
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), config(1 << 30)).unwrap());
    let tier = dfagent_store::StoreTier::new(s.clone());
    let (d, data) = chunk(3, 2_000);
    let r = ChunkRef {
        digest: d,
        blob: blob(9),
        compressed_offset: 0,
        compressed_size: data.len() as u32,
        uncompressed_size: data.len() as u32,
        compression: Compression::None,
    };
    let stored = StoredChunk {
        data: bytes::Bytes::from(data),
        compression: Compression::None,
    };
    tier.put(&r, &stored).unwrap();
    assert_eq!(s.blobs(), vec![blob(9)]);
    tier.reject(&r, "test: failed verification");
    assert!(s.blobs().is_empty());
    assert_eq!(s.stats().rejected, 1);
}
