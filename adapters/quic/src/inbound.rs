//! The node's inbound queue, shared fairly: every peer has its own bounded queues (in messages
//! and in bytes) for each class of message, and one task hands their messages to the engine's
//! inbox in turn, so that a peer sending more than the node takes delays only itself.
//!
//! - Readers of a peer's streams [`push`](Delivery::push) its messages and wait while that
//!   peer's share of the class is full (the peer's streams are then not read, and QUIC flow
//!   control holds the peer back). Other peers are unaffected.
//! - [`pump`] takes one message per peer in turn (round robin); within a peer's turn its
//!   priority class (votes, heartbeats, responses) goes before its bulk class, so they never
//!   wait behind its AppendEntries or snapshot chunks. It waits for room in the engine's inbox
//!   instead of dropping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use raftkit::{Inbox, Message, NodeId};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::streams::Lane;

/// A message waiting for the engine, holding its place in its peer's share.
struct Queued {
    msg: Message,
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// One class of one peer.
struct ClassQueue {
    items: VecDeque<Queued>,
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

struct PeerQueue {
    peer: NodeId,
    /// Priority class first.
    classes: [ClassQueue; 2],
}

struct State {
    peers: Vec<PeerQueue>,
    /// The peer whose turn is next.
    next: usize,
    closed: bool,
}

/// The per-peer queues between a connection's stream readers and the engine's inbox.
pub(crate) struct Delivery {
    state: Mutex<State>,
    /// Wakes the pump when a message is queued (or on close).
    ready: Notify,
    messages: usize,
    bytes: usize,
}

/// The node has shut down (or the engine stopped): nothing more is delivered.
#[derive(Debug)]
pub(crate) struct Closed;

fn class(msg: &Message) -> usize {
    match Lane::of(&msg.body) {
        Lane::Control => 0,
        Lane::Replication => 1,
    }
}

impl Delivery {
    /// Queues of `messages` messages and `bytes` bytes per peer and class (both validated to
    /// be positive and at most [`Semaphore::MAX_PERMITS`]).
    pub(crate) fn new(messages: usize, bytes: usize) -> Delivery {
        Delivery {
            state: Mutex::new(State { peers: Vec::new(), next: 0, closed: false }),
            ready: Notify::new(),
            messages,
            bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` from `peer` (`size`: its encoded length), waiting while the peer's share of
    /// its class is full.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled push queues nothing.
    pub(crate) async fn push(&self, peer: NodeId, msg: Message, size: usize) -> Result<(), Closed> {
        let c = class(&msg);
        let (count, bytes) = {
            let mut st = self.lock();
            if st.closed {
                return Err(Closed);
            }
            let i = match st.peers.iter().position(|p| p.peer == peer) {
                Some(i) => i,
                None => {
                    let q = || ClassQueue {
                        items: VecDeque::new(),
                        count: Arc::new(Semaphore::new(self.messages)),
                        bytes: Arc::new(Semaphore::new(self.bytes)),
                    };
                    st.peers.push(PeerQueue { peer, classes: [q(), q()] });
                    st.peers.len() - 1
                }
            };
            let q = &st.peers[i].classes[c];
            (q.count.clone(), q.bytes.clone())
        };
        // A message larger than the whole share is admitted alone.
        let n = size.clamp(1, self.bytes).min(u32::MAX as usize) as u32;
        let count = count.acquire_owned().await.map_err(|_| Closed)?;
        let bytes = bytes.acquire_many_owned(n).await.map_err(|_| Closed)?;
        {
            let mut st = self.lock();
            if st.closed {
                return Err(Closed);
            }
            let Some(p) = st.peers.iter_mut().find(|p| p.peer == peer) else {
                return Err(Closed);
            };
            p.classes[c].items.push_back(Queued { msg, _count: count, _bytes: bytes });
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next message in fair order, waiting for one; `None` once closed.
    async fn next(&self) -> Option<(NodeId, Queued)> {
        loop {
            {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                if let Some(x) = pop_fair(&mut st) {
                    return Some(x);
                }
            }
            // `notify_one` stores a wake-up when nobody waits, so none is lost in between.
            self.ready.notified().await;
        }
    }

    /// Drops every queued message and wakes everyone waiting: the node stopped.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for p in st.peers.drain(..) {
            for q in p.classes {
                q.count.close();
                q.bytes.close();
            }
        }
        drop(st);
        self.ready.notify_one();
    }
}

/// One message from the next peer (in turn) that has any, its priority class first.
fn pop_fair(st: &mut State) -> Option<(NodeId, Queued)> {
    let n = st.peers.len();
    for k in 0..n {
        let i = (st.next + k) % n;
        let p = &mut st.peers[i];
        let [priority, bulk] = &mut p.classes;
        if let Some(item) = priority.items.pop_front().or_else(|| bulk.items.pop_front()) {
            let peer = p.peer;
            st.next = (i + 1) % n;
            return Some((peer, item));
        }
    }
    None
}

/// Hands queued messages to the engine, fairly, waiting for room in its inbox, until the node
/// shuts down or the engine stops.
pub(crate) async fn pump(delivery: Arc<Delivery>, inbox: Inbox) {
    while let Some((from, item)) = delivery.next().await {
        let Queued { msg, _count, _bytes } = item;
        // The permits are released once the engine has the message.
        if inbox.deliver_wait(from, msg).await.is_err() {
            delivery.close();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use raftkit::{AppendEntries, Heartbeat, LogId, LogIndex, MessageBody, Term};

    use super::*;

    fn heartbeat(n: u64) -> Message {
        Message {
            term: Term(1),
            body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(n), round: 0 }),
        }
    }

    fn append(n: u64) -> Message {
        Message {
            term: Term(1),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_id: LogId::new(1, n),
                entries: vec![],
                leader_commit: LogIndex(0),
            }),
        }
    }

    fn tag(from: NodeId, m: &Message) -> (u64, char, u64) {
        match &m.body {
            MessageBody::Heartbeat(h) => (from.0, 'h', h.commit.0),
            MessageBody::AppendEntries(a) => (from.0, 'a', a.prev_log_id.index.0),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn peers_take_turns_and_priority_goes_first_within_a_turn() {
        let d = Delivery::new(100, 1 << 20);
        for i in 0..3 {
            d.push(NodeId(3), append(i), 10).await.unwrap();
        }
        d.push(NodeId(2), append(0), 10).await.unwrap();
        d.push(NodeId(2), heartbeat(9), 10).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..5 {
            let (from, q) = d.next().await.unwrap();
            order.push(tag(from, &q.msg));
        }
        assert_eq!(
            order,
            [(3, 'a', 0), (2, 'h', 9), (3, 'a', 1), (2, 'a', 0), (3, 'a', 2)],
            "round robin over peers, priority first within a peer"
        );
    }

    #[tokio::test]
    async fn a_full_share_holds_back_only_its_peer_and_class() {
        let d = Arc::new(Delivery::new(2, 1 << 20));
        d.push(NodeId(3), append(0), 10).await.unwrap();
        d.push(NodeId(3), append(1), 10).await.unwrap();
        // Node 3's bulk share is full: the next push waits...
        let blocked = {
            let d = d.clone();
            tokio::spawn(async move { d.push(NodeId(3), append(2), 10).await })
        };
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        // ...but its priority class and other peers are not held up.
        d.push(NodeId(3), heartbeat(1), 10).await.unwrap();
        d.push(NodeId(2), append(0), 10).await.unwrap();
        // Taking one of node 3's appends makes room.
        let (from, q) = d.next().await.unwrap();
        assert_eq!(tag(from, &q.msg), (3, 'h', 1));
        let (from, q) = d.next().await.unwrap();
        assert_eq!(tag(from, &q.msg), (2, 'a', 0));
        let (from, q) = d.next().await.unwrap();
        assert_eq!(tag(from, &q.msg), (3, 'a', 0));
        drop(q);
        blocked.await.unwrap().unwrap();
        d.close();
        assert!(d.next().await.is_none());
        assert!(d.push(NodeId(2), append(1), 10).await.is_err());
    }

    #[tokio::test]
    async fn the_byte_share_bounds_a_peer_too() {
        let d = Arc::new(Delivery::new(100, 100));
        d.push(NodeId(3), append(0), 60).await.unwrap();
        let blocked = {
            let d = d.clone();
            tokio::spawn(async move { d.push(NodeId(3), append(1), 60).await })
        };
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished(), "120 bytes queued in a 100 byte share");
        // A message larger than the share is admitted alone.
        let (_, q) = d.next().await.unwrap();
        drop(q);
        blocked.await.unwrap().unwrap();
        let (_, q) = d.next().await.unwrap();
        drop(q);
        d.push(NodeId(3), append(2), 1_000).await.unwrap();
    }
}
