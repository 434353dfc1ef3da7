//! [`MemRouter`] and [`MemNetwork`]: an in-process network with seeded fault injection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raftkit::core::Rng;
use raftkit::{Inbox, Message, Network, NetworkError, NetworkErrorKind, NodeId, codec};

/// Fault settings of the router. All randomness comes from the router's seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
    /// Every message is delayed by a random duration in this range (`None`: delivered at once,
    /// in order). Different delays reorder messages.
    pub delay: Option<(Duration, Duration)>,
}

/// The shared switchboard of an in-process cluster. Make one per cluster, then one
/// [`MemNetwork`] per node with [`MemRouter::network`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemRouter {
    inner: Arc<Mutex<Router>>,
}

#[derive(Debug)]
struct Router {
    inboxes: BTreeMap<NodeId, Inbox>,
    /// Directed links that lose everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    rng: Rng,
    through_codec: bool,
    max_frame: usize,
    delivered: u64,
    dropped: u64,
    rejected: u64,
}

/// The default frame limit when messages go through the codec: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

impl Router {
    /// Decodes a frame as a receiving transport would, refusing oversized or malformed ones.
    fn check_frame(&mut self, frame: &[u8]) -> Result<Message, NetworkError> {
        if frame.len() > self.max_frame {
            self.rejected += 1;
            return Err(NetworkError::new(
                NetworkErrorKind::InvalidFrame,
                format!("frame of {} bytes exceeds the {} byte limit", frame.len(), self.max_frame),
            ));
        }
        codec::decode_message(frame).map_err(|e| {
            self.rejected += 1;
            NetworkError::with_source(NetworkErrorKind::InvalidFrame, "malformed frame", e)
        })
    }

    fn delay(&mut self) -> Option<Duration> {
        let (lo, hi) = self.faults.delay?;
        Some(self.rng.duration(lo, hi))
    }
}

impl MemRouter {
    /// A router with no faults; `seed` drives every random fault decision.
    pub fn new(seed: u64) -> MemRouter {
        MemRouter {
            inner: Arc::new(Mutex::new(Router {
                inboxes: BTreeMap::new(),
                blocked: BTreeSet::new(),
                faults: Faults::default(),
                rng: Rng::new(seed),
                through_codec: false,
                max_frame: DEFAULT_MAX_FRAME,
                delivered: 0,
                dropped: 0,
                rejected: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Router> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The network endpoint of node `id`.
    pub fn network(&self, id: NodeId) -> MemNetwork {
        MemNetwork { id, router: self.clone() }
    }

    /// Encodes and decodes every message with the wire codec (as a real transport would),
    /// instead of passing it by value. Frames over the limit are then refused.
    pub fn set_through_codec(&self, on: bool) {
        self.lock().through_codec = on;
    }

    /// Sets the largest encoded message accepted when going through the codec.
    pub fn set_max_frame(&self, bytes: usize) {
        self.lock().max_frame = bytes;
    }

    /// The largest encoded message accepted when going through the codec.
    pub fn max_frame(&self) -> usize {
        self.lock().max_frame
    }

    /// Delivers raw bytes to `to` as if `from` had sent them as one frame: they are decoded
    /// and validated like any frame, so a malformed or oversized one is refused (and counted)
    /// without reaching the node. For testing transports' handling of hostile peers.
    pub fn deliver_raw(&self, from: NodeId, to: NodeId, frame: &[u8]) -> Result<(), NetworkError> {
        let mut g = self.lock();
        let inbox = g.inboxes.get(&to).cloned().ok_or_else(|| {
            NetworkError::new(NetworkErrorKind::Unreachable, format!("{to} is not running"))
        })?;
        match g.check_frame(frame) {
            Ok(msg) => {
                g.delivered += 1;
                drop(g);
                MemRouter::deliver(&inbox, from, msg);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%from, %to, error = %e, "refusing a frame");
                Err(e)
            }
        }
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Drops every message from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Undoes [`block`](Self::block).
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.remove(&(from, to));
    }

    /// Splits the nodes into groups that cannot reach each other (both directions). Nodes not
    /// named keep all their links.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut g = self.lock();
        g.blocked.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in a.iter() {
                        for y in b.iter() {
                            g.blocked.insert((*x, *y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `id` off from every other registered node, both directions.
    pub fn isolate(&self, id: NodeId) {
        let mut g = self.lock();
        let others: Vec<NodeId> = g.inboxes.keys().copied().filter(|n| *n != id).collect();
        for o in others {
            g.blocked.insert((id, o));
            g.blocked.insert((o, id));
        }
    }

    /// Restores every link and clears the fault settings.
    pub fn heal(&self) {
        let mut g = self.lock();
        g.blocked.clear();
        g.faults = Faults::default();
    }

    /// (delivered, dropped, refused as malformed or oversized) message counts so far.
    pub fn stats(&self) -> (u64, u64, u64) {
        let g = self.lock();
        (g.delivered, g.dropped, g.rejected)
    }

    fn deliver(inbox: &Inbox, from: NodeId, msg: Message) {
        // A stopped node simply does not receive.
        let _ = inbox.deliver(from, msg);
    }
}

/// One node's endpoint on a [`MemRouter`].
#[derive(Clone, Debug)]
pub struct MemNetwork {
    id: NodeId,
    router: MemRouter,
}

impl MemNetwork {
    /// The node this endpoint belongs to.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl MemNetwork {
    /// Delivers one copy, at once or after the configured delay.
    fn deliver_one(&self, g: &mut Router, inbox: &Inbox, msg: Message) {
        g.delivered += 1;
        match g.delay() {
            None => MemRouter::deliver(inbox, self.id, msg),
            Some(d) => {
                let (inbox, from) = (inbox.clone(), self.id);
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    MemRouter::deliver(&inbox, from, msg);
                });
            }
        }
    }
}

#[async_trait]
impl Network for MemNetwork {
    async fn start(&self, inbox: Inbox) -> Result<(), NetworkError> {
        self.router.lock().inboxes.insert(self.id, inbox);
        Ok(())
    }

    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), NetworkError> {
        let mut g = self.router.lock();
        let inbox = match g.inboxes.get(&to) {
            Some(i) if !i.is_closed() => i.clone(),
            _ => {
                return Err(NetworkError::new(
                    NetworkErrorKind::Unreachable,
                    format!("{to} is not running"),
                ));
            }
        };
        let blocked = g.blocked.contains(&(self.id, to));
        for msg in messages {
            let drop_rate = g.faults.drop_rate;
            if blocked || g.rng.chance(drop_rate) {
                g.dropped += 1;
                continue;
            }
            let msg = if g.through_codec {
                let bytes = codec::encode_message(&msg).map_err(|e| {
                    NetworkError::with_source(NetworkErrorKind::InvalidFrame, "encode", e)
                })?;
                g.check_frame(&bytes)?
            } else {
                msg
            };
            let dup_rate = g.faults.duplicate_rate;
            if g.rng.chance(dup_rate) {
                self.deliver_one(&mut g, &inbox, msg.clone());
            }
            self.deliver_one(&mut g, &inbox, msg);
        }
        Ok(())
    }

    /// A send is a channel push under a lock (or starts a delay timer).
    fn inline_send(&self) -> bool {
        true
    }

    async fn shutdown(&self) {
        self.router.lock().inboxes.remove(&self.id);
    }
}
