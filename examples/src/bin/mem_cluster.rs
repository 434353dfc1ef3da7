//! The smallest raftkit cluster: three nodes in one process on the in-memory network and the
//! in-memory log store. Good for tests and for learning the API; nothing survives the process.
//!
//! `cargo run -p raftkit-examples --bin mem_cluster`

#![allow(clippy::print_stdout)] // an example talks to its user

use std::time::Duration;

use raftkit::{Config, NodeId, Raft, Role};
use raftkit_mem::{KvCommand, MemKv, MemLogStore, MemNetwork, MemRouter};

type Node = Raft<MemNetwork, MemLogStore, MemKv>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    // One router is the whole network: every node gets an endpoint on it.
    let router = MemRouter::new(42);
    let mut nodes: Vec<Node> = Vec::new();
    for id in members {
        let config = Config::new(id, members); // validated when the node starts
        nodes
            .push(Raft::start(config, router.network(id), MemLogStore::new(), MemKv::new()).await?);
    }

    // Wait until some node is leader; every node's metrics say who leads.
    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| n.metrics().borrow().role == Role::Leader) {
            break n.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("leader: {}", leader.id());

    // Writes (and reads, which go through the log) on the leader; followers answer NotLeader.
    leader.client_write(KvCommand::put("language", "rust")).await?;
    let read = leader.client_write(KvCommand::get("language")).await?;
    println!("language = {read:?}");

    for node in &nodes {
        node.shutdown().await?;
    }
    Ok(())
}
