//! Three node processes on 127.0.0.1, talking QUIC with fresh certificates and keeping their
//! logs in redb: writes go through them, the leader's process is killed with SIGKILL while
//! writes are in flight and restarted from its log, and every acknowledged write must still be
//! there afterwards — through the new leader and on the restarted node itself.
//!
//! The node processes are this test binary re-executed on this same test with [`NODE_ENV`] set
//! (see [`node_process`]), so no separate test that passes by doing nothing stands in the list
//! as their entry point. The parent talks to each node over its stdin and
//! stdout, one line per request: `put <req> <key> <value>`, `get <req> <key>`,
//! `local <req> <key>` (the node's own state, not linearizable), `status <req>`, and
//! `addr <node> <socket address>` (updates the node's address book, no reply). Replies are
//! lines `RKQ-NODE <req> …`; the first line a node prints is `RKQ-NODE BOUND <address>`.
//! Closing stdin shuts the node down.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftkit::{Config, NodeId, Raft, Role, WriteError};
use raftkit_mem::{KvCommand, KvOutput, MemKv};
use raftkit_quic::{NodeCerts, QuicConfig, QuicNetwork};
use raftkit_redb::RedbLogStore;
use tokio::io::AsyncBufReadExt;

/// Set (to the node id) in a node process's environment.
const NODE_ENV: &str = "RAFTKIT_QUIC_TEST_NODE";
/// The cluster's directory: `certs/` and one redb file per node.
const DIR_ENV: &str = "RAFTKIT_QUIC_TEST_DIR";
/// Starts every protocol line a node prints (other output, such as the test harness's, is
/// ignored).
const MARK: &str = "RKQ-NODE ";
const IDS: [u64; 3] = [1, 2, 3];

/// The test the node processes re-execute (with [`NODE_ENV`] set).
const TEST: &str = "leader_killed_and_restarted_loses_nothing_acknowledged";

/// A node process of [`leader_killed_and_restarted_loses_nothing_acknowledged`] (which calls
/// this when [`NODE_ENV`] is set): runs a raftkit node (QUIC network, redb log, in-memory
/// key-value state rebuilt from the log) driven by stdin until stdin closes, then exits.
fn node_process(id: &str) -> ! {
    let id: u64 = id.parse().expect("node id");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("cluster directory"));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_node(NodeId(id), &dir));
    // Exit here: the test harness must not go on to report this process as a passed test.
    std::process::exit(0);
}

fn say(line: &str) {
    // Stdout is the protocol channel; one locked write per line keeps lines whole.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK}{line}");
    let _ = out.flush();
}

async fn run_node(id: NodeId, dir: &Path) {
    let certs =
        NodeCerts::load_from_dir(dir.join("certs").join(raftkit_quic::certs::node_dir(id)), id)
            .expect("load certificates");
    let config = QuicConfig::new(id, "127.0.0.1:0".parse().unwrap(), certs);
    let net = QuicNetwork::bind(config).expect("bind");
    let book = net.addresses().clone();
    let store = RedbLogStore::open(dir.join(format!("node-{}.redb", id.0))).expect("open redb");
    let kv = MemKv::new();
    let members = IDS.map(NodeId);
    let raft = Raft::start(Config::new(id, members), net.clone(), store, kv.clone())
        .await
        .expect("start the node");
    say(&format!("BOUND {}", net.local_addr()));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["addr", node, addr] => {
                let (node, addr): (u64, SocketAddr) =
                    (node.parse().unwrap(), addr.parse().unwrap());
                book.insert(NodeId(node), addr);
            }
            ["put", req, key, value] => {
                let (raft, req) = (raft.clone(), req.to_string());
                let cmd = KvCommand::put(*key, *value);
                tokio::spawn(async move { say(&format!("{req} {}", write(&raft, cmd).await)) });
            }
            ["get", req, key] => {
                let (raft, req) = (raft.clone(), req.to_string());
                let cmd = KvCommand::get(*key);
                tokio::spawn(async move { say(&format!("{req} {}", write(&raft, cmd).await)) });
            }
            ["local", req, key] => {
                let v = kv.get_local(key).unwrap_or_else(|| "-".into());
                say(&format!("{req} VALUE {v}"));
            }
            ["status", req] => {
                let m = raft.metrics().borrow().clone();
                let leader = m.leader.map_or("-".to_string(), |l| l.0.to_string());
                let role = if m.role == Role::Leader { "leader" } else { "other" };
                say(&format!("{req} STATUS {role} {leader}"));
            }
            _ => say(&format!("- ERR unknown command {line:?}")),
        }
    }
    let _ = raft.shutdown().await;
}

