//! The README's first command: a 3-node replicated key-value cluster that takes a mixed
//! workload, loses its leader in the middle of it, elects a new one, replaces the dead leader
//! by a fresh node while the clients keep writing (the new node joins as a learner, catches up
//! and is promoted; the dead one is removed), and proves that every acknowledged write is on
//! every node of the final cluster.
//!
//! With no arguments: certificates in a temporary directory, three nodes on loopback QUIC with
//! mutual TLS, each keeping its log in its own redb file. `--network mem` and
//! `--log mem|rocksdb` pick other adapters (`rocksdb` needs `--features rocksdb`).
//!
//! Run it with `cargo run --release -p raftkit-examples --bin demo`. `RUST_LOG=info` shows the
//! nodes' own logs.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a demo talks to its user

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use raftkit::core::Rng;
use raftkit::{
    ChangeMembers, ChangeMembershipError, ChangeOptions, Membership, NodeId, Role, Term, WriteError,
};
use raftkit_examples::node::{
    KvNode, LogKind, NetworkKind, NodeLog, NodeNetwork, example_config, start_node,
};
use raftkit_mem::{KvCommand, KvOutput, MemKv, MemRouter};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};

#[derive(Parser)]
#[command(
    name = "demo",
    about = "raftkit demo: a 3-node replicated key-value cluster with a leader failover and a node replacement"
)]
struct Args {
    /// The network: `quic` (loopback, mutual TLS) or `mem` (in-process).
    #[arg(long, default_value = "quic")]
    network: NetworkKind,
    /// The log store: `redb`, `rocksdb` (needs `--features rocksdb`) or `mem`.
    #[arg(long, default_value = "redb")]
    log: LogKind,
    /// Concurrent clients in the workload.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    clients: u16,
    /// Seconds of workload before and after the leader is killed (each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    secs: u64,
}

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
/// The fresh node that replaces the killed leader.
const NEW: NodeId = NodeId(4);
const KEYS_PER_CLIENT: usize = 8;

/// The cluster: each node's handle (while it runs), its log and its state machine.
struct Cluster {
    log: LogKind,
    dir: tempfile::TempDir,
    router: MemRouter,
    book: AddressBook,
    ca: Option<CertAuthority>,
    nodes: BTreeMap<NodeId, Slot>,
}

struct Slot {
    node: Option<KvNode>,
    log: NodeLog,
    kv: MemKv,
}

impl Cluster {
    async fn start(network: NetworkKind, log: LogKind) -> Result<Cluster> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let ca = match network {
            NetworkKind::Quic => {
                let files = raftkit_quic::generate_cluster(dir.path().join("certs"), &IDS)?;
                println!(
                    "   certificates: a CA and {} node certificates in {}",
                    files.nodes.len(),
                    dir.path().join("certs").display()
                );
                // The demo runs every node in this process, so it issues their certificates
                // from the CA as it (re)starts them.
                Some(CertAuthority::load_from_dir(&files.ca_dir)?)
            }
            NetworkKind::Mem => None,
        };
        let mut cluster = Cluster {
            log,
            dir,
            router: MemRouter::new(7),
            book: AddressBook::new(),
            ca,
            nodes: BTreeMap::new(),
        };
        for id in IDS {
            let log = NodeLog::open(log, &cluster.data_dir(), id).await?;
            cluster.nodes.insert(id, Slot { node: None, log, kv: MemKv::new() });
        }
        for id in IDS {
            cluster.boot(id).await?;
        }
        Ok(cluster)
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn network_for(&self, id: NodeId) -> Result<NodeNetwork> {
        Ok(match &self.ca {
            Some(ca) => {
                // Port 0: the OS picks a free port; the shared address book learns it.
                let listen = self.book.get(id).unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
                let config = QuicConfig::new(id, listen, ca.node_certs(id)?)
                    .with_addresses(self.book.clone());
                let net = QuicNetwork::bind(config)?;
                self.book.insert(id, net.local_addr());
                NodeNetwork::Quic(net)
            }
            None => NodeNetwork::Mem(self.router.network(id)),
        })
    }

