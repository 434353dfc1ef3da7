//! The driver task: the one production caller of `RaftCore`. Its loop reads like the core's
//! calling order: carry out every action, publish metrics, wait for the next input (biased, so
//! runs are reproducible), feed it in, and repeat.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use raftkit_core::{
    Action, ApplyRequest, Instant, LogId, LogIndex, Membership, Message, NodeId, PersistRequest,
    ProposeError, RaftCore, ReceiveSnapshot, WriteId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Fatal, StorageError, WriteError};
use crate::membership::{ChangeMembers, ChangeMembershipError, ChangeOptions};
use crate::metrics::{NodeState, NodeStatus, Observer, RaftMetrics};
use crate::proposals::ProposalReceiver;
use crate::reads::{Extras, ReadRequest};
use crate::telemetry::{PeerMetrics, Telemetry};
use crate::traits::{Inbound, LogStore, Network, StateMachine};
use crate::workers::{
    self, ApplyFuture, ApplyJob, Event, PeerItem, Queued, SendFuture, SharedSm, StoreFuture,
    Waiter, WaiterQueue, WriterOp,
};

/// A client command on its way to the driver.
pub(crate) struct Proposal<O> {
    pub(crate) data: Bytes,
    pub(crate) tx: oneshot::Sender<Result<O, WriteError>>,
}

/// Requests from handles other than proposals.
pub(crate) enum Control {
    Shutdown(oneshot::Sender<()>),
    #[cfg(feature = "test-util")]
    Pause(Duration),
    #[cfg(feature = "test-util")]
    ClockRate(f64),
    TriggerSnapshot(oneshot::Sender<bool>),
    ChangeMembership {
        change: ChangeMembers,
        options: ChangeOptions,
        tx: MembershipReply,
    },
    TransferLeadership {
        to: Option<NodeId>,
        tx: oneshot::Sender<Result<NodeId, crate::error::TransferError>>,
    },
}

/// Where a membership change's outcome goes.
pub(crate) type MembershipReply = oneshot::Sender<Result<Membership, ChangeMembershipError>>;

/// State shared between the driver and the handles.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) fatal: OnceLock<Fatal>,
    /// The driver's helper tasks, so `kill` can stop them all at once.
    pub(crate) tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    pub(crate) fn register(&self, task: &JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// The most inbound messages handled per loop turn before other inputs get a look in.
const INBOX_BATCH: usize = 1024;

/// Polls `f` once, without a waker (nothing will wake the caller): `Some(output)` if it
/// finished at once. A future that is not finished can be moved to a task that polls it again
/// with a real waker, as every future registers the waker of its latest poll.
pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    match std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The driver's side of one peer: the queue of its sender task, and the messages of this loop
/// turn not yet handed over.
pub(crate) struct PeerLink {
    tx: mpsc::Sender<PeerItem>,
    task: JoinHandle<()>,
    queued: Queued,
    outbox: Vec<Message>,
    metrics: PeerMetrics,
}

pub(crate) struct Driver<N: Network, L: LogStore, S: StateMachine> {
    pub(crate) core: RaftCore,
    /// (real instant, core instant at it, rate): the core's clock runs at `rate` times real
    /// time from there (rate 1 except in clock-drift tests).
    pub(crate) clock: (tokio::time::Instant, Instant, f64),
    pub(crate) network: Arc<N>,
    pub(crate) log: Arc<L>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) inbox: mpsc::Receiver<Inbound>,
    pub(crate) proposals: ProposalReceiver<S::Output>,
    pub(crate) reads: mpsc::Receiver<ReadRequest<S>>,
    /// Reads, transfers and forwarded proposals in progress (see `reads.rs`).
    pub(crate) extras: Extras<S>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) metrics: watch::Sender<RaftMetrics>,
    pub(crate) write_tx: Option<mpsc::UnboundedSender<WriterOp>>,
    /// What the log writer has been handed and not finished.
    pub(crate) write_queued: Queued,
    /// The latest write the driver finished itself this turn (see `LogStore::inline_write`).
    pub(crate) persisted_now: Option<WriteId>,
    pub(crate) write_done: mpsc::UnboundedReceiver<Result<(WriteId, usize), StorageError>>,
    pub(crate) writer: Option<JoinHandle<()>>,
    pub(crate) apply_tx: Option<mpsc::UnboundedSender<ApplyJob<S::Output>>>,
    /// The state machine, shared with the apply worker (see `StateMachine::inline_apply`).
    pub(crate) state_machine: SharedSm<S>,
    /// `StateMachine::inline_apply`, read at start.
    pub(crate) inline_apply: bool,
    /// What the apply worker has been handed and not finished.
    pub(crate) apply_queued: Queued,
    /// The highest index the driver applied itself this turn.
    pub(crate) applied_now: Option<LogIndex>,
    pub(crate) apply_done: mpsc::UnboundedReceiver<Result<LogIndex, Fatal>>,
    pub(crate) applier: Option<JoinHandle<()>>,
    pub(crate) events_tx: mpsc::UnboundedSender<Event>,
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) snapshot_tx: Option<mpsc::UnboundedSender<ReceiveSnapshot>>,
    pub(crate) peers: BTreeMap<NodeId, PeerLink>,
    pub(crate) waiters: WaiterQueue<S::Output>,
    /// Proposals gathered in one loop turn, proposed together.
    pub(crate) batch: Vec<Proposal<S::Output>>,
    pub(crate) failure: Option<Fatal>,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) last_status: Option<NodeStatus>,
    /// The membership the metrics last showed.
    pub(crate) membership_seen: Option<raftkit_core::Membership>,
    /// Membership changes proposed here, by the id of their configuration entry, waiting for
    /// the configuration they lead to to commit.
    pub(crate) membership_waiters: Vec<(LogId, MembershipReply)>,
    /// The node's span and metric handles.
    pub(crate) telemetry: Telemetry,
    /// The most recent error the node recovered from, for [`RaftMetrics::last_error`].
    pub(crate) last_error: Option<String>,
}

