//! The proposal queue: client commands on their way to the driver.
//!
//! A bounded queue, like a bounded `mpsc` channel, but its bound is one counter instead of a
//! semaphore: a write that finds room costs one compare-and-swap to enter and one subtraction
//! when the driver takes it, where the channel's semaphore takes a future to acquire a permit
//! and a lock to give it back. Only a writer that finds the queue full waits, on a [`Notify`],
//! until the driver takes something (or stops).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::driver::Proposal;

/// Makes a queue that holds at most `capacity` proposals.
pub(crate) fn queue<O>(capacity: usize) -> (ProposalSender<O>, ProposalReceiver<O>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        closed: AtomicBool::new(false),
        freed: Notify::new(),
    });
    (ProposalSender { tx, room: room.clone() }, ProposalReceiver { rx, room })
}

/// The handles' end.
pub(crate) struct ProposalSender<O> {
    tx: mpsc::UnboundedSender<Proposal<O>>,
    room: Arc<Room>,
}

/// The driver's end. Dropping it (the driver stopped, or was aborted) wakes every writer
/// waiting for room, and they see the queue closed.
pub(crate) struct ProposalReceiver<O> {
    rx: mpsc::UnboundedReceiver<Proposal<O>>,
    room: Arc<Room>,
}

/// The bound: how many proposals are queued, and who waits for room.
struct Room {
    queued: AtomicUsize,
    capacity: usize,
    closed: AtomicBool,
    freed: Notify,
}

impl Room {
    fn try_enter(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a place in the queue, waiting while it is full. False once the queue is closed.
    async fn enter(&self) -> bool {
        if self.try_enter() {
            return true;
        }
        loop {
            // Registered before looking again, so a `leave` in between wakes this waiter.
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.try_enter() {
                return true;
            }
            notified.await;
        }
    }

    fn leave(&self) {
        // Writers wait only after seeing the queue full, and the first `leave` after that sees
        // it full too: that one wakes them.
        if self.queued.fetch_sub(1, Ordering::AcqRel) >= self.capacity {
            self.freed.notify_waiters();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }
}

impl<O> ProposalSender<O> {
    /// Queues `p` for the driver, waiting while the queue is full. Gives `p` back if the driver
    /// has stopped.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits for room queues nothing.
    pub(crate) async fn send(&self, p: Proposal<O>) -> Result<(), Proposal<O>> {
        if !self.room.enter().await {
            return Err(p);
        }
        self.tx.send(p).map_err(|e| {
            self.room.leave();
            e.0
        })
    }
}

impl<O> ProposalReceiver<O> {
    /// The next proposal; `None` once every sender is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a proposal is taken only when this returns it.
    pub(crate) async fn recv(&mut self) -> Option<Proposal<O>> {
        let p = self.rx.recv().await;
        if p.is_some() {
            self.room.leave();
        }
        p
    }

    /// A proposal already queued, if any.
    pub(crate) fn try_recv(&mut self) -> Result<Proposal<O>, TryRecvError> {
        let p = self.rx.try_recv();
        if p.is_ok() {
            self.room.leave();
        }
        p
    }

    /// Refuses new proposals; those already queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.rx.close();
        self.room.close();
    }
}

impl<O> Drop for ProposalReceiver<O> {
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    fn proposal() -> Proposal<()> {
        let (tx, _rx) = oneshot::channel();
        Proposal { data: bytes::Bytes::new(), tx }
    }

    /// A full queue holds writers back until the driver takes something, and lets exactly as
    /// many in as it has room for.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn full_queue_waits_for_room() {
        let (tx, mut rx) = queue::<()>(2);
        let tx = Arc::new(tx);
        assert!(tx.send(proposal()).await.is_ok());
        assert!(tx.send(proposal()).await.is_ok());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(proposal()).await.is_ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(waiting.iter().all(|t| !t.is_finished()), "nobody gets into a full queue");
        assert!(rx.try_recv().is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(waiting.iter().filter(|t| t.is_finished()).count(), 1);
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_some());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(waiting.iter().filter(|t| t.is_finished()).count(), 3);
        for t in waiting {
            assert!(t.await.unwrap());
        }
        assert_eq!(tx.room.queued.load(Ordering::Relaxed), 2);
    }

    /// Writers waiting for room are told when the driver goes away, and later ones too.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn dropping_the_receiver_releases_waiters() {
        let (tx, rx) = queue::<()>(1);
        let tx = Arc::new(tx);
        assert!(tx.send(proposal()).await.is_ok());
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(proposal()).await.is_err() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(rx);
        assert!(waiter.await.unwrap(), "the waiter gets its proposal back");
        assert!(tx.send(proposal()).await.is_err());
    }

    /// After `close`, sends fail but what was queued can still be taken.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn close_keeps_what_was_queued() {
        let (tx, mut rx) = queue::<()>(4);
        assert!(tx.send(proposal()).await.is_ok());
        rx.close();
        assert!(tx.send(proposal()).await.is_err());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
