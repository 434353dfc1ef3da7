//! The log-store suite: every case of the [`LogStore`] contract, one `#[test]` each through
//! [`log_store_suite!`](crate::log_store_suite), plus a model-based random test against a
//! `BTreeMap` reference with shrinking.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use raftkit::{
    Entry, EntryPayload, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, Membership,
    NodeId, StorageError, StorageErrorKind, Term,
};

use crate::harness::LogStoreHarness;
use crate::seed_from_env;
pub use crate::store_crash::{
    crash_keeps_every_acknowledged_write, crash_mid_write_keeps_all_or_nothing,
    io_faults_poison_writes_and_reopen_is_valid, snapshots_survive_crashes,
};

/// Compares what the store gave (first) with what the model says the contract requires
/// (second); a failure says which is which, with long values cut short.
macro_rules! store_eq {
    ($store:expr, $model:expr $(,)?) => {
        store_eq!($store, $model, "{}", stringify!($store))
    };
    ($store:expr, $model:expr, $($what:tt)+) => {{
        let (store, model) = (&$store, &$model);
        if store != model {
            panic!(
                "{}: the store gave {}; the model (what the contract requires) has {}",
                format!($($what)+),
                short(&format!("{store:?}")),
                short(&format!("{model:?}"))
            );
        }
    }};
}

/// `s`, cut to 1,500 characters.
fn short(s: &str) -> String {
    if s.len() <= 1_500 {
        return s.to_string();
    }
    let mut end = 1_500;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} characters in all)", &s[..end], s.len())
}

/// Runs an async case on a fresh two-thread runtime (real time, IO enabled), so concurrent
/// cases really run in parallel.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A deterministic payload for index `i` and term `t`, so reads can be checked without
/// remembering what was written.
pub fn payload(t: u64, i: u64) -> EntryPayload {
    match i % 7 {
        0 => EntryPayload::Blank,
        3 => EntryPayload::Membership(
            Membership::new([NodeId(1), NodeId(i % 5 + 2)]).expect("valid membership"),
        ),
        _ => EntryPayload::Normal(Bytes::from(format!(
            "t{t}-i{i}-{}",
            "x".repeat((i % 13) as usize)
        ))),
    }
}

/// The entries `range` of term `t` with [`payload`]s.
pub fn entries(t: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| Entry { log_id: LogId::new(t, i), payload: payload(t, i) }).collect()
}

fn append(es: Vec<Entry>) -> LogWrite {
    LogWrite { entries: es, ..LogWrite::default() }
}

async fn write(s: &impl LogStore, w: LogWrite) {
    s.write(w).await.expect("write");
}

async fn read_all(s: &impl LogStore) -> Vec<Entry> {
    let st = s.load().await.expect("load");
    if st.last.index == st.purged.index {
        return Vec::new();
    }
    s.read(st.purged.index.next(), st.last.index).await.expect("read all")
}

fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term: Term(term), vote: vote.map(NodeId), commit: LogIndex(commit) }
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T, StorageError>, kind: StorageErrorKind, what: &str) {
    match r {
        Err(e) => store_eq!(e.kind(), kind, "{what}: wrong error kind: {e}"),
        Ok(v) => panic!("{what}: expected a {kind} error, got Ok({v:?})"),
    }
}

/// A new store reports an empty log and a default hard state, and has nothing to read.
pub async fn empty_store_initial_state<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    let st = s.load().await.expect("load");
    store_eq!(st, LogState::default());
    expect_kind(
        s.read(LogIndex(1), LogIndex(1)).await,
        StorageErrorKind::OutOfRange,
        "read 1 of empty",
    );
}

/// Appended entries read back exactly, over any sub-range.
pub async fn append_and_read_ranges<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(&s, append(entries(1, 1..=40))).await;
    write(&s, append(entries(1, 41..=41))).await;
    write(&s, append(entries(2, 42..=100))).await;
    let all = [entries(1, 1..=41), entries(2, 42..=100)].concat();
    for (a, b) in [(1, 100), (1, 1), (100, 100), (17, 63), (41, 42), (99, 100)] {
        let got = s.read(LogIndex(a), LogIndex(b)).await.expect("read");
        store_eq!(got, all[(a - 1) as usize..b as usize], "read {a}..={b}");
    }
}

/// `load` reports the last entry after appends and truncations.
pub async fn last_log_id_follows_writes<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(&s, append(entries(1, 1..=5))).await;
    store_eq!(s.load().await.unwrap().last, LogId::new(1, 5));
    write(&s, append(entries(3, 6..=9))).await;
    store_eq!(s.load().await.unwrap().last, LogId::new(3, 9));
    write(&s, LogWrite { truncate_from: Some(LogIndex(4)), ..LogWrite::default() }).await;
    store_eq!(s.load().await.unwrap().last, LogId::new(1, 3));
}

