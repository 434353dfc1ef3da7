//! The load generator: closed-loop clients writing to the leader, one measurement point at a
//! time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use raftkit::{LogStore, Network, Raft, StateMachine, WriteError};

use crate::cluster::{BenchStore, Cluster, StoreCounters};
use crate::process;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
/// Measuring, inside a span marked by a [`Marker`].
const MARKED: u8 = 3;

/// The result of one point: a number of clients writing payloads of one size for a while.
#[derive(Clone, Debug, Default)]
pub struct PointResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Payload bytes per command (0: an empty command).
    pub payload: usize,
    /// Writes acknowledged during the measured window.
    pub commits: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of each acknowledged write, in microseconds.
    pub latency: LatencyUs,
    /// Writes that failed (other than redirects to the leader).
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The failed writes counted in `errors`, by kind.
    pub failures: Failures,
    /// `NotLeader` answers followed.
    pub redirects: u64,
    /// How much the highest term among the nodes rose during the window (0: no election).
    pub term_increase: u64,
    /// Durable commits during the window, summed over the three nodes.
    pub syncs: u64,
    /// Entries appended during the window, summed over the three nodes.
    pub entries: u64,
    /// CPU time (user + system) of the whole process during the window.
    pub cpu: Duration,
    /// Peak RSS of the process during the window (see `peak_rss_scope`).
    pub peak_rss: Option<u64>,
    /// Whether `peak_rss` covers only this window (the peak could be reset) or the whole run.
    pub peak_rss_scoped: bool,
    /// The span marked inside the window (see [`Marker`]), if one was.
    pub marked: Option<Span>,
    /// With `--repeat`: the throughput of every run of this point, lowest first (this result
    /// is the median one). Empty for a single run.
    pub runs: Vec<f64>,
}

