//! The conformance testkit for raftkit adapters: how every network, log store and state machine
//! — ours and third-party — proves it is correct.
//!
//! - **Per-trait suites**: [`log_store_suite!`], [`state_machine_suite!`] and
//!   [`network_suite!`] each expand, in an adapter's `tests/conformance.rs`, to one named
//!   `#[test]` per case of the trait's contract, given a harness ([`LogStoreHarness`],
//!   [`StateMachineHarness`], [`NetworkHarness`]) that builds, reopens and crashes instances.
//!   The log-store suite includes a model-based random test against a `BTreeMap` reference,
//!   with shrinking.
//! - **The cluster suite** ([`cluster_suite!`], [`cluster::ClusterSuite`]): 1, 3 and 5 nodes on
//!   any network and store, a nemesis (partitions — majority/minority, one-way, bridge —
//!   crashes that lose what was not durable, pauses, message loss, duplication, delay and
//!   reordering), a client workload, invariant checks throughout ([`cluster::checker`]), a
//!   linearizability check of the client history ([`linearizability`]) and a liveness phase.
//!   Every run derives from a printed seed; `RAFTKIT_SEED=<n>` replays it (exactly, on
//!   in-process networks).
//!
//! - **The SIGKILL suite** ([`sigkill_suite!`]) for durable stores: a child process writes
//!   continuously and is killed at random moments; every acknowledged write must survive.
//!
//! See `testkit/README.md` for a complete worked example of a third-party log store.

pub mod cluster;
pub mod crash;
pub mod fs;
mod harness;
pub mod kv;
pub mod linearizability;
pub mod log_store;
pub mod network;
pub mod rng;
pub mod state_machine;
mod store_crash;

pub use harness::{CrashModel, DurableView, LogStoreHarness, NetworkHarness, StateMachineHarness};
pub use kv::Fnv;

/// Prints one line of a suite's report (the crash model and its warning, how many crash points
/// or seeds ran, what was not run and why). The kit runs inside tests, so its report goes to the
/// test's own output, which the test harness shows with `--nocapture` (or `--show-output`), not
/// to `tracing`, which a test has no subscriber for. The kit's one printing place.
#[allow(clippy::print_stderr)]
pub(crate) fn report_line(line: &str) {
    eprintln!("{line}");
}

/// The seed given in `RAFTKIT_SEED`, if any. Every randomized test of the kit uses it to replay
/// a failure.
pub fn seed_from_env() -> Option<u64> {
    std::env::var("RAFTKIT_SEED").ok().and_then(|s| s.trim().parse().ok())
}
