//! The raftkit benchmark harness and the pieces its criterion micro-benchmarks share.
//!
//! The `raftkit-bench` binary starts a 3-node cluster for each adapter combination (network ×
//! log store), drives it with concurrent clients, and writes a dated markdown report and two SVG
//! plots to `bench-results/`. It also compares raftkit with openraft in the same setup, both
//! measured in the same run (the openraft side with the `openraft` feature), measures the
//! protocol core alone, checks memory, measures a membership change under load, reads that do
//! not write the log against writes, and leadership transfers. Targets are reported as met or
//! not met with the measured figure; nothing is asserted, except that no write may fail with an
//! error not documented as retryable during the membership part, and no acknowledged write may
//! be lost across the transfer part's leadership transfers (the binary then exits with an
//! error, after writing the report).
//!
//! ```sh
//! cargo run --release -p raftkit-bench                # full run (all compiled-in combinations)
//! cargo run -p raftkit-bench -- --quick               # smoke check, under two minutes
//! cargo run --release -p raftkit-bench --features rocksdb -- --only quic+rocksdb
//! cargo run --release -p raftkit-bench --features openraft -- --parts compare --repeat 3
//! cargo bench -p raftkit-bench                        # criterion micro-benchmarks
//! ```
//!
//! # Layout
//!
//! - [`cli`]: command-line options and their validation, turned into a [`cli::Plan`].
//! - [`combo`]: the adapter combinations and which are compiled in.
//! - [`cluster`]: starting a 3-node cluster of any combination and reading its store counters.
//! - [`load`]: the closed-loop client load generator for one measurement point.
//! - [`noop`]: an empty state machine for the openraft comparison.
//! - `openraft_baseline` (feature `openraft`): the same setup on openraft, measured in the
//!   same run.
//! - [`membership`]: throughput, latency and failed writes during a membership change (a
//!   fourth node added as a learner, promoted, an original follower removed), against none.
//! - [`reads`]: throughput and latency of `client_read` with the Linearizable, Lease and
//!   Follower policies against writes, same clients and windows.
//! - [`transfer`]: leadership transfers on an idle cluster, timed, and no acknowledged write
//!   lost.
//! - [`core_sim`]: three `RaftCore`s wired together without IO (the core-alone measure).
//! - [`machine`]: what the machine is, its fsync latency and its loopback QUIC round trip.
//! - [`process`]: CPU time and resident memory of this process.
//! - [`run`]: the whole harness, step by step, with a progress bar.
//! - [`report`]: the markdown report and the targets; [`plot`]: the SVG plots.

pub mod cli;
pub mod cluster;
pub mod combo;
pub mod core_sim;
pub mod load;
pub mod machine;
pub mod membership;
pub mod noop;
#[cfg(feature = "openraft")]
pub mod openraft_baseline;
pub mod plot;
pub mod process;
pub mod reads;
pub mod report;
pub mod run;
pub mod transfer;
