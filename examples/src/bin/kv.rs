//! `kv`: a replicated key-value service on raftkit, and its client.
//!
//! ```text
//! kv certs --dir certs --nodes 1,2,3      # certs/ca (keep offline), certs/node-<id>, certs/client
//! kv node --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!         --peer-apis 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 \
//!         --api 127.0.0.1:8001 --data-dir data --certs-dir certs/node-1   # and nodes 2 and 3
//! kv --nodes 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003 put greeting hello
//! kv --nodes … get greeting
//! kv --nodes … get greeting --read follower   # or lease, stale (default: linearizable)
//! kv transfer-leader --to 2                     # hands leadership to node 2
//! # Replacing node 1 by a new node 4 (see examples/README.md):
//! kv certs --dir certs --add 4
//! kv node --id 4 --join --peers 1=…,2=…,3=…,4=127.0.0.1:7004 --api 127.0.0.1:8004 …
//! kv add-learner --id 4 --addr 127.0.0.1:7004
//! kv promote --id 4
//! kv remove --id 1
//! kv members
//! # Beyond loopback: HTTPS, and a client certificate from the cluster CA.
//! kv node … --api 10.0.0.1:8001 --api-tls
//! kv --nodes 10.0.0.1:8001,… --client-certs certs/client get greeting
//! ```
//!
//! See `examples/README.md` for every option and the HTTP protocol.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line program

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use raftkit::NodeId;
use raftkit_examples::client::{ClientError, KvClient};
use raftkit_examples::node::{LogKind, NetworkKind};
use raftkit_examples::protocol::{MembersReply, ReadLevel};
use raftkit_examples::serve::{NodeOptions, RunningNode, TlsPaths, load_config, parse_peers};
use raftkit_quic::certs::ClientCerts;