impl PointResult {
    /// Commits per second.
    pub fn throughput(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Durable commits per second, per node.
    pub fn syncs_per_sec(&self) -> f64 {
        self.syncs as f64 / 3.0 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Entries per durable commit (averaged over the nodes).
    pub fn entries_per_sync(&self) -> f64 {
        if self.syncs == 0 { 0.0 } else { self.entries as f64 / self.syncs as f64 }
    }

    /// CPU use as a share of one core (2.0 = two cores busy).
    pub fn cpu_cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Of several runs of one point, the one with the median throughput (the upper median of an
/// even count), carrying every run's throughput in `runs`. `None` for no runs.
pub fn median_run(mut runs: Vec<PointResult>) -> Option<PointResult> {
    if runs.len() <= 1 {
        return runs.pop();
    }
    runs.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
    let all: Vec<f64> = runs.iter().map(PointResult::throughput).collect();
    let mut median = runs.swap_remove(all.len() / 2);
    median.runs = all;
    Some(median)
}

/// The writes of a span marked inside a measured window: those acknowledged between
/// [`Marker::begin`] and [`Marker::end`].
#[derive(Clone, Debug, Default)]
pub struct Span {
    /// Where the span started, from the start of the window.
    pub at: Duration,
    /// How long it lasted.
    pub elapsed: Duration,
    /// Writes acknowledged in it.
    pub commits: u64,
    /// Their latencies.
    pub latency: LatencyUs,
    /// Writes that failed in it (other than redirects).
    pub errors: u64,
}

impl Span {
    /// Commits per second.
    pub fn throughput(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Marks one span inside a measured window, for [`run_window`]'s `during`: the writes
/// acknowledged from [`begin`](Self::begin) to [`end`](Self::end) are also counted and timed
/// on their own ([`PointResult::marked`]). A span not ended ends with the window.
#[derive(Clone)]
pub struct Marker {
    phase: Arc<AtomicU8>,
    bounds: Arc<Mutex<(Option<Instant>, Option<Instant>)>>,
}

impl Marker {
    /// Starts the span (once; later calls do nothing).
    pub fn begin(&self) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if b.0.is_none()
            && self
                .phase
                .compare_exchange(MEASURE, MARKED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.0 = Some(Instant::now());
        }
    }

    /// Ends the span.
    pub fn end(&self) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .phase
            .compare_exchange(MARKED, MEASURE, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            b.1 = Some(Instant::now());
        }
    }
}

/// Failed writes of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindCount {
    /// How many.
    pub count: u64,
    /// Whether the framework documents this kind as retryable (for raftkit,
    /// [`WriteError::is_retryable`]).
    pub retryable: bool,
    /// The last one, in words.
    pub last: String,
}

/// Failed writes by kind (the error's variant name, such as `Overwritten`).
pub type Failures = BTreeMap<&'static str, KindCount>;

/// Adds `from`'s counts to `into`.
fn merge_failures(into: &mut Failures, from: Failures) {
    for (kind, c) in from {
        let e = into.entry(kind).or_default();
        e.count += c.count;
        e.retryable = c.retryable;
        e.last = c.last;
    }
}

/// Latency percentiles, in microseconds (zero when nothing was measured).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyUs {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl LatencyUs {
    fn of(h: &Histogram<u64>) -> LatencyUs {
        if h.is_empty() {
            return LatencyUs::default();
        }
        LatencyUs {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Latencies from 1 µs to 100 s at 3 significant figures.
fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000, 3).context("making a latency histogram")
}

/// Latencies a client buffers before merging them into the shared histogram: recording into
/// a small local buffer keeps the clients' own cost (and cache footprint) out of the figures,
/// where one large histogram per client would miss the cache on every write.
const LATENCY_BUFFER: usize = 1024;

/// A client's latency samples, merged into `shared` a buffer at a time.
struct Latencies {
    buf: Vec<u32>,
    shared: Arc<Mutex<Histogram<u64>>>,
}

impl Latencies {
    fn new(shared: Arc<Mutex<Histogram<u64>>>) -> Latencies {
        Latencies { buf: Vec::with_capacity(LATENCY_BUFFER), shared }
    }

    fn record(&mut self, us: u64) {
        self.buf.push(u32::try_from(us).unwrap_or(u32::MAX));
        if self.buf.len() == LATENCY_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for &us in &self.buf {
            h.saturating_record(u64::from(us));
        }
        self.buf.clear();
    }
}

#[derive(Default)]
struct ClientOutcome {
    ok: u64,
    errors: u64,
    redirects: u64,
    last_error: Option<String>,
    failures: Failures,
    /// Writes acknowledged in the marked span.
    marked_ok: u64,
    /// Writes failed in the marked span.
    marked_errors: u64,
}

impl ClientOutcome {
    /// Counts a failed write.
    fn failed(&mut self, failure: WriteFailure) {
        self.errors += 1;
        let e = self.failures.entry(failure.kind).or_default();
        e.count += 1;
        e.retryable = failure.retryable;
        e.last.clone_from(&failure.message);
        self.last_error = Some(failure.message);
    }
}

/// A failed write, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// The kind of error: its variant name, such as `Overwritten`.
    pub kind: &'static str,
    /// Whether the framework documents it as retryable.
    pub retryable: bool,
    /// The error, in words.
    pub message: String,
}

impl WriteFailure {
    /// A raftkit write error, classified by [`WriteError::is_retryable`].
    pub fn of(e: &WriteError) -> WriteFailure {
        let kind = match e {
            WriteError::NotLeader { .. } => "NotLeader",
            WriteError::Overwritten { .. } => "Overwritten",
            WriteError::OutcomeUnknown { .. } => "OutcomeUnknown",
            WriteError::TransferInProgress { .. } => "TransferInProgress",
            WriteError::ForwardOutcomeUnknown { .. } => "ForwardOutcomeUnknown",
            WriteError::ForwardRefused(_) => "ForwardRefused",
            WriteError::Encode(_) => "Encode",
            WriteError::Shutdown => "Shutdown",
            WriteError::Fatal(_) => "Fatal",
            _ => "other",
        };
        WriteFailure { kind, retryable: e.is_retryable(), message: e.to_string() }
    }
}

/// What one write came back with, as a closed-loop client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed and applied on the node written to.
    Ok,
    /// The node is not the leader (raftkit's `NotLeader`, openraft's `ForwardToLeader`), with
    /// the position of the leader it named, if any.
    Redirect(Option<usize>),
    /// Any other failure, in words (not classified: counted as kind `unclassified`, not
    /// retryable).
    Failed(String),
    /// Any other failure, classified.
    Error(WriteFailure),
}

/// The client side of a cluster under test, whatever the framework: how a client writes
/// to one node. The load generator is the same for every framework, so only this differs.
pub trait Writer: Send + Sync + 'static {
    /// How many nodes there are (positions `0..nodes()`).
    fn nodes(&self) -> usize;

