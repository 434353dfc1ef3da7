//! [`FaultyNetwork`]: wraps any [`Network`] with the nemesis's faults — directed link blocks
//! (partitions, one-way and bridge), loss, duplication and delay (hence reordering) — and shows
//! every message a node emits to the checker before any fault applies.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{Inbox, Message, MessageBody, Network, NetworkError, NodeId};

use super::checker::Checker;
use crate::rng::Rng;

/// Message-level fault rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MessageFaults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Extra delay drawn per message from this range (different delays reorder).
    pub delay: Option<(Duration, Duration)>,
    /// Probability a message is stalled: held for 0.3–2 s, longer than an election timeout,
    /// as a congested link or a stalled proxy would (late votes and acknowledgements from an
    /// earlier term then arrive mid-election).
    pub stall: f64,
}

#[derive(Debug)]
struct State {
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Directed links with a large fixed latency.
    slow: BTreeMap<(NodeId, NodeId), Duration>,
    faults: MessageFaults,
    rng: Rng,
    /// The next final snapshot chunk to this node is held back.
    hold_final_chunk_to: Option<NodeId>,
}

/// A held-back message's delivery.
type Delivery = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The fault settings shared by every node's [`FaultyNetwork`]; the nemesis changes them.
pub struct Faults {
    state: Mutex<State>,
    held: Mutex<Option<Delivery>>,
    drop_filter: Mutex<Option<DropFilter>>,
}

/// Decides, from sender, receiver and content, whether to drop a message (directed scenarios).
pub type DropFilter = Arc<dyn Fn(NodeId, NodeId, &Message) -> bool + Send + Sync>;

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").field("state", &*self.lock()).finish_non_exhaustive()
    }
}

impl Faults {
    /// No faults; `seed` drives every random fault decision.
    pub fn new(seed: u64) -> Faults {
        Faults {
            state: Mutex::new(State {
                blocked: BTreeSet::new(),
                slow: BTreeMap::new(),
                faults: MessageFaults::default(),
                rng: Rng::new(seed),
                hold_final_chunk_to: None,
            }),
            held: Mutex::new(None),
            drop_filter: Mutex::new(None),
        }
    }

    /// Drops every message `filter` says to (until replaced, or removed with `None`).
    pub fn set_drop_filter(&self, filter: Option<DropFilter>) {
        *self.drop_filter.lock().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    fn filtered(&self, from: NodeId, to: NodeId, m: &Message) -> bool {
        let f = self.drop_filter.lock().unwrap_or_else(|p| p.into_inner()).clone();
        f.is_some_and(|f| f(from, to, m))
    }

    /// Holds back the next final snapshot chunk sent to `to` (other faults aside) until
    /// [`deliver_held`](Self::deliver_held): a scenario can then act at the very moment it
    /// arrives.
    pub fn hold_final_chunk_to(&self, to: NodeId) {
        self.lock().hold_final_chunk_to = Some(to);
    }

    /// Delivers the held-back message, if any; returns whether there was one.
    pub async fn deliver_held(&self) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        match held {
            Some(deliver) => {
                deliver().await;
                true
            }
            None => false,
        }
    }

    /// Whether `m` to `to` is the message to hold back (and stop holding).
    fn hold(&self, to: NodeId, m: &Message) -> bool {
        let mut s = self.lock();
        let hold = s.hold_final_chunk_to == Some(to)
            && matches!(&m.body, MessageBody::InstallSnapshot(c) if c.done);
        if hold {
            s.hold_final_chunk_to = None;
        }
        hold
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the blocked links with `links` (directed pairs).
    pub fn set_blocked(&self, links: BTreeSet<(NodeId, NodeId)>) {
        self.lock().blocked = links;
    }

    /// Blocks one directed link.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Makes the directed link `from -> to` slow: every message takes about `latency` (a
    /// congested path), so answers arrive long after the sender moved on.
    pub fn slow_link(&self, from: NodeId, to: NodeId, latency: Duration) {
        self.lock().slow.insert((from, to), latency);
    }

    /// Sets the message fault rates.
    pub fn set_message_faults(&self, f: MessageFaults) {
        self.lock().faults = f;
    }

    /// Whether no fault is in force: no blocked or slow link, no message faults, nothing held.
    pub fn is_healthy(&self) -> bool {
        let s = self.lock();
        s.blocked.is_empty()
            && s.slow.is_empty()
            && s.faults == MessageFaults::default()
            && s.hold_final_chunk_to.is_none()
            && self.drop_filter.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Removes every fault.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.blocked.clear();
        s.slow.clear();
        s.faults = MessageFaults::default();
    }

    /// Decides the fate of one message: how many copies, each with its delay.
    fn fate(&self, from: NodeId, to: NodeId) -> Vec<Option<Duration>> {
        let mut s = self.lock();
        if s.blocked.contains(&(from, to)) {
            return Vec::new();
        }
        let f = s.faults;
        if s.rng.chance(f.drop) {
            return Vec::new();
        }
        let copies = if s.rng.chance(f.duplicate) { 2 } else { 1 };
        let slow = s.slow.get(&(from, to)).copied();
        (0..copies)
            .map(|_| {
                if let Some(latency) = slow {
                    Some(latency + s.rng.duration(Duration::ZERO, Duration::from_millis(20)))
                } else if s.rng.chance(f.stall) {
                    Some(s.rng.duration(Duration::from_millis(300), Duration::from_secs(2)))
                } else {
                    f.delay.map(|(lo, hi)| s.rng.duration(lo, hi))
                }
            })
            .collect()
    }
}

/// A node's network with faults injected on the sending side.
pub struct FaultyNetwork<N> {
    inner: Arc<N>,
    id: NodeId,
    faults: Arc<Faults>,
    checker: Arc<Checker>,
}

impl<N: Network> FaultyNetwork<N> {
    /// Wraps `inner`, the endpoint of node `id`.
    pub fn new(inner: N, id: NodeId, faults: Arc<Faults>, checker: Arc<Checker>) -> Self {
        FaultyNetwork { inner: Arc::new(inner), id, faults, checker }
    }
}

#[async_trait]
impl<N: Network> Network for FaultyNetwork<N> {
    async fn start(&self, inbox: Inbox) -> Result<(), NetworkError> {
        self.inner.start(inbox).await
    }

    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError> {
        let mut now = Vec::with_capacity(messages.len());
        for m in messages {
            self.checker.on_send(self.id, to, &m);
            if self.checker.livelocked() {
                // The checker reported it; dropping everything lets time move and the run end.
                continue;
            }
            if self.faults.filtered(self.id, to, &m) {
                continue;
            }
            if self.faults.hold(to, &m) {
                let inner = self.inner.clone();
                let deliver: Delivery = Box::new(move || {
                    Box::pin(async move {
                        let _ = inner.send(to, vec![m]).await;
                    })
                });
                *self.faults.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(deliver);
                continue;
            }
            for delay in self.faults.fate(self.id, to) {
                match delay {
                    None => now.push(m.clone()),
                    Some(d) => {
                        let (inner, m) = (self.inner.clone(), m.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(d).await;
                            let _ = inner.send(to, vec![m]).await;
                        });
                    }
                }
            }
        }
        if now.is_empty() {
            return Ok(());
        }
        self.inner.send(to, now).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
