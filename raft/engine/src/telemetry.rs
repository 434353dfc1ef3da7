//! Spans and metrics: the node's `tracing` spans and its `metrics` handles.
//!
//! Every task of a node runs in its span, `raft{node=…}`. The driver's work runs, within it, in
//! a `state{term=… role=…}` span that is replaced whenever the term or the role changes. (A new
//! span rather than `Span::record` on one long-lived span: `tracing-subscriber`'s formatter
//! appends re-recorded fields instead of replacing them, so a long-lived node's span would show,
//! and keep in memory, its whole history of terms and roles.)
//!
//! Handles are registered once per node (and once per peer, when the driver first talks to
//! it), so the hot path only bumps atomics behind them: no label formatting or allocation per
//! message. Without a recorder installed every handle is a no-op. The list of metrics is in the
//! crate docs (`# Metrics`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};
use raftkit_core::{LogIndex, NodeId, RaftCore, Role, Term};

/// Registers the descriptions of every metric with the installed recorder (if any).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("raftkit_proposals_total", "Commands proposed to this node as leader");
    describe_counter!(
        "raftkit_proposals_rejected_total",
        "Commands refused because this node is not the leader"
    );
    describe_counter!("raftkit_commits_total", "Log entries this node learned to be committed");
    describe_counter!("raftkit_applied_total", "Log entries applied to the state machine");
    describe_histogram!(
        "raftkit_log_write_seconds",
        Unit::Seconds,
        "Latency of one durable log store write (append and sync)"
    );
    describe_histogram!("raftkit_log_write_entries", "Entries per log store write");
    describe_counter!(
        "raftkit_sent_bytes_total",
        Unit::Bytes,
        "Estimated encoded bytes handed to the network, per peer"
    );
    describe_counter!("raftkit_sent_messages_total", "Messages handed to the network, per peer");
    describe_counter!("raftkit_elections_total", "Elections this node started as a candidate");
    describe_counter!("raftkit_elections_won_total", "Elections this node won");
    describe_counter!("raftkit_step_downs_total", "Times this node stopped being the leader");
    describe_counter!(
        "raftkit_snapshots_sent_total",
        "Snapshot transfers whose last chunk was sent, per peer"
    );
    describe_counter!(
        "raftkit_snapshots_received_total",
        "Snapshots received from a leader and installed"
    );
    describe_counter!(
        "raftkit_snapshots_refused_total",
        "Received snapshots refused (failed checksum, or the state machine could not restore)"
    );
    describe_gauge!(
        "raftkit_replication_lag",
        "Leader only: entries the leader's log is ahead of a peer's match index"
    );
    describe_gauge!("raftkit_term", "The node's current term");
    describe_gauge!("raftkit_is_leader", "1 while this node is the leader, else 0");
}

/// The metrics of the log writer (shared by the driver's inline writes and the writer task).
#[derive(Clone)]
pub(crate) struct WriteMetrics {
    latency: Histogram,
    entries: Histogram,
}

impl WriteMetrics {
    /// Records one finished store write of `entries` entries that took `elapsed`.
    pub(crate) fn record(&self, entries: usize, elapsed: Duration) {
        self.latency.record(elapsed.as_secs_f64());
        self.entries.record(entries as f64);
    }
}

/// One peer's handles, registered when the driver first sends to it.
#[derive(Clone)]
pub(crate) struct PeerMetrics {
    bytes: Counter,
    messages: Counter,
    pub(crate) snapshots_sent: Counter,
    lag: Gauge,
}

impl PeerMetrics {
    /// Counts `messages` about to be handed to the network.
    pub(crate) fn sent(&self, messages: &[raftkit_core::Message]) {
        let bytes: usize = messages.iter().map(raftkit_core::Message::size_hint).sum();
        self.messages.increment(messages.len() as u64);
        self.bytes.increment(bytes as u64);
    }
}