enum Exit {
    Shutdown(Option<oneshot::Sender<()>>),
    Failed(Fatal),
}

impl<N: Network, L: LogStore, S: StateMachine> Driver<N, L, S> {
    /// The core's clock: the time since `epoch`, or — after a test changed this node's clock
    /// rate (`RaftHandle::set_clock_rate`) — the core time at the change plus the time since,
    /// scaled by the rate.
    pub(crate) fn now(&self) -> Instant {
        let (base, core_base, rate) = self.clock;
        let elapsed = tokio::time::Instant::now().saturating_duration_since(base);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let scaled = if rate == 1.0 { nanos } else { (nanos as f64 * rate) as u64 };
        Instant::from_nanos(core_base.as_nanos().saturating_add(scaled))
    }

    fn deadline(&self, t: Instant) -> tokio::time::Instant {
        let (base, core_base, rate) = self.clock;
        let ahead = t.as_nanos().saturating_sub(core_base.as_nanos());
        let real = if rate == 1.0 { ahead } else { (ahead as f64 / rate).ceil() as u64 };
        base + Duration::from_nanos(real)
    }

    /// Makes this node's clock run at `rate` times real time from now on (tests of clock
    /// drift).
    #[cfg(feature = "test-util")]
    fn set_clock_rate(&mut self, rate: f64) {
        let now = self.now();
        self.clock = (tokio::time::Instant::now(), now, rate);
    }

    pub(crate) async fn run(mut self) {
        let exit = self.main_loop().await;
        self.finish(exit).await;
    }

