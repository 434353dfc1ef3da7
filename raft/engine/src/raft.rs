//! [`Raft`]: starting a node and the handle users hold.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use raftkit_core::{Config, Instant, LogIndex, Membership, NodeId, RaftCore, codec};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::driver::{Control, Driver, Proposal, Shared};
use crate::error::{Fatal, ReadError, StartError, TransferError, WriteError};
use crate::membership::{ChangeMembers, ChangeMembershipError, ChangeOptions};
use crate::metrics::{NodeState, Observer, RaftMetrics};
use crate::proposals::{self, ProposalSender};
use crate::reads::{ReadPolicy, ReadRequest};
use crate::startup;
use crate::telemetry::{self, Telemetry};
use crate::traits::{Inbox, LogStore, Network, StateMachine};
use crate::workers;

/// How many inbound messages may wait for the driver before new ones are dropped.
const INBOX_CAPACITY: usize = 4096;

/// A running Raft node: network `N`, log store `L`, state machine `S`.
///
/// `Raft` is a cheap, cloneable handle to one driver task that owns the protocol core; the log
/// store, the state machine and the network are driven from it. Application code that only
/// submits commands and reads metrics can hold a [`RaftHandle<S>`](RaftHandle) instead (from
/// [`handle`](Self::handle)), which does not name `N` and `L`. Dropping every `Raft` and every
/// `RaftHandle` of a node stops it, as does [`shutdown`](Self::shutdown).
pub struct Raft<N: Network, L: LogStore, S: StateMachine> {
    handle: RaftHandle<S>,
    network: Arc<N>,
    _log: PhantomData<fn() -> L>,
}

/// A running node, typed on its state machine alone: what application code needs to submit
/// commands, read metrics, take snapshots and stop the node, whatever its network and log
/// store.
///
/// Get one from [`Raft::handle`]. It is cheap to clone (one `Arc`) and holds the same channels
/// to the driver as the [`Raft`] it came from, so calls through it cost the same: no dynamic
/// dispatch is added. The node keeps running while any `Raft` or `RaftHandle` of it exists.
///
/// ```
/// # use raftkit::{Config, NodeId, Raft, RaftHandle};
/// # use raftkit_mem::{KvCommand, MemKv, MemLogStore, MemRouter};
/// /// Application code: no network or log store type in sight.
/// async fn put(node: &RaftHandle<MemKv>, key: &str, value: &str) {
///     let cmd = KvCommand::Put { key: key.into(), value: value.into() };
///     node.client_write(cmd).await.unwrap();
/// }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let router = MemRouter::new(1);
/// let config = Config::new(NodeId(1), [NodeId(1)]);
/// let raft = Raft::start(config, router.network(NodeId(1)), MemLogStore::new(), MemKv::new())
///     .await
///     .unwrap();
/// let node: RaftHandle<MemKv> = raft.handle();
/// node.wait_for(std::time::Duration::from_secs(5), |m| m.leader == Some(NodeId(1))).await;
/// put(&node, "greeting", "hello").await;
/// node.shutdown().await.unwrap();
/// # }
/// ```
pub struct RaftHandle<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: StateMachine> {
    id: NodeId,
    proposals: ProposalSender<S::Output>,
    reads: mpsc::Sender<ReadRequest<S>>,
    /// How long a read may wait for its confirmation.
    read_timeout: Duration,
    /// How long a transfer may take before the caller hears it timed out.
    transfer_timeout: Duration,
    transfer_on_shutdown: bool,
    control: mpsc::Sender<Control>,
    metrics: watch::Receiver<RaftMetrics>,
    shared: Arc<Shared>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// Shuts the network down for [`RaftHandle::kill`], which cannot name `N`. Outside the
    /// driver: the only indirect call is on this test path.
    #[cfg(feature = "test-util")]
    stop_network: StopNetwork,
}

#[cfg(feature = "test-util")]
type StopNetwork =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

impl<N: Network, L: LogStore, S: StateMachine> Clone for Raft<N, L, S> {
    fn clone(&self) -> Self {
        Raft { handle: self.handle.clone(), network: self.network.clone(), _log: PhantomData }
    }
}

impl<S: StateMachine> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        RaftHandle { inner: self.inner.clone() }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