/// Runs a command through the log and describes the outcome.
async fn write(raft: &Raft<QuicNetwork, RedbLogStore, MemKv>, cmd: KvCommand) -> String {
    let fut = raft.client_write(cmd);
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(Ok(KvOutput::Value(v))) => format!("VALUE {}", v.unwrap_or_else(|| "-".into())),
        Ok(Ok(_)) => "OK".into(),
        Ok(Err(WriteError::NotLeader { leader })) => {
            format!("NOT_LEADER {}", leader.map_or("-".to_string(), |l| l.0.to_string()))
        }
        Ok(Err(e)) => format!("ERR {e}"),
        Err(_) => "ERR timed out".into(),
    }
}

/// A node process, from the parent's side.
struct NodeProc {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

/// The parent's view of the cluster. Kills every node process when dropped (so a failing
/// test leaves none behind).
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProc>,
    replies: mpsc::Receiver<(u64, String)>,
    reply_tx: mpsc::Sender<(u64, String)>,
    /// Replies read but not yet asked for, by request id.
    early: HashMap<u64, String>,
    next_req: u64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

const PATIENCE: Duration = Duration::from_secs(30);

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        raftkit_quic::generate_cluster(dir.path().join("certs"), &IDS.map(NodeId)).unwrap();
        let (reply_tx, replies) = mpsc::channel();
        Cluster {
            dir,
            nodes: BTreeMap::new(),
            replies,
            reply_tx,
            early: HashMap::new(),
            next_req: 1,
        }
    }

    /// Starts node `id`'s process and waits for its address.
    fn spawn(&mut self, id: u64) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(NODE_ENV, id.to_string())
            .env(DIR_ENV, self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a node process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let tx = self.reply_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find(MARK) {
                    if tx.send((id, line[at + MARK.len()..].to_string())).is_err() {
                        return;
                    }
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (from, line) =
                self.replies.recv_timeout(left).expect("the node reports its address");
            if from == id {
                if let Some(a) = line.strip_prefix("BOUND ") {
                    break a.parse().unwrap();
                }
            }
        };
        self.nodes.insert(id, NodeProc { child, stdin, addr });
    }

    fn tell(&mut self, id: u64, line: &str) {
        let stdin = self.nodes.get_mut(&id).and_then(|n| n.stdin.as_mut()).expect("node running");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Gives every running node everyone's current address.
    fn publish_addresses(&mut self) {
        let addrs: Vec<(u64, SocketAddr)> = self.nodes.iter().map(|(k, n)| (*k, n.addr)).collect();
        for id in addrs.iter().map(|(k, _)| *k).collect::<Vec<_>>() {
            for (peer, addr) in &addrs {
                if *peer != id {
                    self.tell(id, &format!("addr {peer} {addr}"));
                }
            }
        }
    }

    /// Sends a request; returns its id.
    fn request(&mut self, id: u64, verb: &str, args: &str) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.tell(id, &format!("{verb} {req} {args}"));
        req
    }

    /// Waits for the reply to `req`, or `None` after `within`.
    fn reply(&mut self, req: u64, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.early.remove(&req) {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let (_, line) = self.replies.recv_timeout(left).ok()?;
            if let Some((r, rest)) = line.split_once(' ') {
                if let Ok(r) = r.parse() {
                    self.early.insert(r, rest.to_string());
                }
            }
        }
    }

    fn call(&mut self, id: u64, verb: &str, args: &str) -> Option<String> {
        let req = self.request(id, verb, args);
        self.reply(req, Duration::from_secs(10))
    }

    /// The leader all running nodes agree on.
    fn leader(&mut self) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let views: Vec<(u64, Option<String>)> =
                ids.iter().map(|id| (*id, self.call(*id, "status", ""))).collect();
            let leaders: Vec<u64> = views
                .iter()
                .filter(|(_, v)| v.as_deref().is_some_and(|v| v.starts_with("STATUS leader")))
                .map(|(id, _)| *id)
                .collect();
            if let [l] = leaders.as_slice() {
                let agreed = views
                    .iter()
                    .all(|(_, v)| v.as_deref().is_some_and(|v| v.ends_with(&format!(" {l}"))));
                if agreed {
                    return *l;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader agreed on by {:?}", self.nodes.keys().collect::<Vec<_>>());
    }

    /// Writes `key = value` through the cluster, following NOT_LEADER hints and retrying
    /// (the value is unique per key, so a retry cannot change the outcome).
    fn put(&mut self, key: &str, value: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut target = self.leader();
        while Instant::now() < deadline {
            match self.call(target, "put", &format!("{key} {value}")).as_deref() {
                Some("OK") => return,
                Some(r) if r.starts_with("NOT_LEADER ") => {
                    target = match r["NOT_LEADER ".len()..].parse() {
                        Ok(l) if self.nodes.contains_key(&l) => l,
                        _ => self.leader(),
                    };
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    target = self.leader();
                }
            }
        }
        panic!("could not write {key}");
    }

    fn kill(&mut self, id: u64) {
        let mut n = self.nodes.remove(&id).expect("running");
        n.child.kill().expect("SIGKILL");
        let _ = n.child.wait();
    }

    /// Closes every node's stdin and waits for it to exit cleanly.
    fn stop(&mut self) {
        for n in self.nodes.values_mut() {
            n.stdin = None;
        }
        for (id, n) in &mut self.nodes {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = n.child.try_wait().unwrap() {
                    assert!(status.success(), "node {id} exited with {status}");
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.nodes.clear();
    }
}

#[test]
fn leader_killed_and_restarted_loses_nothing_acknowledged() {
    if let Ok(id) = std::env::var(NODE_ENV) {
        node_process(&id);
    }
    let mut c = Cluster::new();
    for id in IDS {
        c.spawn(id);
    }
    c.publish_addresses();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();

    // Sequential writes.
    for i in 0..20 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        c.put(&k, &v);
        acked.insert(k, v);
    }

    // Pipelined writes to the leader, which is killed once some are acknowledged and others
    // are still in flight. Acknowledged ones must survive; the rest may or may not.
    let leader = c.leader();
    let reqs: Vec<(u64, String, String)> = (1000..1400)
        .map(|i| {
            let (k, v) = (format!("k{i}"), format!("v{i}"));
            (c.request(leader, "put", &format!("{k} {v}")), k, v)
        })
        .collect();
    let mut oks = 0;
    for (req, k, v) in &reqs {
        if oks >= 10 {
            break;
        }
        if c.reply(*req, Duration::from_secs(10)).as_deref() == Some("OK") {
            oks += 1;
            acked.insert(k.clone(), v.clone());
        }
    }
    assert!(oks >= 10, "the leader acknowledged only {oks} pipelined writes");
    c.kill(leader);
    // Acknowledgements the leader printed before it died count too.
    for (req, k, v) in &reqs {
        if c.reply(*req, Duration::from_millis(10)).as_deref() == Some("OK") {
            acked.insert(k.clone(), v.clone());
        }
    }

    let in_flight = (1000..1400).filter(|i| !acked.contains_key(&format!("k{i}"))).count();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("killed leader {leader} with {in_flight} of 400 pipelined writes unacknowledged");
    }

    // The survivors elect a leader and keep taking writes.
    for i in 80..100 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        c.put(&k, &v);
        acked.insert(k, v);
    }

    // The old leader comes back on a new port, from its redb log; everyone learns the address.
    c.spawn(leader);
    c.publish_addresses();
    for i in 100..120 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        c.put(&k, &v);
        acked.insert(k, v);
    }

    // Everything acknowledged is there: read through the log (linearizable)…
    for (k, v) in &acked {
        let target = c.leader();
        let got = c.call(target, "get", k);
        assert_eq!(got.as_deref(), Some(format!("VALUE {v}").as_str()), "{k} through the leader");
    }
    // …and on the restarted node, once it has caught up.
    let deadline = Instant::now() + PATIENCE;
    let mut missing: Vec<String> = acked.keys().cloned().collect();
    while !missing.is_empty() && Instant::now() < deadline {
        let keys = std::mem::take(&mut missing);
        for k in keys {
            if c.call(leader, "local", &k) != Some(format!("VALUE {}", acked[&k])) {
                missing.push(k);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(missing.is_empty(), "the restarted node lacks {missing:?}");
    c.stop();
}
