//! The public error types: readable messages (no Rust debug format), `is_retryable` per
//! variant as documented, structured causes, and serde round trips of what the metrics carry.

use raftkit::{
    Fatal, Inconsistency, LogId, LogIndex, NetworkError, NetworkErrorKind, NodeId, NodeState,
    StartError, StorageError, StorageErrorKind, WriteError,
};

#[test]
fn not_leader_names_the_leader_readably() {
    let known = WriteError::NotLeader { leader: Some(NodeId(2)) };
    assert_eq!(known.to_string(), "not the leader; the leader is node 2");
    let unknown = WriteError::NotLeader { leader: None };
    assert_eq!(unknown.to_string(), "not the leader; no leader known");
}

#[test]
fn write_errors_are_retryable_only_when_the_command_cannot_have_been_applied() {
    let log_id = LogId::new(1, 5);
    let io = StorageError::io("fsync", std::io::Error::other("EIO"));
    let cases = [
        (WriteError::NotLeader { leader: Some(NodeId(2)) }, true),
        (WriteError::NotLeader { leader: None }, true),
        (WriteError::Overwritten { log_id }, true),
        (WriteError::OutcomeUnknown { log_id }, false),
        (WriteError::Shutdown, false),
        (WriteError::Fatal(Fatal::LogStore(io)), false),
        (WriteError::Fatal(Fatal::DriverStopped), false),
    ];
    for (e, retryable) in cases {
        assert_eq!(e.is_retryable(), retryable, "{e}");
    }
}

#[test]
fn storage_errors_are_retryable_only_for_io() {
    use StorageErrorKind::*;
    for kind in
        [Io, Corruption, InvalidInput, Purged, OutOfRange, Poisoned, Closed, Unsupported, Other]
    {
        let e = StorageError::new(kind, "x");
        assert_eq!(e.is_retryable(), kind == Io, "{e}");
        // A fatal error is never retryable, whatever caused it.
        assert!(!Fatal::LogStore(e.clone()).is_retryable());
        assert!(!Fatal::StateMachine(e).is_retryable());
    }
}

#[test]
fn network_errors_are_retryable_when_the_peer_may_come_back() {
    use NetworkErrorKind::*;
    for (kind, retryable) in [
        (Unreachable, true),
        (Timeout, true),
        (Io, true),
        (Unauthenticated, false),
        (InvalidFrame, false),
        (Closed, false),
        (Other, false),
    ] {
        assert_eq!(NetworkError::new(kind, "x").is_retryable(), retryable, "{kind}");
    }
}

#[test]
fn start_errors_are_retryable_only_through_their_cause() {
    let io = StorageError::io("open", std::io::Error::other("EIO"));
    let corrupt = StorageError::new(StorageErrorKind::Corruption, "bad checksum");
    assert!(StartError::Storage(io).is_retryable());
    assert!(!StartError::Storage(corrupt).is_retryable());
    assert!(StartError::Network(NetworkError::new(NetworkErrorKind::Io, "bind")).is_retryable());
    assert!(
        !StartError::Network(NetworkError::new(NetworkErrorKind::Unauthenticated, "tls"))
            .is_retryable()
    );
    let bad = Inconsistency::TermDecreases { earlier: LogId::new(3, 4), later: LogId::new(2, 9) };
    assert!(!StartError::Inconsistent(bad).is_retryable());
}

#[test]
fn inconsistencies_carry_their_ids() {
    let e = StartError::Inconsistent(Inconsistency::AppliedNotInLog {
        applied: LogId::new(2, 7),
        in_log: LogId::new(3, 7),
    });
    match &e {
        StartError::Inconsistent(Inconsistency::AppliedNotInLog { applied, in_log }) => {
            assert_eq!(applied.index, LogIndex(7));
            assert_ne!(applied.term, in_log.term);
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().starts_with("stored state is inconsistent: "), "{e}");
}

#[test]
fn a_failed_state_round_trips_through_serde_with_its_cause() {
    let e = StorageError::io("fsync", std::io::Error::other("EIO"));
    let state = NodeState::Failed(Fatal::LogStore(e));
    let json = serde_json::to_string(&state).unwrap();
    let back: NodeState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state, "{json}");
    match back {
        NodeState::Failed(Fatal::LogStore(e)) => {
            assert_eq!(e.kind(), StorageErrorKind::Io);
            assert!(e.to_string().contains("EIO"), "the cause's text survives: {e}");
        }
        other => panic!("{other:?}"),
    }
}