    async fn main_loop(&mut self) -> Exit {
        loop {
            self.carry_out_actions();
            self.serve_reads();
            self.check_transfer();
            self.expire_forwarded();
            self.check_membership_waiters();
            self.observe();
            let peers = &self.peers;
            let links = peers.values().map(|l| &l.metrics);
            self.telemetry.after_turn(&self.core, |id| peers.get(&id).map(|l| &l.metrics), links);
            self.publish_metrics(NodeState::Running);
            if let Some(f) = self.failure.take() {
                return Exit::Failed(f);
            }
            let timeout = self.core.poll_timeout().map(|t| self.deadline(t));
            let sleep = async move {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                c = self.control.recv() => match c {
                    Some(Control::Shutdown(tx)) => return Exit::Shutdown(Some(tx)),
                    #[cfg(feature = "test-util")]
                    Some(Control::Pause(d)) => {
                        // Like a process stalled by the OS: nothing is handled meanwhile.
                        tokio::time::sleep(d).await;
                    }
                    #[cfg(feature = "test-util")]
                    Some(Control::ClockRate(rate)) => self.set_clock_rate(rate),
                    Some(Control::TriggerSnapshot(tx)) => {
                        let _ = tx.send(self.core.trigger_snapshot());
                    }
                    Some(Control::ChangeMembership { change, options, tx }) => {
                        self.change_membership(&change, options, tx);
                    }
                    Some(Control::TransferLeadership { to, tx }) => self.on_transfer(to, tx),
                    None => return Exit::Shutdown(None),
                },
                Some(r) = self.write_done.recv() => self.on_write_done(r),
                Some(r) = self.apply_done.recv() => self.on_apply_done(r),
                Some(m) = self.inbox.recv() => self.on_inbound(m),
                Some(r) = self.reads.recv() => self.on_read(r),
                p = self.proposals.recv() => match p {
                    // Proposed with whatever else is waiting, in `drain_ready`.
                    Some(p) => self.batch.push(p),
                    // Every handle is gone: nobody can use this node any more.
                    None => return Exit::Shutdown(None),
                },
                Some(ev) = self.events.recv() => self.on_event(ev),
                () = sleep => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
            if !self.batch.is_empty() {
                // A proposal woke this task, likely the first of a burst (a batch of answers
                // just woke many clients). Let the tasks already waiting to run go first, so
                // their proposals join this batch instead of each costing a loop turn.
                tokio::task::yield_now().await;
            }
            self.drain_ready();
        }
    }

    /// Takes every input that is already waiting, so one loop turn (and one write, one message
    /// per peer) covers as much as possible: this is where proposals are batched.
    fn drain_ready(&mut self) {
        while let Ok(r) = self.write_done.try_recv() {
            self.on_write_done(r);
        }
        while let Ok(r) = self.apply_done.try_recv() {
            self.on_apply_done(r);
        }
        for _ in 0..INBOX_BATCH {
            match self.inbox.try_recv() {
                Ok(m) => self.on_inbound(m),
                Err(_) => break,
            }
        }
        for _ in 0..INBOX_BATCH {
            match self.reads.try_recv() {
                Ok(r) => self.on_read(r),
                Err(_) => break,
            }
        }
        let max = self.core.config().max_proposal_batch;
        while self.batch.len() < max {
            match self.proposals.try_recv() {
                Ok(p) => self.batch.push(p),
                Err(_) => break,
            }
        }
        if !self.batch.is_empty() {
            self.propose_batch();
        }
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
        }
    }

    fn on_write_done(&mut self, r: Result<(WriteId, usize), StorageError>) {
        match r {
            Ok((id, _merged)) => {
                let now = self.now();
                self.core.handle_persisted(now, id);
            }
            Err(e) => self.fail(Fatal::LogStore(e)),
        }
    }

    fn on_apply_done(&mut self, r: Result<LogIndex, Fatal>) {
        match r {
            Ok(index) => self.core.handle_applied(index),
            Err(f) => self.fail(f),
        }
    }

    fn on_inbound(&mut self, m: Inbound) {
        let now = self.now();
        self.core.handle_message(now, m.from, m.message);
    }

