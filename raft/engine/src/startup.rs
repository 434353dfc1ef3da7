//! Loading what a node needs to start from its log store and state machine.

use raftkit_core::{InitialState, LogId, LogIndex};

use crate::error::{Inconsistency, StartError, StorageError};
use crate::traits::{LogState, LogStore, StateMachine};
use crate::workers::restore_blocking;

/// Reads one entry's id.
async fn id_at<L: LogStore>(log: &L, index: LogIndex) -> Result<LogId, StartError> {
    let entries = log.read(index, index).await.map_err(|e| start_err(e, "reading the log"))?;
    match entries.as_slice() {
        [e] if e.index() == index => Ok(e.log_id),
        _ => {
            Err(StartError::Inconsistent(Inconsistency::BadRead { index, returned: entries.len() }))
        }
    }
}

/// The configuration entries of the log after `from` up to `last`, read in batches. Startup
/// reads the log after the latest snapshot once for them (the snapshot records the
/// configuration in force at its own end).
async fn memberships_after<L: LogStore>(
    log: &L,
    from: LogIndex,
    last: LogIndex,
) -> Result<Vec<(LogId, raftkit_core::Membership)>, StartError> {
    const BATCH: u64 = 4_096;
    let mut out = Vec::new();
    let mut next = from.next();
    while next <= last {
        let end = LogIndex(last.0.min(next.0 + BATCH - 1));
        let entries = log
            .read(next, end)
            .await
            .map_err(|e| start_err(e, "reading the log's configurations"))?;
        for e in entries {
            if let raftkit_core::EntryPayload::Membership(m) = e.payload {
                out.push((e.log_id, m));
            }
        }
        next = end.next();
    }
    Ok(out)
}

fn start_err(e: StorageError, what: &str) -> StartError {
    StartError::Storage(e.context(what))
}

/// Finds the first id of every run of equal terms in `(purged, last]` by bisection: terms never
/// decrease along a log, so a range whose ends share a term is one run. Costs
/// O(terms × log(entries)) point reads instead of a full scan.
pub(crate) async fn term_runs<L: LogStore>(
    log: &L,
    state: &LogState,
) -> Result<Vec<LogId>, StartError> {
    let (purged, last) = (state.purged, state.last);
    if last.index < purged.index {
        return Err(StartError::Inconsistent(Inconsistency::LastBelowPurged { last, purged }));
    }
    if last.index == purged.index {
        return Ok(Vec::new());
    }
    let first = id_at(log, purged.index.next()).await?;
    let tail = id_at(log, last.index).await?;
    if tail != last {
        return Err(StartError::Inconsistent(Inconsistency::LastMismatch {
            reported: last,
            held: tail,
        }));
    }
    let mut runs = vec![first];
    // Ranges (lo, hi) with lo.term < hi.term, explored left to right.
    let mut stack = vec![(first, tail)];
    while let Some((lo, hi)) = stack.pop() {
        if lo.term == hi.term {
            continue;
        }
        if lo.term > hi.term {
            return Err(StartError::Inconsistent(Inconsistency::TermDecreases {
                earlier: lo,
                later: hi,
            }));
        }
        if hi.index.0 == lo.index.0 + 1 {
            runs.push(hi);
            continue;
        }
        let mid = id_at(log, LogIndex(lo.index.0 + (hi.index.0 - lo.index.0) / 2)).await?;
        // Right half pushed first so the left half is explored first: runs come out ascending.
        stack.push((mid, hi));
        stack.push((lo, mid));
    }
    Ok(runs)
}

/// Builds the core's initial state. With a snapshot newer than what the state machine has
/// applied, the state machine is restored from it first; if the log does not hold the
/// snapshot's last entry (an install was interrupted by a crash), the install is completed.
///
/// Takes the state machine and gives it back, since a restore runs it on the blocking pool
/// ([`restore_blocking`]).
pub(crate) async fn initial_state<L: LogStore, S: StateMachine>(
    log: &L,
    mut sm: S,
) -> Result<(S, InitialState), StartError> {
    let snapshots = log.snapshot_store();
    let mut applied = sm
        .applied()
        .await
        .map_err(|e| start_err(e, "reading the state machine's applied index"))?;
    let snapshot = loop {
        let snapshot =
            snapshots.latest().await.map_err(|e| start_err(e, "reading the latest snapshot"))?;
        let Some(snap) = &snapshot else { break snapshot };
        let s = snap.last_log_id;
        if applied.is_some_and(|a| a.index >= s.index) {
            break snapshot;
        }
        tracing::info!(snapshot = %s, "restoring the state machine from the snapshot");
        let data = snapshots.open(snap).await.map_err(|e| start_err(e, "opening the snapshot"))?;
        let (back, restored) = restore_blocking(Box::new(sm), snap.clone(), data)
            .await
            .map_err(|e| start_err(e, "restoring the snapshot"))?;
        sm = *back;
        match restored {
            Ok(()) => {
                applied = Some(s);
                break snapshot;
            }
            Err(e) => {
                // A received snapshot the state machine refuses, published just before a crash
                // cut short its rollback: if the log never relied on it (its install did not
                // reach the log), fall back to the snapshot before it.
                let state = log.load().await.map_err(|e| start_err(e, "loading the log store"))?;
                if state.purged.index >= s.index {
                    return Err(start_err(e, "restoring the snapshot"));
                }
                tracing::error!(snapshot = %s, error = %e, "the state machine refuses the latest snapshot, which the log does not rely on; removing it");
                snapshots
                    .discard(snap)
                    .await
                    .map_err(|e| start_err(e, "removing an unusable snapshot"))?;
            }
        }
    };
    if let Some(snap) = &snapshot {
        let s = snap.last_log_id;
        let state = log.load().await.map_err(|e| start_err(e, "loading the log store"))?;
        let holds = state.purged == s
            || (state.purged.index < s.index
                && s.index <= state.last.index
                && id_at(log, s.index).await? == s);
        if !holds && state.purged.index < s.index {
            tracing::info!(snapshot = %s, "completing an interrupted snapshot install");
            log.install_snapshot(s)
                .await
                .map_err(|e| start_err(e, "installing the snapshot in the log"))?;
        }
    }
    let state = log.load().await.map_err(|e| start_err(e, "loading the log store"))?;
    let runs = term_runs(log, &state).await?;
    let applied_index = applied.map_or(LogIndex(0), |a| a.index);
    if let Some(a) = applied {
        // The state machine's last applied entry must be the log's entry at that index (or
        // purged, in which case a snapshot covered it).
        if a.index > state.purged.index && a.index <= state.last.index {
            let in_log = id_at(log, a.index).await?;
            if in_log != a {
                return Err(StartError::Inconsistent(Inconsistency::AppliedNotInLog {
                    applied: a,
                    in_log,
                }));
            }
        }
    }
    let from = snapshot
        .as_ref()
        .map_or(state.purged.index, |s| s.last_log_id.index)
        .max(state.purged.index);
    let memberships = memberships_after(log, from, state.last.index).await?;
    let init = InitialState {
        hard_state: state.hard_state,
        purged: state.purged,
        term_runs: runs,
        last: state.last,
        applied: applied_index,
        snapshot,
        memberships,
    };
    Ok((sm, init))
}
