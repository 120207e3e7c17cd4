//! Chunks of at least `StoreConfig::file_min_size` bytes live in files of their own beside the
//! database: written before their record, deleted with it (eviction, remove, gc, clear), swept at
//! open when no record names them (a crash between the two), dropped when damaged, and readable
//! whatever the setting was when they were stored.

mod common;

use common::{blob, chunk, config};

use std::path::{Path, PathBuf};

use dfagent_core::{ChunkDigest, Compression};
use dfagent_store::{Store, StoreConfig};

/// The chunk files of the store in `dir`, sorted.
fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn put(s: &Store, c: &(ChunkDigest, Vec<u8>)) {
    s.put(&c.0, &blob(1), Compression::None, c.1.len() as u32, &c.1)
        .unwrap();
}

/// The file of a chunk (the only one in the store).
fn only_file(dir: &Path) -> PathBuf {
    let files = chunk_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn big_chunks_go_to_files_small_ones_stay_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let small = chunk(1, 4096);
    let big = chunk(2, 1 << 20);
    let at_threshold = chunk(3, 64 << 10);
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        for c in [&small, &big, &at_threshold] {
            put(&s, c);
        }
        assert_eq!(chunk_files(dir.path()).len(), 2);
        for c in [&small, &big, &at_threshold] {
            assert_eq!(&s.get(&c.0).unwrap().unwrap().data[..], &c.1[..]);
        }
        // A second put of a chunk held writes nothing (its file is not rewritten).
        let before = std::fs::metadata(chunk_files(dir.path())[0].clone())
            .unwrap()
            .modified()
            .unwrap();
        put(&s, &big);
        put(&s, &at_threshold);
        let after = std::fs::metadata(chunk_files(dir.path())[0].clone())
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    for c in [&small, &big, &at_threshold] {
        let v = s.get(&c.0).unwrap().unwrap();
        assert_eq!(&v.data[..], &c.1[..]);
        assert_eq!(v.uncompressed_size, c.1.len() as u32);
    }
    let report = s.verify().unwrap();
    assert_eq!((report.checked, report.removed.len()), (3, 0));
    assert_eq!(s.stats().bytes, (4096 + (1 << 20) + (64 << 10)) as u64);
}

#[test]
fn files_go_with_eviction_remove_gc_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cs: Vec<_> = (0..6).map(|i| chunk(10 + i, 100_000)).collect();
    // Room for three chunks: each put past the third evicts the oldest.
    let s = Store::open(dir.path(), config(300_000)).unwrap();
    for c in &cs {
        put(&s, c);
    }
    assert_eq!(s.stats().chunks, 3);
    assert_eq!(s.stats().evictions, 3);
    assert_eq!(
        chunk_files(dir.path()).len(),
        3,
        "evicted chunks' files stay"
    );
    for c in &cs[..3] {
        assert!(s.get(&c.0).unwrap().is_none());
    }

    s.remove(&cs[5].0).unwrap();
    assert_eq!(chunk_files(dir.path()).len(), 2);
    s.pin("img", &[cs[4].0]).unwrap();
    assert_eq!(s.gc().unwrap().chunks, 1);
    assert_eq!(chunk_files(dir.path()).len(), 1);
    assert_eq!(&s.get(&cs[4].0).unwrap().unwrap().data[..], &cs[4].1[..]);
    s.clear().unwrap();
    assert!(chunk_files(dir.path()).is_empty());
    assert!(s.get(&cs[4].0).unwrap().is_none());
}

