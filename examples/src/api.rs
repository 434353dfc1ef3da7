//! The `kv` service's HTTP server (the protocol is in [`crate::protocol`]), over plain HTTP or
//! HTTPS with client certificates ([`ApiServer::bind_tls`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use raftkit::{
    ChangeMembers, ChangeMembershipError, ChangeOptions, Membership, NodeId, NodeState, ReadError,
    Role, TransferError, WriteError,
};
use raftkit_mem::{KvCommand, KvOutput, KvQuery};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::node::KvNode;
use crate::protocol::{
    AddLearnerRequest, CasReply, CasRequest, ErrorKind, ErrorReply, GetReply, KeyRequest,
    MAX_VALUE_BYTES, MemberRequest, MemberStatus, MembersReply, NodeStatus, PeerLag, PrevReply,
    PutRequest, ReadLevel, StateDigest, StatusReply, TransferReply, TransferRequest,
    read_level_from_query, validate, validate_change, validate_timeout,
};

/// What an API server serves: one node, or a whole in-process cluster.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Runs `cmd` through Raft.
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError>;
    /// Answers `query` from a node's key-value state, without writing the log, once the read
    /// is confirmed as `level` says ([`raftkit::RaftHandle::client_read`]).
    async fn read(&self, query: KvQuery, level: ReadLevel) -> Result<KvOutput, ReadError>;
    /// Hands leadership to `to` (`None`: the most up-to-date other voter); returns the node
    /// that led and the one that leads now ([`transfer_on`]).
    async fn transfer_leader(&self, to: Option<NodeId>) -> Result<(NodeId, NodeId), TransferError>;
    /// The status of the nodes served.
    fn status(&self) -> Vec<NodeStatus>;
    /// The API address (`host:port`) of node `id`, if this service knows it; a `not_leader`
    /// reply carries the leader's.
    fn api_of(&self, id: NodeId) -> Option<SocketAddr> {
        let _ = id;
        None
    }
    /// The nodes running in this process (to stop them at the end).
    fn nodes(&self) -> Vec<KvNode>;
    /// The cluster configuration as this service sees it (`GET /v1/members`).
    fn members(&self) -> MembersReply;
    /// Adds node `id` as a learner with `addr` (its Raft address) as node information, and
    /// waits until it has caught up with the leader's commit index as of the call, for at most
    /// `wait`.
    async fn add_learner(
        &self,
        id: NodeId,
        addr: Option<String>,
        wait: Duration,
    ) -> Result<MembersReply, MembersError>;
    /// Makes learner `id` a voter, waiting at most `wait` for the change to commit.
    async fn promote(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError>;
    /// Removes voter or learner `id`, waiting at most `wait` for the change to commit.
    async fn remove(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError>;
}

/// Why a membership request failed.
#[derive(Debug)]
pub enum MembersError {
    /// The engine refused the change or could not finish it.
    Change(ChangeMembershipError),
    /// The request does not fit: no address for a node on the QUIC network, a node that is
    /// not a member.
    BadRequest(String),
    /// The wait ended before the change finished; the text says what is known.
    TimedOut(String),
}

impl std::fmt::Display for MembersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembersError::Change(e) => e.fmt(f),
            MembersError::BadRequest(e) | MembersError::TimedOut(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for MembersError {}

impl From<ChangeMembershipError> for MembersError {
    fn from(e: ChangeMembershipError) -> MembersError {
        MembersError::Change(e)
    }
}

/// `node`'s view of `membership` (the one in force when `committed` says so, or one a change
/// returned), with each member's replication progress when `node` leads.
pub fn members_reply(
    node: &KvNode,
    membership: &Membership,
    committed: bool,
    api_of: impl Fn(NodeId) -> Option<SocketAddr>,
) -> MembersReply {
    let m = node.metrics().borrow().clone();
    let leads = m.role == Role::Leader;
    let member = |id: NodeId, role: &str| {
        let matched = if leads && id != m.id { m.replication.get(&id).map(|i| i.0) } else { None };
        MemberStatus {
            id: id.0,
            role: role.to_string(),
            addr: membership.node_info(id).filter(|i| !i.is_empty()).map(str::to_string),
            matched,
            lag: matched.map(|i| m.last_log.index.0.saturating_sub(i)),
        }
    };
    let mut nodes: Vec<MemberStatus> =
        membership.voters().into_iter().map(|id| member(id, "voter")).collect();
    nodes.extend(membership.learners().iter().map(|id| member(*id, "learner")));
    MembersReply {
        id: m.id.0,
        role: role_name(m.role).to_string(),
        leader: m.leader.map(|l| l.0),
        leader_api: m.leader.and_then(api_of).map(|a| a.to_string()),
        voters: membership.configs().iter().map(|c| c.iter().map(|n| n.0).collect()).collect(),
        learners: membership.learners().iter().map(|n| n.0).collect(),
        joint: membership.is_joint(),
        committed,
        nodes,
    }
}

/// `node`'s view of the configuration in force.
fn current_members(node: &KvNode, api_of: impl Fn(NodeId) -> Option<SocketAddr>) -> MembersReply {
    let m = node.metrics().borrow().clone();
    members_reply(node, &m.membership, m.membership_committed, api_of)
}

/// Adds learner `id` through `node` (which must lead) and waits for it to catch up, for at
/// most `wait`. A node that is a learner already with the same information is waited for the
/// same way, so that asking again after a timeout goes on waiting.
pub async fn add_learner_on(
    node: &KvNode,
    id: NodeId,
    info: String,
    wait: Duration,
) -> Result<Membership, MembersError> {
    let deadline = tokio::time::Instant::now() + wait;
    // The engine waits for the commit index as of its call, which is no later than this.
    let target = node.metrics().borrow().commit;
    match tokio::time::timeout_at(deadline, node.add_learner(id, info, true)).await {
        Ok(Ok(m)) => return Ok(m),
        Ok(Err(ChangeMembershipError::NoChange)) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(learner_timeout(node, id, target, wait)),
    }
    let mut rx = node.metrics();
    let settled = rx.wait_for(|m| {
        m.role != Role::Leader
            || m.state != NodeState::Running
            || m.replication.get(&id).is_some_and(|i| *i >= target)
    });
    let m = match tokio::time::timeout_at(deadline, settled).await {
        Ok(Ok(m)) => m.clone(),
        Ok(Err(_)) => return Err(ChangeMembershipError::Shutdown.into()),
        Err(_) => return Err(learner_timeout(node, id, target, wait)),
    };
    match (&m.state, m.role) {
        (NodeState::Running, Role::Leader) => Ok(m.membership),
        (NodeState::Running, _) => {
            Err(ChangeMembershipError::NotLeader { leader: m.leader }.into())
        }
        (NodeState::Failed(f), _) => Err(ChangeMembershipError::Fatal(f.clone()).into()),
        _ => Err(ChangeMembershipError::Shutdown.into()),
    }
}

/// What is known when the wait for learner `id` ended.
fn learner_timeout(
    node: &KvNode,
    id: NodeId,
    target: raftkit::LogIndex,
    wait: Duration,
) -> MembersError {
    let m = node.metrics().borrow().clone();
    let wait = seconds(wait);
    let id = id.0;
    if m.membership.learners().contains(&NodeId(id)) {
        let has = match m.replication.get(&NodeId(id)) {
            Some(i) if i.0 > 0 => format!("it has the log up to index {}", i.0),
            _ => "it has acknowledged no entry yet (is it running, at the address given?)"
                .to_string(),
        };
        MembersError::TimedOut(format!(
            "node {id} is a learner now but had not caught up within {wait}: {has}, and needs \
             index {} (the commit index when it was added). `kv members` shows its progress; \
             asking to add it again waits again",
            target.0
        ))
    } else {
        MembersError::TimedOut(format!(
            "the change adding node {id} as a learner did not commit within {wait}; it may \
             still: `kv members` shows whether it did"
        ))
    }
}

/// A wait for people: `2.5 s`.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Runs `change` through `node` (which must lead), waiting at most `wait` for it to commit.
async fn change_on(
    node: &KvNode,
    change: ChangeMembers,
    what: String,
    wait: Duration,
) -> Result<Membership, MembersError> {
    match tokio::time::timeout(wait, node.change_membership(change, ChangeOptions::default())).await
    {
        Ok(done) => Ok(done?),
        Err(_) => Err(MembersError::TimedOut(format!(
            "{what} did not commit within {}; it may still: `kv members` shows whether it did",
            seconds(wait)
        ))),
    }
}

/// Promotes learner `id` through `node`.
pub async fn promote_on(
    node: &KvNode,
    id: NodeId,
    wait: Duration,
) -> Result<Membership, MembersError> {
    let change = ChangeMembers::PromoteLearners([id].into());
    change_on(node, change, format!("promoting node {}", id.0), wait).await
}

/// Removes voter or learner `id` through `node`.
pub async fn remove_on(
    node: &KvNode,
    id: NodeId,
    wait: Duration,
) -> Result<Membership, MembersError> {
    let m = node.metrics().borrow().clone();
    // Only the leader's view decides which kind of removal this is; elsewhere the engine
    // answers `not_leader` whatever the change.
    let change = if m.role == Role::Leader && m.membership.learners().contains(&id) {
        ChangeMembers::RemoveLearners([id].into())
    } else if m.role != Role::Leader || m.membership.is_voter(id) {
        ChangeMembers::RemoveVoters([id].into())
    } else {
        return Err(MembersError::BadRequest(format!(
            "node {} is not a member of the cluster",
            id.0
        )));
    };
    change_on(node, change, format!("removing node {}", id.0), wait).await
}

/// Hands leadership from `node` (which must lead) to `to`, or with `None` to the most
/// up-to-date other voter, and waits until the new leader leads (at most twice
/// `election_timeout_max`, the engine's limit). Returns the node that led and the new leader.
///
/// What the operator asked for counts as done, although the engine reports it otherwise:
/// `to` leading already, and, with no target named, another node than the one asked for
/// winning the election the transfer started.
pub async fn transfer_on(
    node: &KvNode,
    to: Option<NodeId>,
) -> Result<(NodeId, NodeId), TransferError> {
    use raftkit::core::TransferError as Refused;
    let from = node.id();
    match node.transfer_leadership(to).await {
        Ok(leader) => Ok((from, leader)),
        Err(TransferError::Refused(Refused::AlreadyLeader(id))) => Ok((from, id)),
        Err(TransferError::LeadershipLost { leader: Some(l) }) if to.is_none() && l != from => {
            Ok((from, l))
        }
        Err(e) => Err(e),
    }
}

/// Serves one node: a follower answers `not_leader`, with the leader's API address when it is
/// in `peer_apis`, and the client goes there.
pub struct SingleNode {
    /// The node.
    pub node: KvNode,
    /// The API address of each member (from `kv node --peer-apis`; may be empty).
    pub peer_apis: BTreeMap<NodeId, SocketAddr>,
}

#[async_trait]
impl Service for SingleNode {
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError> {
        self.node.client_write(cmd).await
    }

    async fn read(&self, query: KvQuery, level: ReadLevel) -> Result<KvOutput, ReadError> {
        self.node.client_read(query, level.policy()).await
    }

    async fn transfer_leader(&self, to: Option<NodeId>) -> Result<(NodeId, NodeId), TransferError> {
        transfer_on(&self.node, to).await
    }

    fn status(&self) -> Vec<NodeStatus> {
        let mut s = node_status(&self.node);
        s.leader_api = s.leader.and_then(|l| self.api_of(NodeId(l))).map(|a| a.to_string());
        vec![s]
    }

    fn api_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.peer_apis.get(&id).copied()
    }

    fn nodes(&self) -> Vec<KvNode> {
        vec![self.node.clone()]
    }

    fn members(&self) -> MembersReply {
        current_members(&self.node, |id| self.api_of(id))
    }

    async fn add_learner(
        &self,
        id: NodeId,
        addr: Option<String>,
        wait: Duration,
    ) -> Result<MembersReply, MembersError> {
        // The members dial the new node at the address the membership carries.
        let Some(addr) = addr else {
            return Err(MembersError::BadRequest(
                "`addr` is required: the new node's Raft (QUIC) address, ip:port".into(),
            ));
        };
        let m = add_learner_on(&self.node, id, addr, wait).await?;
        Ok(members_reply(&self.node, &m, true, |id| self.api_of(id)))
    }

    async fn promote(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError> {
        let m = promote_on(&self.node, id, wait).await?;
        Ok(members_reply(&self.node, &m, true, |id| self.api_of(id)))
    }

    async fn remove(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError> {
        let m = remove_on(&self.node, id, wait).await?;
        Ok(members_reply(&self.node, &m, true, |id| self.api_of(id)))
    }
}

/// Starts a node of an in-process cluster that joins it (no configuration; it waits to be
/// added): what [`LocalCluster`] runs when asked to add a node it does not run yet.
pub type StartJoiner = Box<dyn Fn(NodeId) -> BoxFuture<'static, Result<KvNode>> + Send + Sync>;

/// Serves every node of an in-process cluster (the in-memory network) behind one address:
/// commands go to whichever node leads. Adding a learner starts that node in this process
/// first; a node removed from the cluster is stopped.
pub struct LocalCluster {
    nodes: Mutex<Vec<KvNode>>,
    start_joiner: StartJoiner,
}

impl LocalCluster {
    /// Serves `nodes`; `start_joiner` starts a node to add.
    pub fn new(nodes: Vec<KvNode>, start_joiner: StartJoiner) -> LocalCluster {
        LocalCluster { nodes: Mutex::new(nodes), start_joiner }
    }

    fn running(&self) -> Vec<KvNode> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn leader(&self) -> Option<KvNode> {
        self.running().into_iter().find(|n| n.metrics().borrow().role == Role::Leader)
    }

    /// A node that is not the leader but knows one (for follower and stale reads), else the
    /// leader.
    fn follower(&self) -> Option<KvNode> {
        let follows = |n: &KvNode| {
            let m = n.metrics().borrow().clone();
            m.role != Role::Leader && m.leader.is_some() && matches!(m.state, NodeState::Running)
        };
        self.running().into_iter().find(follows).or_else(|| self.leader())
    }

    /// Runs `f` on the leader, waiting up to five seconds for one (elections take a few
    /// hundred milliseconds).
    async fn on_leader<T, F, Fut>(&self, f: F) -> Result<T, MembersError>
    where
        F: Fn(KvNode) -> Fut,
        Fut: Future<Output = Result<T, MembersError>>,
    {
        let mut last = ChangeMembershipError::NotLeader { leader: None }.into();
        for _ in 0..50 {
            if let Some(node) = self.leader() {
                match f(node).await {
                    Err(e @ MembersError::Change(ChangeMembershipError::NotLeader { .. })) => {
                        last = e
                    }
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    fn reply(&self, node: &KvNode, m: &Membership) -> MembersReply {
        members_reply(node, m, true, |_| None)
    }
}

#[async_trait]
impl Service for LocalCluster {
    async fn execute(&self, cmd: KvCommand) -> Result<KvOutput, WriteError> {
        let mut last = WriteError::NotLeader { leader: None };
        // Elections take a few hundred milliseconds; wait up to five seconds for a leader.
        for _ in 0..50 {
            if let Some(node) = self.leader() {
                match node.client_write(cmd.clone()).await {
                    Err(e @ WriteError::NotLeader { .. }) => last = e,
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// Linearizable and lease reads go to the leader; follower and stale reads to a follower,
    /// as a client spreading its reads would send them.
    async fn read(&self, query: KvQuery, level: ReadLevel) -> Result<KvOutput, ReadError> {
        let mut last = ReadError::NotLeader { leader: None };
        // Wait up to five seconds for a leader, as `execute` does.
        for _ in 0..50 {
            let node = if level.leader_only() { self.leader() } else { self.follower() };
            if let Some(node) = node {
                match node.client_read(query.clone(), level.policy()).await {
                    Err(e @ (ReadError::NotLeader { .. } | ReadError::LeadershipLost)) => last = e,
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    async fn transfer_leader(&self, to: Option<NodeId>) -> Result<(NodeId, NodeId), TransferError> {
        let mut last =
            TransferError::Refused(raftkit::core::TransferError::NotLeader { leader: None });
        for _ in 0..50 {
            if let Some(node) = self.leader() {
                match transfer_on(&node, to).await {
                    Err(
                        e @ TransferError::Refused(raftkit::core::TransferError::NotLeader {
                            ..
                        }),
                    ) => last = e,
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    fn status(&self) -> Vec<NodeStatus> {
        self.running().iter().map(node_status).collect()
    }

    fn nodes(&self) -> Vec<KvNode> {
        self.running()
    }

    fn members(&self) -> MembersReply {
        let node = self.leader().or_else(|| self.running().into_iter().next());
        match node {
            Some(node) => current_members(&node, |_| None),
            None => MembersReply {
                id: 0,
                role: "stopped".into(),
                leader: None,
                leader_api: None,
                voters: Vec::new(),
                learners: Vec::new(),
                joint: false,
                committed: false,
                nodes: Vec::new(),
            },
        }
    }

    async fn add_learner(
        &self,
        id: NodeId,
        addr: Option<String>,
        wait: Duration,
    ) -> Result<MembersReply, MembersError> {
        if !self.running().iter().any(|n| n.id() == id) {
            let node = (self.start_joiner)(id)
                .await
                .map_err(|e| MembersError::BadRequest(format!("starting node {}: {e:#}", id.0)))?;
            self.nodes.lock().unwrap_or_else(|p| p.into_inner()).push(node);
        }
        // The in-memory network needs no address; one given is carried all the same.
        let info = addr.unwrap_or_default();
        self.on_leader(|node| {
            let info = info.clone();
            async move {
                let m = add_learner_on(&node, id, info, wait).await?;
                Ok(self.reply(&node, &m))
            }
        })
        .await
    }

    async fn promote(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError> {
        self.on_leader(|node| async move {
            let m = promote_on(&node, id, wait).await?;
            Ok(self.reply(&node, &m))
        })
        .await
    }

    async fn remove(&self, id: NodeId, wait: Duration) -> Result<MembersReply, MembersError> {
        let (node, m) = self
            .on_leader(|node| async move {
                let m = remove_on(&node, id, wait).await?;
                Ok((node, m))
            })
            .await?;
        let reply = self.reply(&node, &m);
        // A removed node has nothing left to do here: stop it.
        let removed = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let i = nodes.iter().position(|n| n.id() == id && !m.contains(id));
            i.map(|i| nodes.remove(i))
        };
        if let Some(node) = removed {
            if let Err(e) = node.shutdown().await {
                tracing::warn!(node = %id, "the removed node stopped with an error: {e}");
            }
        }
        Ok(reply)
    }
}

/// A node's status as the protocol reports it.
pub fn node_status(node: &KvNode) -> NodeStatus {
    let m = node.metrics().borrow().clone();
    let replication = if m.role == Role::Leader {
        let last = m.last_log.index.0;
        let peers = m.replication.iter().filter(|(id, _)| **id != m.id);
        peers
            .map(|(id, at)| PeerLag { id: id.0, matched: at.0, lag: last.saturating_sub(at.0) })
            .collect()
    } else {
        Vec::new()
    };
    let error = match &m.state {
        NodeState::Failed(e) => Some(e.to_string()),
        _ => None,
    };
    let (applied, digest) = node.digest();
    NodeStatus {
        id: m.id.0,
        role: role_name(m.role).to_string(),
        term: m.term.0,
        leader: m.leader.map(|l| l.0),
        leader_api: None,
        commit: m.commit.0,
        applied: m.applied.0,
        last_log: m.last_log.index.0,
        snapshot: m.snapshot.map(|s| s.index.0),
        voters: m.voters.iter().map(|v| v.0).collect(),
        replication,
        error,
        last_error: m.last_error.clone(),
        digest: Some(StateDigest { applied: applied.0, digest: format!("{digest:016x}") }),
    }
}

/// A role as the protocol names it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Learner => "learner",
    }
}

/// An error reply.
struct ApiError(StatusCode, ErrorReply);

/// Where a node's API is, if known ([`Service::api_of`]).
type ApiOf<'a> = &'a dyn Fn(NodeId) -> Option<SocketAddr>;

impl ApiError {
    fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorReply {
                kind: ErrorKind::BadRequest,
                error: error.into(),
                leader: None,
                leader_api: None,
            },
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorKind, error: impl Into<String>) -> ApiError {
        ApiError(status, ErrorReply { kind, error: error.into(), leader: None, leader_api: None })
    }

    /// A `not_leader` reply: it names the leader and, when `api_of` knows it, the leader's
    /// API address.
    fn not_leader(leader: Option<NodeId>, api_of: ApiOf<'_>) -> ApiError {
        let leader_api = leader.and_then(api_of).map(|a| a.to_string());
        // Written here rather than taken from the engine, so the reply names the leader's
        // address as well as its id.
        let error = match (leader, &leader_api) {
            (Some(l), Some(api)) => format!("not the leader; the leader is node {} at {api}", l.0),
            (Some(l), None) => format!("not the leader; the leader is node {}", l.0),
            (None, _) => "not the leader, and no leader is known yet".to_string(),
        };
        let kind = ErrorKind::NotLeader;
        ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorReply { kind, error, leader: leader.map(|l| l.0), leader_api },
        )
    }

    /// The reply to a failed membership request.
    fn from_members(e: MembersError, api_of: ApiOf<'_>) -> ApiError {
        use ChangeMembershipError as C;
        let e = match e {
            MembersError::BadRequest(e) => return ApiError::bad_request(e),
            MembersError::TimedOut(e) => {
                return ApiError::new(StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout, e);
            }
            MembersError::Change(e) => e,
        };
        let (status, kind) = match &e {
            C::NotLeader { leader } => return ApiError::not_leader(*leader, api_of),
            C::InProgress { .. } | C::LeaderNotReady | C::LearnerLagging { .. } => {
                (StatusCode::CONFLICT, ErrorKind::RetryLater)
            }
            C::WouldLeaveNoVoters | C::UnknownNode { .. } | C::NoChange | C::Invalid(_) => {
                (StatusCode::BAD_REQUEST, ErrorKind::BadRequest)
            }
            C::Overwritten { .. } => (StatusCode::CONFLICT, ErrorKind::NotApplied),
            C::Shutdown | C::Fatal(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::OutcomeUnknown),
        };
        // The engine's messages name nodes as `n4`; the protocol says `node 4` everywhere.
        let error = match &e {
            C::UnknownNode { node, why } => format!("node {} {why}", node.0),
            C::InProgress { index } => format!(
                "another membership change is in progress (the configuration at index {} is not \
                 committed yet); retry once it is",
                index.0
            ),
            C::LearnerLagging { node, matched, last } => format!(
                "learner {} is behind: it has the log up to {}, the leader up to {}; retry once \
                 it has caught up (`kv members` shows its lag)",
                node.0, matched.0, last.0
            ),
            e => e.to_string(),
        };
        ApiError::new(status, kind, error)
    }

    /// The reply to a failed command; a `not_leader` reply names the leader and, when `api_of`
    /// knows it, the leader's API address.
    fn from_write(e: WriteError, api_of: ApiOf<'_>) -> ApiError {
        let error = e.to_string();
        let (status, kind, leader) = match e {
            WriteError::NotLeader { leader } => return ApiError::not_leader(leader, api_of),
            WriteError::Encode(_) | WriteError::ForwardRefused(_) => {
                (StatusCode::BAD_REQUEST, ErrorKind::BadRequest, None)
            }
            WriteError::Shutdown | WriteError::Fatal(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable, None)
            }
            WriteError::Overwritten { .. } => (StatusCode::CONFLICT, ErrorKind::NotApplied, None),
            // Not appended: the leader takes commands again once the transfer is over (or
            // the new leader does; this node then answers `not_leader`).
            WriteError::TransferInProgress { .. } => {
                (StatusCode::CONFLICT, ErrorKind::RetryLater, None)
            }
            // `OutcomeUnknown`, `ForwardOutcomeUnknown` and whatever a newer engine adds.
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::OutcomeUnknown, None),
        };
        ApiError(status, ErrorReply { kind, error, leader, leader_api: None })
    }

    /// The reply to a failed read: nothing was written, so every kind but `bad_request` may
    /// be retried. A `not_leader` reply names the leader as for a write.
    fn from_read(e: ReadError, level: ReadLevel, api_of: ApiOf<'_>) -> ApiError {
        let (status, kind, error) = match e {
            ReadError::NotLeader { leader } if level.leader_only() || leader.is_some() => {
                return ApiError::not_leader(leader, api_of);
            }
            ReadError::NotLeader { .. } => (
                StatusCode::MISDIRECTED_REQUEST,
                ErrorKind::NotLeader,
                format!(
                    "this node knows no leader yet, and a {level} read needs the leader to \
                     confirm its read index; retry in a moment or on another node"
                ),
            ),
            ReadError::LeaseNeedsCheckQuorum => (
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "lease reads need check_quorum, which this node's configuration turns off; \
                 read with `linearizable` (the default) instead"
                    .to_string(),
            ),
            e @ (ReadError::LeadershipLost | ReadError::TooManyReads) => {
                (StatusCode::CONFLICT, ErrorKind::RetryLater, format!("{e}; nothing was read"))
            }
            ReadError::Timeout(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                format!(
                    "the {level} read was not confirmed within {} (is this node cut off from \
                     the leader?)",
                    seconds(d)
                ),
            ),
            e => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable, e.to_string()),
        };
        ApiError::new(status, kind, error)
    }

    /// The reply to a failed leadership transfer to `to` (`None`: any voter). Whatever may be
    /// asked again with a chance of success is `retry_later`, where the retry cannot move
    /// leadership twice: with a target named, a retry on the new leader either finds the
    /// target leading or moves leadership there.
    fn from_transfer(e: TransferError, to: Option<NodeId>, api_of: ApiOf<'_>) -> ApiError {
        use raftkit::core::TransferError as Refused;
        let retry = |e: String| ApiError::new(StatusCode::CONFLICT, ErrorKind::RetryLater, e);
        match e {
            TransferError::Refused(Refused::NotLeader { leader }) => {
                ApiError::not_leader(leader, api_of)
            }
            TransferError::Refused(Refused::InProgress { to }) => {
                retry(format!("a transfer to node {} is in progress; retry once it is over", to.0))
            }
            // The engine's messages name nodes as `n4`; the protocol says `node 4` everywhere.
            TransferError::Refused(Refused::NotAVoter(n)) => ApiError::bad_request(format!(
                "node {} is not a voter of the configuration in force (`kv members` lists them)",
                n.0
            )),
            TransferError::Refused(Refused::NoTarget) => {
                ApiError::bad_request("there is no other voter to hand leadership to".to_string())
            }
            TransferError::Refused(e) if e.is_retryable() => retry(e.to_string()),
            TransferError::Refused(e) => ApiError::bad_request(e.to_string()),
            TransferError::TimedOut(n) => retry(format!(
                "node {} did not take over in time (is it running, and caught up?); the leader \
                 leads on",
                n.0
            )),
            TransferError::LeadershipLost { leader: Some(l) } if to.is_some() => retry(format!(
                "leadership did not reach node {} (node {} leads now); retry to move it on",
                to.map_or(0, |t| t.0),
                l.0
            )),
            TransferError::LeadershipLost { leader: Some(l) } => {
                retry(format!("the transfer did not finish in time, and node {} still leads", l.0))
            }
            TransferError::LeadershipLost { leader: None } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::Timeout,
                "this node stopped leading, but no new leader is known yet: `kv members` shows \
                 who leads once one is elected",
            ),
            e @ (TransferError::Shutdown | TransferError::Fatal(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                e.to_string(),
            ),
            e => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::OutcomeUnknown,
                e.to_string(),
            ),
        }
    }
}

type Svc = State<Arc<dyn Service>>;

async fn run(svc: &dyn Service, cmd: KvCommand) -> Result<KvOutput, ApiError> {
    svc.execute(cmd).await.map_err(|e| ApiError::from_write(e, &|id| svc.api_of(id)))
}

fn unexpected(out: KvOutput) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorReply {
            kind: ErrorKind::OutcomeUnknown,
            error: format!("the state machine answered {out:?}"),
            leader: None,
            leader_api: None,
        },
    )
}

async fn put(
    State(svc): Svc,
    req: Result<Json<PutRequest>, JsonRejection>,
) -> Result<Json<PrevReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[Some(&req.value)]).map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::put(req.key, req.value)).await? {
        KvOutput::Prev(prev) => Ok(Json(PrevReply { prev })),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/get?read=…`: a read through [`Service::read`], which writes nothing to the log.
async fn get_key(
    State(svc): Svc,
    uri: Uri,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<GetReply>, ApiError> {
    let level = read_level_from_query(uri.query()).map_err(ApiError::bad_request)?;
    let Json(req) = req?;
    validate(&req.key, &[]).map_err(ApiError::bad_request)?;
    let read = svc.read(KvQuery::get(req.key), level).await;
    match read.map_err(|e| ApiError::from_read(e, level, &|id| svc.api_of(id)))? {
        KvOutput::Value(value) => Ok(Json(GetReply { value })),
        other => Err(unexpected(other)),
    }
}

async fn delete(
    State(svc): Svc,
    req: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<PrevReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[]).map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::delete(req.key)).await? {
        KvOutput::Prev(prev) => Ok(Json(PrevReply { prev })),
        other => Err(unexpected(other)),
    }
}

async fn cas(
    State(svc): Svc,
    req: Result<Json<CasRequest>, JsonRejection>,
) -> Result<Json<CasReply>, ApiError> {
    let Json(req) = req?;
    validate(&req.key, &[req.expected.as_deref(), req.new.as_deref()])
        .map_err(ApiError::bad_request)?;
    match run(&*svc, KvCommand::cas(req.key, req.expected, req.new)).await? {
        KvOutput::Cas { swapped, current } => Ok(Json(CasReply { swapped, current })),
        other => Err(unexpected(other)),
    }
}

async fn status(State(svc): Svc) -> Json<StatusReply> {
    Json(StatusReply { nodes: svc.status() })
}

async fn members(State(svc): Svc) -> Json<MembersReply> {
    Json(svc.members())
}

/// A validated node id and wait from a membership request.
fn change_args(
    id: u64,
    addr: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(NodeId, Duration), ApiError> {
    let ms = validate_change(id, addr, timeout_ms).map_err(ApiError::bad_request)?;
    Ok((NodeId(id), Duration::from_millis(ms)))
}

async fn add_learner(
    State(svc): Svc,
    req: Result<Json<AddLearnerRequest>, JsonRejection>,
) -> Result<Json<MembersReply>, ApiError> {
    let Json(req) = req?;
    let (id, wait) = change_args(req.id, req.addr.as_deref(), req.timeout_ms)?;
    // Carried in its canonical form, which is what every member parses.
    let addr = req.addr.and_then(|a| a.trim().parse::<SocketAddr>().ok()).map(|a| a.to_string());
    svc.add_learner(id, addr, wait)
        .await
        .map(Json)
        .map_err(|e| ApiError::from_members(e, &|id| svc.api_of(id)))
}

async fn promote(
    State(svc): Svc,
    req: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<MembersReply>, ApiError> {
    let Json(req) = req?;
    let (id, wait) = change_args(req.id, None, req.timeout_ms)?;
    svc.promote(id, wait)
        .await
        .map(Json)
        .map_err(|e| ApiError::from_members(e, &|id| svc.api_of(id)))
}

async fn remove(
    State(svc): Svc,
    req: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<MembersReply>, ApiError> {
    let Json(req) = req?;
    let (id, wait) = change_args(req.id, None, req.timeout_ms)?;
    svc.remove(id, wait)
        .await
        .map(Json)
        .map_err(|e| ApiError::from_members(e, &|id| svc.api_of(id)))
}

async fn transfer_leader(
    State(svc): Svc,
    req: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Json<TransferReply>, ApiError> {
    let Json(req) = req?;
    if req.to == Some(0) {
        return Err(ApiError::bad_request("node ids start at 1"));
    }
    let wait =
        Duration::from_millis(validate_timeout(req.timeout_ms).map_err(ApiError::bad_request)?);
    let to = req.to.map(NodeId);
    let Ok(moved) = tokio::time::timeout(wait, svc.transfer_leader(to)).await else {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Timeout,
            format!(
                "the transfer did not finish within {}; it may still: `kv members` shows who leads",
                seconds(wait)
            ),
        ));
    };
    let (from, leader) = moved.map_err(|e| ApiError::from_transfer(e, to, &|id| svc.api_of(id)))?;
    Ok(Json(TransferReply {
        from: from.0,
        leader: leader.0,
        leader_api: svc.api_of(leader).map(|a| a.to_string()),
    }))
}

/// `GET /metrics`, from the process's recorder (see [`crate::prometheus`]).
async fn metrics() -> Response {
    match crate::prometheus::render() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder is installed").into_response(),
    }
}

/// The API's routes over `service`.
pub fn router(service: Arc<dyn Service>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/put", post(put))
        .route("/v1/get", post(get_key))
        .route("/v1/delete", post(delete))
        .route("/v1/cas", post(cas))
        .route("/v1/members", get(members))
        .route("/v1/members/add-learner", post(add_learner))
        .route("/v1/members/promote", post(promote))
        .route("/v1/members/remove", post(remove))
        .route("/v1/transfer-leader", post(transfer_leader))
        // A value at the limit, JSON-escaped, plus the key and the framing.
        .layer(DefaultBodyLimit::max(2 * MAX_VALUE_BYTES + 64 * 1024))
        .with_state(service)
}

/// A bound API server; [`ApiServer::run`] serves until `shutdown` resolves.
pub struct ApiServer {
    listener: ApiListener,
    service: Arc<dyn Service>,
}

enum ApiListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl ApiServer {
    /// Binds `addr` for plain HTTP (port 0 picks a free port: see [`ApiServer::local_addr`]).
    /// Anyone who can reach the address can use the API: [`crate::serve`] allows this on
    /// loopback only, unless told otherwise.
    pub async fn bind(addr: SocketAddr, service: Arc<dyn Service>) -> Result<ApiServer> {
        let listener = bind(addr).await?;
        Ok(ApiServer { listener: ApiListener::Plain(listener), service })
    }

    /// Binds `addr` for HTTPS with `tls` (from
    /// [`NodeCerts::https_server_config`](raftkit_quic::NodeCerts::https_server_config): the
    /// node's certificate, and a client certificate from the cluster CA required of every
    /// client). A connection whose handshake fails never reaches the API.
    pub async fn bind_tls(
        addr: SocketAddr,
        service: Arc<dyn Service>,
        tls: Arc<ServerConfig>,
    ) -> Result<ApiServer> {
        let listener = bind(addr).await?;
        let listener = TlsListener::start(listener, TlsAcceptor::from(tls))?;
        Ok(ApiServer { listener: ApiListener::Tls(listener), service })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(match &self.listener {
            ApiListener::Plain(l) => l.local_addr()?,
            ApiListener::Tls(l) => l.local,
        })
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self.listener, ApiListener::Tls(_))
    }

    /// Serves requests until `shutdown` resolves, then finishes the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let app = router(self.service);
        match self.listener {
            ApiListener::Plain(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            ApiListener::Tls(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
        }
        .context("serving the API")
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the API address {addr}"))
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and runs their TLS handshakes in their own tasks, so that a slow or
/// failing client delays no one; axum gets only the connections whose handshake succeeded.
struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn start(listener: TcpListener, acceptor: TlsAcceptor) -> Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        // Ends when the listener is dropped (the server stopped): `tx.closed()` resolves.
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as axum does.
                            tracing::warn!("accepting an API connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; closing");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "API client refused: {e}"),
                        Err(_) => tracing::warn!(%peer, "API client refused: handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task is gone (only if the runtime is stopping): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use raftkit::{LogId, LogIndex, Term};

    use super::*;

    /// Each refusal of a membership change gets the status and kind the protocol documents:
    /// what may be retried says so, what cannot succeed is a bad request.
    #[test]
    fn membership_errors_map_to_the_documented_kinds() {
        use ChangeMembershipError as C;
        let api: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        let reply = |e: MembersError| ApiError::from_members(e, &|_| Some(api));
        for (e, status, kind) in [
            (C::InProgress { index: LogIndex(7) }, 409, ErrorKind::RetryLater),
            (C::LeaderNotReady, 409, ErrorKind::RetryLater),
            (
                C::LearnerLagging { node: NodeId(4), matched: LogIndex(3), last: LogIndex(9) },
                409,
                ErrorKind::RetryLater,
            ),
            (C::WouldLeaveNoVoters, 400, ErrorKind::BadRequest),
            (
                C::UnknownNode { node: NodeId(4), why: "is not a learner" },
                400,
                ErrorKind::BadRequest,
            ),
            (C::NoChange, 400, ErrorKind::BadRequest),
            (C::Invalid("x".into()), 400, ErrorKind::BadRequest),
            (
                C::Overwritten { log_id: LogId { term: Term(2), index: LogIndex(5) } },
                409,
                ErrorKind::NotApplied,
            ),
            (C::Shutdown, 503, ErrorKind::Unavailable),
        ] {
            let text = e.to_string();
            let ApiError(s, r) = reply(MembersError::Change(e));
            assert_eq!((s.as_u16(), r.kind), (status, kind), "{text}");
            // The engine's `n4` and `i7` are spelt out for people.
            let terse = r.error.split([' ', '(']).any(|w| {
                w.len() > 1
                    && w.starts_with(['n', 'i'])
                    && w[1..].starts_with(|c: char| c.is_ascii_digit())
            });
            assert!(!terse, "{}", r.error);
        }
        let ApiError(s, r) = reply(C::NotLeader { leader: Some(NodeId(2)) }.into());
        assert_eq!((s.as_u16(), r.kind, r.leader), (421, ErrorKind::NotLeader, Some(2)));
        assert_eq!(r.leader_api.as_deref(), Some("127.0.0.1:8002"));
        let ApiError(s, r) = reply(MembersError::TimedOut("waited".into()));
        assert_eq!((s.as_u16(), r.kind, r.error.as_str()), (504, ErrorKind::Timeout, "waited"));
        let ApiError(s, r) = reply(MembersError::BadRequest("no".into()));
        assert_eq!((s.as_u16(), r.kind), (400, ErrorKind::BadRequest));
    }

    /// Reads: a leader read on a follower is redirected like a write; what may succeed on a
    /// retry says so; a lease read without check_quorum is a bad request, whatever the node.
    #[test]
    fn read_errors_map_to_the_documented_kinds() {
        let api: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        let reply = |e: ReadError, level| ApiError::from_read(e, level, &|_| Some(api));
        let not_leader = ReadError::NotLeader { leader: Some(NodeId(2)) };
        let ApiError(s, r) = reply(not_leader, ReadLevel::Linearizable);
        assert_eq!((s.as_u16(), r.kind, r.leader), (421, ErrorKind::NotLeader, Some(2)));
        assert_eq!(r.leader_api.as_deref(), Some("127.0.0.1:8002"));
        assert!(r.error.contains("node 2 at 127.0.0.1:8002"), "{}", r.error);
        let ApiError(s, r) = reply(ReadError::NotLeader { leader: None }, ReadLevel::Follower);
        assert_eq!((s.as_u16(), r.kind, r.leader), (421, ErrorKind::NotLeader, None));
        assert!(r.error.contains("knows no leader yet") && r.error.contains("follower read"));
        for (e, level, status, kind, says) in [
            (
                ReadError::LeaseNeedsCheckQuorum,
                ReadLevel::Lease,
                400,
                ErrorKind::BadRequest,
                "check_quorum",
            ),
            (
                ReadError::LeadershipLost,
                ReadLevel::Linearizable,
                409,
                ErrorKind::RetryLater,
                "nothing was read",
            ),
            (ReadError::TooManyReads, ReadLevel::Follower, 409, ErrorKind::RetryLater, "too many"),
            (
                ReadError::Timeout(Duration::from_millis(1200)),
                ReadLevel::Follower,
                503,
                ErrorKind::Unavailable,
                "follower read was not confirmed within 1.2 s",
            ),
            (ReadError::Shutdown, ReadLevel::Stale, 503, ErrorKind::Unavailable, "shutting down"),
        ] {
            let ApiError(s, r) = reply(e, level);
            assert_eq!((s.as_u16(), r.kind), (status, kind), "{}", r.error);
            assert!(r.error.contains(says), "{}", r.error);
        }
    }

    /// Transfers: refusals that cannot succeed are bad requests, those that may later are
    /// `retry_later`, a follower redirects to the leader.
    #[test]
    fn transfer_errors_map_to_the_documented_kinds() {
        use raftkit::core::TransferError as Refused;
        let api: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        let reply = |e: TransferError, to| ApiError::from_transfer(e, to, &|_| Some(api));
        let to = Some(NodeId(3));
        for (e, to, status, kind, says) in [
            (
                Refused::NotAVoter(NodeId(7)).into(),
                Some(NodeId(7)),
                400,
                ErrorKind::BadRequest,
                "node 7 is not a voter",
            ),
            (Refused::NoTarget.into(), None, 400, ErrorKind::BadRequest, "no other voter"),
            (
                Refused::InProgress { to: NodeId(3) }.into(),
                None,
                409,
                ErrorKind::RetryLater,
                "transfer to node 3 is in progress",
            ),
            (
                TransferError::TimedOut(NodeId(3)),
                to,
                409,
                ErrorKind::RetryLater,
                "node 3 did not take over",
            ),
            (
                TransferError::LeadershipLost { leader: Some(NodeId(2)) },
                to,
                409,
                ErrorKind::RetryLater,
                "did not reach node 3 (node 2 leads now)",
            ),
            (
                TransferError::LeadershipLost { leader: None },
                None,
                504,
                ErrorKind::Timeout,
                "no new leader is known",
            ),
            (TransferError::Shutdown, to, 503, ErrorKind::Unavailable, "shutting down"),
        ] {
            let ApiError(s, r) = reply(e, to);
            assert_eq!((s.as_u16(), r.kind), (status, kind), "{}", r.error);
            assert!(r.error.contains(says), "{}", r.error);
            // The engine's `n7` is spelt out for people.
            let terse = r.error.split([' ', '(']).any(|w| {
                w.len() > 1
                    && w.starts_with('n')
                    && w[1..].starts_with(|c: char| c.is_ascii_digit())
            });
            assert!(!terse, "{}", r.error);
        }
        let ApiError(s, r) = reply(Refused::NotLeader { leader: Some(NodeId(2)) }.into(), to);
        assert_eq!((s.as_u16(), r.kind, r.leader), (421, ErrorKind::NotLeader, Some(2)));
        assert_eq!(r.leader_api.as_deref(), Some("127.0.0.1:8002"));
    }

    /// The write errors the engine gained with forwarding and transfers: a write refused
    /// during a transfer was not appended (retry), one refused by the leader it was forwarded
    /// to cannot succeed, one whose forward went unanswered has an unknown outcome.
    #[test]
    fn new_write_errors_map_to_the_documented_kinds() {
        let reply = |e: WriteError| ApiError::from_write(e, &|_| None);
        for (e, status, kind) in [
            (WriteError::TransferInProgress { to: Some(NodeId(2)) }, 409, ErrorKind::RetryLater),
            (WriteError::ForwardRefused("too big".into()), 400, ErrorKind::BadRequest),
            (
                WriteError::ForwardOutcomeUnknown { leader: NodeId(1) },
                500,
                ErrorKind::OutcomeUnknown,
            ),
        ] {
            let ApiError(s, r) = reply(e);
            assert_eq!((s.as_u16(), r.kind), (status, kind), "{}", r.error);
        }
    }
}
