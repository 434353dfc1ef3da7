//! The driver's side of reads that do not write the log, leadership transfer and proposal
//! forwarding: it asks the core, keeps the callers' reply channels, and answers them when the
//! core's actions (or the state machine) say so.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use raftkit_core::{
    ForwardError, Forwarded, LogId, LogIndex, NodeId, ReadId, ReadMode, ReadReady, Role, Term,
};
use tokio::sync::oneshot;

use crate::driver::{Driver, Proposal};
use crate::error::{ReadError, TransferError, WriteError};
use crate::traits::{LogStore, Network, StateMachine};
use crate::workers::{ApplyJob, QueryFuture, Waiter};

/// How a read is made linearizable (or not). See the crate docs, "Which read to use".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// ReadIndex on the leader: the leader confirms it still leads with one heartbeat round
    /// (shared by every read waiting at that moment) and answers once its state machine has
    /// applied up to its commit index. Linearizable under any clock behaviour. Leader only.
    #[default]
    Linearizable,
    /// A leader lease: while a quorum has confirmed a round within the last
    /// `election_timeout_min - clock_drift_bound`, the leader answers without a round
    /// (otherwise it runs one). Linearizable as long as clocks drift less than
    /// `clock_drift_bound`; needs `check_quorum`. Leader only.
    Lease,
    /// Served by this node, whatever its role: it asks the leader for a confirmed read index
    /// (one message for every read waiting), waits until it has applied up to it, and answers
    /// from its own state machine. Linearizable; spreads read load over the followers.
    Follower,
    /// This node's state as it is now, without asking anyone: fast and possibly stale (a
    /// lagging follower, a deposed leader). Not linearizable.
    Stale,
}

/// What a read answers: the index it waited for, and the query's output (none for a barrier).
pub(crate) type ReadReply<O> = oneshot::Sender<Result<(LogIndex, Option<O>), ReadError>>;

/// A read on its way to the driver.
pub(crate) struct ReadRequest<S: StateMachine> {
    pub(crate) policy: ReadPolicy,
    pub(crate) query: Option<S::Query>,
    pub(crate) tx: ReadReply<S::QueryOutput>,
}

/// A transfer the driver waits on: its target, the term it started in, and the caller.
pub(crate) struct TransferWaiter {
    pub(crate) to: NodeId,
    pub(crate) term: Term,
    pub(crate) tx: oneshot::Sender<Result<NodeId, TransferError>>,
}

/// A forwarded batch waiting for the leader's answer: (leader, when sent, callers).
type ForwardedBatch<O> = (NodeId, tokio::time::Instant, Vec<Proposal<O>>);

/// The driver's read, transfer and forwarding state.
pub(crate) struct Extras<S: StateMachine> {
    next_read: u64,
    /// Reads the core is confirming, by id.
    pending: BTreeMap<u64, ReadRequest<S>>,
    /// Confirmed reads waiting for the state machine to get to their index, by (index, id).
    ready: BTreeMap<(LogIndex, u64), ReadRequest<S>>,
    /// The highest index handed to the state machine.
    pub(crate) handed: LogIndex,
    pub(crate) transfer: Option<TransferWaiter>,
    next_batch: u64,
    /// Forwarded batches waiting for the leader's answer, by batch id.
    forwarded: BTreeMap<u64, ForwardedBatch<S::Output>>,
}

impl<S: StateMachine> Extras<S> {
    pub(crate) fn new(applied: LogIndex) -> Extras<S> {
        // Read ids (and forwarded batch ids) must grow across restarts of this node too: the
        // core names a follower's batch of reads after its first read's id, and the leader drops
        // a forwarded batch id it has seen. Start both from the wall clock.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Extras {
            next_read: start,
            pending: BTreeMap::new(),
            ready: BTreeMap::new(),
            handed: applied,
            transfer: None,
            next_batch: start,
            forwarded: BTreeMap::new(),
        }
    }
}

