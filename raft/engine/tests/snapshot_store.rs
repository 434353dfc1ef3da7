//! The two snapshot stores, `MemSnapshotStore` and `FileSnapshotStore`, against the
//! `SnapshotStore` contract: publish atomically on finish, read back exactly, resume an
//! unfinished transfer, refuse a snapshot that fails its checksum, keep the latest two; and for
//! files, damage detection and a crash before `finish` leaving the previous snapshot.

use std::io::Read;
use std::sync::Arc;

use raftkit::{
    Expected, FileSnapshotStore, LogId, MemSnapshotStore, Membership, NodeId, SnapshotStore,
    StorageErrorKind,
};

fn members() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)]).unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn write_whole(
    store: &dyn SnapshotStore,
    last: LogId,
    bytes: &[u8],
) -> raftkit::SnapshotMeta {
    let mut w = store.begin(last, members(), None).await.unwrap();
    for chunk in bytes.chunks(1000) {
        w.write(chunk).await.unwrap();
    }
    w.finish().await.unwrap()
}

async fn contract(store: Arc<dyn SnapshotStore>, reopen: impl Fn() -> Arc<dyn SnapshotStore>) {
    assert!(store.latest().await.unwrap().is_none());
    let a = data(10_000, 1);
    let meta_a = write_whole(&*store, LogId::new(1, 100), &a).await;
    assert_eq!((meta_a.size, meta_a.checksum), (10_000, crc32fast_hash(&a)));
    assert_eq!(store.latest().await.unwrap(), Some(meta_a.clone()));
    assert_eq!(&store.read(&meta_a, 500, 100).await.unwrap()[..], &a[500..600]);
    let mut all = Vec::new();
    store.open(&meta_a).await.unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all, a);
    let err = store.read(&meta_a, 9_990, 11).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::OutOfRange);

    // A transfer from a leader, interrupted and resumed with a new writer.
    let b = data(7_000, 2);
    let expected = Expected { size: b.len() as u64, checksum: crc32fast_hash(&b) };
    let mut w = store.begin(LogId::new(2, 200), members(), Some(expected)).await.unwrap();
    w.write(&b[..3_000]).await.unwrap();
    drop(w);
    assert_eq!(store.latest().await.unwrap(), Some(meta_a.clone()), "unfinished is invisible");
    let store = reopen();
    let mut w = store.begin(LogId::new(2, 200), members(), Some(expected)).await.unwrap();
    assert_eq!(w.written(), 3_000, "the transfer resumes after what was received");
    w.write(&b[3_000..]).await.unwrap();
    let meta_b = w.finish().await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta_b.clone()));
    assert_eq!(&store.read(&meta_b, 0, 7_000).await.unwrap()[..], &b[..]);

    // A transfer whose bytes do not match the expected checksum is refused and discarded.
    let c = data(100, 3);
    let bad = Expected { size: 100, checksum: crc32fast_hash(&c) ^ 1 };
    let mut w = store.begin(LogId::new(3, 300), members(), Some(bad)).await.unwrap();
    w.write(&c).await.unwrap();
    let err = w.finish().await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Corruption);
    assert_eq!(store.latest().await.unwrap(), Some(meta_b.clone()));
    let w = store.begin(LogId::new(3, 300), members(), Some(bad)).await.unwrap();
    assert_eq!(w.written(), 0, "a refused transfer starts over");
    drop(w);
    // Writing past the expected size is refused.
    let mut w = store
        .begin(LogId::new(3, 300), members(), Some(Expected { size: 10, checksum: 0 }))
        .await
        .unwrap();
    assert_eq!(w.write(&c).await.unwrap_err().kind(), StorageErrorKind::InvalidInput);
    drop(w);

    // The latest two are kept; older ones go.
    let meta_c = write_whole(&*store, LogId::new(4, 400), &data(50, 4)).await;
    assert_eq!(store.latest().await.unwrap(), Some(meta_c.clone()));
    assert!(store.read(&meta_b, 0, 10).await.is_ok(), "the one before the latest stays");
    assert_eq!(store.read(&meta_a, 0, 10).await.unwrap_err().kind(), StorageErrorKind::OutOfRange);
    assert_eq!(reopen().latest().await.unwrap(), Some(meta_c));
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    // The stores use CRC-32 (IEEE); computed here independently.
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = MemSnapshotStore::new();
    let s2 = store.clone();
    contract(Arc::new(store), move || Arc::new(s2.clone())).await;
}

#[tokio::test]
async fn file_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snaps");
    let store = FileSnapshotStore::open(&path).unwrap();
    contract(Arc::new(store), move || Arc::new(FileSnapshotStore::open(&path).unwrap())).await;
}

#[tokio::test]
async fn file_store_detects_damage_and_survives_a_crash_before_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path()).unwrap();
    let a = data(5_000, 9);
    let meta = write_whole(&store, LogId::new(1, 10), &a).await;
    // A crash after writing a new snapshot's bytes but before finish: only the old one exists.
    let mut w = store.begin(LogId::new(1, 20), members(), None).await.unwrap();
    w.write(&data(100, 1)).await.unwrap();
    drop(w);
    std::fs::write(dir.path().join("leftover.meta.tmp"), b"half").unwrap();
    let store = FileSnapshotStore::open(dir.path()).unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta.clone()));
    assert!(!dir.path().join("leftover.meta.tmp").exists(), "temporary files are cleaned up");
    // Damage the snapshot's bytes: reading it to the end fails.
    let snap = dir.path().join(format!("{}.snap", meta.name()));
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&snap, &bytes).unwrap();
    let mut out = Vec::new();
    let err = store.open(&meta).await.unwrap().read_to_end(&mut out).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // Damage the metadata: listing reports corruption.
    let m = dir.path().join(format!("{}.meta", meta.name()));
    let mut bytes = std::fs::read(&m).unwrap();
    bytes[6] ^= 0x01;
    std::fs::write(&m, &bytes).unwrap();
    assert_eq!(store.latest().await.unwrap_err().kind(), StorageErrorKind::Corruption);
}

