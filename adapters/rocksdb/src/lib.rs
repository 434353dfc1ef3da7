//! RocksDB log store for raftkit. Filled in by a later issue.