    /// Starts node `id` on its log (a fresh state machine, rebuilt from the log).
    async fn boot(&mut self, id: NodeId) -> Result<()> {
        let net = self.network_for(id)?;
        let slot = self.nodes.get_mut(&id).context("unknown node")?;
        slot.kv = MemKv::new();
        let node = start_node(example_config(id, &IDS), net, slot.log.clone(), slot.kv.clone())
            .await
            .with_context(|| format!("starting {id}"))?;
        slot.node = Some(node);
        Ok(())
    }

    /// Starts a fresh node `id` (an empty log) that joins the cluster: it has no configuration
    /// and waits until the leader adds it. Over QUIC it gets an address book of its own, with
    /// the cluster's nodes in it (what `kv node --join --peers …` gives it); the others learn
    /// its address from the configuration that adds it. Returns its node information: its
    /// QUIC address, or nothing on the in-memory network.
    async fn join(&mut self, id: NodeId) -> Result<String> {
        let (net, info) = match &self.ca {
            Some(ca) => {
                let book = AddressBook::new();
                for (peer, addr) in self.book.entries() {
                    book.insert(peer, addr);
                }
                let config = QuicConfig::new(id, ([127, 0, 0, 1], 0).into(), ca.node_certs(id)?)
                    .with_addresses(book);
                let net = QuicNetwork::bind(config)?;
                let addr = net.local_addr().to_string();
                (NodeNetwork::Quic(net), addr)
            }
            None => (NodeNetwork::Mem(self.router.network(id)), String::new()),
        };
        let log = NodeLog::open(self.log, &self.data_dir(), id).await?;
        let kv = MemKv::new();
        let node = start_node(example_config(id, &[]), net, log.clone(), kv.clone())
            .await
            .with_context(|| format!("starting {id}"))?;
        self.nodes.insert(id, Slot { node: Some(node), log, kv });
        Ok(info)
    }