/// A node's spans and metric handles, owned by the driver.
pub(crate) struct Telemetry {
    /// The node's span: every task of the node runs in it.
    pub(crate) span: tracing::Span,
    /// The span of the current term and role (a child of `span`), entered by [`InState`].
    state: Arc<Mutex<tracing::Span>>,
    node: SharedString,
    pub(crate) proposals: Counter,
    pub(crate) proposals_rejected: Counter,
    commits: Counter,
    applied: Counter,
    elections: Counter,
    elections_won: Counter,
    step_downs: Counter,
    pub(crate) snapshots_received: Counter,
    pub(crate) snapshots_refused: Counter,
    term_gauge: Gauge,
    is_leader: Gauge,
    pub(crate) write: WriteMetrics,
    /// What the last turn saw, to count differences and notice changes.
    last_commit: LogIndex,
    last_applied: LogIndex,
    role: Role,
    term: Term,
}

/// The node's span.
pub(crate) fn node_span(id: NodeId) -> tracing::Span {
    tracing::info_span!("raft", node = %id)
}

fn state_span(node: &tracing::Span, term: Term, role: Role) -> tracing::Span {
    tracing::info_span!(parent: node, "state", term = %term, role = %role)
}

/// A future (the driver's) polled inside the node's current `state` span, which changes
/// while it runs.
pub(crate) struct InState<F> {
    inner: Pin<Box<F>>,
    state: Arc<Mutex<tracing::Span>>,
}

impl<F: Future> Future for InState<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Cloned out: the driver replaces the span during this very poll.
        let span = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _entered = span.enter();
        self.inner.as_mut().poll(cx)
    }
}

impl Telemetry {
    /// Registers the node's handles (with whatever recorder is installed now).
    pub(crate) fn new(span: tracing::Span, core: &RaftCore) -> Telemetry {
        describe();
        let node = SharedString::from(core.id().0.to_string());
        let n = || node.clone();
        let state = state_span(&span, core.term(), core.role());
        let t = Telemetry {
            state: Arc::new(Mutex::new(state)),
            proposals: metrics::counter!("raftkit_proposals_total", "node" => n()),
            proposals_rejected: metrics::counter!("raftkit_proposals_rejected_total", "node" => n()),
            commits: metrics::counter!("raftkit_commits_total", "node" => n()),
            applied: metrics::counter!("raftkit_applied_total", "node" => n()),
            elections: metrics::counter!("raftkit_elections_total", "node" => n()),
            elections_won: metrics::counter!("raftkit_elections_won_total", "node" => n()),
            step_downs: metrics::counter!("raftkit_step_downs_total", "node" => n()),
            snapshots_received: metrics::counter!("raftkit_snapshots_received_total", "node" => n()),
            snapshots_refused: metrics::counter!("raftkit_snapshots_refused_total", "node" => n()),
            term_gauge: metrics::gauge!("raftkit_term", "node" => n()),
            is_leader: metrics::gauge!("raftkit_is_leader", "node" => n()),
            write: WriteMetrics {
                latency: metrics::histogram!("raftkit_log_write_seconds", "node" => n()),
                entries: metrics::histogram!("raftkit_log_write_entries", "node" => n()),
            },
            last_commit: core.commit_index(),
            last_applied: core.applied_index(),
            role: core.role(),
            term: core.term(),
            span,
            node,
        };
        t.term_gauge.set(t.term.0 as f64);
        t
    }

    /// A wrapper for the driver's future, so that it runs in the current `state` span.
    pub(crate) fn in_state<F: Future>(&self) -> impl FnOnce(F) -> InState<F> + use<F> {
        let state = self.state.clone();
        move |fut| InState { inner: Box::pin(fut), state }
    }

