//! Conformance testkit for raftkit adapters. Filled in by the testkit issue.
