//! Damaged files: flipped bytes anywhere in the database file, and truncated files. Opening and
//! reading must either fail with a clear corruption (or I/O) error or return exactly the data
//! that was written — never different data, never a panic. A flipped byte inside an entry's
//! payload must be reported as corruption of that entry.

use std::path::Path;

use raftkit::{Entry, HardState, LogIndex, LogStore, LogWrite, NodeId, StorageErrorKind, Term};
use raftkit_redb::RedbLogStore;
use raftkit_testkit::log_store::entries;
use raftkit_testkit::rng::Rng;

const N: u64 = 400;

fn hard_state() -> HardState {
    HardState { term: Term(3), vote: Some(NodeId(2)), commit: LogIndex(350) }
}

fn expected() -> Vec<Entry> {
    [entries(1, 1..=200), entries(3, 201..=N)].concat()
}

/// Writes the reference database and returns its bytes.
async fn reference(dir: &Path) -> Vec<u8> {
    let path = dir.join("ref.redb");
    let s = RedbLogStore::open(&path).unwrap();
    s.write(LogWrite { entries: entries(1, 1..=200), ..LogWrite::default() }).await.unwrap();
    s.write(LogWrite {
        entries: entries(3, 201..=N),
        hard_state: Some(hard_state()),
        ..LogWrite::default()
    })
    .await
    .unwrap();
    drop(s);
    std::fs::read(&path).unwrap()
}

/// Opens a damaged copy and checks the outcome: an error of a clear kind, or correct data.
/// Returns whether the damage was detected.
async fn check_damaged(dir: &Path, bytes: &[u8], what: &str) -> bool {
    let path = dir.join("damaged.redb");
    std::fs::write(&path, bytes).unwrap();
    let clear =
        |k: StorageErrorKind| matches!(k, StorageErrorKind::Corruption | StorageErrorKind::Io);
    let store = match RedbLogStore::open(&path) {
        Ok(s) => s,
        Err(e) => {
            assert!(clear(e.kind()), "{what}: opening failed with an unclear error: {e}");
            return true;
        }
    };
    let st = store.load().await.unwrap();
    let mut detected = false;
    if st.hard_state != hard_state() || st.last.index != LogIndex(N) {
        panic!("{what}: the store opened with a different state: {st:?}");
    }
    for chunk in expected().chunks(50) {
        let (a, b) = (chunk[0].index(), chunk[chunk.len() - 1].index());
        match store.read(a, b).await {
            Ok(got) => assert_eq!(got, chunk, "{what}: entries {a}..={b} came back different"),
            Err(e) => {
                assert!(
                    clear(e.kind()),
                    "{what}: reading {a}..={b} failed with an unclear error: {e}"
                );
                detected = true;
            }
        }
    }
    drop(store);
    let _ = std::fs::remove_file(&path);
    detected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let good = reference(dir.path()).await;
    let mut rng = Rng::new(raftkit_testkit::seed_from_env().unwrap_or(11));
    // Most of a fresh redb file is preallocated and zero; aim at the bytes that hold something.
    let used: Vec<usize> = (0..good.len()).filter(|i| good[*i] != 0).collect();
    let trials = 300;
    let mut detected = 0;
    for trial in 0..trials {
        let mut bad = good.clone();
        let pos = used[rng.below(used.len() as u64) as usize];
        bad[pos] ^= 1 << rng.below(8);
        if check_damaged(dir.path(), &bad, &format!("trial {trial}: bit flip at byte {pos}")).await
        {
            detected += 1;
        }
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{trials} bit flips in the {} used bytes: {detected} detected, the rest did not change \
             what is read back",
            used.len()
        );
    }
    // Non-zero bytes include stale copy-on-write page versions nothing references any more, so
    // many flips change nothing; what matters is that none produced wrong data (checked above).
    assert!(detected > 0, "no flip was detected at all");
}

/// A file cut short anywhere inside what was written is refused (opening or reading fails with a
/// clear error), never read as a shorter or different log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_files_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let good = reference(dir.path()).await;
    let written = good.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let seed = raftkit_testkit::seed_from_env().unwrap_or(5);
    let mut rng = Rng::new(seed);
    for _ in 0..40 {
        let len = rng.below(written as u64) as usize;
        let what = format!("RAFTKIT_SEED={seed}: truncated to {len} of {} bytes", good.len());
        assert!(check_damaged(dir.path(), &good[..len], &what).await, "{what}: not detected");
    }
    // An empty file is not a database.
    assert!(check_damaged(dir.path(), &[], "an empty file").await, "an empty file: not detected");
}

/// A flipped bit inside one entry's payload is reported as corruption, never returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let good = reference(dir.path()).await;
    // Entry 257's payload text appears verbatim in the file; damage it there.
    let needle = b"t3-i257-";
    let pos = good.windows(needle.len()).position(|w| w == needle).expect("payload in the file");
    let mut bad = good.clone();
    bad[pos + 3] ^= 0x01;
    let path = dir.path().join("one.redb");
    std::fs::write(&path, &bad).unwrap();
    let store = RedbLogStore::open(&path).expect("the rest of the file is intact");
    let err = store
        .read(LogIndex(250), LogIndex(260))
        .await
        .expect_err("a damaged entry must not be returned");
    assert_eq!(err.kind(), StorageErrorKind::Corruption, "{err}");
    // Entries elsewhere are unaffected.
    assert_eq!(store.read(LogIndex(1), LogIndex(10)).await.unwrap(), entries(1, 1..=10));
}
