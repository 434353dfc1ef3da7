//! SIGKILL crash test: a child process writes to a RocksDB store continuously and is killed at
//! random moments (50 times by default, `RAFTKIT_KILLS=<n>` for a longer sweep); every
//! acknowledged write must be there after reopening, as a clean prefix, with truncations done
//! before the kill still in effect.

raftkit_testkit::sigkill_suite!(|dir: &std::path::Path| raftkit_rocksdb::RocksLogStore::open(
    dir.join("db")
));