/// A write with `truncate_from` removes the conflicting suffix and appends in its place.
pub async fn truncate_conflicting_suffix<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(&s, append(entries(1, 1..=10))).await;
    write(
        &s,
        LogWrite {
            truncate_from: Some(LogIndex(6)),
            entries: entries(2, 6..=8),
            ..LogWrite::default()
        },
    )
    .await;
    store_eq!(read_all(&s).await, [entries(1, 1..=5), entries(2, 6..=8)].concat());
    store_eq!(s.load().await.unwrap().last, LogId::new(2, 8));
    expect_kind(
        s.read(LogIndex(9), LogIndex(9)).await,
        StorageErrorKind::OutOfRange,
        "read a truncated entry",
    );
    // Truncating everything.
    write(&s, LogWrite { truncate_from: Some(LogIndex(1)), ..LogWrite::default() }).await;
    store_eq!(s.load().await.unwrap().last, LogId::ZERO);
    // Truncating at last + 1 is a no-op.
    write(&s, append(entries(3, 1..=2))).await;
    write(
        &s,
        LogWrite {
            truncate_from: Some(LogIndex(3)),
            entries: entries(3, 3..=3),
            ..LogWrite::default()
        },
    )
    .await;
    store_eq!(read_all(&s).await, entries(3, 1..=3));
}

/// Hard state, truncation and append in one write all take effect.
pub async fn hard_state_truncate_and_append_in_one_write<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    write(&s, append(entries(1, 1..=6))).await;
    write(
        &s,
        LogWrite {
            hard_state: Some(hs(4, Some(2), 3)),
            truncate_from: Some(LogIndex(4)),
            entries: entries(4, 4..=5),
        },
    )
    .await;
    let s = h.reopen(s, &g).await;
    let st = s.load().await.unwrap();
    store_eq!(st.hard_state, hs(4, Some(2), 3));
    store_eq!(read_all(&s).await, [entries(1, 1..=3), entries(4, 4..=5)].concat());
}

/// The hard state is saved and loaded as one record, the last write winning, across reopen:
/// every field of it (term, vote and commit), whichever of them a write changes — a write that
/// changes only the commit index, or only the vote, must be kept like any other.
pub async fn hard_state_save_and_load<H: LogStoreHarness>(h: &H) {
    let (mut s, g) = h.build().await;
    let states = [
        hs(1, None, 0),
        hs(1, Some(3), 0), // the vote alone
        hs(1, Some(3), 5), // the commit index alone
        hs(2, Some(1), 7),
        hs(9, None, 7), // a new term clears the vote
        hs(9, Some(4), 8),
        hs(9, Some(4), 11), // the commit index alone, again
    ];
    for (step, state) in states.into_iter().enumerate() {
        write(&s, LogWrite { hard_state: Some(state), ..LogWrite::default() }).await;
        let loaded = s.load().await.unwrap().hard_state;
        store_eq!(loaded, state, "step {step}: the store loads {loaded:?}, it was given {state:?}");
        s = h.reopen(s, &g).await;
        let loaded = s.load().await.unwrap().hard_state;
        store_eq!(
            loaded,
            state,
            "step {step}: after a reopen the store loads {loaded:?}, the last hard state written \
             (and acknowledged) was {state:?}"
        );
    }
    store_eq!(s.load().await.unwrap().last, LogId::ZERO, "hard state writes add no entries");
}

/// Purging a prefix: reads below it are a clear error, the purged id survives reopen, and the
/// log continues after it.
pub async fn purge_prefix<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    write(&s, append(entries(1, 1..=10))).await;
    write(&s, append(entries(2, 11..=20))).await;
    s.purge(LogId::new(1, 10)).await.expect("purge");
    let st = s.load().await.unwrap();
    store_eq!((st.purged, st.last), (LogId::new(1, 10), LogId::new(2, 20)));
    expect_kind(
        s.read(LogIndex(5), LogIndex(12)).await,
        StorageErrorKind::Purged,
        "read across purge",
    );
    expect_kind(
        s.read(LogIndex(10), LogIndex(10)).await,
        StorageErrorKind::Purged,
        "read the purged id",
    );
    store_eq!(s.read(LogIndex(11), LogIndex(20)).await.unwrap(), entries(2, 11..=20));
    let s = h.reopen(s, &g).await;
    store_eq!(s.load().await.unwrap().purged, LogId::new(1, 10), "purge must survive reopen");
    expect_kind(
        s.read(LogIndex(1), LogIndex(1)).await,
        StorageErrorKind::Purged,
        "read after reopen",
    );
    write(&s, append(entries(2, 21..=22))).await;
    // Purge everything: the log is empty and its last id is the purged one.
    s.purge(LogId::new(2, 22)).await.expect("purge all");
    let st = s.load().await.unwrap();
    store_eq!((st.purged, st.last), (LogId::new(2, 22), LogId::new(2, 22)));
    write(&s, append(entries(3, 23..=23))).await;
    let s = h.reopen(s, &g).await;
    store_eq!(read_all(&s).await, entries(3, 23..=23));
    store_eq!(s.load().await.unwrap().purged, LogId::new(2, 22));
}

