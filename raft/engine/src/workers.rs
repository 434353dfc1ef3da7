//! The driver's helpers, one task each: the log writer (group commit), the apply worker, one
//! sender per peer, and the snapshot receiver. They keep slow IO off the driver: a slow disk
//! delays acknowledgements, not message handling; a slow peer delays only itself.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftkit_core::codec;
use raftkit_core::{
    AppendEntries, ApplyRequest, Entry, EntryPayload, InstallSnapshot, LogId, LogIndex, Membership,
    Message, MessageBody, NodeId, PersistRequest, ReceiveSnapshot, SendFromLog, SendSnapshot,
    SnapshotMeta, WriteId,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::{Fatal, NetworkError, StorageError, StorageErrorKind, WriteError};
use crate::snapshot_store::{Expected, SnapshotStore, SnapshotWriter};
use crate::telemetry::{PeerMetrics, WriteMetrics};
use crate::traits::{ApplyEntry, ApplyPayload, LogStore, Network, SnapshotSource, StateMachine};

/// What the helpers report to the driver, besides writes and applies.
pub(crate) enum Event {
    /// A local snapshot was built and stored.
    SnapshotBuilt(SnapshotMeta),
    /// Building a local snapshot failed.
    SnapshotBuildFailed(StorageError),
    /// A snapshot chunk from a leader was handled (see `RaftCore::handle_snapshot_received`).
    SnapshotReceived { from: NodeId, meta: SnapshotMeta, next_offset: u64, installed: bool },
    /// The snapshot being sent to a peer can no longer be read.
    SnapshotSendFailed(NodeId),
    /// A peer could not be reached.
    /// A send to a peer failed or timed out (with why).
    Unreachable(NodeId, String),
    /// The snapshot receiver asks for the log's prefix to be replaced by an installed snapshot
    /// (the driver queues it for the log writer, in order with its own writes).
    InstallLog(LogId, oneshot::Sender<Result<(), StorageError>>),
    /// Something failed for good.
    Fatal(Fatal),
}

/// A client waiting for its command at `log_id` to be applied.
pub(crate) struct Waiter<O> {
    pub(crate) log_id: LogId,
    pub(crate) tx: oneshot::Sender<Result<O, WriteError>>,
}

/// The clients waiting for their entries, in index order, at most one per index.
///
/// A queue rather than a map: a leader's proposals take increasing indexes, so a new waiter
/// goes at the back and waiters leave from the front as their entries are applied, both
/// without allocating per waiter. Only after a leadership change can a new waiter take an
/// index at or below the last one (the log was truncated there); that rare case is a
/// binary search and an insert.
pub(crate) struct WaiterQueue<O>(VecDeque<Waiter<O>>);

impl<O> Default for WaiterQueue<O> {
    fn default() -> Self {
        WaiterQueue(VecDeque::new())
    }
}

impl<O> WaiterQueue<O> {
    /// Adds `w`, keeping index order; returns the waiter it replaces at the same index (whose
    /// entry was overwritten), if any.
    pub(crate) fn insert(&mut self, w: Waiter<O>) -> Option<Waiter<O>> {
        let index = w.log_id.index;
        if self.0.back().is_none_or(|b| b.log_id.index < index) {
            self.0.push_back(w);
            return None;
        }
        let pos = self.0.partition_point(|x| x.log_id.index < index);
        if self.0[pos].log_id.index == index {
            return Some(std::mem::replace(&mut self.0[pos], w));
        }
        self.0.insert(pos, w);
        None
    }

    /// Removes and returns every waiter at or below `up_to`, in index order.
    pub(crate) fn take_to(&mut self, up_to: LogIndex) -> Vec<Waiter<O>> {
        let n = self.0.partition_point(|x| x.log_id.index <= up_to);
        self.0.drain(..n).collect()
    }

    /// Removes and returns every waiter.
    pub(crate) fn take_all(&mut self) -> Vec<Waiter<O>> {
        self.0.drain(..).collect()
    }
}

/// Work for the apply worker, which owns the state machine.
pub(crate) enum ApplyJob<O> {
    /// Entries to apply and the clients waiting on them.
    /// `waiters` are those of the entries in `req`, in index order.
    Entries { req: ApplyRequest, waiters: Vec<Waiter<O>> },
    /// Take a snapshot of the state machine and store it.
    BuildSnapshot { memberships: Vec<(LogId, Membership)>, chunk_bytes: usize },
    /// Replace the state with a stored snapshot's.
    Restore { meta: SnapshotMeta, reply: oneshot::Sender<Result<(), StorageError>> },
    /// An apply the driver started while this worker was idle and that did not finish on its
    /// first poll: finish it and report it.
    Started(ApplyFuture),
    /// Reads to answer from the state machine, in order with the applies before them.
    Query(QueryFuture),
}

/// Reads answered from the state machine (built by the driver; answers its callers itself).
pub(crate) type QueryFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An apply (see [`apply_jobs`]) the driver started itself.
pub(crate) type ApplyFuture = Pin<Box<dyn Future<Output = Result<LogIndex, Fatal>> + Send>>;

/// The state machine, shared by the apply worker and (for a state machine that applies at
/// once, [`StateMachine::INLINE_APPLY`]) the driver. Each takes the lock for a whole job, so
/// jobs stay one at a time; the driver applies only while the worker has nothing queued, so
/// they stay in order too.
pub(crate) type SharedSm<S> = Arc<tokio::sync::Mutex<S>>;

/// A log store call the driver started itself and that did not finish on its first poll.
pub(crate) type StoreFuture = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// A `send` the driver started itself and that did not finish on its first poll.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = Result<(), NetworkError>> + Send>>;

/// Counts the items a helper task has been handed and not finished yet. The driver is the only
/// one to hand them over, so when it reads zero the helper is idle and the driver may call the
/// store or the network itself without breaking their one-call-at-a-time order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Queued(Arc<AtomicUsize>);

impl Queued {
    /// The driver hands over one item.
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The helper finished `n` items (every store or network call for them has returned).
    pub(crate) fn done(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Release);
    }

    /// Whether every item handed over is finished.
    pub(crate) fn is_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// Work for the log writer, in log order.
pub(crate) enum WriterOp {
    /// A write from the core.
    Persist(PersistRequest),
    /// A write (of so many entries) the driver started while the writer was idle; finish it and
    /// report `id`.
    Started(WriteId, usize, StoreFuture),
    /// Purge a prefix covered by a snapshot.
    Purge(LogId),
    /// Replace the log's prefix with an installed snapshot.
    Install(LogId, oneshot::Sender<Result<(), StorageError>>),
}

/// Writes log changes in order, merging every write queued behind the one in progress into
/// the next single store call: many proposals, one fsync. Purges and installs keep their place
/// in the order.
pub(crate) async fn log_writer<L: LogStore>(
    log: Arc<L>,
    mut rx: mpsc::UnboundedReceiver<WriterOp>,
    queued: Queued,
    done: mpsc::UnboundedSender<Result<(WriteId, usize), StorageError>>,
    metrics: WriteMetrics,
) {
    let mut next: Option<WriterOp> = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => {
                    tracing::debug!("log writer stopped");
                    return;
                }
            },
        };
        let result = match op {
            WriterOp::Persist(first) => {
                let mut writes = vec![first];
                loop {
                    match rx.try_recv() {
                        Ok(WriterOp::Persist(more)) => writes.push(more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (merged, id) = (writes.len(), writes[writes.len() - 1].id);
                let write = merge_writes(writes);
                let entries = write.entries.len();
                let started = std::time::Instant::now();
                let r = log.write(write).await;
                metrics.record(entries, started.elapsed());
                queued.done(merged);
                let failed = r.is_err();
                if done.send(r.map(|()| (id, merged))).is_err() || failed {
                    return;
                }
                continue;
            }
            WriterOp::Started(id, entries, write) => {
                // Timed from here: the driver's first poll did not finish it.
                let started = std::time::Instant::now();
                let r = write.await;
                metrics.record(entries, started.elapsed());
                queued.done(1);
                let failed = r.is_err();
                if done.send(r.map(|()| (id, 1))).is_err() || failed {
                    return;
                }
                continue;
            }
            WriterOp::Purge(up_to) => {
                let r = log.purge(up_to).await;
                queued.done(1);
                r
            }
            WriterOp::Install(s, reply) => {
                let r = log.install_snapshot(s).await;
                queued.done(1);
                let failed = r.is_err();
                let _ = reply.send(r);
                if failed {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = result {
            // A failed store must not be written again; the driver stops the node.
            let _ = done.send(Err(e));
            return;
        }
    }
}

/// Merges queued writes into one, with room reserved for all their entries up front.
fn merge_writes(writes: Vec<PersistRequest>) -> raftkit_core::LogWrite {
    let total: usize = writes.iter().map(|w| w.write.entries.len()).sum();
    let mut writes = writes.into_iter();
    let mut write = writes.next().expect("at least one write").write;
    if !write.entries.is_empty() {
        write.entries.reserve(total - write.entries.len());
    }
    for more in writes {
        write.merge(more.write);
    }
    write
}

/// Applies committed entries to the state machine in order and answers the waiting clients;
/// takes snapshots and restores them, in the same order.
pub(crate) async fn apply_worker<L: LogStore, S: StateMachine>(
    sm: SharedSm<S>,
    log: Arc<L>,
    max_batch: usize,
    mut rx: mpsc::UnboundedReceiver<ApplyJob<S::Output>>,
    queued: Queued,
    done: mpsc::UnboundedSender<Result<LogIndex, Fatal>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let snapshots = log.snapshot_store();
    let mut next: Option<ApplyJob<S::Output>> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => {
                    tracing::debug!("apply worker stopped");
                    return;
                }
            },
        };
        match job {
            ApplyJob::Entries { req, waiters } => {
                let mut batch = vec![(req, waiters)];
                let mut count = entry_count(&batch[0].0);
                while count < max_batch {
                    match rx.try_recv() {
                        Ok(ApplyJob::Entries { req, waiters }) => {
                            count += entry_count(&req);
                            batch.push((req, waiters));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let jobs = batch.len();
                let result = apply_jobs(&mut *sm.lock().await, &*log, batch).await;
                queued.done(jobs);
                let failed = result.is_err();
                if done.send(result).is_err() || failed {
                    return;
                }
            }
            ApplyJob::Query(job) => {
                job.await;
                queued.done(1);
            }
            ApplyJob::Started(apply) => {
                let result = apply.await;
                queued.done(1);
                let failed = result.is_err();
                if done.send(result).is_err() || failed {
                    return;
                }
            }
            ApplyJob::BuildSnapshot { memberships, chunk_bytes } => {
                let taken = async {
                    let mut sm = sm.lock().await;
                    let applied = sm.applied().await?;
                    let source = sm.snapshot().await?;
                    Ok::<_, StorageError>((applied, source))
                }
                .await;
                queued.done(1);
                match taken {
                    Ok((Some(applied), source)) => {
                        // The configuration in force at the snapshot's last entry.
                        let membership = memberships
                            .iter()
                            .rev()
                            .find(|(id, _)| id.index <= applied.index)
                            .or(memberships.first())
                            .map(|(_, m)| m.clone())
                            .unwrap_or_else(Membership::uninitialized);
                        // Written out in its own task: applying goes on meanwhile.
                        let (store, events) = (snapshots.clone(), events.clone());
                        tokio::spawn(
                            async move {
                                let r = write_snapshot(
                                    &*store,
                                    applied,
                                    membership,
                                    source,
                                    chunk_bytes,
                                )
                                .await;
                                let _ = events.send(match r {
                                    Ok(meta) => Event::SnapshotBuilt(meta),
                                    Err(e) => Event::SnapshotBuildFailed(e),
                                });
                            }
                            .in_current_span(),
                        );
                    }
                    Ok((None, _)) => {
                        let e = StorageError::new(
                            StorageErrorKind::InvalidInput,
                            "nothing applied to snapshot",
                        );
                        let _ = events.send(Event::SnapshotBuildFailed(e));
                    }
                    Err(e) => {
                        let _ = done.send(Err(Fatal::StateMachine(e.context("taking a snapshot"))));
                        return;
                    }
                }
            }
            ApplyJob::Restore { meta, reply } => {
                let data = match snapshots.open(&meta).await {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                match restore_blocking(sm.clone().lock_owned().await, meta, data).await {
                    Ok((_guard, r)) => {
                        let _ = reply.send(r);
                    }
                    Err(e) => {
                        // The state machine panicked and is gone with its thread.
                        let _ = done.send(Err(Fatal::StateMachine(e)));
                        return;
                    }
                }
            }
        }
    }
}

/// Runs [`StateMachine::restore`] on Tokio's blocking pool: it reads the snapshot through a
/// synchronous `Read` (a file, typically), which must not hold a runtime worker — on a
/// current-thread runtime that would stop every other task, heartbeats included, for the
/// whole restore. The state machine moves to the blocking thread and back; the restore
/// future is driven there with `Handle::block_on`, so it may still await.
///
/// # Errors
/// Only if the restore panicked; the state machine is lost with it.
pub(crate) async fn restore_blocking<S, H>(
    mut sm: H,
    meta: SnapshotMeta,
    data: Box<dyn Read + Send>,
) -> Result<(H, Result<(), StorageError>), StorageError>
where
    S: StateMachine,
    H: std::ops::DerefMut<Target = S> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let last = meta.last_log_id;
    tokio::task::spawn_blocking(move || {
        let r = runtime.block_on(sm.restore(&meta, data));
        (sm, r)
    })
    .await
    .map_err(|e| {
        StorageError::new(
            StorageErrorKind::Other,
            format!("restoring the snapshot at {last} failed: {e}"),
        )
    })
}

/// Streams a state machine snapshot into the snapshot store.
async fn write_snapshot(
    store: &dyn SnapshotStore,
    last: LogId,
    membership: Membership,
    mut source: Box<dyn SnapshotSource>,
    chunk_bytes: usize,
) -> Result<SnapshotMeta, StorageError> {
    let mut writer = store.begin(last, membership, None).await?;
    let mut buf = Vec::with_capacity(chunk_bytes);
    loop {
        buf.clear();
        let more = source.next_chunk(&mut buf, chunk_bytes)?;
        writer.write(&buf).await?;
        if !more {
            break;
        }
        // Producing the snapshot is CPU work on the runtime: let other tasks run between parts.
        tokio::task::yield_now().await;
    }
    writer.finish().await
}

fn entry_count(req: &ApplyRequest) -> usize {
    (req.last.index.0 + 1 - req.first.0) as usize
}

/// Applies the entries of `jobs` (in log order) in one call to the state machine and answers
/// their waiters; returns the last index applied.
pub(crate) async fn apply_jobs<L: LogStore, S: StateMachine>(
    sm: &mut S,
    log: &L,
    jobs: Vec<(ApplyRequest, Vec<Waiter<S::Output>>)>,
) -> Result<LogIndex, Fatal> {
    let mut entries: Vec<Entry> = Vec::new();
    // Each job's waiters lie within its own range (the driver splits them off at the job's
    // end), and the jobs come in log order: chained, they are in index order.
    let mut all_waiters: Vec<Waiter<S::Output>> = Vec::new();
    for (req, job_waiters) in jobs {
        let batch = match req.entries {
            Some(e) => e,
            None => log
                .read(req.first, req.last.index)
                .await
                .map_err(|e| Fatal::LogStore(e.context("reading committed entries to apply")))?,
        };
        if batch.first().map(Entry::index) != Some(req.first)
            || batch.last().map(|e| e.log_id) != Some(req.last)
        {
            return Err(Fatal::LogStore(StorageError::new(
                crate::StorageErrorKind::Corruption,
                format!("committed entries {}..={} read back differently", req.first, req.last),
            )));
        }
        if entries.is_empty() {
            entries = batch;
        } else {
            entries.extend(batch);
        }
        if all_waiters.is_empty() {
            all_waiters = job_waiters;
        } else {
            all_waiters.extend(job_waiters);
        }
    }
    let mut waiters = all_waiters.into_iter().peekable();
    let last = entries.last().map_or(LogIndex(0), Entry::index);
    let mut items = Vec::with_capacity(entries.len());
    let mut commands = 0;
    for e in &entries {
        let payload = match &e.payload {
            EntryPayload::Normal(data) => {
                commands += 1;
                let cmd = codec::decode::<S::Command>(data).map_err(|err| Fatal::BadCommand {
                    log_id: e.log_id,
                    reason: err.to_string(),
                })?;
                ApplyPayload::Command(cmd)
            }
            EntryPayload::Blank => ApplyPayload::Blank,
            EntryPayload::Membership(m) => ApplyPayload::Membership(m.clone()),
        };
        items.push(ApplyEntry { log_id: e.log_id, payload });
    }
    let outputs = sm.apply(items).await.map_err(Fatal::StateMachine)?;
    if outputs.len() != commands {
        return Err(Fatal::OutputCount { expected: commands, got: outputs.len() });
    }
    let mut outputs = outputs.into_iter();
    // Walk the entries and the waiters (both in index order) side by side.
    for e in &entries {
        let mut out = match e.payload {
            EntryPayload::Normal(_) => Some(outputs.next().expect("counted above")),
            _ => None,
        };
        while let Some(w) = waiters.next_if(|w| w.log_id.index <= e.index()) {
            let reply = if w.log_id.index < e.index() {
                // Below what is applied here (entries are contiguous, so below the first): a
                // snapshot from the leader covered it.
                Err(WriteError::OutcomeUnknown { log_id: w.log_id })
            } else if w.log_id != e.log_id {
                Err(WriteError::Overwritten { log_id: w.log_id })
            } else {
                // No output: the index holds a no-op or configuration entry, so overwritten.
                out.take().ok_or(WriteError::Overwritten { log_id: w.log_id })
            };
            // The client may have given up waiting; that is fine.
            let _ = w.tx.send(reply);
        }
    }
    // None are left past the last entry (the driver splits waiters off at a job's end).
    for w in waiters {
        let _ = w.tx.send(Err(WriteError::Overwritten { log_id: w.log_id }));
    }
    Ok(last)
}

/// What the driver queues for one peer.
pub(crate) enum PeerItem {
    Msg(Message),
    /// A send the driver started while the sender was idle; finish it.
    Started(SendFuture),
    FromLog(SendFromLog),
    Snapshot(SendSnapshot),
}

/// The most messages handed to the network in one `send` call.
const PEER_BATCH: usize = 64;

/// Sends one peer's messages in order, batching what is queued, reading old entries and
/// snapshot chunks from storage when the core asked for it. A failure is reported to the driver
/// as "unreachable"; the core then backs off until the peer answers a heartbeat.
pub(crate) async fn peer_sender<N: Network, L: LogStore>(
    to: NodeId,
    network: Arc<N>,
    log: Arc<L>,
    send_timeout: Duration,
    mut rx: mpsc::Receiver<PeerItem>,
    queued: Queued,
    events: mpsc::UnboundedSender<Event>,
    metrics: PeerMetrics,
) {
    let snapshots = log.snapshot_store();
    let mut items = Vec::with_capacity(PEER_BATCH);
    while rx.recv_many(&mut items, PEER_BATCH).await > 0 {
        let count = items.len();
        let mut batch = Vec::with_capacity(items.len());
        for item in items.drain(..) {
            match item {
                PeerItem::Msg(m) => batch.push(m),
                PeerItem::Started(send) => {
                    // Only ever first in line (the driver starts a send only when this task is
                    // idle), but keep the order should anything be ahead of it.
                    if !batch.is_empty() {
                        metrics.sent(&batch);
                        let earlier = network.send(to, std::mem::take(&mut batch));
                        finish_send(to, send_timeout, earlier, &events).await;
                    }
                    finish_send(to, send_timeout, send, &events).await;
                }
                PeerItem::FromLog(req) => {
                    if let Some(m) = read_append(&*log, req).await {
                        batch.push(m);
                    }
                }
                PeerItem::Snapshot(req) => {
                    match snapshots.read(&req.meta, req.offset, req.len).await {
                        Ok(data) => {
                            let done = req.offset + req.len == req.meta.size;
                            if done {
                                metrics.snapshots_sent.increment(1);
                                tracing::info!(
                                    peer = %to, snapshot = %req.meta.last_log_id,
                                    size = req.meta.size, "sending a snapshot's last chunk"
                                );
                            }
                            batch.push(Message {
                                term: req.term,
                                body: MessageBody::InstallSnapshot(InstallSnapshot {
                                    done,
                                    meta: req.meta,
                                    offset: req.offset,
                                    data,
                                }),
                            });
                        }
                        Err(e) => {
                            tracing::debug!(peer = %to, error = %e, "cannot read the snapshot being sent");
                            let _ = events.send(Event::SnapshotSendFailed(to));
                        }
                    }
                }
            }
        }
        if !batch.is_empty() {
            metrics.sent(&batch);
            finish_send(to, send_timeout, network.send(to, batch), &events).await;
        }
        queued.done(count);
    }
}

/// Waits for a send to `to`, reporting a failure or a timeout as "unreachable".
async fn finish_send(
    to: NodeId,
    timeout: Duration,
    send: impl Future<Output = Result<(), NetworkError>>,
    events: &mpsc::UnboundedSender<Event>,
) {
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %to, error = %e, "send failed");
            let _ = events.send(Event::Unreachable(to, e.to_string()));
        }
        Err(_) => {
            tracing::debug!(peer = %to, "send timed out");
            let _ = events.send(Event::Unreachable(to, format!("timed out after {timeout:?}")));
        }
    }
}

/// How long the snapshot receiver waits before asking again for a snapshot its state machine
/// refused.
const REFUSED_SNAPSHOT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Receives snapshot chunks from leaders, in order: writes each one that continues what was
/// received (an interrupted transfer resumes from there), and on the last one verifies the
/// snapshot and installs it — state machine first, then the log — before reporting.
pub(crate) async fn snapshot_receiver<O: Send + 'static, L: LogStore>(
    log: Arc<L>,
    mut rx: mpsc::UnboundedReceiver<ReceiveSnapshot>,
    apply: mpsc::UnboundedSender<ApplyJob<O>>,
    events: mpsc::UnboundedSender<Event>,
    refused: metrics::Counter,
) {
    let store = log.snapshot_store();
    let mut current: Option<(SnapshotMeta, Box<dyn SnapshotWriter>)> = None;
    while let Some(r) = rx.recv().await {
        match receive_chunk(&*store, &mut current, r, &apply, &events, &refused).await {
            Ok(ev) => {
                let _ = events.send(ev);
            }
            Err(f) => {
                let _ = events.send(Event::Fatal(f));
                return;
            }
        }
    }
    tracing::debug!("snapshot receiver stopped");
}

