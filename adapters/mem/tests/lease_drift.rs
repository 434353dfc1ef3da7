//! Lease reads under clock drift (the testkit's directed lease scenario on the in-memory
//! adapters): within the configured `clock_drift_bound` the history stays linearizable; far
//! beyond it, the old leader serves a stale lease read and the linearizability check catches
//! it — so the check of lease reads is not vacuous.

use raftkit_mem::harness::{MemNetHarness, MemStoreHarness};
use raftkit_testkit::cluster::ClusterSuite;
use raftkit_testkit::cluster::lease::Drift;

fn suite() -> ClusterSuite<MemNetHarness, MemStoreHarness> {
    ClusterSuite::new(MemNetHarness, MemStoreHarness::default()).named("lease drift")
}

#[test]
fn within_the_drift_bound_lease_reads_stay_linearizable() {
    for seed in 1..=4 {
        let report = suite().run_lease_drift(Drift::Within, seed);
        assert!(report.passed(), "{}", report.failure_report());
    }
}

#[test]
fn beyond_the_drift_bound_the_checker_catches_stale_lease_reads() {
    for seed in 1..=4 {
        let report = suite().run_lease_drift(Drift::Beyond, seed);
        assert!(
            report.violations.iter().any(|v| v.contains("linearizability")),
            "seed {seed}: a leader whose clock runs at 0.3x served no stale lease read:\n{}",
            report.failure_report()
        );
    }
}

/// A leader elected while its commit index lags an acknowledged write serves no read before
/// its no-op commits (here it never does).
#[test]
fn a_new_leader_serves_no_read_before_its_noop_commits() {
    for seed in 1..=4 {
        let report = suite().run_new_leader_read(seed);
        assert!(report.passed(), "{}", report.failure_report());
    }
}

/// Answers to earlier heartbeat rounds that arrive after the leader was deposed do not
/// confirm a read asked of it since.
#[test]
fn late_answers_to_earlier_rounds_confirm_no_later_read() {
    for seed in 1..=4 {
        let report = suite().run_late_round_answers(seed);
        assert!(report.passed(), "{}", report.failure_report());
    }
}
