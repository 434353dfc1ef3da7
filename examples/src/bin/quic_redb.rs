//! A durable cluster: three nodes talking QUIC with mutual TLS, each keeping its log in its own
//! redb file. Here the three run in one process on loopback; in production each is its own
//! process on its own machine with the same wiring (see the `kv` program).
//!
//! `cargo run -p raftkit-examples --bin quic_redb`

#![allow(clippy::print_stdout)] // an example talks to its user

use std::time::Duration;

use raftkit::{Config, NodeId, Raft, Role};
use raftkit_mem::{KvCommand, MemKv};
use raftkit_quic::{AddressBook, NodeCerts, QuicConfig, QuicNetwork};
use raftkit_redb::RedbLogStore;

type Node = Raft<QuicNetwork, RedbLogStore, MemKv>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let members = [NodeId(1), NodeId(2), NodeId(3)];

    // Once per cluster: a CA and a certificate per node (`kv certs` does the same).
    let certs_dir = dir.path().join("certs");
    raftkit_quic::generate_cluster(&certs_dir, &members)?;

    // Who is where. Port 0 lets the OS pick; the shared book learns each bound address.
    let book = AddressBook::new();
    let mut nodes: Vec<Node> = Vec::new();
    for id in members {
        // Each node's own directory (certs/node-<id>), which holds no CA key.
        let node_dir = certs_dir.join(raftkit_quic::certs::node_dir(id));
        let certs = NodeCerts::load_from_dir(node_dir, id)?; // checked: chain, identity, dates
        let config =
            QuicConfig::new(id, "127.0.0.1:0".parse()?, certs).with_addresses(book.clone());
        let network = QuicNetwork::bind(config)?;
        book.insert(id, network.local_addr());

        // The log: fsynced before the engine acknowledges anything.
        let log = RedbLogStore::open(dir.path().join(format!("node-{}.redb", id.0)))?;
        nodes.push(Raft::start(Config::new(id, members), network, log, MemKv::new()).await?);
    }

    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| n.metrics().borrow().role == Role::Leader) {
            break n.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("leader: {}", leader.id());
    leader.client_write(KvCommand::put("durable", "yes")).await?;
    let read = leader.client_write(KvCommand::get("durable")).await?;
    println!("durable = {read:?}");

    for node in &nodes {
        node.shutdown().await?; // closes QUIC connections with an application close code
    }
    Ok(())
}
