//! The adapter combinations the harness benchmarks: a network and a log store.

use std::fmt;

/// How the three nodes talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Net {
    /// `raftkit_mem::MemNetwork`: in-process channels, messages passed by value.
    Mem,
    /// `raftkit_quic::QuicNetwork` over loopback UDP with mutual TLS.
    Quic,
}

/// Where each node keeps its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Store {
    /// `raftkit_mem::MemLogStore`: memory only, no fsync.
    Mem,
    /// `raftkit_redb::RedbLogStore`: one redb file, an fsync per commit.
    Redb,
    /// `raftkit_rocksdb::RocksLogStore`: RocksDB with a synced write-ahead log.
    Rocksdb,
}

/// One network paired with one log store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Combo {
    /// The network.
    pub net: Net,
    /// The log store.
    pub store: Store,
}

impl Combo {
    /// Every combination, in report order.
    pub const ALL: [Combo; 6] = [
        Combo { net: Net::Mem, store: Store::Mem },
        Combo { net: Net::Mem, store: Store::Redb },
        Combo { net: Net::Mem, store: Store::Rocksdb },
        Combo { net: Net::Quic, store: Store::Mem },
        Combo { net: Net::Quic, store: Store::Redb },
        Combo { net: Net::Quic, store: Store::Rocksdb },
    ];

    /// The name used on the command line and in reports, such as `quic+redb`.
    pub fn name(self) -> &'static str {
        match (self.net, self.store) {
            (Net::Mem, Store::Mem) => "mem+mem",
            (Net::Mem, Store::Redb) => "mem+redb",
            (Net::Mem, Store::Rocksdb) => "mem+rocksdb",
            (Net::Quic, Store::Mem) => "quic+mem",
            (Net::Quic, Store::Redb) => "quic+redb",
            (Net::Quic, Store::Rocksdb) => "quic+rocksdb",
        }
    }

    /// Whether this build can run it (RocksDB needs the `rocksdb` feature).
    pub fn compiled(self) -> bool {
        self.store != Store::Rocksdb || cfg!(feature = "rocksdb")
    }

    /// Whether the log store fsyncs (so the durable-latency target applies).
    pub fn durable(self) -> bool {
        self.store != Store::Mem
    }
}

impl Default for Combo {
    /// `mem+mem`.
    fn default() -> Combo {
        Combo::ALL[0]
    }
}

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--only net+store`: the combination names (`quic+redb`; `quic/redb` is accepted too).
impl clap::ValueEnum for Combo {
    fn value_variants<'a>() -> &'a [Combo] {
        &Combo::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let alias = match (self.net, self.store) {
            (Net::Mem, Store::Mem) => "mem/mem",
            (Net::Mem, Store::Redb) => "mem/redb",
            (Net::Mem, Store::Rocksdb) => "mem/rocksdb",
            (Net::Quic, Store::Mem) => "quic/mem",
            (Net::Quic, Store::Redb) => "quic/redb",
            (Net::Quic, Store::Rocksdb) => "quic/rocksdb",
        };
        Some(clap::builder::PossibleValue::new(self.name()).alias(alias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        use clap::ValueEnum;
        for c in Combo::ALL {
            assert_eq!(Combo::from_str(c.name(), false), Ok(c));
        }
        assert_eq!(Combo::from_str("MEM/Redb", true).map(Combo::name), Ok("mem+redb"));
        assert!(Combo::from_str("mem+sqlite", true).is_err());
    }
}