async fn receive_chunk<O>(
    store: &dyn SnapshotStore,
    current: &mut Option<(SnapshotMeta, Box<dyn SnapshotWriter>)>,
    r: ReceiveSnapshot,
    apply: &mpsc::UnboundedSender<ApplyJob<O>>,
    events: &mpsc::UnboundedSender<Event>,
    refused: &metrics::Counter,
) -> Result<Event, Fatal> {
    let (from, chunk) = (r.from, r.chunk);
    let meta = chunk.meta.clone();
    let fatal = |e: StorageError| Fatal::LogStore(e.context("receiving a snapshot"));
    if current.as_ref().is_none_or(|(m, _)| *m != meta) {
        let expected = Expected { size: meta.size, checksum: meta.checksum };
        let w = store
            .begin(meta.last_log_id, meta.membership.clone(), Some(expected))
            .await
            .map_err(fatal)?;
        *current = Some((meta.clone(), w));
    }
    let (_, w) = current.as_mut().expect("set above");
    if chunk.offset != w.written() {
        // Not the continuation: tell the leader where to resume.
        return Ok(Event::SnapshotReceived {
            from,
            meta,
            next_offset: w.written(),
            installed: false,
        });
    }
    w.write(&chunk.data).await.map_err(fatal)?;
    if !chunk.done {
        return Ok(Event::SnapshotReceived {
            from,
            meta,
            next_offset: w.written(),
            installed: false,
        });
    }
    let (_, w) = current.take().expect("set above");
    let stored = match w.finish().await {
        Ok(m) => m,
        Err(e) if e.kind() == StorageErrorKind::Corruption => {
            // Damaged in transit or on disk: start the transfer over.
            refused.increment(1);
            tracing::warn!(%from, snapshot = %meta.last_log_id, error = %e, "received snapshot failed its check");
            return Ok(Event::SnapshotReceived { from, meta, next_offset: 0, installed: false });
        }
        Err(e) => return Err(fatal(e)),
    };
    let (tx, rx) = oneshot::channel();
    apply.send(ApplyJob::Restore { meta: stored.clone(), reply: tx }).map_err(|_| {
        fatal(StorageError::new(StorageErrorKind::Closed, "the apply worker stopped"))
    })?;
    let restored = rx.await.map_err(|_| {
        fatal(StorageError::new(StorageErrorKind::Closed, "the apply worker stopped"))
    })?;
    if let Err(e) = restored {
        // The bytes arrived intact (the checksum matched) but the state machine cannot use
        // them. Nothing else changed yet (the log is replaced only after a restore, and a
        // failed restore leaves the state machine as it was): roll the snapshot back so the
        // node keeps its previous state, and can restart from it, instead of holding a
        // snapshot it can never start from. The leader will offer a snapshot again.
        refused.increment(1);
        tracing::error!(%from, snapshot = %stored.last_log_id, error = %e, "the state machine refused a received snapshot; keeping the previous state");
        store.discard(&stored).await.map_err(|d| {
            Fatal::StateMachine(
                e.context(format!("restoring a snapshot (and removing it again failed: {d})")),
            )
        })?;
        // The leader starts the transfer over when told; pause first, so that a state machine
        // that keeps refusing costs a transfer a second, not a busy loop.
        tokio::time::sleep(REFUSED_SNAPSHOT_BACKOFF).await;
        return Ok(Event::SnapshotReceived { from, meta, next_offset: 0, installed: false });
    }
    let (tx, rx) = oneshot::channel();
    events
        .send(Event::InstallLog(stored.last_log_id, tx))
        .map_err(|_| fatal(StorageError::new(StorageErrorKind::Closed, "the driver stopped")))?;
    rx.await
        .map_err(|_| fatal(StorageError::new(StorageErrorKind::Closed, "the log writer stopped")))?
        .map_err(fatal)?;
    Ok(Event::SnapshotReceived { from, next_offset: stored.size, meta: stored, installed: true })
}