impl<N: Network, L: LogStore, S: StateMachine> Raft<N, L, S> {
    /// Starts a node: validates `config`, loads the log and the state machine's applied index,
    /// starts the network and spawns the driver. Must be called inside a tokio runtime.
    ///
    /// A node of a new cluster starts with empty storage; a restarted node resumes from what
    /// its log store and state machine hold, applying only the committed entries its state
    /// machine lacks.
    pub async fn start(
        config: Config,
        network: N,
        log: L,
        state_machine: S,
    ) -> Result<Self, StartError> {
        Self::start_inner(config, network, log, state_machine, None).await
    }

    /// Like [`start`](Self::start), with an [`Observer`] that sees every change of the node's
    /// protocol state.
    pub async fn start_observed(
        config: Config,
        network: N,
        log: L,
        state_machine: S,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, StartError> {
        Self::start_inner(config, network, log, state_machine, Some(observer)).await
    }

    async fn start_inner(
        config: Config,
        network: N,
        log: L,
        state_machine: S,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let id = config.id;
        let (state_machine, init) = startup::initial_state(&log, state_machine).await?;
        let span = telemetry::node_span(id);
        span.in_scope(|| {
            tracing::info!(
                term = %init.hard_state.term, last = %init.last, applied = %init.applied,
                "starting"
            );
        });
        let init_applied = init.applied;
        let core = RaftCore::new(config.clone(), init, Instant::ZERO)?;
        let configured: std::collections::BTreeSet<NodeId> =
            config.members.iter().copied().collect();
        let in_force = core.membership();
        if !configured.is_empty() && !in_force.is_uninitialized() && in_force.voters() != configured
        {
            tracing::warn!(
                configured = ?configured,
                voters = ?in_force.voters(),
                learners = ?in_force.learners(),
                "the configured members differ from the configuration in the log or snapshot; \
                 using the log's (members only bootstraps a new cluster)"
            );
        }
        let telemetry = Telemetry::new(span.clone(), &core);
        let epoch = tokio::time::Instant::now();

        let network = Arc::new(network);
        let log = Arc::new(log);
        let (inbox, inbox_rx) = Inbox::channel(INBOX_CAPACITY);
        network.start(inbox).await.map_err(StartError::Network)?;

        let (proposals_tx, proposals_rx) = proposals::queue(config.max_proposal_batch.max(64) * 4);
        let (control_tx, control_rx) = mpsc::channel(4);
        let (reads_tx, reads_rx) = mpsc::channel(config.max_proposal_batch.max(64) * 4);
        let extras = crate::reads::Extras::new(init_applied);
        let (metrics_tx, metrics_rx) =
            watch::channel(RaftMetrics::from_core(&core, NodeState::Running));
        let (write_tx, write_rx) = mpsc::unbounded_channel();
        let (write_done_tx, write_done_rx) = mpsc::unbounded_channel();
        let write_queued = workers::Queued::default();
        let writer = tokio::spawn(
            workers::log_writer(
                log.clone(),
                write_rx,
                write_queued.clone(),
                write_done_tx,
                telemetry.write.clone(),
            )
            .instrument(span.clone()),
        );
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (apply_done_tx, apply_done_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inline_apply = state_machine.inline_apply();
        let state_machine: workers::SharedSm<S> = Arc::new(Mutex::new(state_machine));
        let apply_queued = workers::Queued::default();
        let applier = tokio::spawn(
            workers::apply_worker(
                state_machine.clone(),
                log.clone(),
                config.max_apply_batch,
                apply_rx,
                apply_queued.clone(),
                apply_done_tx,
                events_tx.clone(),
            )
            .instrument(span.clone()),
        );
        let (snapshot_tx, snapshot_rx) = mpsc::unbounded_channel();
        let receiver = tokio::spawn(
            workers::snapshot_receiver(
                log.clone(),
                snapshot_rx,
                apply_tx.clone(),
                events_tx.clone(),
                telemetry.snapshots_refused.clone(),
            )
            .instrument(span.clone()),
        );
        let shared = Arc::new(Shared::default());
        shared.register(&writer);
        shared.register(&applier);
        shared.register(&receiver);
        let driver = Driver::<N, L, S> {
            core,
            clock: (epoch, Instant::ZERO, 1.0),
            network: network.clone(),
            log,
            shared: shared.clone(),
            inbox: inbox_rx,
            proposals: proposals_rx,
            reads: reads_rx,
            extras,
            control: control_rx,
            metrics: metrics_tx,
            write_tx: Some(write_tx),
            write_queued,
            persisted_now: None,
            write_done: write_done_rx,
            writer: Some(writer),
            apply_tx: Some(apply_tx),
            state_machine,
            inline_apply,
            apply_queued,
            applied_now: None,
            apply_done: apply_done_rx,
            applier: Some(applier),
            events_tx,
            events: events_rx,
            snapshot_tx: Some(snapshot_tx),
            peers: Default::default(),
            waiters: Default::default(),
            batch: Vec::new(),
            failure: None,
            observer,
            last_status: None,
            membership_seen: None,
            membership_waiters: Vec::new(),
            telemetry,
            last_error: None,
        };
        // Every task of the node runs in its span, so each log line says which node it comes
        // from; the driver's, within it, in the span of its current term and role.
        let in_state = driver.telemetry.in_state();
        let task = tokio::spawn(in_state(driver.run()).instrument(span));
        #[cfg(feature = "test-util")]
        let stop_network: StopNetwork = {
            let network = network.clone();
            Box::new(move || {
                let network = network.clone();
                Box::pin(async move { network.shutdown().await })
            })
        };
        let handle = RaftHandle {
            inner: Arc::new(Inner {
                id,
                proposals: proposals_tx,
                reads: reads_tx,
                read_timeout: config.election_timeout_max * 2,
                transfer_timeout: config.election_timeout_max * 2,
                transfer_on_shutdown: config.transfer_on_shutdown,
                control: control_tx,
                metrics: metrics_rx,
                shared,
                driver: Mutex::new(Some(task)),
                #[cfg(feature = "test-util")]
                stop_network,
            }),
        };
        Ok(Raft { handle, network, _log: PhantomData })
    }

    /// A handle to this node typed on the state machine alone, for application code that
    /// should not name the network and log store types. See [`RaftHandle`].
    pub fn handle(&self) -> RaftHandle<S> {
        self.handle.clone()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.handle.id()
    }

    /// The network this node uses (for adapter-specific controls).
    pub fn network(&self) -> &N {
        &self.network
    }

    /// Proposes a command and waits until it is committed and applied on this node; see
    /// [`RaftHandle::client_write`].
    pub async fn client_write(&self, command: S::Command) -> Result<S::Output, WriteError> {
        self.handle.client_write(command).await
    }

    /// A live view of this node's state; see [`RaftHandle::metrics`].
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.handle.metrics()
    }

    /// Reads through the state machine without writing the log; see
    /// [`RaftHandle::client_read`].
    ///
    /// # Errors
    /// See [`ReadError`].
    pub async fn client_read(
        &self,
        query: S::Query,
        policy: ReadPolicy,
    ) -> Result<S::QueryOutput, ReadError> {
        self.handle.client_read(query, policy).await
    }

    /// Waits until this node's state machine may serve a read under `policy`; see
    /// [`RaftHandle::read_barrier`].
    ///
    /// # Errors
    /// See [`ReadError`].
    pub async fn read_barrier(&self, policy: ReadPolicy) -> Result<LogIndex, ReadError> {
        self.handle.read_barrier(policy).await
    }

    /// Hands leadership to another voter; see [`RaftHandle::transfer_leadership`].
    ///
    /// # Errors
    /// See [`TransferError`].
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        self.handle.transfer_leadership(to).await
    }