    /// Writes client `client`'s next command through node `node` and waits for the answer.
    fn write(&self, node: usize, client: usize) -> impl Future<Output = Outcome> + Send;
}

/// The measuring side of a cluster under test: counters read before and after a window.
pub trait Probe {
    /// The stores' counters summed over the nodes.
    fn counters(&self) -> StoreCounters;

    /// The highest current term among the nodes (it rises with every election).
    fn max_term(&self) -> u64;
}

/// raftkit's side of [`Writer`]: the nodes and how each client makes its commands.
///
/// Node positions are slots: position `i` is node id `i + 1`. A writer can be made with spare
/// slots for nodes that join later ([`with_spare`](Self::with_spare), [`add`](Self::add));
/// a write to a slot not filled yet is answered like a redirect naming no leader (the client
/// moves on to the next node).
pub struct RaftkitWriter<N: Network, L: LogStore, S: StateMachine> {
    nodes: Vec<OnceLock<Raft<N, L, S>>>,
    command: Arc<dyn Fn(usize) -> S::Command + Send + Sync>,
}

impl<N: Network, L: LogStore, S: StateMachine> RaftkitWriter<N, L, S> {
    /// Clients of `nodes` (in id order, ids 1, 2, …); `command(client)` makes each command.
    pub fn new(
        nodes: Vec<Raft<N, L, S>>,
        command: Arc<dyn Fn(usize) -> S::Command + Send + Sync>,
    ) -> Self {
        Self::with_spare(nodes, 0, command)
    }

    /// Like [`new`](Self::new), with `spare` empty slots for nodes added later.
    pub fn with_spare(
        nodes: Vec<Raft<N, L, S>>,
        spare: usize,
        command: Arc<dyn Fn(usize) -> S::Command + Send + Sync>,
    ) -> Self {
        let mut slots: Vec<OnceLock<Raft<N, L, S>>> =
            nodes.into_iter().map(OnceLock::from).collect();
        slots.extend((0..spare).map(|_| OnceLock::new()));
        RaftkitWriter { nodes: slots, command }
    }

    /// Fills the slot of `node` (position `id - 1`), so clients can write to it.
    ///
    /// # Errors
    /// If there is no slot for its id or the slot is taken.
    pub fn add(&self, node: Raft<N, L, S>) -> Result<()> {
        let id = node.id();
        let slot = usize::try_from(id.0)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|pos| self.nodes.get(pos))
            .with_context(|| format!("no slot for node {id}"))?;
        slot.set(node).map_err(|_| anyhow::anyhow!("the slot of node {id} is taken"))
    }

    /// The position of node `id`, if it has a slot.
    fn position(&self, id: raftkit::NodeId) -> Option<usize> {
        usize::try_from(id.0).ok()?.checked_sub(1).filter(|p| *p < self.nodes.len())
    }
}

impl<N: Network, L: LogStore, S: StateMachine> Writer for RaftkitWriter<N, L, S> {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    async fn write(&self, node: usize, client: usize) -> Outcome {
        let Some(raft) = self.nodes[node].get() else {
            return Outcome::Redirect(None);
        };
        match raft.client_write((self.command)(client)).await {
            Ok(_) => Outcome::Ok,
            Err(WriteError::NotLeader { leader }) => {
                Outcome::Redirect(leader.and_then(|l| self.position(l)))
            }
            Err(e) => Outcome::Error(WriteFailure::of(&e)),
        }
    }
}

impl<N: Network, L: BenchStore, S: StateMachine> Probe for Cluster<N, L, S> {
    fn counters(&self) -> StoreCounters {
        Cluster::counters(self)
    }

    fn max_term(&self) -> u64 {
        Cluster::max_term(self)
    }
}