    /// Proposes the gathered batch as one run of entries (one clock reading, one allocation)
    /// and registers a waiter for each.
    fn propose_batch(&mut self) {
        let now = self.now();
        let mut batch = std::mem::take(&mut self.batch);
        if self.core.role() != raftkit_core::Role::Leader && self.core.config().forward_proposals {
            match self.forward_batch(batch) {
                Ok(()) => return,
                Err(back) => batch = back,
            }
        }
        let data = batch.iter_mut().map(|p| std::mem::take(&mut p.data));
        match self.core.propose_batch(now, data) {
            Ok(first) => {
                self.telemetry.proposals.increment(batch.len() as u64);
                for (i, p) in batch.drain(..).enumerate() {
                    let log_id = LogId { term: first.term, index: first.index.plus(i as u64) };
                    let waiter = Waiter { log_id, tx: p.tx };
                    if let Some(old) = self.waiters.insert(waiter) {
                        // The new entry replaced an older one at this index (a leadership
                        // change in between): the old command can never be applied.
                        let _ = old.tx.send(Err(WriteError::Overwritten { log_id: old.log_id }));
                    }
                }
            }
            Err(e) => {
                let err = match e {
                    ProposeError::NotLeader { leader } => WriteError::NotLeader { leader },
                    ProposeError::TransferInProgress { to } => {
                        WriteError::TransferInProgress { to: Some(to) }
                    }
                    other => {
                        tracing::error!(error = %other, "unexpected proposal error");
                        WriteError::NotLeader { leader: None }
                    }
                };
                self.telemetry.proposals_rejected.increment(batch.len() as u64);
                for p in batch.drain(..) {
                    let _ = p.tx.send(Err(err.clone()));
                }
            }
        }
        // Keep the allocation for the next batch.
        self.batch = batch;
    }

