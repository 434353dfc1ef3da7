//! `kv node`: runs a key-value node (or, on the in-memory network, a whole cluster) behind the
//! HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use raftkit::{Config, NodeId};
use raftkit_mem::{MemKv, MemRouter};
use raftkit_quic::{AddressBook, NodeCerts, QuicConfig, QuicNetwork};

use crate::api::{ApiServer, LocalCluster, Service, SingleNode, StartJoiner};
use crate::node::{LogKind, NetworkKind, NodeLog, NodeNetwork, example_config, start_node};

/// Parses a peer list `1=127.0.0.1:7001,2=127.0.0.1:7002,…` (ids are positive integers, each
/// listed once).
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("peer {item:?} is not of the form <id>=<host:port>"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {item:?}: the id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err(format!("peer {item:?}: node ids start at 1"));
        }
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("peer {item:?}: the address {addr:?} is not valid: {e}"))?;
        if peers.insert(NodeId(id), addr).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("the peer list is empty".into());
    }
    Ok(peers)
}

/// Parses a comma-separated list of socket addresses.
pub fn parse_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs = s
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|e| format!("{a:?} is not a host:port address: {e}")))
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    if addrs.is_empty() {
        return Err("no addresses given".into());
    }
    Ok(addrs)
}

/// Where a node's TLS material comes from.
#[derive(Clone, Debug, Default)]
pub struct TlsPaths {
    /// This node's directory made by `kv certs` (`<out>/node-<id>`: `ca.crt`, `node.crt`,
    /// `node.key`; refused if it holds the CA key).
    pub certs_dir: Option<PathBuf>,
    /// The cluster CA's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// Loads node `id`'s certificates: from the three files if given, else from the directory.
    pub fn load(&self, id: NodeId) -> Result<NodeCerts> {
        match (&self.ca, &self.cert, &self.key, &self.certs_dir) {
            (Some(ca), Some(cert), Some(key), _) => Ok(NodeCerts::load(ca, cert, key)?),
            (None, None, None, Some(dir)) => Ok(NodeCerts::load_from_dir(dir, id)?),
            (None, None, None, None) => {
                bail!(
                    "QUIC and --api-tls need certificates: pass --certs-dir (this node's directory made by `kv certs`) or --ca, --cert and --key"
                )
            }
            _ => bail!("pass all three of --ca, --cert and --key, or only --certs-dir"),
        }
    }
}

/// Everything `kv node` needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (on the in-memory network: the node whose data the API reports first).
    pub id: NodeId,
    /// Every member's Raft address, this node's included (with `join`: the address book of
    /// the cluster to join, this node's own address optional).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where this node's QUIC endpoint listens (default: its address in `peers`).
    pub listen: Option<SocketAddr>,
    /// Join an existing cluster: start with no configuration (`Config::members` empty) and
    /// wait until a leader adds this node (`kv add-learner`). A node whose log already holds a
    /// configuration uses that one, joined or not. QUIC only.
    pub join: bool,
    /// The HTTP API address (port 0: any free port, printed at start).
    pub api: SocketAddr,
    /// The other members' API addresses, so a `not_leader` reply can say where the leader's
    /// API is (may be empty: the reply then names the leader's id only).
    pub peer_apis: BTreeMap<NodeId, SocketAddr>,
    /// Where the log lives (not needed for the in-memory log).
    pub data_dir: Option<PathBuf>,
    /// The network adapter.
    pub network: NetworkKind,
    /// The log store adapter.
    pub log: LogKind,
    /// TLS material for QUIC, and for the API with `api_tls`.
    pub tls: TlsPaths,
    /// Serve the API over HTTPS with this node's certificate, requiring client certificates
    /// issued by the cluster CA.
    pub api_tls: bool,
    /// Allow plain, unauthenticated HTTP on an API address that is not loopback.
    pub insecure_api: bool,
    /// The engine configuration (from `--config`), whose `id` and `members` are replaced by
    /// each node's id and the ids in `peers` (none with `join`). `None`: [`example_config`].
    pub raft: Option<Config>,
}

