//! Records in a codec version this build does not read (as another version of raftkit would
//! write them: intact, their checksum valid): opening the store fails naming the version when the
//! record is one opening reads (the hard state, the purged id, the last entry), and reading an
//! entry fails the same way otherwise. Never a silent misread, never "corruption".

use std::path::Path;
use std::time::Duration;

use raftkit::codec::VERSION;
use raftkit::{HardState, LogId, LogIndex, LogStore, LogWrite, NodeId, StorageErrorKind, Term};
use raftkit_rocksdb::RocksLogStore;
use raftkit_testkit::log_store::entries;

/// The store's column families (adapters/rocksdb/src/lib.rs).
const CF_ENTRIES: &str = "entries";
const CF_META: &str = "meta";

/// The version byte the tests write: one this build does not read.
const UNKNOWN: u8 = VERSION + 1;

/// A store with entries 1..=20 (terms 1 and 2), a hard state and a purged prefix.
async fn populated(path: &Path) {
    let s = RocksLogStore::open(path).unwrap();
    s.write(LogWrite {
        entries: [entries(1, 1..=10), entries(2, 11..=20)].concat(),
        hard_state: Some(HardState { term: Term(2), vote: Some(NodeId(1)), commit: LogIndex(15) }),
        ..LogWrite::default()
    })
    .await
    .unwrap();
    s.purge(LogId::new(1, 3)).await.unwrap();
}

/// Rewrites a sealed record (`[crc32][version][body]`) with the codec version `UNKNOWN` and a
/// checksum that matches, as a build with a newer codec would have written it.
fn with_unknown_version(record: &[u8]) -> Vec<u8> {
    let mut r = record.to_vec();
    assert_eq!(r[4], VERSION, "a sealed record starts its body with the codec version");
    r[4] = UNKNOWN;
    let crc = crc32fast::hash(&r[4..]);
    r[..4].copy_from_slice(&crc.to_le_bytes());
    r
}

/// Opens the database directly. The store's last handle may still be closing on another thread
/// (the commit thread, a compaction): retry while RocksDB's lock file is held.
fn open_raw(path: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    for _ in 0..500 {
        match rocksdb::DB::open_cf(&opts, path, [CF_ENTRIES, CF_META]) {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the database directly: {e}"),
        }
    }
    panic!("the database stayed locked")
}

/// Rewrites the record under `key` in column family `cf`.
fn rewrite(path: &Path, cf: &str, key: &[u8]) {
    let db = open_raw(path);
    let cf = db.cf_handle(cf).expect("the column family exists");
    let old = db.get_cf(cf, key).unwrap().expect("the record exists");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.put_cf_opt(cf, key, with_unknown_version(&old), &wo).unwrap();
}

/// An entry's key: its index, big endian (adapters/rocksdb/src/lib.rs).
fn entry_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Opening fails with an "unsupported format" error that names the unknown version and the
/// record. Retries while the lock file is held (see [`open_raw`]).
async fn assert_open_refused(path: &Path, record: &str) {
    for _ in 0..500 {
        let err = match RocksLogStore::open(path) {
            Ok(_) => panic!("a store whose {record} is in codec version {UNKNOWN} opened"),
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => e,
        };
        assert_eq!(err.kind(), StorageErrorKind::Unsupported, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("version {UNKNOWN}")), "the error names the version: {msg}");
        assert!(msg.contains(record), "the error names the record ({record}): {msg}");
        return;
    }
    panic!("the database stayed locked")
}

#[tokio::test]
async fn a_hard_state_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    populated(&path).await;
    rewrite(&path, CF_META, b"hard_state");
    // The meta records are named by their key in errors.
    assert_open_refused(&path, "hard_state").await;
}

#[tokio::test]
async fn a_purged_id_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    populated(&path).await;
    rewrite(&path, CF_META, b"purged");
    assert_open_refused(&path, "purged").await;
}

#[tokio::test]
async fn a_last_entry_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    populated(&path).await;
    rewrite(&path, CF_ENTRIES, &entry_key(20));
    assert_open_refused(&path, "entry 20").await;
}

/// An entry opening does not read is refused when it is read.
#[tokio::test]
async fn an_entry_in_an_unknown_codec_version_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    populated(&path).await;
    rewrite(&path, CF_ENTRIES, &entry_key(7));
    let s = loop {
        match RocksLogStore::open(&path) {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("opening reads neither entry 7 nor its term: {e}"),
        }
    };
    let err = s.read(LogIndex(5), LogIndex(9)).await.expect_err("entry 7 must not be returned");
    assert_eq!(err.kind(), StorageErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("version {UNKNOWN}")), "the error names the version: {msg}");
    assert!(msg.contains("entry 7"), "the error names the entry: {msg}");
    // The entries around it read back.
    assert_eq!(s.read(LogIndex(8), LogIndex(20)).await.unwrap().len(), 13);
}