    /// Asks the leader for a membership change (`change` runs it on the node given), following
    /// leader changes and retrying what the engine says may be retried: another change still
    /// in progress, a leader that has not committed an entry of its term yet.
    async fn change<F, Fut>(&self, what: &str, change: F) -> Result<Membership>
    where
        F: Fn(KvNode) -> Fut,
        Fut: Future<Output = Result<Membership, ChangeMembershipError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.leader(Duration::from_secs(10)).await?;
            let node = self.nodes.get(&leader).and_then(|s| s.node.clone()).context("leader")?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, change(node)).await {
                Ok(Ok(m)) => return Ok(m),
                Ok(Err(e)) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => bail!("{what}: {e}"),
                Err(_) => bail!("{what}: not done within 30 s"),
            }
        }
    }

    fn live(&self) -> Vec<KvNode> {
        self.nodes.values().filter_map(|s| s.node.clone()).collect()
    }

    /// Waits for a leader that has committed an entry of its term.
    async fn leader(&self, timeout: Duration) -> Result<NodeId> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            for node in self.live() {
                let m = node.metrics().borrow().clone();
                if m.role == Role::Leader && m.commit.0 > 0 && m.applied >= m.commit {
                    return Ok(node.id());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("no leader elected within {timeout:?}")
    }

    /// Watches the surviving nodes elect a leader of a term after `old_term`, noting when each
    /// step happened (polled every millisecond).
    async fn takeover(&self, old_term: Term, timeout: Duration) -> Result<Takeover> {
        let start = Instant::now();
        let (mut pre_vote, mut candidate, mut elected) = (None, None, None);
        while start.elapsed() < timeout {
            let now = Instant::now();
            for node in self.live() {
                let m = node.metrics().borrow().clone();
                if m.role == Role::PreCandidate || m.term > old_term {
                    pre_vote.get_or_insert(now);
                }
                if m.term > old_term {
                    candidate.get_or_insert((now, m.term));
                }
                if m.role == Role::Leader && m.term > old_term {
                    elected.get_or_insert(now);
                    if m.commit.0 > 0 && m.applied >= m.commit {
                        let (candidate, term) = candidate.unwrap_or((now, m.term));
                        return Ok(Takeover {
                            leader: node.id(),
                            term,
                            pre_vote: pre_vote.unwrap_or(candidate),
                            candidate,
                            elected: elected.unwrap_or(now),
                            ready: now,
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bail!("no new leader elected within {timeout:?}")
    }

    /// Kills `id` as if its process died; its durable log stays.
    async fn kill(&mut self, id: NodeId) -> Result<()> {
        let slot = self.nodes.get_mut(&id).context("unknown node")?;
        if let Some(node) = slot.node.take() {
            node.kill().await;
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for slot in self.nodes.values_mut() {
            if let Some(node) = slot.node.take() {
                let _ = node.shutdown().await;
            }
        }
    }
}

/// When each step of a leader takeover was first seen.
struct Takeover {
    leader: NodeId,
    /// The term of the first real election after the kill.
    term: Term,
    /// A follower's election timeout fired and it asked for pre-votes.
    pre_vote: Instant,
    /// A pre-candidate won its pre-vote and started a real election.
    candidate: Instant,
    /// A candidate won.
    elected: Instant,
    /// The new leader committed an entry of its term (and can serve).
    ready: Instant,
}

/// Routes commands to the leader, following redirects, as a client library would: a node that
/// fails a call is left for another one, and a client with nowhere to go backs off.
#[derive(Clone)]
struct Router {
    nodes: Arc<Mutex<Vec<KvNode>>>,
    /// Operations acknowledged so far, by every client.
    acked: Arc<AtomicU64>,
}

/// How a command ended.
enum Outcome {
    /// Acknowledged with this output.
    Done(KvOutput),
    /// It reached a node, but its fate is unknown (it may or may not be applied), for the
    /// reason given.
    Unknown(Unknown),
}

/// Why an outcome is unknown.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unknown {
    /// The node was killed with the command in flight on it.
    Killed,
    /// The node installed a snapshot covering the command's entry before applying it.
    Snapshot,
}

/// First and longest pause of a client that found no node to take its command.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));

impl Router {
    fn set(&self, nodes: Vec<KvNode>) {
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Takes `id` out of the routing table, so that no new call goes to it.
    fn remove(&self, id: NodeId) {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).retain(|n| n.id() != id);
    }

    /// The node to try: `want` if it is known and not `avoid`, else one that believes it leads,
    /// else any other node (which redirects).
    fn pick(&self, want: Option<NodeId>, avoid: Option<NodeId>) -> Option<KvNode> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let ok = |n: &&KvNode| Some(n.id()) != avoid;
        let by_id = want.and_then(|w| nodes.iter().filter(ok).find(|n| n.id() == w).cloned());
        by_id
            .or_else(|| {
                nodes.iter().filter(ok).find(|n| n.metrics().borrow().role == Role::Leader).cloned()
            })
            .or_else(|| nodes.iter().find(ok).cloned())
    }

    /// Whether `id` is still in the routing table (false once the demo killed it).
    fn routes_to(&self, id: NodeId) -> bool {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n.id() == id)
    }

    /// Runs `cmd` on the leader. `Err`: no node accepted it before the deadline (certainly not
    /// applied).
    async fn execute(&self, cmd: KvCommand, rng: &mut Rng) -> Result<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut want, mut avoid) = (None, None);
        let mut pause = BACKOFF.0;
        while Instant::now() < deadline {
            let Some(node) = self.pick(want, avoid) else {
                // Nowhere to go: wait (with jitter, so clients do not retry in lockstep).
                tokio::time::sleep(rng.duration(pause / 2, pause)).await;
                pause = (pause * 2).min(BACKOFF.1);
                avoid = None;
                continue;
            };
            let id = node.id();
            match node.client_write(cmd.clone()).await {
                Ok(out) => {
                    self.acked.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Done(out));
                }
                Err(WriteError::NotLeader { leader }) => {
                    // Follow the redirect; without one (an election is running), back off.
                    if leader.is_none() || leader == Some(id) {
                        tokio::time::sleep(rng.duration(pause / 2, pause)).await;
                        pause = (pause * 2).min(BACKOFF.1);
                    }
                    want = leader;
                    avoid = None;
                }
                // Replaced by a new leader's entries: not applied, safe to retry.
                Err(WriteError::Overwritten { .. }) => (want, avoid) = (None, Some(id)),
                Err(WriteError::Shutdown | WriteError::Fatal(_)) if !self.routes_to(id) => {
                    // The node was killed with the command in flight on it.
                    return Ok(Outcome::Unknown(Unknown::Killed));
                }
                Err(WriteError::OutcomeUnknown { .. }) => {
                    return Ok(Outcome::Unknown(Unknown::Snapshot));
                }
                Err(e) => bail!("{id} refused a command: {e}"),
            }
        }
        bail!("no leader accepted a command within 10 s")
    }
}

/// What the workload saw.
#[derive(Default)]
struct Tally {
    /// Operations that reached a node, by kind.
    ops: BTreeMap<&'static str, u64>,
    /// Operations whose outcome is unknown, by cause (also counted in `ops`).
    unknown: BTreeMap<Unknown, u64>,
    latencies_us: Vec<u64>,
    stale_reads: Vec<String>,
    /// The value each client's key must have: `None` = absent. Keys whose last write had an
    /// unknown outcome are left out.
    expected: BTreeMap<String, Option<String>>,
}

/// One client: its own keys, a deterministic mix of put / get / cas / delete, checking every
/// read against what it knows it wrote.
async fn client(
    c: u16,
    router: Router,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Result<()> {
    let mut model: BTreeMap<String, Option<Option<String>>> = BTreeMap::new();
    let mut rng = Rng::new(u64::from(c));
    let mut n = 0u64;
    let mut local = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let key = format!("client{c:03}-key{}", rng.below(KEYS_PER_CLIENT as u64));
        let known = model.get(&key).cloned().unwrap_or(Some(None));
        n += 1;
        let value = format!("c{c}-v{n}");
        let (kind, cmd, after) = match rng.below(10) {
            0..=4 => ("put", KvCommand::put(&key, &value), Some(Some(value.clone()))),
            5..=6 => ("get", KvCommand::get(&key), known.clone()),
            7..=8 => {
                // Swap only when the current value is known (else the expected value is a guess).
                let expected = known.clone().unwrap_or(None);
                (
                    "cas",
                    KvCommand::cas(&key, expected, Some(value.clone())),
                    Some(Some(value.clone())),
                )
            }
            _ => ("delete", KvCommand::delete(&key), Some(None)),
        };
        let start = Instant::now();
        let result = router.execute(cmd, &mut rng).await?;
        *local.ops.entry(kind).or_default() += 1;
        match result {
            Outcome::Unknown(why) => {
                *local.unknown.entry(why).or_default() += 1;
                if kind != "get" {
                    model.insert(key, None);
                }
            }
            Outcome::Done(out) => {
                local.latencies_us.push(start.elapsed().as_micros() as u64);
                match (&out, &known) {
                    (KvOutput::Value(v), Some(k)) if v != k => local.stale_reads.push(format!(
                        "{key}: read {}, but {} was acknowledged",
                        show(v),
                        show(k)
                    )),
                    (KvOutput::Cas { swapped: false, current }, Some(k)) => local.stale_reads.push(
                        format!("{key}: cas expected {} but found {}", show(k), show(current)),
                    ),
                    _ => {}
                }
                match out {
                    KvOutput::Cas { current, .. } => {
                        model.insert(key, Some(current));
                    }
                    _ if kind != "get" => {
                        model.insert(key, after);
                    }
                    _ => {}
                }
            }
        }
    }
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    for (k, v) in local.ops {
        *t.ops.entry(k).or_default() += v;
    }
    for (k, v) in local.unknown {
        *t.unknown.entry(k).or_default() += v;
    }
    t.latencies_us.extend(local.latencies_us);
    t.stale_reads.extend(local.stale_reads);
    for (key, v) in model {
        if let Some(v) = v {
            t.expected.insert(key, v);
        }
    }
    Ok(())
}

/// A value for people: the value, or `(none)`.
fn show(v: &Option<String>) -> String {
    v.as_ref().map_or_else(|| "(none)".to_string(), |v| format!("{v:?}"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn demo(args: Args) -> Result<()> {
    println!(
        "raftkit demo: a 3-node replicated key-value store ({} network, {} log)",
        args.network, args.log
    );
    let mut cluster = Cluster::start(args.network, args.log).await?;
    if args.network == NetworkKind::Quic {
        let addrs: Vec<String> =
            cluster.book.entries().iter().map(|(id, a)| format!("{id} {a}")).collect();
        println!("   nodes on loopback QUIC (mutual TLS): {}", addrs.join(", "));
    }
    if args.log != LogKind::Mem {
        println!("   logs in {}", cluster.data_dir().display());
    }
    let start = Instant::now();
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    println!("1. {leader} was elected leader in {} ms", start.elapsed().as_millis());

    let router =
        Router { nodes: Arc::new(Mutex::new(cluster.live())), acked: Arc::new(AtomicU64::new(0)) };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let phase = Duration::from_secs(args.secs);
    println!(
        "2. {} clients run a mixed workload (put 50%, get 20%, cas 20%, delete 10%) for {} s, \
         longer if the node replacement takes more than {} s",
        args.clients,
        2 * args.secs,
        args.secs
    );
    let workload_start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(client(c, router.clone(), stop.clone(), tally.clone())))
        .collect();

    tokio::time::sleep(phase).await;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let old_term =
        cluster.live().iter().map(|n| n.metrics().borrow().term).max().unwrap_or_default();
    println!("3. killing the leader {leader} in the middle of the workload");
    // Out of the routing table first, so only calls already on their way reach the dead node.
    router.remove(leader);
    let killed_at = Instant::now();
    cluster.kill(leader).await?;
    let takeover = cluster.takeover(old_term, Duration::from_secs(10)).await?;
    let new_leader = takeover.leader;
    let config = example_config(new_leader, &IDS);
    println!(
        "   {new_leader} took over {} ms after the kill: the followers heard nothing for their \
         election timeout (a random {}–{} ms, `Config::election_timeout_min`/`_max`); the first \
         pre-vote was at {} ms, term {} started at {} ms, its candidate won at {} ms and \
         committed its first entry at {} ms",
        takeover.ready.duration_since(killed_at).as_millis(),
        config.election_timeout_min.as_millis(),
        config.election_timeout_max.as_millis(),
        takeover.pre_vote.duration_since(killed_at).as_millis(),
        takeover.term.0,
        takeover.candidate.duration_since(killed_at).as_millis(),
        takeover.elected.duration_since(killed_at).as_millis(),
        takeover.ready.duration_since(killed_at).as_millis(),
    );
    println!(
        "   (shorter timeouts mean faster takeover but more elections on a slow network: keep \
         them several `Config::heartbeat_interval`s ({} ms) long)",
        config.heartbeat_interval.as_millis()
    );

    println!("4. replacing {leader} by a fresh node {NEW} while the clients keep writing");
    let replace_start = Instant::now();
    let acked_before = router.acked.load(Ordering::Relaxed);
    let info = cluster.join(NEW).await?;
    if info.is_empty() {
        println!("   {NEW} started with an empty log and no configuration: it waits to be added");
    } else {
        println!(
            "   {NEW} started at {info} with an empty log and no configuration: it waits to be \
             added; only {NEW} knows the others' addresses (its `--peers`), they learn its own \
             from the configuration"
        );
    }
    let target = cluster.live().iter().map(|n| n.metrics().borrow().commit).max();
    let step = Instant::now();
    cluster
        .change("adding the learner", |node| {
            let info = info.clone();
            async move { node.add_learner(NEW, info, true).await }
        })
        .await?;
    let learner = cluster.nodes.get(&NEW).and_then(|s| s.node.clone()).context("new node")?;
    let how = match learner.metrics().borrow().snapshot {
        Some(snap) => {
            format!("a snapshot up to index {}, then the entries after it", snap.index.0)
        }
        None => "the entries of the log".to_string(),
    };
    println!(
        "   {NEW} added as a learner (it receives the log, does not vote); it caught up to the \
         commit index {} in {} ms, receiving {how}",
        target.unwrap_or_default().0,
        step.elapsed().as_millis()
    );
    let step = Instant::now();
    cluster
        .change("promoting the learner", |node| async move {
            let promote = ChangeMembers::PromoteLearners([NEW].into());
            node.change_membership(promote, ChangeOptions::default()).await
        })
        .await?;
    // A voter now, so it may lead: the clients may be sent to it.
    router.set(cluster.live());
    println!("   {NEW} promoted to voter in {} ms", step.elapsed().as_millis());
    let step = Instant::now();
    let m = cluster
        .change("removing the dead node", |node| async move {
            let remove = ChangeMembers::RemoveVoters([leader].into());
            node.change_membership(remove, ChangeOptions::default()).await
        })
        .await?;
    let voters: Vec<String> = m.voters().iter().map(|v| v.to_string()).collect();
    println!(
        "   {leader} removed in {} ms; the voters are now {} (each change added or removed one \
         voter, so none needed a joint configuration)",
        step.elapsed().as_millis(),
        voters.join(", ")
    );
    let replaced = Instant::now();
    let acked_during = router.acked.load(Ordering::Relaxed) - acked_before;
    println!(
        "   the replacement took {} ms; the clients had {acked_during} operations acknowledged \
         meanwhile",
        replaced.duration_since(replace_start).as_millis()
    );
    // The clients go on for the rest of the phase, and a little after the replacement at least.
    let end = (killed_at + phase).max(replaced + Duration::from_millis(250));
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.context("a client task failed")??;
    }
    let elapsed = workload_start.elapsed();
    println!(
        "5. the workload stopped; waiting for the members ({}) to apply alike",
        voters.join(", ")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = cluster.live();
        let states: Vec<_> =
            cluster.nodes.values().filter(|s| s.node.is_some()).map(|s| s.kv.state()).collect();
        let commits: Vec<_> = live.iter().map(|n| n.metrics().borrow().commit).collect();
        let settled = commits.windows(2).all(|w| w[0] == w[1]);
        if settled
            && states.windows(2).all(|w| w[0].digest == w[1].digest && w[0].applied == w[1].applied)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not converge within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let total: u64 = t.ops.values().sum();
    let acked = lat.len();
    let mix: Vec<String> = t.ops.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let applied = cluster.live().iter().map(|n| n.metrics().borrow().applied.0).max().unwrap_or(0);
    println!(
        "   {total} operations reached a node ({}), {:.0} ops/s over {:.1} s; the cluster \
         applied {applied} log entries (one per operation that took effect, one per new leader, \
         one per membership change)",
        mix.join(", "),
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    println!(
        "   {acked} acknowledged, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (from the \
         first try to the answer, redirects and retries included)",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    let killed = t.unknown.get(&Unknown::Killed).copied().unwrap_or(0);
    let covered = t.unknown.get(&Unknown::Snapshot).copied().unwrap_or(0);
    println!(
        "   {killed} operations were in flight on {leader} when it was killed (outcome unknown; \
         not checked)"
    );
    if covered > 0 {
        println!(
            "   {covered} operations were covered by a snapshot before their node applied them \
             (outcome unknown; not checked)"
        );
    }
    println!("6. checking every acknowledged write on every node of the cluster");
    let mut missing = 0;
    for (id, slot) in &cluster.nodes {
        if slot.node.is_none() {
            println!("   {id}: killed and removed from the cluster; not checked");
            continue;
        }
        let s = slot.kv.state();
        let wrong = t.expected.iter().filter(|(k, v)| s.data.get(*k) != v.as_ref()).count();
        missing += wrong;
        let fsyncs = slot.log.sync_stats().map_or(String::new(), |(syncs, entries)| {
            format!(", {syncs} fsyncs for {entries} entries")
        });
        println!(
            "   {id}: {} keys, applied up to {}, state digest {:016x}{fsyncs}; {} of {} checked keys wrong",
            s.data.len(),
            s.applied.map_or("-".to_string(), |a| a.to_string()),
            s.digest,
            wrong,
            t.expected.len(),
        );
    }
    cluster.stop().await;
    if !t.stale_reads.is_empty() {
        bail!(
            "reads returned stale data: {}",
            t.stale_reads[..t.stale_reads.len().min(5)].join("; ")
        );
    }
    if missing > 0 {
        bail!("{missing} acknowledged values are missing or wrong");
    }
    println!(
        "Summary: the leader {leader} died mid-workload, {new_leader} took over, the fresh node {NEW} replaced {leader} while the clients wrote, and all {} acknowledged keys hold their last acknowledged value on all 3 nodes ({}; identical state digests); no read saw stale data.",
        t.expected.len(),
        voters.join(", ")
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    raftkit_examples::init_logging();
    let args = Args::parse();
    match demo(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