#[derive(Parser)]
#[command(name = "kv", version, about = "A replicated key-value service on raftkit")]
struct Cli {
    /// The nodes' API addresses, for the client commands (given before the command).
    #[arg(
        long,
        env = "KV_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
    )]
    nodes: Vec<SocketAddr>,
    /// How long a client command may take, retries included (e.g. `10s`, `500ms`, `1m 30s`).
    /// Default: 10s, and 60s for `add-learner`, `promote` and `remove` (which wait for the
    /// change to commit, and add-learner for the learner to catch up).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Talk HTTPS to nodes started with --api-tls, authenticating with the client certificate
    /// in this directory (`DIR/client` made by `kv certs`: `ca.crt`, `client.crt`, `client.key`).
    #[arg(long, env = "KV_CLIENT_CERTS", conflicts_with_all = ["ca_cert", "client_cert", "client_key"])]
    client_certs: Option<PathBuf>,
    /// Or the cluster CA's certificate, with --client-cert and --client-key.
    #[arg(long, requires_all = ["client_cert", "client_key"])]
    ca_cert: Option<PathBuf>,
    /// The client certificate (PEM), issued by the cluster CA.
    #[arg(long, requires_all = ["ca_cert", "client_key"])]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires_all = ["ca_cert", "client_cert"])]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of the node's options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Runs a node (with `--network mem`: the whole cluster, in this process).
    Node(NodeArgs),
    /// Creates a cluster CA (DIR/ca), a directory per node (DIR/node-ID, without the CA key)
    /// and an API client certificate (DIR/client); with --add, issues certificates for new
    /// nodes with the CA already in DIR/ca.
    Certs {
        /// The directory to create them in (must not hold a CA already, unless --add).
        #[arg(long)]
        dir: PathBuf,
        /// The node ids, e.g. `1,2,3`.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "add",
            conflicts_with = "add"
        )]
        nodes: Vec<u64>,
        /// New node ids, e.g. `4`: writes DIR/node-ID for each with the existing CA (its key
        /// is read from DIR/ca and copied nowhere).
        #[arg(long, value_delimiter = ',')]
        add: Vec<u64>,
    },
    /// Sets a key; prints the previous value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Reads a key, without writing the Raft log.
    Get {
        /// The key.
        key: String,
        /// How the read is confirmed. `linearizable`: on the leader, after a heartbeat round
        /// confirms it still leads. `lease`: on the leader, no round while its lease holds
        /// (relies on the nodes' clocks drifting less than `clock_drift_bound`). `follower`:
        /// on the node asked (the first of --nodes), after the leader confirms the read
        /// index; linearizable, and spreads the load. `stale`: the node's state as it is,
        /// asking no one; may be old.
        #[arg(long, value_enum, default_value_t = ReadLevel::Linearizable)]
        read: ReadLevel,
    },
    /// Removes a key; prints the previous value.
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: sets KEY to --new (removes it without --new) if its value is
    /// --expected (absent without --expected).
    Cas {
        /// The key.
        key: String,
        /// The value the key must have (omit: the key must be absent).
        #[arg(long)]
        expected: Option<String>,
        /// The value to store (omit: remove the key).
        #[arg(long)]
        new: Option<String>,
    },
    /// Shows each node's role, term, leader, indexes, state digest, followers' lag (on the
    /// leader) and the error that stopped it, if any.
    Status,
    /// Shows the cluster configuration as the leader sees it: the voters (two sets during a
    /// joint change), the learners, each member's address and replication lag, and whether
    /// the configuration is committed.
    Members,
    /// Adds a node as a learner (it receives the log but does not vote) and waits until it has
    /// caught up. Start the node first, with `kv node --join`.
    AddLearner {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its Raft (QUIC) address, `ip:port`, which every member learns from the
        /// configuration. Not needed on an in-process cluster (`kv node --network mem`).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Makes a learner a voter (refused while it is behind the leader's log).
    Promote {
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Removes a voter or a learner from the cluster (refused if it would leave no voters).
    Remove {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Hands leadership to another voter (the leader brings it up to date, then it is elected
    /// at once); prints the new leader. For maintenance of the leader's machine: a node
    /// stopped with SIGTERM or Ctrl-C hands leadership over by itself first.
    TransferLeader {
        /// The voter to hand leadership to (default: the most up-to-date other voter).
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's id.
    #[arg(long)]
    id: u64,
    /// Every member's Raft (QUIC) address, this node's included: `1=host:port,2=host:port,…`.
    /// With --join: the members of the cluster to join (this node's own address optional).
    #[arg(long, value_parser = parse_peers)]
    peers: std::collections::BTreeMap<NodeId, SocketAddr>,
    /// Join an existing cluster: start with no configuration and wait until the leader adds
    /// this node (`kv add-learner`). Once its log holds a configuration, the node uses that.
    #[arg(long)]
    join: bool,
    /// Where the QUIC endpoint listens (default: this node's address in --peers).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The HTTP API address (port 0: any free port; the address is printed). Without
    /// --api-tls it must be a loopback address, unless --insecure-api.
    #[arg(long)]
    api: SocketAddr,
    /// The members' API addresses, `1=host:port,2=host:port,…` (this node's may be left out),
    /// so that a `not_leader` reply tells the client where the leader's API is.
    #[arg(long, value_parser = parse_peers)]
    peer_apis: Option<std::collections::BTreeMap<NodeId, SocketAddr>>,
    /// Serve the API over HTTPS with this node's certificate, and accept only clients that
    /// present a certificate issued by the cluster CA (`kv certs` makes one in DIR/client).
    #[arg(long)]
    api_tls: bool,
    /// Serve plain, unauthenticated HTTP on a non-loopback --api address: anyone who reaches it
    /// can read and write every key.
    #[arg(long, conflicts_with = "api_tls")]
    insecure_api: bool,
    /// Where the log is kept (one file or directory per node).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The network: `quic` (between processes) or `mem` (every node in this process).
    #[arg(long, default_value = "quic")]
    network: NetworkKind,
    /// The log store: `redb`, `rocksdb` (built with `--features rocksdb`) or `mem`.
    #[arg(long, default_value = "redb")]
    log: LogKind,
    /// A directory made by `kv certs`.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// The cluster CA's certificate (PEM), with --cert and --key instead of --certs-dir.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The engine configuration, a TOML file of `raftkit::Config` fields (durations like
    /// `"50ms"`); --id and --peers override its `id` and `members`. See examples/README.md.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn show(value: &Option<String>) -> String {
    match value {
        Some(v) => v.clone(),
        None => "(none)".to_string(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let members: Vec<NodeId> =
        if args.join { Vec::new() } else { args.peers.keys().copied().collect() };
    let raft = match &args.config {
        Some(path) => Some(load_config(path, NodeId(args.id), &members)?),
        None => None,
    };
    let opts = NodeOptions {
        id: NodeId(args.id),
        peers: args.peers,
        listen: args.listen,
        join: args.join,
        api: args.api,
        peer_apis: args.peer_apis.unwrap_or_default(),
        data_dir: args.data_dir,
        network: args.network,
        log: args.log,
        tls: TlsPaths { certs_dir: args.certs_dir, ca: args.ca, cert: args.cert, key: args.key },
        api_tls: args.api_tls,
        insecure_api: args.insecure_api,
        raft,
    };
    let (network, log) = (opts.network, opts.log);
    let node = RunningNode::start(opts).await?;
    // Tests and scripts read this line to find the API.
    println!("kv node {} ({network} network, {log} log) serving {}", args.id, node.api_url()?);
    node.serve(shutdown_signal()).await
}

/// Prints a configuration: who sees it, the voters and learners, then one line per member.
fn print_members(m: &MembersReply) {
    let ids = |v: &[u64]| {
        let v: Vec<String> = v.iter().map(u64::to_string).collect();
        if v.is_empty() { "-".to_string() } else { v.join(",") }
    };
    let state = match (m.committed, m.joint) {
        (true, false) => "committed",
        (true, true) => "committed, joint: decisions need a majority of each voter set",
        (false, false) => "not committed yet: a change is in progress",
        (false, true) => "not committed yet, joint: a change is in progress",
    };
    if m.voters.is_empty() {
        println!(
            "node {} ({}) has no configuration yet: a node started with --join waits to be added",
            m.id, m.role
        );
        return;
    }
    println!("configuration seen by node {} ({}): {state}", m.id, m.role);
    let sets: Vec<String> = m.voters.iter().map(|v| ids(v)).collect();
    println!("voters {}  learners {}", sets.join(" -> "), ids(&m.learners));
    for n in &m.nodes {
        let progress = match (n.matched, n.lag) {
            (Some(matched), Some(lag)) => format!("  matched {matched:<8} lag {lag}"),
            _ if n.id == m.id && m.role == "leader" => "  (leader)".to_string(),
            _ => String::new(),
        };
        let addr = n.addr.as_deref().unwrap_or("-");
        println!("node {:<4} {:<8} addr {addr:<22}{progress}", n.id, n.role);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let changes = matches!(
        cli.command,
        Command::AddLearner { .. } | Command::Promote { .. } | Command::Remove { .. }
    );
    let default_timeout = Duration::from_secs(if changes { 60 } else { 10 });
    let mut client = KvClient::new(cli.nodes, cli.timeout.unwrap_or(default_timeout));
    let certs =
        match (cli.client_certs, cli.ca_cert, cli.client_cert, cli.client_key) {
            (Some(dir), ..) => Some(ClientCerts::load_from_dir(&dir).with_context(|| {
                format!("loading the client certificate from {}", dir.display())
            })?),
            (None, Some(ca), Some(cert), Some(key)) => {
                Some(ClientCerts::load(ca, cert, key).context("loading the client certificate")?)
            }
            _ => None,
        };
    if let Some(certs) = certs {
        client = client.with_client_certs(&certs)?;
    }
    match cli.command {
        Command::Node(args) => run_node(args).await?,
        Command::Certs { dir, nodes: _, add } if !add.is_empty() => {
            for id in add {
                if id == 0 {
                    anyhow::bail!("node ids start at 1");
                }
                let n =
                    raftkit_quic::certs::issue_node_files(&dir, NodeId(id)).with_context(|| {
                        format!(
                            "issuing a certificate for node {id} with the CA in {}",
                            dir.display()
                        )
                    })?;
                println!("node {id}: {} (for node {id} only)", n.dir.display());
            }
        }
        Command::Certs { dir, nodes, add: _ } => {
            let ids: Vec<NodeId> = nodes.iter().map(|n| NodeId(*n)).collect();
            let files = raftkit_quic::generate_cluster(&dir, &ids)
                .with_context(|| format!("creating certificates in {}", dir.display()))?;
            let client =
                raftkit_quic::certs::issue_client_files(&dir, "client").with_context(|| {
                    format!("creating the API client certificate in {}", dir.display())
                })?;
            println!(
                "CA: {} (keep it offline: it holds the CA key, which no node needs)",
                files.ca_dir.display()
            );
            for n in files.nodes {
                println!("node {}: {} (for node {} only)", n.node.0, n.dir.display(), n.node.0);
            }
            println!("API client: {} (for `kv --client-certs`)", client.dir.display());
        }
        Command::Put { key, value } => println!("{}", show(&client.put(&key, &value).await?)),
        Command::Get { key, read } => println!("{}", show(&client.get_with(&key, read).await?)),
        Command::Delete { key } => println!("{}", show(&client.delete(&key).await?)),
        Command::Cas { key, expected, new } => {
            let r = client.cas(&key, expected.as_deref(), new.as_deref()).await?;
            let verdict = if r.swapped { "swapped" } else { "not swapped" };
            println!("{verdict}; now {}", show(&r.current));
        }
        Command::Status => {
            for (addr, status) in client.status().await {
                match status {
                    Ok(s) => {
                        for n in s.nodes {
                            // One line per node: the digest (of the state at the index after
                            // `@`), each follower's lag behind the leader, a failure's cause.
                            let digest = n
                                .digest
                                .map_or("-".into(), |d| format!("{}@{}", d.digest, d.applied));
                            let lag: Vec<String> = n
                                .replication
                                .iter()
                                .map(|p| format!("{}:{}", p.id, p.lag))
                                .collect();
                            let lag = if lag.is_empty() { "-".into() } else { lag.join(",") };
                            let failed = match (n.error, n.last_error) {
                                (Some(e), _) => format!("  FAILED: {e}"),
                                (None, Some(e)) => format!("  last error: {e}"),
                                (None, None) => String::new(),
                            };
                            println!(
                                "{addr}  node {}  {:<13} term {:<4} leader {:<4} commit {:<8} applied {:<8} last log {:<8} snapshot {:<8} digest {digest}  lag {lag}{failed}",
                                n.id,
                                n.role,
                                n.term,
                                n.leader.map_or("-".into(), |l| l.to_string()),
                                n.commit,
                                n.applied,
                                n.last_log,
                                n.snapshot.map_or("-".into(), |s| s.to_string()),
                            );
                        }
                    }
                    Err(e) => println!("{addr}  unreachable: {e}"),
                }
            }
        }
        Command::Members => print_members(&client.members().await?),
        Command::AddLearner { id, addr } => {
            let addr = addr.map(|a| a.to_string());
            let m = client.add_learner(id, addr.as_deref()).await?;
            println!("node {id} is a learner and has caught up");
            print_members(&m);
        }
        Command::Promote { id } => {
            let m = client.promote(id).await?;
            println!("node {id} is a voter");
            print_members(&m);
        }
        Command::Remove { id } => {
            let m = client.remove(id).await?;
            println!("node {id} is no longer a member");
            print_members(&m);
        }
        Command::TransferLeader { to } => {
            let t = client.transfer_leader(to).await?;
            let at = t.leader_api.map(|a| format!(" (API {a})")).unwrap_or_default();
            if t.from == t.leader {
                println!("node {} leads already{at}; nothing moved", t.leader);
            } else {
                println!("node {} leads now{at}; node {} handed leadership over", t.leader, t.from);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    raftkit_examples::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e:#}");
            // 3: the write may have happened; 1: it did not, or the command failed otherwise.
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::OutcomeUnknown(_)) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
