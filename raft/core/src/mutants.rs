//! Deliberately broken behaviours, for proving that the testkit catches classic Raft bugs.
//!
//! Compiled only with the `mutants` cargo feature, which no crate of the workspace turns on: only
//! the mutant tests (`mutants/`, a crate outside the workspace, run by `scripts/test-all`) and the
//! fuzz crate's `mutants` feature do. Without it neither this type, nor
//! [`Config::mutant`](crate::Config::mutant), nor any mutant branch of the protocol is compiled.
//! Even with it, a mutant is inactive unless a node's `Config::mutant` names it.

/// Declares [`Mutant`] and its [`Mutant::ALL`] from one list, so the catalogue cannot drift.
macro_rules! catalogue {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// A classic Raft bug that can be re-introduced into one node.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Mutant {
            $($(#[doc = $doc])+ $name,)+
        }

        impl Mutant {
            /// Every mutant in the catalogue, in declaration order.
            pub const ALL: &'static [Mutant] = &[$(Mutant::$name),+];

        }
    };
}

catalogue! {
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
    /// Propose a configuration change before an entry of the leader's own term is committed
    /// (the 2015 single-server membership bug; pitfall P2).
    ChangeBeforeOwnTermCommit,
    /// Allow a second configuration change while one is uncommitted (pitfall P16).
    TwoUncommittedChanges,
    /// Count commits and elections under a joint configuration on its new half only.
    JointQuorumNewOnly,
    /// A leader removed from the configuration stays leader once the change commits.
    RemovedLeaderStays,
    /// Serve ReadIndex reads at the commit index without a heartbeat round confirming the
    /// leadership (a deposed leader serves stale reads; pitfall P11).
    ReadWithoutRound,
    /// Serve reads before the leader has committed an entry of its own term (its commit index
    /// may lag what earlier leaders committed; pitfall P11).
    ReadBeforeNoop,
    /// Count any heartbeat answer of the term as confirming the newest round (no round id), so
    /// an answer to a round sent before a read confirms the read.
    ReadRoundByTermOnly,
    /// Keep the lease for the whole `election_timeout_min`, ignoring `clock_drift_bound`.
    LeaseIgnoresDrift,
    /// The target of a leadership transfer runs a pre-election instead of campaigning at once
    /// (the voters, still hearing from the leader, refuse it: the transfer never completes).
    TimeoutNowKeepsPreVote,
}