    /// Changes the cluster's membership; see [`RaftHandle::change_membership`].
    ///
    /// # Errors
    /// See [`ChangeMembershipError`].
    pub async fn change_membership(
        &self,
        change: ChangeMembers,
        options: ChangeOptions,
    ) -> Result<Membership, ChangeMembershipError> {
        self.handle.change_membership(change, options).await
    }

    /// Adds a learner; see [`RaftHandle::add_learner`].
    ///
    /// # Errors
    /// See [`ChangeMembershipError`].
    pub async fn add_learner(
        &self,
        id: NodeId,
        node_info: impl Into<String>,
        blocking: bool,
    ) -> Result<Membership, ChangeMembershipError> {
        self.handle.add_learner(id, node_info, blocking).await
    }

    /// Waits until `pred` holds for this node's metrics, or `timeout` passes; see
    /// [`RaftHandle::wait_for`].
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&RaftMetrics) -> bool,
    ) -> Option<RaftMetrics> {
        self.handle.wait_for(timeout, pred).await
    }

    /// Starts building a snapshot now; see [`RaftHandle::trigger_snapshot`].
    ///
    /// # Errors
    /// The node's fatal error if it failed, [`Fatal::DriverStopped`] if it was shut down.
    pub async fn trigger_snapshot(&self) -> Result<bool, Fatal> {
        self.handle.trigger_snapshot().await
    }

    /// Stops processing for `duration`; see [`RaftHandle::pause`].
    #[cfg(feature = "test-util")]
    pub async fn pause(&self, duration: Duration) {
        self.handle.pause(duration).await
    }

    /// Makes this node's clock run at `rate` times real time; see
    /// [`RaftHandle::set_clock_rate`].
    #[cfg(feature = "test-util")]
    pub async fn set_clock_rate(&self, rate: f64) {
        self.handle.set_clock_rate(rate).await
    }

    /// Stops the node at once, as if its process died; see [`RaftHandle::kill`].
    #[cfg(feature = "test-util")]
    pub async fn kill(&self) {
        self.handle.kill().await
    }

    /// Stops the node gracefully; see [`RaftHandle::shutdown`].
    ///
    /// # Errors
    /// The fatal error if the node had already failed.
    pub async fn shutdown(&self) -> Result<(), Fatal> {
        self.handle.shutdown().await
    }
}