/// Follows a redirect: to the named leader, or (none named, or the one just tried: an
/// election) to the next node after a short pause.
async fn follow(leader: &mut usize, hint: Option<usize>, nodes: usize) {
    match hint {
        Some(pos) if pos != *leader && pos < nodes => *leader = pos,
        _ => {
            *leader = (*leader + 1) % nodes;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One client: writes in a loop to whoever it believes leads, following redirects, until told
/// to stop. Latencies are recorded while measuring.
async fn client<W: Writer>(
    id: usize,
    writer: Arc<W>,
    mut leader: usize,
    phase: Arc<AtomicU8>,
    hist: Arc<Mutex<Histogram<u64>>>,
    marked_hist: Arc<Mutex<Histogram<u64>>>,
) -> Result<ClientOutcome> {
    let mut out = ClientOutcome::default();
    let mut latencies = Latencies::new(hist);
    // Most windows mark no span: its buffer only grows if used.
    let mut marked_latencies = Latencies { buf: Vec::new(), shared: marked_hist };
    loop {
        if phase.load(Ordering::Relaxed) == STOP {
            latencies.flush();
            marked_latencies.flush();
            return Ok(out);
        }
        let t = Instant::now();
        let outcome = writer.write(leader, id).await;
        let p = phase.load(Ordering::Relaxed);
        let (measuring, marked) = (p == MEASURE || p == MARKED, p == MARKED);
        if marked && !matches!(outcome, Outcome::Ok | Outcome::Redirect(_)) {
            out.marked_errors += 1;
        }
        match outcome {
            Outcome::Ok => {
                if measuring {
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                    latencies.record(us);
                    out.ok += 1;
                    if marked {
                        marked_latencies.record(us);
                        out.marked_ok += 1;
                    }
                }
            }
            Outcome::Redirect(hint) => {
                if measuring {
                    out.redirects += 1;
                }
                follow(&mut leader, hint, writer.nodes()).await;
            }
            Outcome::Failed(e) => {
                if measuring {
                    out.failed(WriteFailure { kind: "unclassified", retryable: false, message: e });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Outcome::Error(f) => {
                if measuring {
                    out.failed(f);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Runs `clients` closed-loop clients through `writer` for `warmup` (unmeasured) then
/// `measure`, and reports throughput, latency, store commits, CPU time and peak memory of the
/// measured window, reading counters from `probe`. `payload` is only recorded. Redirects and
/// errors are counted in the measured window only, like commits.
pub async fn run_point<W: Writer>(
    writer: Arc<W>,
    probe: &impl Probe,
    leader: usize,
    clients: usize,
    payload: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<PointResult> {
    let window = Window { leader, clients, payload, warmup, measure };
    run_window(writer, probe, window, |_| std::future::ready(())).await.map(|(p, ())| p)
}

/// The shape of one measured window: where the clients start, how many, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// The position of the node the clients write to first.
    pub leader: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Payload bytes per command (only recorded).
    pub payload: usize,
    /// Unmeasured time before the window.
    pub warmup: Duration,
    /// The shortest the measured window lasts.
    pub measure: Duration,
}

/// Like [`run_point`], while `during` runs: `during` starts with the measured window, and the
/// window lasts `measure` or until `during` is done, whichever is later (so it always contains
/// all of `during`). `during` gets a [`Marker`] to mark a span of the window whose writes are
/// also counted on their own. Returns the window's figures and what `during` returned.
pub async fn run_window<W: Writer, T, F: Future<Output = T>>(
    writer: Arc<W>,
    probe: &impl Probe,
    window: Window,
    during: impl FnOnce(Marker) -> F,
) -> Result<(PointResult, T)> {
    let Window { leader, clients, payload, warmup, measure } = window;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let hist = Arc::new(Mutex::new(histogram()?));
    let marked_hist = Arc::new(Mutex::new(histogram()?));
    let marker = Marker { phase: phase.clone(), bounds: Arc::default() };
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let (writer, phase) = (writer.clone(), phase.clone());
            let (hist, marked_hist) = (hist.clone(), marked_hist.clone());
            tokio::spawn(client(id, writer, leader, phase, hist, marked_hist))
        })
        .collect();
    tokio::time::sleep(warmup).await;

    let scoped = process::reset_peak_rss();
    let term0 = probe.max_term();
    let before: StoreCounters = probe.counters();
    let cpu0 = process::cpu_time();
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    let ((), during) = tokio::join!(tokio::time::sleep(measure), during(marker.clone()));
    phase.store(STOP, Ordering::Relaxed);
    let stopped = Instant::now();
    let elapsed = stopped - t0;
    let bounds = *marker.bounds.lock().unwrap_or_else(|p| p.into_inner());
    let cpu = process::cpu_time().saturating_sub(cpu0);
    let after = probe.counters();
    let term_increase = probe.max_term().saturating_sub(term0);
    let peak_rss = process::peak_rss();

    let mut r = PointResult {
        clients,
        payload,
        elapsed,
        cpu,
        peak_rss,
        peak_rss_scoped: scoped,
        term_increase,
        syncs: after.syncs.saturating_sub(before.syncs),
        entries: after.entries.unwrap_or(0).saturating_sub(before.entries.unwrap_or(0)),
        marked: bounds.0.map(|from| Span {
            at: from.saturating_duration_since(t0),
            elapsed: bounds.1.unwrap_or(stopped).saturating_duration_since(from),
            ..Span::default()
        }),
        ..PointResult::default()
    };
    for t in tasks {
        let o = t.await.context("a client task panicked")??;
        r.commits += o.ok;
        r.errors += o.errors;
        r.redirects += o.redirects;
        if o.last_error.is_some() {
            r.last_error = o.last_error;
        }
        merge_failures(&mut r.failures, o.failures);
        if let Some(span) = &mut r.marked {
            span.commits += o.marked_ok;
            span.errors += o.marked_errors;
        }
    }
    r.latency = LatencyUs::of(&hist.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(span) = &mut r.marked {
        span.latency = LatencyUs::of(&marked_hist.lock().unwrap_or_else(|p| p.into_inner()));
    }
    Ok((r, during))
}

/// The result of [`run_commits`]: a fixed number of commits, however long they took.
#[derive(Clone, Debug, Default)]
pub struct FixedRun {
    /// Concurrent clients.
    pub clients: usize,
    /// Writes acknowledged (exactly the number asked for, unless the run failed).
    pub commits: u64,
    /// From the first write to the last answer.
    pub elapsed: Duration,
    /// Redirects followed.
    pub redirects: u64,
    /// Writes that failed other than redirects (each was retried).
    pub errors: u64,
    /// How much the highest term rose during the run.
    pub term_increase: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// Runs `clients` closed-loop clients through `writer` until exactly `total` writes have been
/// acknowledged, then stops them. Each client takes a ticket before each write and retries
/// that write (after a redirect or an error) until it is acknowledged, so the commits are
/// exactly `total`: whole-process instruction counts (callgrind) divided by `total` are the
/// cost per commit, start-up included.
pub async fn run_commits<W: Writer>(
    writer: Arc<W>,
    probe: &impl Probe,
    leader: usize,
    clients: usize,
    total: u64,
) -> Result<FixedRun> {
    let tickets = Arc::new(AtomicU64::new(total));
    let term0 = probe.max_term();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let (writer, tickets) = (writer.clone(), tickets.clone());
            tokio::spawn(async move {
                let mut leader = leader;
                let mut out = ClientOutcome::default();
                while tickets
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1))
                    .is_ok()
                {
                    loop {
                        match writer.write(leader, id).await {
                            Outcome::Ok => {
                                out.ok += 1;
                                break;
                            }
                            Outcome::Redirect(hint) => {
                                out.redirects += 1;
                                follow(&mut leader, hint, writer.nodes()).await;
                            }
                            Outcome::Failed(e) => {
                                out.errors += 1;
                                out.last_error = Some(e);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Outcome::Error(f) => {
                                out.failed(f);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut r = FixedRun { clients, ..FixedRun::default() };
    for t in tasks {
        let o = t.await.context("a client task panicked")?;
        r.commits += o.ok;
        r.errors += o.errors;
        r.redirects += o.redirects;
        if o.last_error.is_some() {
            r.last_error = o.last_error;
        }
    }
    r.elapsed = t0.elapsed();
    r.term_increase = probe.max_term().saturating_sub(term0);
    Ok(r)
}