/// How long a forwarded batch may wait for the leader's answer before its outcome is called
/// unknown (the answer, or the request, was lost).
fn forward_patience(cfg: &raftkit_core::Config) -> Duration {
    cfg.election_timeout_max * 2
}

impl<N: Network, L: LogStore, S: StateMachine> Driver<N, L, S> {
    /// A read from a handle: asks the core for a read index (or, for a stale read, takes what
    /// is applied).
    pub(crate) fn on_read(&mut self, r: ReadRequest<S>) {
        let mode = match r.policy {
            ReadPolicy::Stale => {
                let index = self.extras.handed;
                self.extras.next_read += 1;
                self.extras.ready.insert((index, self.extras.next_read), r);
                return;
            }
            ReadPolicy::Linearizable => ReadMode::ReadIndex,
            ReadPolicy::Lease => ReadMode::Lease,
            ReadPolicy::Follower => ReadMode::Follower,
        };
        self.extras.next_read += 1;
        let id = self.extras.next_read;
        let now = self.now();
        match self.core.read_index(now, ReadId(id), mode) {
            Ok(()) => {
                self.extras.pending.insert(id, r);
            }
            Err(e) => {
                let _ = r.tx.send(Err(e.into()));
            }
        }
    }

    /// The core's outcome of a read.
    pub(crate) fn on_read_ready(&mut self, r: ReadReady) {
        let Some(req) = self.extras.pending.remove(&r.id.0) else { return };
        match r.result {
            Ok(index) => {
                self.extras.ready.insert((index, r.id.0), req);
            }
            Err(e) => {
                let _ = req.tx.send(Err(e.into()));
            }
        }
    }

    /// Answers the confirmed reads whose index the state machine has been handed: in order
    /// with the applies (through the apply worker, or here when it is idle).
    pub(crate) fn serve_reads(&mut self) {
        let handed = self.extras.handed;
        let Some(&(first, _)) = self.extras.ready.keys().next() else { return };
        if first > handed {
            return;
        }
        let rest = self.extras.ready.split_off(&(handed.next(), 0));
        let batch = std::mem::replace(&mut self.extras.ready, rest);
        let sm = self.state_machine.clone();
        let mut job: QueryFuture = Box::pin(async move {
            let sm = sm.lock().await;
            for ((index, _), r) in batch {
                let out = r.query.map(|q| sm.query(q));
                let _ = r.tx.send(Ok((index, out)));
            }
        });
        if self.apply_queued.is_idle() && crate::driver::poll_once(&mut job).is_some() {
            return;
        }
        self.send_to_applier(ApplyJob::Query(job));
    }

    /// Fails every read waiting here (the node stops).
    pub(crate) fn fail_reads(&mut self, why: &ReadError) {
        for (_, r) in std::mem::take(&mut self.extras.pending) {
            let _ = r.tx.send(Err(why.clone()));
        }
        for (_, r) in std::mem::take(&mut self.extras.ready) {
            let _ = r.tx.send(Err(why.clone()));
        }
    }

