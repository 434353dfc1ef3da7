//! The driver's helpers, one task each: the log writer (group commit), the apply worker, and
//! one sender per peer. They keep slow IO off the driver: a slow disk delays acknowledgements,
//! not message handling; a slow peer delays only itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftkit_core::codec;
use raftkit_core::{
    AppendEntries, ApplyRequest, Entry, EntryPayload, LogId, LogIndex, Message, MessageBody,
    NodeId, PersistRequest, SendFromLog, WriteId,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Fatal, StorageError, WriteError};
use crate::traits::{ApplyEntry, ApplyPayload, LogStore, Network, StateMachine};

/// A client waiting for its command at `log_id` to be applied.
pub(crate) struct Waiter<O> {
    pub(crate) log_id: LogId,
    pub(crate) tx: oneshot::Sender<Result<O, WriteError>>,
}

/// Entries to apply and the clients waiting on them.
pub(crate) struct ApplyJob<O> {
    pub(crate) req: ApplyRequest,
    pub(crate) waiters: BTreeMap<LogIndex, Waiter<O>>,
}

/// Writes log changes in order, merging every write queued behind the one in progress into
/// the next single store call: many proposals, one fsync.
pub(crate) async fn log_writer<L: LogStore>(
    log: Arc<L>,
    mut rx: mpsc::UnboundedReceiver<PersistRequest>,
    done: mpsc::UnboundedSender<Result<(WriteId, usize), StorageError>>,
) {
    while let Some(first) = rx.recv().await {
        let (mut id, mut write, mut merged) = (first.id, first.write, 1);
        while let Ok(next) = rx.try_recv() {
            write.merge(next.write);
            id = next.id;
            merged += 1;
        }
        let result = log.write(write).await;
        let failed = result.is_err();
        if done.send(result.map(|()| (id, merged))).is_err() || failed {
            // The driver is gone, or the store failed: a failed store must not be written again.
            return;
        }
    }
}

/// Applies committed entries to the state machine in order and answers the waiting clients.
pub(crate) async fn apply_worker<L: LogStore, S: StateMachine>(
    mut sm: S,
    log: Arc<L>,
    max_batch: usize,
    mut rx: mpsc::UnboundedReceiver<ApplyJob<S::Output>>,
    done: mpsc::UnboundedSender<Result<LogIndex, Fatal>>,
) {
    while let Some(job) = rx.recv().await {
        let mut jobs = vec![job];
        let mut count = entry_count(&jobs[0].req);
        while count < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    count += entry_count(&j.req);
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let result = apply_jobs(&mut sm, &*log, jobs).await;
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

fn entry_count(req: &ApplyRequest) -> usize {
    (req.last.index.0 + 1 - req.first.0) as usize
}

async fn apply_jobs<L: LogStore, S: StateMachine>(
    sm: &mut S,
    log: &L,
    jobs: Vec<ApplyJob<S::Output>>,
) -> Result<LogIndex, Fatal> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut waiters = BTreeMap::new();
    for job in jobs {
        let req = job.req;
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
        entries.extend(batch);
        waiters.extend(job.waiters);
    }
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
    for e in &entries {
        if !matches!(e.payload, EntryPayload::Normal(_)) {
            continue;
        }
        let out = outputs.next().expect("counted above");
        if let Some(w) = waiters.remove(&e.index()) {
            let reply = if w.log_id == e.log_id {
                Ok(out)
            } else {
                Err(WriteError::Overwritten { log_id: w.log_id })
            };
            // The client may have given up waiting; that is fine.
            let _ = w.tx.send(reply);
        }
    }
    // Waiters at indexes now holding a no-op or configuration entry were overwritten too.
    for (_, w) in waiters {
        let _ = w.tx.send(Err(WriteError::Overwritten { log_id: w.log_id }));
    }
    Ok(last)
}

/// What the driver queues for one peer.
pub(crate) enum PeerItem {
    Msg(Message),
    FromLog(SendFromLog),
}

/// The most messages handed to the network in one `send` call.
const PEER_BATCH: usize = 64;

/// Sends one peer's messages in order, batching what is queued, reading old entries from the
/// store when the core asked for it. A failure is reported to the driver as "unreachable"; the
/// core then backs off until the peer answers a heartbeat.
pub(crate) async fn peer_sender<N: Network, L: LogStore>(
    to: NodeId,
    network: Arc<N>,
    log: Arc<L>,
    send_timeout: Duration,
    mut rx: mpsc::Receiver<PeerItem>,
    unreachable: mpsc::UnboundedSender<NodeId>,
) {
    let mut items = Vec::with_capacity(PEER_BATCH);
    while rx.recv_many(&mut items, PEER_BATCH).await > 0 {
        let mut batch = Vec::with_capacity(items.len());
        for item in items.drain(..) {
            match item {
                PeerItem::Msg(m) => batch.push(m),
                PeerItem::FromLog(req) => {
                    if let Some(m) = read_append(&*log, req).await {
                        batch.push(m);
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        match tokio::time::timeout(send_timeout, network.send(to, batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %to, error = %e, "send failed");
                let _ = unreachable.send(to);
            }
            Err(_) => {
                tracing::debug!(peer = %to, "send timed out");
                let _ = unreachable.send(to);
            }
        }
    }
}

/// Builds an AppendEntries from the store. Returns `None` (drop the message; the core will
/// retry) if the read fails or the log changed since the core asked.
async fn read_append<L: LogStore>(log: &L, req: SendFromLog) -> Option<Message> {
    let first = req.prev_log_id.index.next();
    match log.read(first, req.last.index).await {
        Ok(entries) if entries.last().map(|e| e.log_id) == Some(req.last) => Some(Message {
            term: req.term,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: req.prev_log_id,
                entries,
                leader_commit: req.leader_commit,
            }),
        }),
        Ok(_) => {
            tracing::debug!(peer = %req.to, last = %req.last, "log changed before a catch-up read; dropping");
            None
        }
        Err(e) => {
            tracing::warn!(peer = %req.to, error = %e, "catch-up read failed; dropping");
            None
        }
    }
}
