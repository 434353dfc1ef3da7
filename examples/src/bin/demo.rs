//! The README's first command: a 3-node replicated key-value cluster in one process, doing
//! writes, losing its leader, electing a new one, and showing that every acknowledged write
//! survived.
//!
//! Run it with `cargo run --release -p raftkit-examples --bin demo`. Set `RUST_LOG=info` to see
//! the nodes' own logs.

#![allow(clippy::print_stdout)] // a demo talks to its user

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use raftkit::{Config, NodeId, Raft, Role, WriteError};
use raftkit_mem::{KvCommand, KvOutput, MemKv, MemLogStore, MemNetwork, MemRouter};

type Node = Raft<MemNetwork, MemLogStore, MemKv>;

struct Cluster {
    router: MemRouter,
    members: Vec<NodeId>,
    nodes: BTreeMap<NodeId, (Option<Node>, MemLogStore, MemKv)>,
}

impl Cluster {
    async fn start(members: &[NodeId]) -> Result<Cluster> {
        let router = MemRouter::new(2024);
        let mut nodes = BTreeMap::new();
        for id in members {
            let (store, kv) = (MemLogStore::new(), MemKv::new());
            let config = Config::new(*id, members.iter().copied());
            let raft = Raft::start(config, router.network(*id), store.clone(), kv.clone())
                .await
                .with_context(|| format!("starting {id}"))?;
            nodes.insert(*id, (Some(raft), store, kv));
        }
        Ok(Cluster { router, members: members.to_vec(), nodes })
    }

    fn live(&self) -> impl Iterator<Item = (&NodeId, &Node)> {
        self.nodes.iter().filter_map(|(id, (r, _, _))| r.as_ref().map(|r| (id, r)))
    }

    /// Waits for a leader, returning it and how long the election took.
    async fn leader(&self, timeout: Duration) -> Result<(NodeId, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            for (id, node) in self.live() {
                let m = node.metrics().borrow().clone();
                if m.role == Role::Leader && m.commit.0 > 0 && m.applied >= m.commit {
                    return Ok((*id, start.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("no leader elected within {timeout:?}")
    }

    /// Writes through the leader, following `NotLeader` redirects.
    async fn write(&self, cmd: KvCommand) -> Result<KvOutput> {
        let (mut target, _) = self.leader(Duration::from_secs(10)).await?;
        for _ in 0..20 {
            let Some((_, node)) = self.live().find(|(id, _)| **id == target) else { break };
            match node.client_write(cmd.clone()).await {
                Ok(out) => return Ok(out),
                Err(WriteError::NotLeader { leader: Some(l) }) => target = l,
                Err(_) => target = self.leader(Duration::from_secs(10)).await?.0,
            }
        }
        bail!("write {cmd:?} failed")
    }

    async fn kill(&mut self, id: NodeId) -> Result<()> {
        if let Some((raft, _, _)) = self.nodes.get_mut(&id) {
            if let Some(r) = raft.take() {
                r.shutdown().await?;
            }
        }
        Ok(())
    }

    async fn restart(&mut self, id: NodeId) -> Result<()> {
        let (raft, store, kv) = self.nodes.get_mut(&id).context("unknown node")?;
        *kv = MemKv::new();
        let config = Config::new(id, self.members.iter().copied());
        *raft =
            Some(Raft::start(config, self.router.network(id), store.clone(), kv.clone()).await?);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    println!("raftkit demo: a 3-node replicated key-value store (in-memory network and log)");
    let mut cluster = Cluster::start(&members).await?;

    let (leader, took) = cluster.leader(Duration::from_secs(10)).await?;
    println!("1. {leader} was elected leader in {} ms", took.as_millis());

    let writes = 1_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..writes {
        tasks.push(cluster.write(KvCommand::put(format!("key-{i:04}"), format!("value-{i}"))));
    }
    let results = futures::future::join_all(tasks).await;
    let acked = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "2. wrote {acked}/{writes} keys through {leader} in {} ms (concurrent clients, batched into shared log writes)",
        start.elapsed().as_millis()
    );

    for (id, (_, store, kv)) in &cluster.nodes {
        let s = kv.state();
        println!(
            "   {id}: {} keys, applied up to {}, {} log writes",
            s.data.len(),
            s.applied.map_or("-".to_string(), |a| a.to_string()),
            store.write_count()
        );
    }

    println!("3. killing the leader {leader}");
    cluster.kill(leader).await?;
    let (new_leader, took) = cluster.leader(Duration::from_secs(10)).await?;
    println!("   {new_leader} took over after {} ms", took.as_millis());

    cluster.write(KvCommand::put("after-failover", "still writable")).await?;
    let check = cluster.write(KvCommand::get("key-0000")).await?;
    println!("4. a read through the new leader: key-0000 = {check:?}");

    println!("5. restarting {leader}; it rejoins from its log and catches up");
    cluster.restart(leader).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<_> = cluster.nodes.values().map(|(_, _, kv)| kv.state()).collect();
        if states.windows(2).all(|w| w[0].digest == w[1].digest && w[0].applied == w[1].applied) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes did not converge");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lost = 0;
    for (id, (_, _, kv)) in &cluster.nodes {
        let s = kv.state();
        let missing = (0..writes).filter(|i| !s.data.contains_key(&format!("key-{i:04}"))).count();
        lost += missing;
        println!("   {id}: {} keys, state digest {:016x}", s.data.len(), s.digest);
    }
    if lost > 0 {
        bail!("{lost} acknowledged writes are missing");
    }
    println!(
        "Summary: leader failover succeeded, all {acked} acknowledged writes present on all 3 nodes, identical state everywhere."
    );
    for id in members {
        cluster.kill(id).await?;
    }
    Ok(())
}