#[test]
fn files_no_record_names_are_swept_at_open_and_others_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let kept = chunk(20, 200_000);
    let orphan = chunk(21, 200_000);
    {
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        put(&s, &kept);
        put(&s, &orphan);
    }
    // A put that a crash stopped between its file and its record: the file without a record.
    // Made here by deleting the record with the store's own API after copying the file.
    let orphan_file = {
        let before: Vec<PathBuf> = chunk_files(dir.path());
        let s = Store::open(dir.path(), config(1 << 30)).unwrap();
        let copy = dir.path().join("orphan-copy");
        let p = before
            .iter()
            .find(|p| std::fs::read(p).unwrap() == orphan.1)
            .unwrap()
            .clone();
        std::fs::copy(&p, &copy).unwrap();
        s.remove(&orphan.0).unwrap();
        assert!(!p.exists());
        drop(s);
        std::fs::rename(&copy, &p).unwrap();
        p
    };
    let foreign = dir.path().join("chunks").join("not-a-chunk");
    std::fs::write(&foreign, b"left alone").unwrap();
    // A put a crash stopped before its rename: the half-written file under its partial name.
    let partial = orphan_file.with_extension("partial");
    std::fs::write(&partial, &orphan.1[..1000]).unwrap();
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();
    assert!(!orphan_file.exists(), "the orphan file was not swept");
    assert!(!partial.exists(), "the partial file was not swept");
    assert!(
        foreign.exists(),
        "a file the store did not name was deleted"
    );
    assert!(s.get(&orphan.0).unwrap().is_none());
    assert_eq!(&s.get(&kept.0).unwrap().unwrap().data[..], &kept.1[..]);
    // The chunk can be stored again.
    put(&s, &orphan);
    assert_eq!(&s.get(&orphan.0).unwrap().unwrap().data[..], &orphan.1[..]);
}

#[test]
fn a_damaged_chunk_file_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config(1 << 30)).unwrap();

    // Cut short: the get notices the length, drops the record and answers "not held".
    let c = chunk(30, 150_000);
    put(&s, &c);
    let p = only_file(dir.path());
    std::fs::write(&p, &c.1[..1000]).unwrap();
    assert!(s.get(&c.0).unwrap().is_none());
    assert!(!s.contains(&c.0));
    assert!(!p.exists());
    // Longer than recorded: the same.
    put(&s, &c);
    let mut longer = c.1.clone();
    longer.push(0);
    std::fs::write(only_file(dir.path()), &longer).unwrap();
    assert!(s.get(&c.0).unwrap().is_none());
    assert!(!s.contains(&c.0));
    // Deleted behind the store's back.
    put(&s, &c);
    std::fs::remove_file(only_file(dir.path())).unwrap();
    assert!(s.get(&c.0).unwrap().is_none());
    assert!(!s.contains(&c.0));
    assert_eq!(s.stats().chunks, 0);

    // A flipped byte keeps the length: the get returns it (callers verify), `verify` drops it.
    put(&s, &c);
    let mut flipped = c.1.clone();
    flipped[70_000] ^= 0x5a;
    std::fs::write(only_file(dir.path()), &flipped).unwrap();
    assert_eq!(&s.get(&c.0).unwrap().unwrap().data[..], &flipped[..]);
    let report = s.verify().unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, c.0);
    assert!(chunk_files(dir.path()).is_empty());
}

#[test]
fn chunks_stay_readable_when_the_file_threshold_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = chunk(40, 300_000);
    let b = chunk(41, 300_000);
    let with = |min: u64| StoreConfig {
        file_min_size: min,
        ..config(1 << 30)
    };
    {
        // Everything in the database, as stores before chunk files kept it.
        let s = Store::open(dir.path(), with(u64::MAX)).unwrap();
        put(&s, &a);
        assert!(chunk_files(dir.path()).is_empty());
    }
    {
        let s = Store::open(dir.path(), with(64 << 10)).unwrap();
        put(&s, &b);
        assert_eq!(chunk_files(dir.path()).len(), 1);
        assert_eq!(&s.get(&a.0).unwrap().unwrap().data[..], &a.1[..]);
    }
    let s = Store::open(dir.path(), with(u64::MAX)).unwrap();
    for c in [&a, &b] {
        assert_eq!(&s.get(&c.0).unwrap().unwrap().data[..], &c.1[..]);
    }
    assert_eq!(s.verify().unwrap().removed.len(), 0);
    // Evicting and removing a chunk kept in the database is not troubled by its missing file.
    s.remove(&a.0).unwrap();
    s.remove(&b.0).unwrap();
    assert!(chunk_files(dir.path()).is_empty());
}
