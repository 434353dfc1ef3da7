//! Benchmark harness for raftkit. Filled in by the benchmarks issue.