/// Purge refuses ids past the end or with the wrong term, and ignores ids already purged.
pub async fn purge_boundaries<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(&s, append(entries(1, 1..=5))).await;
    expect_kind(
        s.purge(LogId::new(1, 6)).await,
        StorageErrorKind::InvalidInput,
        "purge past the end",
    );
    expect_kind(
        s.purge(LogId::new(2, 3)).await,
        StorageErrorKind::InvalidInput,
        "purge with a wrong term",
    );
    store_eq!(s.load().await.unwrap().purged, LogId::ZERO, "a refused purge changes nothing");
    s.purge(LogId::new(1, 3)).await.unwrap();
    s.purge(LogId::new(1, 2)).await.expect("purging below the purged id is a no-op");
    store_eq!(s.load().await.unwrap().purged, LogId::new(1, 3));
    store_eq!(read_all(&s).await, entries(1, 4..=5));
}

/// Reads past the end or with an inverted range are clear errors.
pub async fn read_boundary_errors<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(&s, append(entries(1, 1..=5))).await;
    expect_kind(
        s.read(LogIndex(4), LogIndex(6)).await,
        StorageErrorKind::OutOfRange,
        "read past the end",
    );
    expect_kind(
        s.read(LogIndex(6), LogIndex(6)).await,
        StorageErrorKind::OutOfRange,
        "read after the end",
    );
    expect_kind(
        s.read(LogIndex(3), LogIndex(2)).await,
        StorageErrorKind::InvalidInput,
        "inverted range",
    );
    expect_kind(
        s.read(LogIndex(0), LogIndex(2)).await,
        StorageErrorKind::Purged,
        "index 0 is before the log",
    );
}

/// A write with a gap (or a bad truncation) is refused and changes nothing, hard state
/// included: writes are all-or-nothing.
pub async fn invalid_writes_change_nothing<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    write(
        &s,
        LogWrite {
            hard_state: Some(hs(1, Some(1), 0)),
            entries: entries(1, 1..=5),
            ..LogWrite::default()
        },
    )
    .await;
    let before = (s.load().await.unwrap(), read_all(&s).await);
    let bad = [
        LogWrite {
            hard_state: Some(hs(2, None, 1)),
            entries: entries(1, 7..=8),
            ..LogWrite::default()
        },
        LogWrite { entries: entries(1, 5..=6), ..LogWrite::default() },
        LogWrite { truncate_from: Some(LogIndex(7)), ..LogWrite::default() },
        LogWrite {
            truncate_from: Some(LogIndex(3)),
            entries: entries(2, 4..=4),
            hard_state: Some(hs(2, None, 1)),
        },
        LogWrite { truncate_from: Some(LogIndex(0)), ..LogWrite::default() },
        // Terms never decrease along a log.
        LogWrite { entries: vec![Entry::blank(LogId::new(0, 6))], ..LogWrite::default() },
        LogWrite {
            entries: vec![Entry::blank(LogId::new(2, 6)), Entry::blank(LogId::new(1, 7))],
            ..LogWrite::default()
        },
    ];
    for w in bad {
        let desc = format!("{w:?}");
        expect_kind(s.write(w).await, StorageErrorKind::InvalidInput, &desc);
        store_eq!(
            (s.load().await.unwrap(), read_all(&s).await),
            before,
            "refused write changed the store: {desc}"
        );
    }
    // Truncating at or below the purged index is refused too.
    s.purge(LogId::new(1, 2)).await.unwrap();
    expect_kind(
        s.write(LogWrite { truncate_from: Some(LogIndex(2)), ..LogWrite::default() }).await,
        StorageErrorKind::InvalidInput,
        "truncate a purged entry",
    );
}

