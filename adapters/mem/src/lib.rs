//! In-memory adapters for raftkit.
//!
//! - [`MemRouter`] / [`MemNetwork`]: an in-process network. Per-link partitions (both
//!   directions or one), message loss, duplication, delay and reordering, all drawn from a
//!   seed so a run can be replayed.
//! - [`MemLogStore`]: a correct log store in memory; the reference the durable stores are
//!   checked against. Clones share data, so a node can be "restarted" on its store.
//! - [`MemKv`]: a key-value state machine (put, get, delete, compare-and-swap), with reads
//!   outside the log ([`KvQuery`]); its docs say which of its reads are linearizable.
//! - `harness` (with the `harness` feature, for tests): their testkit harnesses, for pairing
//!   any adapter with in-memory halves in the conformance suites.
//!
//! ```
//! use raftkit::{Config, NodeId, Raft};
//! use raftkit_mem::{MemKv, MemLogStore, MemRouter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let router = MemRouter::new(1);
//! let node = Raft::start(
//!     Config::new(NodeId(1), [NodeId(1)]),
//!     router.network(NodeId(1)),
//!     MemLogStore::new(),
//!     MemKv::new(),
//! )
//! .await
//! .unwrap();
//! node.wait_for(std::time::Duration::from_secs(5), |m| m.leader == Some(NodeId(1))).await.unwrap();
//! node.shutdown().await.unwrap();
//! # }
//! ```

#[cfg(feature = "harness")]
pub mod harness;
mod kv;
mod log_store;
mod network;

pub use kv::{KvCommand, KvOutput, KvQuery, KvState, MemKv};
pub use log_store::{DurableSummary, MemLogStore};
pub use network::{DEFAULT_MAX_FRAME, Faults, MemNetwork, MemRouter};
