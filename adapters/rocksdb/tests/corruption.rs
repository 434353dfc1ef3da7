//! Damaged files: flipped bytes in the sorted tables (SST) and in the write-ahead log, damaged
//! manifests, truncated logs. Opening and reading must either fail with a clear corruption (or
//! I/O) error or return correct data — never different data, never a panic. (A damaged *last*
//! WAL record cannot be told from a torn write and is dropped by recovery: reads then see a
//! shorter, still correct, log.)

use std::path::{Path, PathBuf};

use raftkit::{Entry, LogIndex, LogStore, LogWrite, StorageErrorKind};
use raftkit_rocksdb::RocksLogStore;
use raftkit_testkit::log_store::entries;
use raftkit_testkit::rng::Rng;

const N: u64 = 3000;

fn expected() -> Vec<Entry> {
    entries(2, 1..=N)
}

/// Builds the reference database; with `flush`, its entries live in SST files, else only in
/// the WAL.
async fn reference(dir: &Path, flush: bool) -> PathBuf {
    let path = dir.join(if flush { "sst" } else { "wal" });
    let s = RocksLogStore::open(&path).unwrap();
    for chunk in expected().chunks(100) {
        s.write(LogWrite { entries: chunk.to_vec(), ..LogWrite::default() }).await.unwrap();
    }
    if flush {
        s.flush().unwrap();
    }
    drop(s);
    path
}

/// Copies a store's directory, subdirectories (the snapshot store) included.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(suffix))
        .collect();
    v.sort();
    v
}

/// Opens a damaged copy and checks the outcome. Returns whether the damage was noticed (an
/// error, or a shorter log).
async fn check_damaged(path: &Path, what: &str) -> bool {
    let clear =
        |k: StorageErrorKind| matches!(k, StorageErrorKind::Corruption | StorageErrorKind::Io);
    let store = match RocksLogStore::open(path) {
        Ok(s) => s,
        Err(e) => {
            assert!(clear(e.kind()), "{what}: opening failed with an unclear error: {e}");
            return true;
        }
    };
    let st = store.load().await.unwrap();
    assert!(st.last.index.0 <= N, "{what}: more entries than were written");
    let mut noticed = st.last.index.0 < N;
    let all = expected();
    for chunk in all[..st.last.index.0 as usize].chunks(250) {
        let (a, b) = (chunk[0].index(), chunk[chunk.len() - 1].index());
        match store.read(a, b).await {
            Ok(got) => assert_eq!(got, chunk, "{what}: entries {a}..={b} came back different"),
            Err(e) => {
                assert!(clear(e.kind()), "{what}: reading {a}..={b} failed unclearly: {e}");
                noticed = true;
            }
        }
    }
    noticed
}

async fn flip_trials(src: &Path, work: &Path, suffix: &str, trials: u64, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let targets = files(src, suffix);
    assert!(!targets.is_empty(), "no {suffix} files to damage");
    let mut noticed = 0;
    for trial in 0..trials {
        copy_dir(src, work);
        let target = work.join(rng.pick(&targets).file_name().unwrap());
        let mut bytes = std::fs::read(&target).unwrap();
        let pos = rng.below(bytes.len() as u64) as usize;
        bytes[pos] ^= 1 << rng.below(8);
        std::fs::write(&target, &bytes).unwrap();
        let what = format!("trial {trial}: bit flip at byte {pos} of {}", target.display());
        if check_damaged(work, &what).await {
            noticed += 1;
        }
    }
    noticed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_sorted_tables_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let src = reference(dir.path(), true).await;
    let noticed = flip_trials(&src, &dir.path().join("work"), ".sst", 60, 3).await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("60 bit flips in SST files: {noticed} noticed, the rest changed nothing read");
    }
    assert!(noticed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_the_write_ahead_log_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let src = reference(dir.path(), false).await;
    let noticed = flip_trials(&src, &dir.path().join("work"), ".log", 60, 4).await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("60 bit flips in the WAL: {noticed} noticed, the rest changed nothing read");
    }
    assert!(noticed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_manifests_and_truncated_logs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let src = reference(dir.path(), false).await;
    let work = dir.path().join("work");
    // A manifest full of garbage.
    for m in files(&src, "MANIFEST") {
        copy_dir(&src, &work);
        std::fs::write(work.join(m.file_name().unwrap()), vec![0xA5u8; 512]).unwrap();
        assert!(check_damaged(&work, "a garbage manifest").await);
    }
    // The WAL cut at various lengths: a torn tail is dropped, the rest intact.
    let mut rng = Rng::new(9);
    for _ in 0..10 {
        copy_dir(&src, &work);
        let wal = files(&work, ".log").pop().expect("a WAL");
        let len = std::fs::metadata(&wal).unwrap().len();
        let keep = rng.below(len);
        std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(keep).unwrap();
        check_damaged(&work, &format!("WAL truncated to {keep} of {len} bytes")).await;
    }
    // An empty directory is a new store, but a directory with a missing CURRENT file is not.
    copy_dir(&src, &work);
    std::fs::remove_file(work.join("CURRENT")).unwrap();
    let err =
        RocksLogStore::open(&work).expect_err("a damaged directory must not open as a new store");
    assert!(matches!(err.kind(), StorageErrorKind::Corruption | StorageErrorKind::Io), "{err}");
    let reopened = RocksLogStore::open(&src).unwrap();
    assert_eq!(reopened.load().await.unwrap().last.index, LogIndex(N));
}