/// Installing a snapshot whose last entry the log holds keeps the entries after it; one the
/// log does not hold (a conflicting or shorter log) empties it. Either way the purged id is the
/// snapshot's, and it survives reopen.
pub async fn install_snapshot_replaces_the_prefix<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    write(&s, append(entries(1, 1..=10))).await;
    write(&s, append(entries(2, 11..=20))).await;
    // The log holds (2, 15): the suffix 16..=20 stays.
    s.install_snapshot(LogId::new(2, 15)).await.expect("install");
    let st = s.load().await.unwrap();
    store_eq!((st.purged, st.last), (LogId::new(2, 15), LogId::new(2, 20)));
    store_eq!(read_all(&s).await, entries(2, 16..=20));
    expect_kind(
        s.read(LogIndex(15), LogIndex(15)).await,
        StorageErrorKind::Purged,
        "read the installed prefix",
    );
    // A snapshot the log does not hold (a different term at its index): the log empties.
    s.install_snapshot(LogId::new(3, 18)).await.expect("install over a conflict");
    let st = s.load().await.unwrap();
    store_eq!((st.purged, st.last), (LogId::new(3, 18), LogId::new(3, 18)));
    assert!(read_all(&s).await.is_empty());
    // A snapshot past the end: the log empties and continues after it.
    s.install_snapshot(LogId::new(4, 50)).await.expect("install past the end");
    write(&s, append(entries(4, 51..=53))).await;
    let s = h.reopen(s, &g).await;
    let st = s.load().await.unwrap();
    store_eq!((st.purged, st.last), (LogId::new(4, 50), LogId::new(4, 53)));
    store_eq!(read_all(&s).await, entries(4, 51..=53));
    // The snapshot store that goes with the log is there and empty.
    assert!(s.snapshot_store().latest().await.expect("latest").is_none());
}

/// Entries of 4 MiB and more round-trip intact.
pub async fn large_entries<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    let big: Vec<Entry> = (1..=3u64)
        .map(|i| {
            let data: Vec<u8> =
                (0..(4 << 20) + i as usize * 1000).map(|b| (b as u64 * 31 + i) as u8).collect();
            Entry::normal(LogId::new(1, i), data)
        })
        .collect();
    write(&s, append(big.clone())).await;
    store_eq!(s.read(LogIndex(1), LogIndex(3)).await.unwrap(), big);
    let s = h.reopen(s, &g).await;
    store_eq!(s.read(LogIndex(2), LogIndex(2)).await.unwrap(), big[1..2]);
}

/// Many small entries in many writes, read back in ranges.
pub async fn many_small_entries<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    let total = 20_000u64;
    for start in (1..=total).step_by(250) {
        write(&s, append(entries(1, start..=start + 249))).await;
    }
    let s = h.reopen(s, &g).await;
    store_eq!(s.load().await.unwrap().last, LogId::new(1, total));
    for start in (1..=total).step_by(4_000) {
        let got = s.read(LogIndex(start), LogIndex(start + 3_999)).await.unwrap();
        store_eq!(got, entries(1, start..=start + 3_999));
    }
}

/// Long reads, large batches and high indexes: after a snapshot installed at index 62,000,
/// seven batches of 10,000 entries (indexes crossing 65,536 and 131,072) are read back whole
/// in one call of 70,000 entries, in windows, and after a reopen, entry for entry; then the
/// same near the largest index and term the protocol allows. Stores that misbehave only past
/// small sizes (a long read that skips an entry, an entry damaged above some index, a large
/// write kept in part) fail it. On a store that fsyncs every entry separately it costs 70,000
/// fsyncs (minutes); stores that commit a batch with one fsync take a few seconds.
pub async fn long_reads_at_high_indexes<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    let base = 62_000u64;
    let total = 70_000u64;
    s.install_snapshot(LogId::new(1, base)).await.expect("install at a high index");
    for start in (base + 1..=base + total).step_by(10_000) {
        write(&s, append(entries(2, start..=start + 9_999))).await;
    }
    let check = |got: Vec<Entry>, first: u64, last: u64, when: &str| {
        let want = entries(2, first..=last);
        assert!(
            got.len() == want.len(),
            "{when}: the store returned {} entries for {first}..={last}; the model has {}",
            got.len(),
            want.len()
        );
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g == w,
                "{when}: at index {} the store returned {g:?}; the model (what was written) \
                 has {w:?}",
                w.log_id.index
            );
        }
    };
    let check_all = |s: H::Store, round: &'static str| async move {
        let st = s.load().await.unwrap();
        assert!(
            (st.purged, st.last) == (LogId::new(1, base), LogId::new(2, base + total)),
            "{round}: the store loads purged {} and last {}; the model has {} and {}",
            st.purged,
            st.last,
            LogId::new(1, base),
            LogId::new(2, base + total)
        );
        let all = s.read(LogIndex(base + 1), LogIndex(base + total)).await.expect("a long read");
        check(all, base + 1, base + total, round);
        for (a, b) in [
            (65_530, 65_540),
            (base + 9_990, base + 10_010),
            (base + 4_000, base + 9_000),
            (131_000, 131_100),
        ] {
            check(s.read(LogIndex(a), LogIndex(b)).await.expect("a window"), a, b, round);
        }
        s
    };
    let s = check_all(s, "before a reopen").await;
    let s = h.reopen(s, &g).await;
    let s = check_all(s, "after a reopen").await;

    // Near the protocol's largest index and term.
    let (top_term, top_index) = (raftkit::core::MAX_TERM - 1, raftkit::core::MAX_INDEX - 100);
    s.install_snapshot(LogId::new(top_term - 1, top_index)).await.expect("install near the top");
    let near: Vec<Entry> = (top_index + 1..=top_index + 50)
        .map(|i| Entry { log_id: LogId::new(top_term, i), payload: payload(top_term, i) })
        .collect();
    write(
        &s,
        LogWrite {
            hard_state: Some(hs(top_term, Some(2), top_index + 10)),
            ..append(near.clone())
        },
    )
    .await;
    let s = h.reopen(s, &g).await;
    let st = s.load().await.unwrap();
    store_eq!(st.hard_state, hs(top_term, Some(2), top_index + 10), "hard state near the top");
    store_eq!(st.last, LogId::new(top_term, top_index + 50));
    store_eq!(s.read(LogIndex(top_index + 1), LogIndex(top_index + 50)).await.unwrap(), near);
}