    /// A leadership transfer asked for by a handle.
    pub(crate) fn on_transfer(
        &mut self,
        to: Option<NodeId>,
        tx: oneshot::Sender<Result<NodeId, TransferError>>,
    ) {
        let now = self.now();
        match self.core.transfer_leadership(now, to) {
            Ok(target) => {
                let term = self.core.term();
                if let Some(old) =
                    self.extras.transfer.replace(TransferWaiter { to: target, term, tx })
                {
                    // The core refuses a second transfer while one runs, so this one was over.
                    let _ = old.tx.send(Err(TransferError::TimedOut(old.to)));
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
    }

    /// Answers the transfer waiter once the outcome is known.
    pub(crate) fn check_transfer(&mut self) {
        let Some(w) = &self.extras.transfer else { return };
        let core = &self.core;
        let outcome = if core.role() == Role::Leader && core.term() == w.term {
            core.transfer_target().is_none().then_some(Err(TransferError::TimedOut(w.to)))
        } else {
            match core.leader() {
                Some(l) if l == w.to => Some(Ok(l)),
                Some(l) => Some(Err(TransferError::LeadershipLost { leader: Some(l) })),
                // Stepped down; the new leader is not known yet.
                None => None,
            }
        };
        if let Some(result) = outcome {
            let w = self.extras.transfer.take().expect("checked above");
            let _ = w.tx.send(result);
        }
    }

    /// Sends a batch of proposals this follower cannot append to the leader it follows.
    /// Returns the batch back if it cannot be forwarded.
    pub(crate) fn forward_batch(
        &mut self,
        batch: Vec<Proposal<S::Output>>,
    ) -> Result<(), Vec<Proposal<S::Output>>> {
        if self.core.leader().is_none_or(|l| l == self.core.id()) {
            return Err(batch);
        }
        let mut batch = batch;
        let data: Vec<Bytes> = batch.iter_mut().map(|p| std::mem::take(&mut p.data)).collect();
        self.extras.next_batch += 1;
        let id = self.extras.next_batch;
        let now = self.now();
        match self.core.forward(now, id, data) {
            Ok(leader) => {
                self.extras.forwarded.insert(id, (leader, tokio::time::Instant::now(), batch));
                Ok(())
            }
            Err(_) => Err(batch),
        }
    }

    /// The leader answered a forwarded batch (or never will).
    pub(crate) fn on_forwarded(&mut self, f: Forwarded) {
        let Some((leader, _, batch)) = self.extras.forwarded.remove(&f.batch) else { return };
        match f.result {
            Ok(first) => {
                for (i, p) in batch.into_iter().enumerate() {
                    let log_id = LogId { term: first.term, index: first.index.plus(i as u64) };
                    if log_id.index <= self.extras.handed {
                        // Applied here before the answer came: the output went nowhere.
                        let _ = p.tx.send(Err(WriteError::OutcomeUnknown { log_id }));
                        continue;
                    }
                    if let Some(old) = self.waiters.insert(Waiter { log_id, tx: p.tx }) {
                        let _ = old.tx.send(Err(WriteError::Overwritten { log_id: old.log_id }));
                    }
                }
            }
            Err(e) => {
                let err = match e {
                    ForwardError::NotLeader => WriteError::NotLeader { leader: self.core.leader() },
                    ForwardError::TransferInProgress => WriteError::TransferInProgress { to: None },
                    ForwardError::TooLarge => WriteError::ForwardRefused(e.to_string()),
                    _ => WriteError::ForwardOutcomeUnknown { leader },
                };
                for p in batch {
                    let _ = p.tx.send(Err(err.clone()));
                }
            }
        }
    }

    /// Gives up on forwarded batches the leader has not answered for too long.
    pub(crate) fn expire_forwarded(&mut self) {
        if self.extras.forwarded.is_empty() {
            return;
        }
        let patience = forward_patience(self.core.config());
        let now = tokio::time::Instant::now();
        let expired: Vec<u64> = self
            .extras
            .forwarded
            .iter()
            .filter(|(_, (_, sent, _))| now.saturating_duration_since(*sent) > patience)
            .map(|(b, _)| *b)
            .collect();
        for b in expired {
            if let Some((leader, _, batch)) = self.extras.forwarded.remove(&b) {
                for p in batch {
                    let _ = p.tx.send(Err(WriteError::ForwardOutcomeUnknown { leader }));
                }
            }
        }
    }

    /// Fails every forwarded batch (the node stops).
    pub(crate) fn fail_forwarded(&mut self, why: &WriteError) {
        for (_, (_, _, batch)) in std::mem::take(&mut self.extras.forwarded) {
            for p in batch {
                let _ = p.tx.send(Err(why.clone()));
            }
        }
        if let Some(w) = self.extras.transfer.take() {
            let e = match why {
                WriteError::Fatal(f) => TransferError::Fatal(f.clone()),
                _ => TransferError::Shutdown,
            };
            let _ = w.tx.send(Err(e));
        }
    }
}