#[tokio::test]
async fn file_store_cleans_up_after_a_crash_and_keeps_resumable_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path()).unwrap();
    let meta = write_whole(&store, LogId::new(2, 50), &data(3_000, 5)).await;
    // What a crash can leave behind: a local build cut short, a data file renamed into place
    // whose metadata never appeared, a transfer of an older snapshot, and a transfer of a newer
    // one (which must survive, to resume).
    let mut w = store.begin(LogId::new(2, 60), members(), None).await.unwrap();
    w.write(&data(10, 1)).await.unwrap();
    drop(w);
    std::fs::write(dir.path().join("00000000000000000002-00000000000000000070.snap"), b"x")
        .unwrap();
    let old = Expected { size: 100, checksum: 7 };
    let mut w = store.begin(LogId::new(1, 40), members(), Some(old)).await.unwrap();
    w.write(&data(10, 2)).await.unwrap();
    drop(w);
    let newer = data(400, 3);
    let expected = Expected { size: 400, checksum: crc32fast_hash(&newer) };
    let mut w = store.begin(LogId::new(3, 90), members(), Some(expected)).await.unwrap();
    w.write(&newer[..150]).await.unwrap();
    drop(w);

    let store = FileSnapshotStore::open(dir.path()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let newer_partial = names.iter().filter(|n| n.ends_with(".partial")).count();
    assert_eq!(newer_partial, 1, "only the newer transfer's partial file stays: {names:?}");
    assert_eq!(names.len(), 3, "the snapshot (data, metadata) and one partial: {names:?}");
    assert_eq!(store.latest().await.unwrap(), Some(meta));
    let mut w = store.begin(LogId::new(3, 90), members(), Some(expected)).await.unwrap();
    assert_eq!(w.written(), 150, "the newer transfer resumes");
    w.write(&newer[150..]).await.unwrap();
    let published = w.finish().await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(published));
}

#[tokio::test]
async fn a_partial_transfer_longer_than_its_snapshot_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path()).unwrap();
    let bytes = data(500, 4);
    let expected = Expected { size: 500, checksum: crc32fast_hash(&bytes) };
    let mut w = store.begin(LogId::new(1, 10), members(), Some(expected)).await.unwrap();
    w.write(&bytes[..200]).await.unwrap();
    drop(w);
    // Damage on disk makes the partial file longer than the snapshot it is part of: it cannot
    // be a prefix, so resuming from it would never finish.
    let partial = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "partial"))
        .unwrap();
    std::fs::write(&partial, data(600, 1)).unwrap();
    let mut w = store.begin(LogId::new(1, 10), members(), Some(expected)).await.unwrap();
    assert_eq!(w.written(), 0, "the transfer starts over");
    w.write(&bytes).await.unwrap();
    let meta = w.finish().await.unwrap();
    assert_eq!(&store.read(&meta, 0, 500).await.unwrap()[..], &bytes[..]);
}

#[tokio::test]
async fn file_store_refuses_metadata_without_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path()).unwrap();
    let meta = write_whole(&store, LogId::new(1, 10), &data(2_000, 6)).await;
    let snap = dir.path().join(format!("{}.snap", meta.name()));
    std::fs::write(&snap, data(1_000, 6)).unwrap();
    let err = FileSnapshotStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Corruption, "{err}");
    std::fs::remove_file(&snap).unwrap();
    let err = FileSnapshotStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::Corruption, "{err}");
    assert!(err.to_string().contains("no data file"), "{err}");
}

/// File work (writes, the fsyncs and renames of `finish`, reads) runs off the runtime's
/// threads: on a single-threaded runtime, another task keeps running while a snapshot is
/// written and published. Done inline, each call would complete within one poll and the
/// other task would get no turn until it had finished.
#[tokio::test(flavor = "current_thread")]
async fn file_store_does_not_hold_the_runtime_during_file_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileSnapshotStore::open(dir.path()).unwrap());
    let bytes = data(8 << 20, 3);
    let turns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let turns = turns.clone();
        tokio::spawn(async move {
            loop {
                turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let taken =
        |turns: &std::sync::atomic::AtomicU64| turns.swap(0, std::sync::atomic::Ordering::Relaxed);
    tokio::task::yield_now().await;
    taken(&turns);

    let mut w = store.begin(LogId::new(1, 10), members(), None).await.unwrap();
    w.write(&bytes).await.unwrap();
    let during_write = taken(&turns);
    let meta = w.finish().await.unwrap();
    let during_finish = taken(&turns);
    let read = store.read(&meta, 0, bytes.len() as u64).await.unwrap();
    let during_read = taken(&turns);
    counter.abort();

    assert_eq!(&read[..], &bytes[..]);
    assert!(during_write >= 1, "the runtime was held during a write");
    assert!(during_finish >= 1, "the runtime was held during finish (fsyncs and renames)");
    assert!(during_read >= 1, "the runtime was held during a read");
}