/// After a clean reopen, everything acknowledged is there, exactly.
pub async fn reopen_keeps_everything_acknowledged<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    write(&s, append(entries(1, 1..=30))).await;
    write(
        &s,
        LogWrite {
            hard_state: Some(hs(3, Some(2), 12)),
            truncate_from: Some(LogIndex(25)),
            entries: entries(3, 25..=40),
        },
    )
    .await;
    s.purge(LogId::new(1, 9)).await.unwrap();
    let before = (s.load().await.unwrap(), read_all(&s).await);
    let s = h.reopen(s, &g).await;
    store_eq!((s.load().await.unwrap(), read_all(&s).await), before);
    let s = h.reopen(s, &g).await;
    store_eq!((s.load().await.unwrap(), read_all(&s).await), before, "second reopen");
}

/// Payloads of every kind round-trip, including empty data.
pub async fn payload_kinds_round_trip<H: LogStoreHarness>(h: &H) {
    let (s, g) = h.build().await;
    let es = vec![
        Entry::blank(LogId::new(1, 1)),
        Entry::normal(LogId::new(1, 2), Bytes::new()),
        Entry::normal(LogId::new(1, 3), vec![0u8, 255, 0, 7]),
        Entry {
            log_id: LogId::new(2, 4),
            payload: EntryPayload::Membership(
                Membership::with_learners([NodeId(1), NodeId(2), NodeId(3)], [NodeId(9)]).unwrap(),
            ),
        },
    ];
    write(&s, append(es.clone())).await;
    let s = h.reopen(s, &g).await;
    store_eq!(read_all(&s).await, es);
}