impl NodeOptions {
    /// The initial voters this node is started with: the ids in `peers`, or none when it
    /// joins.
    pub fn members(&self) -> Vec<NodeId> {
        if self.join { Vec::new() } else { self.peers.keys().copied().collect() }
    }
}

/// Loads the engine configuration for `kv node --config FILE` (TOML, the fields of
/// [`Config`]; durations like `"50ms"`), then applies the command line, which overrides the
/// file: `id` becomes `id` and `members` becomes `members` (the ids of `--peers`, or none
/// with `--join`). The result is validated, so a bad value is reported before anything
/// starts. A field left out keeps [`Config::new`]'s default, except `forward_proposals`,
/// which is [`FORWARD_PROPOSALS`](crate::node::FORWARD_PROPOSALS) as without a file.
///
/// # Errors
/// The file cannot be read, is not valid TOML, names an unknown field or a value of the wrong
/// type, or the configuration is invalid; each error names the file.
pub fn load_config(path: &Path, id: NodeId, members: &[NodeId]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let mut config: Config = toml::from_str(&text)
        .with_context(|| format!("in the configuration file {}", path.display()))?;
    // Parsed above, so this parse succeeds too.
    let table: toml::Table = text.parse().unwrap_or_default();
    if !table.contains_key("forward_proposals") {
        config.forward_proposals = crate::node::FORWARD_PROPOSALS;
    }
    config.id = id;
    config.members = members.to_vec();
    config.validate().with_context(|| {
        format!("in the configuration file {} (with --id and --peers)", path.display())
    })?;
    Ok(config)
}

/// Refuses an API that anyone beyond this machine could use without credentials: plain HTTP is
/// allowed on a loopback address, or elsewhere only with `insecure` (the operator's explicit
/// choice, say behind an authenticating proxy).
///
/// # Errors
/// A non-loopback `api` (`0.0.0.0` included) without `tls` or `insecure`.
pub fn check_api_exposure(api: SocketAddr, tls: bool, insecure: bool) -> Result<()> {
    if tls || insecure || api.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "refusing to serve the API unauthenticated on {api}, which is not a loopback address: \
         anyone who can reach it could read and write every key. Pass --api-tls (HTTPS; clients \
         need a certificate from the cluster CA, made by `kv certs`), bind a loopback address, \
         or pass --insecure-api to accept the risk"
    )
}

