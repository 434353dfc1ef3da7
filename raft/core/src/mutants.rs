//! Deliberately broken behaviours, for proving that the testkit catches classic Raft bugs.
//!
//! Compiled only with the `mutants` cargo feature, which only test builds turn on (the testkit's
//! own tests and the adapters' test suites); even then a mutant is inactive unless a node's
//! [`Config::mutant`](crate::Config::mutant) names it. A normal build has neither the feature nor
//! this type.

/// A classic Raft bug that can be re-introduced into one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Mutant {
    /// Commit an entry of an earlier term by counting replicas (Raft Figure 8; pitfall P1).
    CommitPreviousTermByCounting,
    /// Send a vote grant before the vote is durable (pitfall P9).
    GrantVoteBeforePersist,
    /// Acknowledge appended entries before they are durable (pitfall P5).
    AckAppendBeforePersist,
    /// Clear the vote when stepping down within the same term (pitfall P7).
    ForgetVoteOnSameTermStepDown,
    /// Count vote responses from earlier terms (pitfall P8).
    CountStaleTermVotes,
    /// Accept entries without checking that the log has `prev_log_id` (Raft §5.3).
    SkipLogConsistencyCheck,
    /// On every append, cut the log after `prev_log_id` even where it matches the new entries,
    /// so a stale (delayed or duplicated) append removes acknowledged, even committed, entries.
    TruncateMatchingSuffix,
    /// Install a snapshot from the leader without checking that it is newer than what the node
    /// already has.
    InstallStaleSnapshot,
}

impl Mutant {
    /// Every mutant in the catalogue.
    pub const ALL: [Mutant; 8] = [
        Mutant::CommitPreviousTermByCounting,
        Mutant::GrantVoteBeforePersist,
        Mutant::AckAppendBeforePersist,
        Mutant::ForgetVoteOnSameTermStepDown,
        Mutant::CountStaleTermVotes,
        Mutant::SkipLogConsistencyCheck,
        Mutant::TruncateMatchingSuffix,
        Mutant::InstallStaleSnapshot,
    ];
}
