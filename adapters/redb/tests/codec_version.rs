//! Records in a codec version this build does not read (as another version of raftkit would
//! write them: intact, their checksum valid): opening the store fails naming the version when the
//! record is one opening reads (the hard state, the purged id, the last entry), and reading an
//! entry fails the same way otherwise. Never a silent misread, never "corruption".

use std::path::Path;

use raftkit::codec::VERSION;
use raftkit::{HardState, LogId, LogIndex, LogStore, LogWrite, NodeId, StorageErrorKind, Term};
use raftkit_redb::RedbLogStore;
use raftkit_testkit::log_store::entries;
use redb::ReadableTable;

const ENTRIES: redb::TableDefinition<'_, u64, &[u8]> =
    redb::TableDefinition::new("raftkit_entries");
const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("raftkit_meta");

/// The version byte the tests write: one this build does not read.
const UNKNOWN: u8 = VERSION + 1;

/// A store with entries 1..=20 (terms 1 and 2), a hard state and a purged prefix.
async fn populated(path: &Path) {
    let s = RedbLogStore::open(path).unwrap();
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

/// Rewrites the record under `key` in the meta table.
fn rewrite_meta(path: &Path, key: &str) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(META).unwrap();
        let old = t.get(key).unwrap().expect("the record exists").value().to_vec();
        t.insert(key, with_unknown_version(&old).as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Rewrites entry `index`'s record.
fn rewrite_entry(path: &Path, index: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(ENTRIES).unwrap();
        let old = t.get(index).unwrap().expect("the entry exists").value().to_vec();
        t.insert(index, with_unknown_version(&old).as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Opening fails with an "unsupported format" error that names the unknown version and the
/// record.
fn assert_open_refused(path: &Path, record: &str) {
    let err = match RedbLogStore::open(path) {
        Ok(_) => panic!("a store whose {record} is in codec version {UNKNOWN} opened"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), StorageErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("version {UNKNOWN}")), "the error names the version: {msg}");
    assert!(msg.contains(record), "the error names the record ({record}): {msg}");
}

#[tokio::test]
async fn a_hard_state_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    populated(&path).await;
    rewrite_meta(&path, "hard_state");
    assert_open_refused(&path, "the hard state");
}

#[tokio::test]
async fn a_purged_id_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    populated(&path).await;
    rewrite_meta(&path, "purged");
    assert_open_refused(&path, "the purged id");
}

#[tokio::test]
async fn a_last_entry_in_an_unknown_codec_version_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    populated(&path).await;
    rewrite_entry(&path, 20);
    assert_open_refused(&path, "entry 20");
}

/// An entry opening does not read is refused when it is read.
#[tokio::test]
async fn an_entry_in_an_unknown_codec_version_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    populated(&path).await;
    rewrite_entry(&path, 7);
    let s = RedbLogStore::open(&path).expect("opening reads neither entry 7 nor its term");
    let err = s.read(LogIndex(5), LogIndex(9)).await.expect_err("entry 7 must not be returned");
    assert_eq!(err.kind(), StorageErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("version {UNKNOWN}")), "the error names the version: {msg}");
    assert!(msg.contains("entry 7"), "the error names the entry: {msg}");
    // The entries around it read back.
    assert_eq!(s.read(LogIndex(8), LogIndex(20)).await.unwrap().len(), 13);
}