/// A started node (or in-process cluster) and its API server, ready to [`RunningNode::serve`].
pub struct RunningNode {
    service: Arc<dyn Service>,
    server: ApiServer,
    /// Folds metric samples into histograms between scrapes.
    upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Validates `opts`, opens the log(s), binds the network and the API, and starts Raft.
    pub async fn start(opts: NodeOptions) -> Result<RunningNode> {
        check_api_exposure(opts.api, opts.api_tls, opts.insecure_api)?;
        if opts.join && opts.network == NetworkKind::Mem {
            bail!(
                "--join is for a node of a QUIC cluster; an in-process cluster (--network mem) \
                 starts the nodes it is asked to add (`kv add-learner`) itself"
            );
        }
        if !opts.join && !opts.peers.contains_key(&opts.id) {
            bail!("--id {} is not in --peers", opts.id.0);
        }
        let listen = match (opts.listen, opts.peers.get(&opts.id)) {
            (Some(addr), _) | (None, Some(&addr)) => addr,
            (None, None) => bail!(
                "--join: pass --listen (where this node's QUIC endpoint binds), or list this \
                 node in --peers"
            ),
        };
        if let Some(id) =
            opts.peer_apis.keys().find(|id| !opts.peers.contains_key(id) && **id != opts.id)
        {
            bail!("--peer-apis names node {}, which is not in --peers", id.0);
        }
        let data_dir = match (&opts.data_dir, opts.log) {
            (Some(d), _) => d.clone(),
            (None, LogKind::Mem) => PathBuf::new(),
            (None, kind) => bail!("--log {kind} keeps data on disk: pass --data-dir"),
        };
        // Loaded before anything starts: a bad certificate (or one next to the CA key) stops
        // the node here.
        let certs = match (opts.network, opts.api_tls) {
            (NetworkKind::Quic, _) | (_, true) => {
                Some(opts.tls.load(opts.id).context("loading the TLS certificates")?)
            }
            (NetworkKind::Mem, false) => None,
        };
        let api_tls = match (&certs, opts.api_tls) {
            (Some(certs), true) => {
                Some(Arc::new(certs.https_server_config().context("setting up HTTPS for the API")?))
            }
            _ => None,
        };
        // Before any node starts: nodes register their metrics with the recorder of the moment.
        let metrics = match crate::prometheus::install() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!("GET /metrics is off: {e:#}");
                None
            }
        };
        let members = opts.members();
        let base = opts.raft.clone();
        let config_for = move |id: NodeId, members: &[NodeId]| match &base {
            Some(base) => {
                let mut c = base.clone();
                c.id = id;
                c.members = members.to_vec();
                c
            }
            None => example_config(id, members),
        };
        let service: Arc<dyn Service> = match opts.network {
            NetworkKind::Quic => {
                let certs = certs.context("QUIC needs certificates")?;
                // The nodes this one accepts connections from and dials; nodes added later are
                // learnt from the membership's node information.
                let book: AddressBook = opts.peers.iter().map(|(i, a)| (*i, *a)).collect();
                let net =
                    QuicNetwork::bind(QuicConfig::new(opts.id, listen, certs).with_addresses(book))
                        .with_context(|| format!("binding the QUIC endpoint on {listen}"))?;
                let log = NodeLog::open(opts.log, &data_dir, opts.id).await?;
                let config = config_for(opts.id, &members);
                let node = start_node(config, NodeNetwork::Quic(net), log, MemKv::new()).await?;
                Arc::new(SingleNode { node, peer_apis: opts.peer_apis.clone() })
            }
            NetworkKind::Mem => {
                let router = MemRouter::new(opts.id.0);
                let mut nodes = Vec::new();
                for id in &members {
                    let log = NodeLog::open(opts.log, &data_dir, *id).await?;
                    let config = config_for(*id, &members);
                    let net = NodeNetwork::Mem(router.network(*id));
                    nodes.push(start_node(config, net, log, MemKv::new()).await?);
                }
                let log_kind = opts.log;
                // A node to add starts here with no configuration and waits to be added.
                let start_joiner: StartJoiner = Box::new(move |id| {
                    let (router, data_dir) = (router.clone(), data_dir.clone());
                    let config = config_for(id, &[]);
                    Box::pin(async move {
                        let log = NodeLog::open(log_kind, &data_dir, id).await?;
                        let net = NodeNetwork::Mem(router.network(id));
                        start_node(config, net, log, MemKv::new()).await
                    })
                });
                Arc::new(LocalCluster::new(nodes, start_joiner))
            }
        };
        let server = match api_tls {
            Some(tls) => ApiServer::bind_tls(opts.api, service.clone(), tls).await?,
            None => ApiServer::bind(opts.api, service.clone()).await?,
        };
        let upkeep = metrics.map(|handle| tokio::spawn(crate::prometheus::upkeep(handle)));
        Ok(RunningNode { service, server, upkeep })
    }

    /// The API's address.
    pub fn api_addr(&self) -> Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The API's URL: `http://…` or `https://…`.
    pub fn api_url(&self) -> Result<String> {
        let scheme = if self.server.is_tls() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.api_addr()?))
    }

    /// Serves until `shutdown` resolves, then stops the API and the node(s) gracefully.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let served = self.server.run(shutdown).await;
        if let Some(upkeep) = &self.upkeep {
            upkeep.abort();
        }
        for node in &self.service.nodes() {
            if let Err(e) = node.shutdown().await {
                tracing::error!(node = %node.id(), "stopped with an error: {e}");
            }
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_loaded_and_the_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 9\nmembers = [9]\nheartbeat_interval = \"20ms\"\nsnapshot_every = 5\n",
        )
        .unwrap();
        let c = load_config(&path, NodeId(2), &[NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(c.heartbeat_interval, std::time::Duration::from_millis(20));
        assert_eq!(c.snapshot_every, 5);
        assert_eq!((c.id, c.members), (NodeId(2), vec![NodeId(1), NodeId(2)]));
        // `--join`: no initial members, whatever the file says.
        let c = load_config(&path, NodeId(4), &[]).unwrap();
        assert_eq!((c.id, c.members), (NodeId(4), vec![]));
        // The engine's defaults for what the file leaves out, but kv's for forwarding.
        assert_eq!(c.clock_drift_bound, std::time::Duration::from_millis(30));
        assert!(c.transfer_on_shutdown && c.check_quorum);
        assert!(!c.forward_proposals);
    }

    #[test]
    fn the_read_forwarding_and_transfer_settings_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "clock_drift_bound = \"50ms\"\nforward_proposals = true\ntransfer_on_shutdown = false\n",
        )
        .unwrap();
        let c = load_config(&path, NodeId(1), &[NodeId(1)]).unwrap();
        assert_eq!(c.clock_drift_bound, std::time::Duration::from_millis(50));
        assert!(c.forward_proposals && !c.transfer_on_shutdown);
        // A drift bound as long as the election timeout leaves no lease at all.
        std::fs::write(&path, "election_timeout_min = \"300ms\"\nclock_drift_bound = \"300ms\"\n")
            .unwrap();
        let e = format!("{:#}", load_config(&path, NodeId(1), &[NodeId(1)]).unwrap_err());
        assert!(e.contains("node.toml") && e.contains("clock_drift_bound"), "{e}");
    }

    #[test]
    fn a_bad_config_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let peers = [NodeId(1)];
        let path = dir.path().join("bad.toml");
        for (text, says) in [
            ("heartbeat = \"1s\"", "unknown field `heartbeat`"),
            ("heartbeat_interval = 50", "heartbeat_interval"),
            ("snapshot_every = ", "TOML"),
            ("heartbeat_interval = \"1s\"", "election_timeout_min"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", load_config(&path, NodeId(1), &peers).unwrap_err());
            assert!(e.contains("bad.toml") && e.contains(says), "{text:?}: {e}");
        }
        let missing = dir.path().join("missing.toml");
        let e = format!("{:#}", load_config(&missing, NodeId(1), &peers).unwrap_err());
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn peer_lists_are_validated() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&NodeId(2)], "127.0.0.1:7002".parse().unwrap());
        for (bad, says) in [
            ("", "empty"),
            ("1:127.0.0.1:7001", "<id>=<host:port>"),
            ("x=127.0.0.1:7001", "positive integer"),
            ("0=127.0.0.1:7001", "start at 1"),
            ("1=localhost", "not valid"),
            ("1=127.0.0.1:1,1=127.0.0.1:2", "twice"),
        ] {
            let err = parse_peers(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(parse_addrs("127.0.0.1:1,nope").is_err());
        assert_eq!(parse_addrs("127.0.0.1:1").unwrap().len(), 1);
    }

    /// Security: plain HTTP beyond loopback only when asked for explicitly.
    #[test]
    fn an_unauthenticated_api_is_allowed_on_loopback_only() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for loopback in ["127.0.0.1:8001", "127.0.0.2:0", "[::1]:8001"] {
            check_api_exposure(addr(loopback), false, false).unwrap();
        }
        for exposed in ["0.0.0.0:8001", "[::]:8001", "10.0.0.1:8001", "[::ffff:127.0.0.1]:1"] {
            let err = check_api_exposure(addr(exposed), false, false).unwrap_err().to_string();
            assert!(err.contains("--api-tls") && err.contains("--insecure-api"), "{err}");
            check_api_exposure(addr(exposed), true, false).unwrap();
            check_api_exposure(addr(exposed), false, true).unwrap();
        }
    }
}