/// Builds an AppendEntries from the store. Returns `None` (drop the message; the core will
/// retry) if the read fails or the log changed since the core asked.
async fn read_append<L: LogStore>(log: &L, req: SendFromLog) -> Option<Message> {
    // The core sized the range by its average entry, which can be far off for old entries
    // (say, large ones behind a cache of small ones). Read a few entries first, then as many as
    // the rest of `max_bytes` holds at their size, and stop at `max_bytes`: the message stays
    // within what transports accept, and a bad estimate costs no huge read. A cut-short message
    // is acknowledged up to where it ends and the leader sends on from there.
    const FIRST_READ: u64 = 16;
    let last = req.last.index;
    let mut entries: Vec<Entry> = Vec::new();
    let mut bytes = 0usize;
    let mut from = req.prev_log_id.index.next();
    let mut step = FIRST_READ;
    while from <= last {
        let to = LogIndex(from.0.saturating_add(step - 1).min(last.0));
        let piece = match log.read(from, to).await {
            Ok(piece) => piece,
            Err(e) => {
                tracing::warn!(peer = %req.to, error = %e, "catch-up read failed; dropping");
                return None;
            }
        };
        if piece.len() as u64 != to.0 - from.0 + 1 || piece.first().map(Entry::index) != Some(from)
        {
            tracing::debug!(peer = %req.to, %from, %to, "log changed before a catch-up read; dropping");
            return None;
        }
        for e in piece {
            let size = e.size_hint();
            if !entries.is_empty() && bytes + size > req.max_bytes {
                return Some(append_message(&req, entries));
            }
            bytes += size;
            entries.push(e);
        }
        from = to.next();
        let average = (bytes / entries.len()).max(1);
        step = (req.max_bytes.saturating_sub(bytes) / average).max(1) as u64;
    }
    if entries.last().map(|e| e.log_id) != Some(req.last) {
        tracing::debug!(peer = %req.to, last = %req.last, "log changed before a catch-up read; dropping");
        return None;
    }
    Some(append_message(&req, entries))
}

fn append_message(req: &SendFromLog, entries: Vec<Entry>) -> Message {
    Message {
        term: req.term,
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: req.prev_log_id,
            entries,
            leader_commit: req.leader_commit,
        }),
    }
}
