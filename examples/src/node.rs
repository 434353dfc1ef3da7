//! Picking adapters at run time: [`NetworkKind`] × [`LogKind`] → a running [`KvNode`].
//!
//! `Raft<N, L, S>` is generic, so a program that chooses its adapters from the command line
//! needs one place that names every combination. [`start_node`] is that place; everything
//! else talks to the node through its [`RaftHandle`], which names only the state machine.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use raftkit::{Config, LogIndex, Network, NodeId, Raft, RaftHandle};
use raftkit_mem::{MemKv, MemLogStore, MemNetwork};
use raftkit_quic::QuicNetwork;
use raftkit_redb::RedbLogStore;

/// Which network a node uses (`quic` or `mem` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkKind {
    /// QUIC with mutual TLS between processes (or within one).
    Quic,
    /// The in-memory network: every node of the cluster in one process.
    Mem,
}

/// Which log store a node uses (`redb`, `rocksdb` or `mem` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogKind {
    /// redb: one file per node, pure Rust (the default).
    Redb,
    /// RocksDB (needs the `rocksdb` feature of this crate).
    Rocksdb,
    /// In memory: nothing survives the process.
    Mem,
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkKind::Quic => "quic",
            NetworkKind::Mem => "mem",
        })
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogKind::Redb => "redb",
            LogKind::Rocksdb => "rocksdb",
            LogKind::Mem => "mem",
        })
    }
}

/// A network endpoint already created for a node.
pub enum NodeNetwork {
    /// A bound QUIC endpoint.
    Quic(QuicNetwork),
    /// An endpoint on a [`raftkit_mem::MemRouter`].
    Mem(MemNetwork),
}

/// A log store opened for a node.
#[derive(Clone)]
pub enum NodeLog {
    /// redb.
    Redb(RedbLogStore),
    /// RocksDB.
    #[cfg(feature = "rocksdb")]
    Rocksdb(raftkit_rocksdb::RocksLogStore),
    /// In memory. Keep a clone to restart the node on the same log.
    Mem(MemLogStore),
}

/// The file (or directory) under `data_dir` that holds node `id`'s log for `kind`.
pub fn log_path(kind: LogKind, data_dir: &Path, id: NodeId) -> PathBuf {
    match kind {
        LogKind::Redb => data_dir.join(format!("node-{}.redb", id.0)),
        LogKind::Rocksdb => data_dir.join(format!("node-{}.rocksdb", id.0)),
        LogKind::Mem => data_dir.to_path_buf(),
    }
}

impl NodeLog {
    /// Opens (or creates) node `id`'s log of `kind` under `data_dir`.
    ///
    /// A store that is still held by a node stopping in this process is retried for up to
    /// five seconds (redb and RocksDB lock their files).
    pub async fn open(kind: LogKind, data_dir: &Path, id: NodeId) -> Result<NodeLog> {
        if kind != LogKind::Mem {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        }
        let path = log_path(kind, data_dir, id);
        let mut attempts = 0;
        loop {
            let opened = match kind {
                LogKind::Mem => return Ok(NodeLog::Mem(MemLogStore::new())),
                LogKind::Redb => RedbLogStore::open(&path).map(NodeLog::Redb),
                #[cfg(feature = "rocksdb")]
                LogKind::Rocksdb => {
                    raftkit_rocksdb::RocksLogStore::open(&path).map(NodeLog::Rocksdb)
                }
                #[cfg(not(feature = "rocksdb"))]
                LogKind::Rocksdb => anyhow::bail!(
                    "this program was built without RocksDB; rebuild with `--features rocksdb`"
                ),
            };
            match opened {
                Ok(log) => return Ok(log),
                Err(e) if attempts < 50 && e.to_string().contains("lock") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("opening the log {}", path.display()));
                }
            }
        }
    }

    /// Durable writes (fsyncs) so far, and entries appended, where the store counts them.
    pub fn sync_stats(&self) -> Option<(u64, u64)> {
        match self {
            NodeLog::Redb(s) => Some((s.stats().commits, s.stats().entries)),
            #[cfg(feature = "rocksdb")]
            NodeLog::Rocksdb(s) => Some((s.stats().commits, s.stats().entries)),
            NodeLog::Mem(_) => None,
        }
    }
}

/// A running key-value node, whatever its adapters: the engine's handle, typed on the state
/// machine alone (cheap to clone; it dereferences to [`RaftHandle`]), and a read-only view of
/// the node's key-value state for its digest.
#[derive(Clone, Debug)]
pub struct KvNode {
    handle: RaftHandle<MemKv>,
    kv: MemKv,
}

impl std::ops::Deref for KvNode {
    type Target = RaftHandle<MemKv>;

    fn deref(&self) -> &RaftHandle<MemKv> {
        &self.handle
    }
}

impl KvNode {
    /// The last index applied to its key-value state and the state's digest there (see
    /// [`raftkit_mem::KvState::digest`]).
    pub fn digest(&self) -> (LogIndex, u64) {
        let state = self.kv.state();
        (state.applied.map_or(LogIndex(0), |a| a.index), state.digest)
    }
}

/// Starts a node on `network` and `log` with a fresh in-memory key-value state machine, which
/// the engine rebuilds from the log's snapshot and entries.
pub async fn start_node(
    config: Config,
    network: NodeNetwork,
    log: NodeLog,
    kv: MemKv,
) -> Result<KvNode> {
    match network {
        NodeNetwork::Quic(net) => with_log(config, net, log, kv).await,
        NodeNetwork::Mem(net) => with_log(config, net, log, kv).await,
    }
}

async fn with_log<N: Network>(config: Config, net: N, log: NodeLog, kv: MemKv) -> Result<KvNode> {
    let id = config.id;
    let sm = kv.clone();
    let handle = match log {
        NodeLog::Redb(store) => Raft::start(config, net, store, sm).await?.handle(),
        #[cfg(feature = "rocksdb")]
        NodeLog::Rocksdb(store) => Raft::start(config, net, store, sm).await?.handle(),
        NodeLog::Mem(store) => Raft::start(config, net, store, sm).await?.handle(),
    };
    tracing::info!(node = %id, "started");
    Ok(KvNode { handle, kv })
}

/// The engine configuration the examples use: the defaults, plus a snapshot every 10,000
/// applied entries so the log does not grow forever, and no proposal forwarding (see
/// [`FORWARD_PROPOSALS`]).
pub fn example_config(id: NodeId, members: &[NodeId]) -> Config {
    let mut config = Config::new(id, members.iter().copied());
    config.snapshot_every = 10_000;
    config.forward_proposals = FORWARD_PROPOSALS;
    config
}

/// `Config::forward_proposals` in the examples, unless a `kv node --config` file sets it: off.
///
/// The examples' clients find the leader themselves (a follower's `not_leader` reply names
/// it), and retry a write only when it certainly was not appended. A follower that forwards
/// instead keeps forwarding to a leader that has just died until it notices, and each of
/// those writes then ends as
/// [`WriteError::ForwardOutcomeUnknown`](raftkit::WriteError::ForwardOutcomeUnknown): not
/// safe to retry, where a `not_leader` reply would have been.
pub const FORWARD_PROPOSALS: bool = false;
