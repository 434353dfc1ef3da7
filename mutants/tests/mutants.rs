//! Proves that the cluster suite catches classic Raft bugs: each mutant of the catalogue
//! (`raftkit::Mutant`, compiled only in this crate, outside the main workspace) is switched on in
//! every node, and the suite must report a violation within a fixed budget of seeds. Each test
//! prints how many seeds it took and which invariant caught the bug.

#![allow(clippy::print_stderr)]

use std::sync::Arc;

use raftkit::Mutant;
use raftkit_mem::harness::{MemNetHarness, MemStoreHarness};
use raftkit_testkit::cluster::ClusterSuite;

/// Seeds tried per mutant before the test gives up.
const BUDGET: u64 = 120;

fn hunt(mutant: Mutant) {
    for seed in 1..=BUDGET {
        let nodes = if seed % 2 == 0 { 5 } else { 3 };
        let suite = ClusterSuite::new(MemNetHarness, MemStoreHarness::default())
            .nodes(nodes)
            .with(|o| o.configure = Some(Arc::new(move |c| c.mutant = Some(mutant))));
        let report = suite.run(seed);
        if !report.passed() {
            eprintln!(
                "{mutant:?}: caught by seed {seed} ({nodes} nodes), the {}th seed tried: {}",
                seed,
                report.violations[0].lines().next().unwrap_or_default()
            );
            // Negative control: the same run without the mutant passes, so the violation is
            // the mutant's doing and not a flaw of the suite or of that seed.
            let clean = ClusterSuite::new(MemNetHarness, MemStoreHarness::default()).nodes(nodes);
            let control = clean.run(seed);
            assert!(
                control.passed(),
                "seed {seed} ({nodes} nodes) also fails without {mutant:?}: {:?}",
                control.violations
            );
            return;
        }
    }
    panic!("{mutant:?} survived {BUDGET} seeds: the cluster suite does not catch it");
}

macro_rules! mutant_tests {
    ($($name:ident => $m:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                hunt(Mutant::$m);
            }
        )*

        /// Every mutant of the catalogue has a test above.
        #[test]
        fn every_mutant_is_hunted() {
            let hunted = [$(Mutant::$m),*];
            for &m in Mutant::ALL {
                assert!(hunted.contains(&m), "{m:?} has no test");
            }
        }
    };
}

mutant_tests! {
    commit_previous_term_by_counting => CommitPreviousTermByCounting,
    grant_vote_before_persist => GrantVoteBeforePersist,
    ack_append_before_persist => AckAppendBeforePersist,
    forget_vote_on_same_term_step_down => ForgetVoteOnSameTermStepDown,
    count_stale_term_votes => CountStaleTermVotes,
    skip_log_consistency_check => SkipLogConsistencyCheck,
    truncate_matching_suffix => TruncateMatchingSuffix,
    install_stale_snapshot => InstallStaleSnapshot,
}