    /// Registers the handles for `peer`.
    pub(crate) fn peer(&self, peer: NodeId) -> PeerMetrics {
        let (node, peer) = (self.node.clone(), SharedString::from(peer.0.to_string()));
        PeerMetrics {
            bytes: metrics::counter!(
                "raftkit_sent_bytes_total", "node" => node.clone(), "peer" => peer.clone()
            ),
            messages: metrics::counter!(
                "raftkit_sent_messages_total", "node" => node.clone(), "peer" => peer.clone()
            ),
            snapshots_sent: metrics::counter!(
                "raftkit_snapshots_sent_total", "node" => node.clone(), "peer" => peer.clone()
            ),
            lag: metrics::gauge!("raftkit_replication_lag", "node" => node, "peer" => peer),
        }
    }

    /// Brings the counters up to date after a driver turn, starts a new `state` span when the
    /// term or the role changed, and logs elections and step-downs. `peer` looks up a peer's
    /// handles (for the replication lag; peers without handles yet are skipped), `peers` lists
    /// them all.
    pub(crate) fn after_turn<'a>(
        &mut self,
        core: &RaftCore,
        peer: impl Fn(NodeId) -> Option<&'a PeerMetrics>,
        peers: impl Iterator<Item = &'a PeerMetrics>,
    ) {
        let (commit, applied) = (core.commit_index(), core.applied_index());
        if commit > self.last_commit {
            self.commits.increment(commit.0 - self.last_commit.0);
            self.last_commit = commit;
        }
        if applied > self.last_applied {
            self.applied.increment(applied.0 - self.last_applied.0);
            self.last_applied = applied;
        }
        let (role, term) = (core.role(), core.term());
        let was_leader = self.role == Role::Leader;
        if role != self.role || term != self.term {
            self.role_changed(core, role, term);
        }
        if role == Role::Leader {
            let last = core.last_log_id().index;
            for (id, matched) in core.match_index_iter() {
                if let Some(p) = peer(id) {
                    p.lag.set(last.0.saturating_sub(matched.0) as f64);
                }
            }
        } else if was_leader {
            // Only a leader knows the lag; do not leave the last value standing. (The core has
            // forgotten its followers' progress already.)
            for p in peers {
                p.lag.set(0.0);
            }
        }
    }

    /// The node stopped for good on a fatal error: if it was leading, it no longer is (the
    /// core keeps its last role, so `after_turn` would never see the change).
    pub(crate) fn failed<'a>(&mut self, peers: impl Iterator<Item = &'a PeerMetrics>) {
        if self.role != Role::Leader {
            return;
        }
        self.role = Role::Follower;
        self.step_downs.increment(1);
        self.is_leader.set(0.0);
        for p in peers {
            p.lag.set(0.0);
        }
        tracing::warn!(term = %self.term, "stepped down as leader: the node failed");
    }

    fn role_changed(&mut self, core: &RaftCore, role: Role, term: Term) {
        let (old_role, old_term) = (self.role, self.term);
        self.role = role;
        self.term = term;
        if term != old_term {
            self.term_gauge.set(term.0 as f64);
        }
        let span = state_span(&self.span, term, role);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = span.clone();
        // The lines below already belong to the new state.
        let _entered = span.enter();
        let leader = core.leader();
        // One turn may cover several steps (a lone voter campaigns and wins in one): count
        // a campaign whenever the node is candidate or leader in a term it was not before.
        let campaigned = matches!(role, Role::Candidate | Role::Leader)
            && (term != old_term || old_role != Role::Candidate)
            && old_role != Role::Leader;
        if campaigned {
            self.elections.increment(1);
            tracing::info!(%term, "campaign started");
        }
        match role {
            Role::Leader if old_role != Role::Leader => {
                self.elections_won.increment(1);
                self.is_leader.set(1.0);
                tracing::info!(%term, "campaign won; leading");
            }
            Role::Leader => {}
            _ => {
                if old_role == Role::Candidate && role != Role::Candidate {
                    tracing::info!(%term, ?leader, "campaign lost");
                }
                if old_role == Role::Leader {
                    self.step_downs.increment(1);
                    self.is_leader.set(0.0);
                    tracing::warn!(%term, ?leader, "stepped down as leader");
                }
            }
        }
    }
}