    /// Proposes a membership change (leader only); the outcome goes to `tx` now (refused) or
    /// once the configuration it leads to is committed.
    fn change_membership(
        &mut self,
        change: &ChangeMembers,
        options: ChangeOptions,
        tx: MembershipReply,
    ) {
        if self.core.role() != raftkit_core::Role::Leader {
            let _ = tx.send(Err(ChangeMembershipError::NotLeader { leader: self.core.leader() }));
            return;
        }
        let proposed = crate::membership::target(self.core.membership(), change, options)
            .and_then(|t| self.core.propose_membership(t).map_err(ChangeMembershipError::from));
        match proposed {
            Ok(log_id) => {
                tracing::info!(%log_id, ?change, "membership change proposed");
                self.membership_waiters.push((log_id, tx));
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    }

    /// Answers the membership changes whose configuration is now committed (after the leader
    /// left a joint configuration that leaves by itself), or whose entry was replaced.
    fn check_membership_waiters(&mut self) {
        if self.membership_waiters.is_empty() {
            return;
        }
        let core = &self.core;
        let commit = core.commit_index();
        let latest = core.membership();
        let settled = core.membership_committed() && !(latest.is_joint() && latest.auto_leave());
        let mut keep = Vec::new();
        for (log_id, tx) in std::mem::take(&mut self.membership_waiters) {
            let replaced = log_id.index > core.purged_log_id().index
                && core.log_id_at(log_id.index) != Some(log_id);
            if replaced {
                let _ = tx.send(Err(ChangeMembershipError::Overwritten { log_id }));
            } else if commit >= log_id.index && settled {
                let _ = tx.send(Ok(latest.clone()));
            } else {
                keep.push((log_id, tx));
            }
        }
        self.membership_waiters = keep;
    }

    fn fail(&mut self, f: Fatal) {
        tracing::error!(error = %f, "fatal error; the node stops serving");
        if self.failure.is_none() {
            self.failure = Some(f);
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Unreachable(peer, why) => {
                self.last_error = Some(format!("sending to node {peer}: {why}"));
                self.core.handle_unreachable(peer)
            }
            Event::SnapshotBuilt(meta) => self.core.handle_snapshot_built(now, meta),
            Event::SnapshotBuildFailed(e) => {
                if matches!(e.kind(), crate::StorageErrorKind::InvalidInput) {
                    self.last_error = Some(format!("building a snapshot: {e}"));
                    self.core.handle_snapshot_failed();
                } else {
                    self.fail(Fatal::LogStore(e.context("storing a snapshot")));
                }
            }
            Event::SnapshotReceived { from, meta, next_offset, installed } => {
                let covered = meta.last_log_id.index;
                if installed {
                    self.telemetry.snapshots_received.increment(1);
                    tracing::info!(%from, snapshot = %meta.last_log_id, size = meta.size, "installed a snapshot from the leader");
                }
                self.core.handle_snapshot_received(now, from, meta, next_offset, installed);
                if installed {
                    // The state machine holds the snapshot's state: reads up to it may go.
                    self.extras.handed = self.extras.handed.max(covered);
                    // Commands this node appended (as an earlier leader) up to the snapshot
                    // will not be applied here one by one: whether they made it is unknown.
                    for w in self.waiters.take_to(covered) {
                        let _ = w.tx.send(Err(WriteError::OutcomeUnknown { log_id: w.log_id }));
                    }
                }
            }
            Event::SnapshotSendFailed(peer) => self.core.handle_snapshot_send_failed(peer),
            Event::InstallLog(snapshot, reply) => {
                self.send_to_writer(WriterOp::Install(snapshot, reply));
            }
            Event::Fatal(f) => self.fail(f),
        }
    }

    fn send_to_writer(&mut self, op: WriterOp) {
        self.write_queued.add();
        if self.write_tx.as_ref().is_none_or(|tx| tx.send(op).is_err()) {
            self.fail(Fatal::LogStore(StorageError::new(
                crate::StorageErrorKind::Closed,
                "the log writer stopped",
            )));
        }
    }

    pub(crate) fn send_to_applier(&mut self, job: ApplyJob<S::Output>) {
        self.apply_queued.add();
        if self.apply_tx.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            self.fail(Fatal::StateMachine(StorageError::new(
                crate::StorageErrorKind::Closed,
                "the apply worker stopped",
            )));
        }
    }

    /// Makes a write durable: through the log writer, or (for a store that writes at once, when
    /// the writer is idle) right here.
    fn persist(&mut self, req: PersistRequest) {
        if !self.log.inline_write() || !self.write_queued.is_idle() {
            self.send_to_writer(WriterOp::Persist(req));
            return;
        }
        let (id, write, log) = (req.id, req.write, self.log.clone());
        let entries = write.entries.len();
        let started = std::time::Instant::now();
        let mut fut: StoreFuture = Box::pin(async move { log.write(write).await });
        match poll_once(&mut fut) {
            Some(r) => {
                self.telemetry.write.record(entries, started.elapsed());
                match r {
                    Ok(()) => self.persisted_now = Some(id),
                    Err(e) => self.fail(Fatal::LogStore(e)),
                }
            }
            None => self.send_to_writer(WriterOp::Started(id, entries, fut)),
        }
    }

    /// Applies committed entries: right here (for a state machine that applies at once, when
    /// the apply worker is idle and the entries came from the cache), or through the worker.
    fn apply(&mut self, req: ApplyRequest, waiters: Vec<Waiter<S::Output>>) {
        if !self.inline_apply || req.entries.is_none() || !self.apply_queued.is_idle() {
            self.send_to_applier(ApplyJob::Entries { req, waiters });
            return;
        }
        let (sm, log) = (self.state_machine.clone(), self.log.clone());
        let mut apply: ApplyFuture = Box::pin(async move {
            let mut sm = sm.lock_owned().await;
            workers::apply_jobs(&mut *sm, &*log, vec![(req, waiters)]).await
        });
        match poll_once(&mut apply) {
            Some(Ok(index)) => {
                self.applied_now = Some(self.applied_now.map_or(index, |i| i.max(index)));
            }
            Some(Err(f)) => self.fail(f),
            None => self.send_to_applier(ApplyJob::Started(apply)),
        }
    }

    fn carry_out_actions(&mut self) {
        loop {
            self.carry_out_core_actions();
            self.flush_outboxes();
            // Writes and applies finished here are reported at once, which may release more
            // actions (the acknowledgements that had to wait for a write, further applies).
            let applied = self.applied_now.take();
            if let Some(index) = applied {
                self.core.handle_applied(index);
            }
            match self.persisted_now.take() {
                Some(id) => {
                    let now = self.now();
                    self.core.handle_persisted(now, id);
                }
                None if applied.is_none() => break,
                None => {}
            }
        }
    }

    fn carry_out_core_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Persist(req) => self.persist(req),
                Action::PurgeLog(up_to) => self.send_to_writer(WriterOp::Purge(up_to)),
                Action::BuildSnapshot => {
                    // The applier picks the configuration in force at the index the state
                    // machine turns out to have applied.
                    let memberships = self.core.membership_history();
                    let chunk_bytes = self.core.config().snapshot_chunk_bytes;
                    self.send_to_applier(ApplyJob::BuildSnapshot { memberships, chunk_bytes });
                }
                Action::SendSnapshot(req) => self.send_to_peer(req.to, PeerItem::Snapshot(req)),
                Action::ReceiveSnapshot(r) => {
                    if self.snapshot_tx.as_ref().is_none_or(|tx| tx.send(r).is_err()) {
                        self.fail(Fatal::LogStore(StorageError::new(
                            crate::StorageErrorKind::Closed,
                            "the snapshot receiver stopped",
                        )));
                    }
                }
                Action::Send(out) => self.send_to_peer(out.to, PeerItem::Msg(out.message)),
                Action::SendFromLog(req) => self.send_to_peer(req.to, PeerItem::FromLog(req)),
                Action::Apply(req) => {
                    let waiters = self.waiters.take_to(req.last.index);
                    self.extras.handed = self.extras.handed.max(req.last.index);
                    self.apply(req, waiters);
                }
                Action::ReadIndex(r) => self.on_read_ready(r),
                Action::Forwarded(f) => self.on_forwarded(f),
            }
        }
    }

    fn link(&mut self, to: NodeId) -> &mut PeerLink {
        self.peers.entry(to).or_insert_with(|| {
            let cfg = self.core.config();
            let (tx, rx) = mpsc::channel(cfg.peer_queue_capacity);
            let queued = Queued::default();
            let metrics = self.telemetry.peer(to);
            let sender = workers::peer_sender(
                to,
                self.network.clone(),
                self.log.clone(),
                cfg.election_timeout_max,
                rx,
                queued.clone(),
                self.events_tx.clone(),
                metrics.clone(),
            );
            // In the node's span (not the current `state` span, which will change).
            let task = tokio::spawn(sender.instrument(self.telemetry.span.clone()));
            self.shared.register(&task);
            PeerLink { tx, task, queued, outbox: Vec::new(), metrics }
        })
    }

    /// Queues `item` for `to`. Plain messages to a network that sends at once wait in the
    /// peer's outbox until the end of the loop turn (`flush_outboxes`); anything else goes to
    /// the peer's sender task, after whatever is in the outbox.
    fn send_to_peer(&mut self, to: NodeId, item: PeerItem) {
        let inline = self.network.inline_send();
        match item {
            PeerItem::Msg(m) if inline => self.link(to).outbox.push(m),
            item => {
                if inline {
                    self.flush_outbox(to);
                }
                enqueue(to, self.link(to), item);
            }
        }
    }

    fn flush_outboxes(&mut self) {
        if !self.network.inline_send() {
            return;
        }
        for (to, link) in &mut self.peers {
            flush_outbox(&self.network, &self.events_tx, *to, link);
        }
    }

    fn flush_outbox(&mut self, to: NodeId) {
        if let Some(link) = self.peers.get_mut(&to) {
            flush_outbox(&self.network, &self.events_tx, to, link);
        }
    }

    fn observe(&mut self) {
        if let Some(obs) = &self.observer {
            let status = NodeStatus::from_core(&self.core);
            if self.last_status != Some(status) {
                obs.on_status(&status);
                self.last_status = Some(status);
            }
        }
    }

    fn publish_metrics(&mut self, state: NodeState) {
        let voters_changed = self.membership_seen.as_ref() != Some(self.core.membership());
        if voters_changed {
            self.membership_seen = Some(self.core.membership().clone());
            // The transport learns the addresses of nodes added after it started.
            self.network.update_peers(self.core.membership().all_node_info());
        }
        let (core, last_error) = (&self.core, &self.last_error);
        self.metrics.send_if_modified(|m| {
            let mut changed = m.refresh(core, &state, voters_changed);
            if m.last_error != *last_error {
                m.last_error.clone_from(last_error);
                changed = true;
            }
            changed
        });
    }

    async fn finish(mut self, exit: Exit) {
        let (state, reason, ack) = match exit {
            Exit::Shutdown(ack) => (NodeState::Shutdown, WriteError::Shutdown, ack),
            Exit::Failed(f) => {
                let _ = self.shared.fatal.set(f.clone());
                self.telemetry.failed(self.peers.values().map(|l| &l.metrics));
                (NodeState::Failed(f.clone()), WriteError::Fatal(f), None)
            }
        };
        tracing::info!(?state, "stopping");
        // Refuse new proposals, and answer those already queued.
        self.proposals.close();
        for p in std::mem::take(&mut self.batch) {
            let _ = p.tx.send(Err(reason.clone()));
        }
        while let Ok(p) = self.proposals.try_recv() {
            let _ = p.tx.send(Err(reason.clone()));
        }
        for w in self.waiters.take_all() {
            let _ = w.tx.send(Err(reason.clone()));
        }
        self.fail_forwarded(&reason);
        let read_reason = match &reason {
            WriteError::Fatal(f) => crate::error::ReadError::Fatal(f.clone()),
            _ => crate::error::ReadError::Shutdown,
        };
        self.reads.close();
        while let Ok(r) = self.reads.try_recv() {
            let _ = r.tx.send(Err(read_reason.clone()));
        }
        self.fail_reads(&read_reason);
        let change_reason = match &reason {
            WriteError::Fatal(f) => ChangeMembershipError::Fatal(f.clone()),
            _ => ChangeMembershipError::Shutdown,
        };
        for (_, tx) in std::mem::take(&mut self.membership_waiters) {
            let _ = tx.send(Err(change_reason.clone()));
        }
        for (_, link) in std::mem::take(&mut self.peers) {
            drop(link.tx);
            link.task.abort();
        }
        // Let the writer finish the write it is in (all or nothing either way) so that nothing
        // touches the store after shutdown returns; then the apply worker.
        self.snapshot_tx = None;
        // The helpers' events are handled no more: refuse new ones and drop those waiting. A
        // request to install a received snapshot in the log carries the receiver's reply
        // channel; left in the queue, it would keep the receiver waiting for ever, and the
        // receiver holds the apply worker's queue open, so the wait for the apply worker below
        // would never end either.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        self.write_tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
        // The apply worker drains what is already committed and queued, then stops; dropping
        // it mid-`apply` could leave a durable state machine half-written.
        self.apply_tx = None;
        if let Some(a) = self.applier.take() {
            let _ = a.await;
        }
        self.network.shutdown().await;
        self.inbox.close();
        self.publish_metrics(state);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

/// Sends the outbox of `to`: right here if its sender task is idle, else through it.
fn flush_outbox<N: Network>(
    network: &Arc<N>,
    events: &mpsc::UnboundedSender<Event>,
    to: NodeId,
    link: &mut PeerLink,
) {
    if link.outbox.is_empty() {
        return;
    }
    let messages = std::mem::take(&mut link.outbox);
    if !link.queued.is_idle() {
        for m in messages {
            enqueue(to, link, PeerItem::Msg(m));
        }
        return;
    }
    link.metrics.sent(&messages);
    let network = network.clone();
    let mut send: SendFuture = Box::pin(async move { network.send(to, messages).await });
    match poll_once(&mut send) {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(peer = %to, error = %e, "send failed");
            let _ = events.send(Event::Unreachable(to, e.to_string()));
        }
        None => enqueue(to, link, PeerItem::Started(send)),
    }
}

/// Hands `item` to the sender task of `to`.
fn enqueue(to: NodeId, link: &mut PeerLink, item: PeerItem) {
    link.queued.add();
    if link.tx.try_send(item).is_err() {
        link.queued.done(1);
        // The peer is not keeping up. Dropping is safe (Raft tolerates loss) and keeps the
        // driver and every other peer moving; the core's stall detection re-probes.
        tracing::debug!(peer = %to, "peer queue full; dropping a message");
    }
}