impl<S: StateMachine> RaftHandle<S> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Proposes a command and waits until it is committed and applied on this node, returning
    /// the state machine's output.
    ///
    /// Only the leader accepts writes: elsewhere this returns [`WriteError::NotLeader`] with the
    /// leader's id when known. Concurrent calls are batched into one log write (group commit).
    /// [`WriteError::Shutdown`] and [`WriteError::Fatal`] mean the outcome is unknown: the
    /// command may still be committed by the rest of the cluster.
    ///
    /// If this node loses its leadership after appending the command, the call waits for the
    /// command's real fate, which the node learns from the next leader: applied (the output),
    /// replaced ([`WriteError::Overwritten`], never applied) or covered by a snapshot
    /// ([`WriteError::OutcomeUnknown`]). A node cut off from the cluster for good never learns
    /// it, so callers that must not wait forever wrap the call in a timeout (dropping the
    /// future is safe; the command may still be applied).
    ///
    /// # Errors
    /// See [`WriteError`]; [`WriteError::is_retryable`] tells which may be retried.
    pub async fn client_write(&self, command: S::Command) -> Result<S::Output, WriteError> {
        let data = codec::encode_bytes(&command).map_err(WriteError::Encode)?;
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal { data, tx };
        if self.inner.proposals.send(proposal).await.is_err() {
            return Err(self.stopped());
        }
        rx.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Changes the cluster's membership (on the leader): adds, removes, promotes or demotes
    /// nodes, or replaces the whole configuration. Resolves when the configuration the change
    /// leads to is committed — for a change of several voters, which goes through a joint
    /// configuration, once the leader has left it ([`ChangeOptions::joint`]) — and returns it.
    ///
    /// Safety rules the core enforces: one change at a time (a second one while the first is
    /// not committed is refused with [`ChangeMembershipError::InProgress`]), only after the
    /// leader committed an entry of its term, and learners far behind are not promoted unless
    /// forced. A leader removed by the change leads until it commits, then steps down.
    ///
    /// The call waits for the change's real fate even if this node loses its leadership in
    /// between (the next leader commits or replaces the entry); wrap it in a timeout if the
    /// node may be cut off for good.
    ///
    /// # Errors
    /// See [`ChangeMembershipError`]; [`ChangeMembershipError::is_retryable`] tells which may be
    /// retried.
    pub async fn change_membership(
        &self,
        change: ChangeMembers,
        options: ChangeOptions,
    ) -> Result<Membership, ChangeMembershipError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::ChangeMembership { change, options, tx }).await.is_err()
        {
            return Err(self.change_stopped());
        }
        rx.await.unwrap_or_else(|_| Err(self.change_stopped()))
    }

    /// Adds `id` as a learner (a member that receives the log but does not vote), with its
    /// node information (an address the network adapter dials; empty for none). Resolves
    /// when the configuration naming it is committed; with `blocking`, only once the learner
    /// has also caught up with the leader's commit index as of the call (then it can be
    /// promoted without [`ChangeOptions::force`]). Adding a node that is already a learner
    /// with the same information returns [`ChangeMembershipError::NoChange`]. If this node
    /// loses its leadership while waiting for the learner to catch up, the call returns
    /// [`ChangeMembershipError::NotLeader`] (the learner was added; ask the new leader's
    /// metrics for its progress).
    ///
    /// # Errors
    /// See [`ChangeMembershipError`].
    pub async fn add_learner(
        &self,
        id: NodeId,
        node_info: impl Into<String>,
        blocking: bool,
    ) -> Result<Membership, ChangeMembershipError> {
        let target = self.inner.metrics.borrow().commit;
        let change = ChangeMembers::AddLearners([(id, node_info.into())].into());
        let membership = self.change_membership(change, ChangeOptions::default()).await?;
        if blocking {
            let mut rx = self.metrics();
            let caught_up = rx
                .wait_for(|m| {
                    m.replication.get(&id).is_some_and(|i| *i >= target)
                        || m.role != raftkit_core::Role::Leader
                        || !matches!(m.state, crate::NodeState::Running)
                })
                .await;
            match caught_up {
                // Leadership lost while waiting: the learner is added (the configuration
                // committed), but this node can no longer tell when it has caught up.
                Ok(m)
                    if m.role != raftkit_core::Role::Leader
                        && matches!(m.state, crate::NodeState::Running) =>
                {
                    return Err(ChangeMembershipError::NotLeader { leader: m.leader });
                }
                Ok(m) if matches!(m.state, crate::NodeState::Running) => {}
                _ => return Err(self.change_stopped()),
            }
        }
        Ok(membership)
    }

    /// Reads through the state machine without writing the log: `query` is answered by
    /// [`StateMachine::query`] on this node once the read is confirmed under `policy` and the
    /// state machine has applied up to the read index. See [`ReadPolicy`] for which to use when
    /// (the crate docs compare them).
    ///
    /// Concurrent reads share their confirmation: one heartbeat round (or one message to the
    /// leader, for [`ReadPolicy::Follower`]) serves every read waiting at that moment.
    ///
    /// # Errors
    /// [`ReadError::NotLeader`] (with the leader's id when known) for a leader policy on another
    /// node, [`ReadError::LeadershipLost`] if leadership changed before the read was confirmed,
    /// [`ReadError::Timeout`] if it was not confirmed within twice `election_timeout_max`
    /// (for example a follower cut off from its leader), and the others of [`ReadError`].
    pub async fn client_read(
        &self,
        query: S::Query,
        policy: ReadPolicy,
    ) -> Result<S::QueryOutput, ReadError> {
        let (_, out) = self.read(Some(query), policy).await?;
        Ok(out.expect("a query read returns the query's output"))
    }

    /// Waits until a read under `policy` may be served from this node's state machine: the
    /// read index is confirmed and the state machine has applied up to it. Returns the read
    /// index. For applications that read their own state (shared with their state machine)
    /// rather than through [`StateMachine::query`].
    ///
    /// # Errors
    /// As [`client_read`](Self::client_read).
    pub async fn read_barrier(&self, policy: ReadPolicy) -> Result<LogIndex, ReadError> {
        self.read(None, policy).await.map(|(index, _)| index)
    }

    async fn read(
        &self,
        query: Option<S::Query>,
        policy: ReadPolicy,
    ) -> Result<(LogIndex, Option<S::QueryOutput>), ReadError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || match self.inner.shared.fatal.get() {
            Some(f) => ReadError::Fatal(f.clone()),
            None => ReadError::Shutdown,
        };
        let timeout = self.inner.read_timeout;
        let asked = async {
            if self.inner.reads.send(ReadRequest { policy, query, tx }).await.is_err() {
                return Err(stopped());
            }
            rx.await.unwrap_or_else(|_| Err(stopped()))
        };
        tokio::time::timeout(timeout, asked).await.unwrap_or(Err(ReadError::Timeout(timeout)))
    }

    /// Hands leadership to `to`, or with `None` to the most up-to-date other voter, and
    /// resolves with the new leader once it leads. Meanwhile this leader refuses new writes
    /// ([`WriteError::TransferInProgress`], retryable) and serves no lease reads; the target
    /// is brought up to date, then told to campaign at once (no pre-election, and the voters
    /// answer it although they still hear from this leader). If it has not won within
    /// `election_timeout_max`, the transfer is given up and this node leads on.
    ///
    /// # Errors
    /// [`TransferError::Refused`] (not the leader, the target is not a voter, a transfer is
    /// in progress, …), [`TransferError::TimedOut`], [`TransferError::LeadershipLost`] (another
    /// node won), and shutdown or failure of this node.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let stopped = || match self.inner.shared.fatal.get() {
            Some(f) => TransferError::Fatal(f.clone()),
            None => TransferError::Shutdown,
        };
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::TransferLeadership { to, tx }).await.is_err() {
            return Err(stopped());
        }
        let timeout = self.inner.transfer_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => {
                Err(TransferError::LeadershipLost { leader: self.inner.metrics.borrow().leader })
            }
        }
    }

    /// What a membership change gets from a node that has stopped.
    fn change_stopped(&self) -> ChangeMembershipError {
        match self.inner.shared.fatal.get() {
            Some(f) => ChangeMembershipError::Fatal(f.clone()),
            None => ChangeMembershipError::Shutdown,
        }
    }

    fn stopped(&self) -> WriteError {
        match self.inner.shared.fatal.get() {
            Some(f) => WriteError::Fatal(f.clone()),
            None => WriteError::Shutdown,
        }
    }

    /// A live view of this node's state: role, term, leader, commit and applied indexes, …
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.inner.metrics.clone()
    }

    /// Waits until `pred` holds for this node's metrics, or `timeout` passes. Returns the
    /// metrics that satisfied it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&RaftMetrics) -> bool,
    ) -> Option<RaftMetrics> {
        let mut rx = self.metrics();
        let fut = async move { rx.wait_for(pred).await.ok().map(|m| m.clone()) };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// Starts building a snapshot of the state machine now, whatever the snapshot policy in
    /// [`Config`] says; the log is purged up to it (minus
    /// `snapshot_keep`) once it is stored. Returns `Ok(true)` if a snapshot was started,
    /// `Ok(false)` if one is being built already or nothing was applied since the last one.
    /// The new snapshot shows in [`RaftMetrics::snapshot`](crate::RaftMetrics) when done.
    ///
    /// # Errors
    /// The node's fatal error if it failed, [`Fatal::DriverStopped`] if it was shut down.
    pub async fn trigger_snapshot(&self) -> Result<bool, Fatal> {
        let stopped = || self.inner.shared.fatal.get().cloned().unwrap_or(Fatal::DriverStopped);
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::TriggerSnapshot(tx)).await.is_err() {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())
    }

    /// Stops processing for `duration`, as a process stalled by the OS or a long GC pause would:
    /// no messages, timers, completions or proposals are handled meanwhile (inputs queue up, and
    /// inbound messages beyond the inbox capacity are lost). For fault-injection tests.
    #[cfg(feature = "test-util")]
    pub async fn pause(&self, duration: Duration) {
        let _ = self.inner.control.send(Control::Pause(duration)).await;
    }

    /// Makes this node's clock (the one its protocol core sees: timers, leases) run at `rate`
    /// times real time from now on, as a drifting or misbehaving clock would. For clock-drift
    /// tests; `rate` must be finite and positive (other values are ignored).
    #[cfg(feature = "test-util")]
    pub async fn set_clock_rate(&self, rate: f64) {
        if rate.is_finite() && rate > 0.0 {
            let _ = self.inner.control.send(Control::ClockRate(rate)).await;
        }
    }

    /// Stops the node at once, as if its process died: every task is aborted where it stands,
    /// an in-progress log write is abandoned (the store's all-or-nothing guarantee decides what
    /// remains), nothing is drained, and waiting clients get [`WriteError::Shutdown`]. The
    /// network is shut down, as the OS would close the sockets. Metrics stop updating.
    /// For crash tests and demos.
    #[cfg(feature = "test-util")]
    pub async fn kill(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.shared.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in &tasks {
            t.abort();
        }
        if let Some(driver) = self.inner.driver.lock().await.take() {
            driver.abort();
            let _ = driver.await;
        }
        (self.inner.stop_network)().await;
    }

    /// Stops the node: a leader first hands leadership to the most up-to-date voter (unless
    /// [`Config::transfer_on_shutdown`] is off; it waits at most twice
    /// `election_timeout_max`), then it answers pending writes with [`WriteError::Shutdown`],
    /// lets an in-progress log write finish, drains committed entries into the state machine,
    /// and shuts the network down. Returns the fatal error if the node had already failed.
    ///
    /// # Errors
    /// The fatal error if the node had already failed; [`Fatal::DriverStopped`] if its driver
    /// task panicked.
    pub async fn shutdown(&self) -> Result<(), Fatal> {
        let leading = {
            let m = self.inner.metrics.borrow();
            m.role == raftkit_core::Role::Leader && matches!(m.state, crate::NodeState::Running)
        };
        if leading && self.inner.transfer_on_shutdown {
            // A rolling restart should cost no election timeout: hand over first. A refusal
            // (no other voter, a transfer already running) or a timeout just means stopping
            // as a plain leader would.
            // (The driver logs the transfer in the node's span.)
            let _ = self.transfer_leadership(None).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.inner.driver.lock().await.take() {
            if task.await.is_err() {
                return Err(Fatal::DriverStopped);
            }
        }
        match self.inner.shared.fatal.get() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }
}