/// Readers running while a writer appends always see acknowledged entries intact.
pub async fn concurrent_reads_during_appends<H: LogStoreHarness>(h: &H) {
    let (s, _g) = h.build().await;
    let s = Arc::new(s);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Readers that have completed a read; the writer waits for all of them after its first
    // batch, so the remaining appends certainly overlap with reads.
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = 3_000u64;
    let readers_n = 4u64;
    let mut readers = Vec::new();
    for r in 0..readers_n {
        let (s, acked, started) = (s.clone(), acked.clone(), started.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut x = r.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            loop {
                let hi = acked.load(std::sync::atomic::Ordering::Acquire);
                if hi >= total {
                    break;
                }
                if hi > 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let a = 1 + x % hi;
                    let b = (a + x % 50).min(hi);
                    let got =
                        s.read(LogIndex(a), LogIndex(b)).await.expect("read acknowledged range");
                    store_eq!(got, entries(1, a..=b), "reader {r} saw wrong data for {a}..={b}");
                    if reads == 0 {
                        started.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for start in (1..=total).step_by(50) {
        s.write(append(entries(1, start..=start + 49))).await.expect("write");
        acked.store(start + 49, std::sync::atomic::Ordering::Release);
        if start == 1 {
            // (A reader that finished early has failed; its panic is reported below.)
            while started.load(std::sync::atomic::Ordering::Acquire) < readers_n
                && !readers.iter().any(|r: &tokio::task::JoinHandle<u64>| r.is_finished())
            {
                tokio::task::yield_now().await;
            }
        }
        tokio::task::yield_now().await;
    }
    for r in readers {
        let reads = r.await.expect("reader");
        assert!(reads > 0, "a reader never read while the writer appended");
    }
}

// ----- model-based random test ----------------------------------------------------------------

/// The reference model: a `BTreeMap` of entries plus hard state and purged id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogModel {
    /// Hard state.
    pub hard_state: HardState,
    /// Last purged id.
    pub purged: LogId,
    /// Entries by index.
    pub entries: BTreeMap<u64, Entry>,
}

impl LogModel {
    /// The last entry's id.
    pub fn last(&self) -> LogId {
        self.entries.values().next_back().map_or(self.purged, |e| e.log_id)
    }

    /// Applies a write, or returns the error kind the contract requires.
    pub fn write(&mut self, w: &LogWrite) -> Result<(), StorageErrorKind> {
        let last = self.last().index;
        let mut expect = last.next();
        if let Some(t) = w.truncate_from {
            if t <= self.purged.index || t > last.next() {
                return Err(StorageErrorKind::InvalidInput);
            }
            expect = t;
        }
        let mut prev_term = match self.entries.get(&(expect.0 - 1)) {
            Some(e) => e.term(),
            None => self.purged.term,
        };
        for e in &w.entries {
            if e.index() != expect || e.term() < prev_term {
                return Err(StorageErrorKind::InvalidInput);
            }
            prev_term = e.term();
            expect = expect.next();
        }
        if let Some(t) = w.truncate_from {
            self.entries.split_off(&t.0);
        }
        for e in &w.entries {
            self.entries.insert(e.index().0, e.clone());
        }
        if let Some(h) = w.hard_state {
            self.hard_state = h;
        }
        Ok(())
    }

    /// Purges, or returns the required error kind.
    pub fn purge(&mut self, up_to: LogId) -> Result<(), StorageErrorKind> {
        if up_to.index <= self.purged.index {
            return Ok(());
        }
        match self.entries.get(&up_to.index.0) {
            Some(e) if e.log_id == up_to => {
                self.entries = self.entries.split_off(&(up_to.index.0 + 1));
                self.purged = up_to;
                Ok(())
            }
            _ => Err(StorageErrorKind::InvalidInput),
        }
    }

    /// Installs a snapshot ending at `s`: keeps the entries after it if the log holds `s`,
    /// else empties the log; the purged id becomes `s`.
    pub fn install(&mut self, s: LogId) {
        let holds = s == self.purged || self.entries.get(&s.index.0).is_some_and(|e| e.log_id == s);
        if holds && s.index >= self.purged.index {
            self.entries = self.entries.split_off(&(s.index.0 + 1));
        } else {
            self.entries.clear();
        }
        self.purged = s;
    }

    /// Reads, or returns the required error kind.
    pub fn read(&self, a: LogIndex, b: LogIndex) -> Result<Vec<Entry>, StorageErrorKind> {
        if a > b {
            return Err(StorageErrorKind::InvalidInput);
        }
        if a <= self.purged.index {
            return Err(StorageErrorKind::Purged);
        }
        if b > self.last().index {
            return Err(StorageErrorKind::OutOfRange);
        }
        Ok(self.entries.range(a.0..=b.0).map(|(_, e)| e.clone()).collect())
    }
}

/// One step of a random operation sequence. Numbers are interpreted relative to the current
/// state, so shrinking keeps sequences meaningful.
#[derive(Clone, Debug)]
pub enum Op {
    /// Append `n` entries, possibly in a new term.
    Append {
        /// How many.
        n: u8,
        /// Start a new term.
        new_term: bool,
    },
    /// Append `n` × 100 entries in one write (up to 5,000).
    BigAppend {
        /// Hundreds of entries.
        n: u8,
    },
    /// Truncate `back` entries from the end and append `n` in a new term.
    Replace {
        /// How far back to cut.
        back: u8,
        /// How many to append.
        n: u8,
    },
    /// Save a hard state.
    HardState {
        /// Vote for this node (0: none).
        vote: u8,
    },
    /// Purge a fraction (in 256ths) of the log.
    Purge {
        /// Position, as a fraction of the log in 256ths.
        at: u8,
    },
    /// Read a range given as fractions of the log.
    Read {
        /// Start, in 256ths.
        a: u8,
        /// End, in 256ths.
        b: u8,
    },
    /// An invalid append with a gap.
    BadAppend {
        /// The gap's size.
        gap: u8,
    },
    /// Install a snapshot at a fraction (in 256ths, beyond 255 past the end) of the log, in
    /// the entry's own term or a newer one.
    Install {
        /// Position, as a fraction of the log in 256ths (up to twice its length).
        at: u16,
        /// Use a newer term than the entry's (so the log does not hold the snapshot).
        conflict: bool,
    },
    /// Close and reopen the store.
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20, any::<bool>()).prop_map(|(n, new_term)| Op::Append { n, new_term }),
        1 => (1u8..50).prop_map(|n| Op::BigAppend { n }),
        2 => (1u8..10, 0u8..10).prop_map(|(back, n)| Op::Replace { back, n }),
        1 => any::<u8>().prop_map(|vote| Op::HardState { vote }),
        1 => any::<u8>().prop_map(|at| Op::Purge { at }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Read { a, b }),
        1 => (1u8..5).prop_map(|gap| Op::BadAppend { gap }),
        1 => (0u16..512, any::<bool>()).prop_map(|(at, conflict)| Op::Install { at, conflict }),
        1 => Just(Op::Reopen),
    ]
}

fn frac(model: &LogModel, f: u8) -> LogIndex {
    let (lo, hi) = (model.purged.index.0, model.last().index.0);
    LogIndex(lo + (hi - lo) * u64::from(f) / 255)
}

async fn run_ops<H: LogStoreHarness>(h: &H, ops: &[Op]) -> Result<(), String> {
    let (mut s, g) = h.build().await;
    let mut m = LogModel::default();
    let mut term = 1u64;
    for (step, op) in ops.iter().enumerate() {
        let ctx = |what: &str| format!("step {step} ({op:?}): {what}");
        match op {
            Op::Append { n, new_term } => {
                if *new_term {
                    term += 1;
                }
                let first = m.last().index.0 + 1;
                let w = append(entries(term, first..=first + u64::from(*n) - 1));
                m.write(&w).map_err(|k| ctx(&format!("model refused: {k}")))?;
                s.write(w).await.map_err(|e| ctx(&format!("store refused a valid append: {e}")))?;
            }
            Op::BigAppend { n } => {
                let first = m.last().index.0 + 1;
                let w = append(entries(term, first..=first + u64::from(*n) * 100 - 1));
                m.write(&w).map_err(|k| ctx(&format!("model refused: {k}")))?;
                s.write(w).await.map_err(|e| ctx(&format!("store refused a valid append: {e}")))?;
            }
            Op::Replace { back, n } => {
                let last = m.last().index.0;
                let from = last.saturating_sub(u64::from(*back)).max(m.purged.index.0) + 1;
                term += 1;
                let es =
                    if *n == 0 { vec![] } else { entries(term, from..=from + u64::from(*n) - 1) };
                let w = LogWrite {
                    truncate_from: Some(LogIndex(from)),
                    entries: es,
                    ..LogWrite::default()
                };
                m.write(&w).map_err(|k| ctx(&format!("model refused: {k}")))?;
                s.write(w)
                    .await
                    .map_err(|e| ctx(&format!("store refused a valid replace: {e}")))?;
            }
            Op::HardState { vote } => {
                let h = HardState {
                    term: Term(term),
                    vote: (*vote > 0).then(|| NodeId(u64::from(*vote))),
                    commit: m.purged.index,
                };
                let w = LogWrite { hard_state: Some(h), ..LogWrite::default() };
                m.write(&w).map_err(|k| ctx(&format!("model refused: {k}")))?;
                s.write(w).await.map_err(|e| ctx(&format!("store refused a hard state: {e}")))?;
            }
            Op::Purge { at } => {
                let i = frac(&m, *at);
                let Some(e) = m.entries.get(&i.0).cloned() else { continue };
                m.purge(e.log_id).map_err(|k| ctx(&format!("model refused: {k}")))?;
                s.purge(e.log_id)
                    .await
                    .map_err(|e| ctx(&format!("store refused a valid purge: {e}")))?;
            }
            Op::Read { a, b } => {
                let (a, b) = (frac(&m, *a).next(), frac(&m, *b).next());
                let want = m.read(a, b);
                let got = s.read(a, b).await.map_err(|e| e.kind());
                if want != got {
                    return Err(ctx(&format!(
                        "read {a}..={b}: {}",
                        describe_read_difference(&got, &want)
                    )));
                }
            }
            Op::BadAppend { gap } => {
                let first = m.last().index.0 + 1 + u64::from(*gap);
                let w = append(entries(term, first..=first));
                match s.write(w).await {
                    Err(e) if e.kind() == StorageErrorKind::InvalidInput => {}
                    other => {
                        return Err(ctx(&format!("a gap must be InvalidInput, got {other:?}")));
                    }
                }
            }
            Op::Install { at, conflict } => {
                let (lo, hi) = (m.purged.index.0, m.last().index.0);
                let index = (lo + (hi - lo + 10) * u64::from(*at) / 255).max(lo + 1);
                let own = m.entries.get(&index).map_or(term, |e| e.term().0);
                if *conflict || !m.entries.contains_key(&index) {
                    term += 1;
                }
                let t = if *conflict || !m.entries.contains_key(&index) { term } else { own };
                let id = LogId::new(t, index);
                m.install(id);
                s.install_snapshot(id)
                    .await
                    .map_err(|e| ctx(&format!("store refused an install: {e}")))?;
            }
            Op::Reopen => s = h.reopen(s, &g).await,
        }
        let st = s.load().await.map_err(|e| ctx(&format!("load: {e}")))?;
        let want = LogState { hard_state: m.hard_state, purged: m.purged, last: m.last() };
        if st != want {
            return Err(ctx(&format!("state: model {want:?}, store {st:?}")));
        }
    }
    let all = if m.last().index > m.purged.index {
        s.read(m.purged.index.next(), m.last().index)
            .await
            .map_err(|e| format!("final read: {e}"))?
    } else {
        Vec::new()
    };
    let want: Vec<Entry> = m.entries.values().cloned().collect();
    if all != want {
        return Err(format!("final contents: {}", describe_read_difference(&Ok(all), &Ok(want))));
    }
    Ok(())
}

/// Where a read of the store and the model's differ, in words (not whole entry lists).
fn describe_read_difference(
    store: &Result<Vec<Entry>, StorageErrorKind>,
    model: &Result<Vec<Entry>, StorageErrorKind>,
) -> String {
    match (store, model) {
        (Ok(a), Ok(b)) if a.len() != b.len() => {
            format!("the store returned {} entries, the model {}", a.len(), b.len())
        }
        (Ok(a), Ok(b)) => match a.iter().zip(b).find(|(x, y)| x != y) {
            Some((x, y)) => {
                format!("at index {} the store returned {x:?}, the model has {y:?}", y.log_id.index)
            }
            None => "no difference".into(),
        },
        (Ok(a), Err(k)) => format!("the store returned {} entries, the model a {k} error", a.len()),
        (Err(k), Ok(b)) => format!("the store returned a {k} error, the model {} entries", b.len()),
        (Err(a), Err(b)) => format!("the store returned a {a} error, the model a {b} error"),
    }
}

/// Random operation sequences checked against [`LogModel`]; a failure is shrunk to a minimal
/// sequence. `RAFTKIT_SEED` changes the sequences; `RAFTKIT_PROPTEST_CASES` their number.
pub fn model_based_random_operations<H: LogStoreHarness>(h: &H) {
    let cases =
        std::env::var("RAFTKIT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let seed = seed_from_env().unwrap_or(0x5EED);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let config = PtConfig { cases, failure_persistence: None, ..PtConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runner.run(&proptest::collection::vec(op_strategy(), 1..60), |ops| {
        rt.block_on(run_ops(h, &ops)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("model-based test failed (seed {seed}; replay with RAFTKIT_SEED={seed}): {e}");
    }
}

/// Expands to one `#[test]` per case of the log-store suite, for the given
/// [`LogStoreHarness`](crate::LogStoreHarness) expression.
///
/// ```ignore
/// raftkit_testkit::log_store_suite!(MyHarness::new());
/// ```
#[macro_export]
macro_rules! log_store_suite {
    ($harness:expr) => {
        $crate::__log_store_cases!(
            $harness;
            empty_store_initial_state,
            append_and_read_ranges,
            last_log_id_follows_writes,
            truncate_conflicting_suffix,
            hard_state_truncate_and_append_in_one_write,
            hard_state_save_and_load,
            purge_prefix,
            purge_boundaries,
            read_boundary_errors,
            invalid_writes_change_nothing,
            large_entries,
            many_small_entries,
            long_reads_at_high_indexes,
            reopen_keeps_everything_acknowledged,
            payload_kinds_round_trip,
            concurrent_reads_during_appends,
            install_snapshot_replaces_the_prefix,
            crash_keeps_every_acknowledged_write,
            crash_mid_write_keeps_all_or_nothing,
            io_faults_poison_writes_and_reopen_is_valid,
            snapshots_survive_crashes,
        );
        #[test]
        fn log_store_model_based_random_operations() {
            $crate::log_store::model_based_random_operations(&$harness);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_store_cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::log_store::block_on($crate::log_store::$case(&$harness));
            }
        )*
    };
}
