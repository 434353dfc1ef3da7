//! The results of a run, the targets judged against them, and the markdown report.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::combo::{Combo, Net};
use crate::load::{PointResult, Span};
use crate::machine::Machine;
use crate::membership::MembershipResult;
use crate::process::mib;
use crate::reads::{Op, ReadsResult};
use crate::transfer::TransferResult;

/// raftkit must commit at least this many times as many entries per second as openraft,
/// both measured in the same run with the same harness (mem+mem, empty payload).
pub const COMPARE_FACTOR: f64 = 2.0;
/// The client counts the comparison target is judged at.
pub const COMPARE_TARGET_CLIENTS: [usize; 4] = [1, 64, 256, 4096];
/// The core alone must commit at least this many 256 B entries per second.
pub const CORE_TARGET: f64 = 2_000_000.0;
/// The batch size the core target is judged at (what 256 clients give one driver turn).
pub const CORE_TARGET_BATCH: usize = 256;
/// Durable over QUIC: single-client p50 at most this many × (fsync + QUIC round trip).
pub const DURABLE_LATENCY_FACTOR: f64 = 3.0;
/// Durable over QUIC: 256 clients must reach this many × the single-client throughput.
pub const GROUP_COMMIT_FACTOR: f64 = 50.0;
/// At 256 clients, Linearizable reads must reach this many × the writes' throughput.
pub const LINEARIZABLE_READ_FACTOR: f64 = 5.0;
/// At 256 clients, Lease reads must reach this many × the writes' throughput.
pub const LEASE_READ_FACTOR: f64 = 10.0;
/// The client count the read-throughput targets are judged at.
pub const READ_TARGET_CLIENTS: usize = 256;
/// A 1-client Linearizable read on quic+redb: p50 at most this many loopback round trips.
pub const READ_RTT_FACTOR: f64 = 2.0;
/// A leadership transfer: the median at most this many heartbeat intervals.
pub const TRANSFER_HEARTBEATS: f64 = 3.0;
/// The memory check calls RSS flat when the last quartile's mean is within this factor of the
/// first quartile's.
pub const FLAT_FACTOR: f64 = 1.10;

/// One client count of the openraft comparison: both frameworks, measured alternately in the
/// same run.
#[derive(Clone, Debug, Default)]
pub struct ComparePoint {
    /// Concurrent clients.
    pub clients: usize,
    /// raftkit's median run (with every run's throughput in `runs`).
    pub raftkit: PointResult,
    /// openraft's median run; `None` when the baseline is not built.
    pub openraft: Option<PointResult>,
}

impl ComparePoint {
    /// raftkit's median throughput over openraft's, with the least and most favourable pairing
    /// of their runs (raftkit's slowest over openraft's fastest, and the reverse).
    pub fn ratio(&self) -> Option<(f64, f64, f64)> {
        let o = self.openraft.as_ref().filter(|o| o.commits > 0)?;
        let (r_lo, r_hi) = range(&self.raftkit);
        let (o_lo, o_hi) = range(o);
        Some((self.raftkit.throughput() / o.throughput(), r_lo / o_hi, r_hi / o_lo.max(1e-9)))
    }
}

/// The lowest and highest throughput of a point's runs (its own, for a single run).
fn range(p: &PointResult) -> (f64, f64) {
    match (p.runs.first(), p.runs.last()) {
        (Some(lo), Some(hi)) => (*lo, *hi),
        _ => (p.throughput(), p.throughput()),
    }
}

/// One combination's points.
#[derive(Clone, Debug, Default)]
pub struct ComboResult {
    /// The combination.
    pub combo: Combo,
    /// What the store's commit counter counts.
    pub sync_kind: &'static str,
    /// Time from starting the nodes to a leader with a committed entry.
    pub startup: Duration,
    /// The points measured, in order.
    pub points: Vec<PointResult>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// The core alone at one batch size.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreResult {
    /// Entries proposed per round.
    pub batch: usize,
    /// Entry payload size.
    pub entry_bytes: usize,
    /// Entries committed.
    pub commits: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl CoreResult {
    /// Commits per second.
    pub fn throughput(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One RSS sample of the memory check.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemorySample {
    /// Time since the run started.
    pub at: Duration,
    /// Resident set size of the process.
    pub rss: u64,
    /// The leader's last log index.
    pub last_index: u64,
    /// The leader's last purged index (log compaction).
    pub purged_index: u64,
}

/// The memory check: RSS while the log grows.
#[derive(Clone, Debug, Default)]
pub struct MemoryResult {
    /// What the configuration lets the cluster hold in memory.
    pub budget: MemoryBudget,
    /// Clients.
    pub clients: usize,
    /// Payload bytes.
    pub payload: usize,
    /// `Config::snapshot_every` of the run.
    pub snapshot_every: u64,
    /// The run's figures.
    pub point: PointResult,
    /// RSS over time.
    pub samples: Vec<MemorySample>,
}

/// The memory the configuration of the memory check bounds, per node, plus what the process
/// held before the cluster started. Each field is a configured cap (or derived from one), not a
/// measurement; together they are the most the cluster should ever hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryBudget {
    /// Nodes in the process.
    pub nodes: usize,
    /// RSS before the cluster started (runtime, allocator, the harness itself).
    pub baseline: u64,
    /// `Config::entry_cache_bytes`.
    pub entry_cache: u64,
    /// The log store's own cache (redb's page cache).
    pub store_cache: u64,
    /// `Config::max_inflight_bytes` to each of the other nodes (a leader's replication window).
    pub inflight: u64,
    /// Entries gathered into one log write and handed out for applying: `max_proposal_batch`
    /// plus four `max_apply_batch`es (the core's bound on what is handed out but not applied),
    /// at the check's entry size.
    pub batches: u64,
    /// The state machine: one key per client.
    pub state: u64,
}

impl MemoryBudget {
    /// Per node.
    pub fn per_node(&self) -> u64 {
        self.entry_cache + self.store_cache + self.inflight + self.batches + self.state
    }

    /// The whole process.
    pub fn total(&self) -> u64 {
        self.baseline + self.nodes as u64 * self.per_node()
    }
}

impl MemoryResult {
    /// The highest RSS sampled.
    pub fn peak(&self) -> u64 {
        self.samples.iter().map(|s| s.rss).max().unwrap_or(0)
    }

    /// Mean RSS of the first and last quarter of all the samples.
    pub fn quartiles(&self) -> Option<(f64, f64)> {
        quartile_means(&self.samples)
    }

    /// The samples from the first log compaction on: by then the entry cache, the store's
    /// cache and the log have filled up to their configured bounds, so this is the steady
    /// state in which "flat as the log grows" is judged. Empty if the log was never compacted.
    pub fn steady(&self) -> &[MemorySample] {
        let from =
            self.samples.iter().position(|s| s.purged_index > 0).unwrap_or(self.samples.len());
        &self.samples[from..]
    }

    /// Mean RSS of the first and last quarter of the [`steady`](Self::steady) samples.
    pub fn steady_quartiles(&self) -> Option<(f64, f64)> {
        quartile_means(self.steady())
    }
}

fn quartile_means(samples: &[MemorySample]) -> Option<(f64, f64)> {
    let n = samples.len();
    if n < 4 {
        return None;
    }
    let q = n / 4;
    let mean = |s: &[MemorySample]| s.iter().map(|x| x.rss as f64).sum::<f64>() / s.len() as f64;
    Some((mean(&samples[..q]), mean(&samples[n - q..])))
}

/// Everything a run measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// When the run started.
    pub started: Option<SystemTime>,
    /// How the harness was invoked.
    pub command_line: String,
    /// The conditions of the run as whoever ran it described them (`--note`).
    pub note: Option<String>,
    /// Quick mode.
    pub quick: bool,
    /// Measured time per point.
    pub measure: Duration,
    /// Warm-up per point.
    pub warmup: Duration,
    /// Tokio worker threads shared by the nodes and the clients.
    pub threads: usize,
    /// Runs per matrix and comparison point (the median is reported); 0 is read as 1.
    pub repeat: usize,
    /// The machine.
    pub machine: Machine,
    /// Combinations not compiled in.
    pub skipped: Vec<Combo>,
    /// The matrix.
    pub combos: Vec<ComboResult>,
    /// The openraft comparison.
    pub compare: Vec<ComparePoint>,
    /// The openraft version of the baseline, if this build has it (feature `openraft`).
    pub openraft: Option<&'static str>,
    /// Why the comparison failed, if it did.
    pub compare_error: Option<String>,
    /// The core alone.
    pub core: Vec<CoreResult>,
    /// Why the core measure failed, if it did.
    pub core_error: Option<String>,
    /// The memory check.
    pub memory: Option<MemoryResult>,
    /// Why the memory check failed, if it did.
    pub memory_error: Option<String>,
    /// The membership part, one entry per combination it covers.
    pub membership: Vec<MembershipResult>,
    /// The reads part, one entry per combination it covers.
    pub reads: Vec<ReadsResult>,
    /// The transfer part.
    pub transfer: Option<TransferResult>,
    /// Wall time of the whole run.
    pub wall: Duration,
}

/// Whether a target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Not met.
    NotMet,
    /// Not measured in this run (part not run, point not in the plan, or it failed).
    NotMeasured,
    /// Needs a feature this build lacks (named).
    Skipped(&'static str),
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Met } else { Verdict::NotMet }
    }

    /// The word shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "**met**",
            Verdict::NotMet => "**not met**",
            Verdict::NotMeasured => "not measured",
            Verdict::Skipped("rocksdb") => "skipped (build with `--features rocksdb`)",
            Verdict::Skipped("openraft") => "skipped (build with `--features openraft`)",
            Verdict::Skipped(_) => "skipped (needs a feature this build lacks)",
        }
    }
}

/// One target: what it asks, what was measured, and the verdict.
#[derive(Clone, Debug)]
pub struct Target {
    /// The target, in words.
    pub what: String,
    /// The measured figure, in words.
    pub figure: String,
    /// Met or not.
    pub verdict: Verdict,
}

/// A point's throughput, with the range of its runs when it was measured more than once.
pub fn commits_cell(p: &PointResult) -> String {
    match (p.runs.first(), p.runs.last()) {
        (Some(lo), Some(hi)) if p.runs.len() > 1 => {
            format!("{} ({}–{})", thousands(p.throughput()), thousands(*lo), thousands(*hi))
        }
        _ => thousands(p.throughput()),
    }
}

/// A point's failed writes by kind: `none`, or `Overwritten ×3 (retryable)`, ….
pub fn failures_cell(p: &PointResult) -> String {
    if p.failures.is_empty() {
        return "none".into();
    }
    p.failures
        .iter()
        .map(|(kind, k)| {
            let r = if k.retryable { "retryable" } else { "**not retryable**" };
            format!("{kind} ×{} ({r})", k.count)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as `850 µs` or `1.25 ms`.
pub fn micros(us: f64) -> String {
    if us < 1000.0 { format!("{us:.0} µs") } else { format!("{:.2} ms", us / 1000.0) }
}

fn dur(d: Duration) -> String {
    micros(d.as_secs_f64() * 1e6)
}

/// The UTC date (`YYYY-MM-DD`) of a time.
pub fn date(t: SystemTime) -> String {
    let days = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC time of day (`HH:MM:SS`).
fn time_of_day(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn point(points: &[PointResult], clients: usize, payload: usize) -> Option<&PointResult> {
    points.iter().find(|p| p.clients == clients && p.payload == payload && p.commits > 0)
}

impl Results {
    /// The payload the durable targets are judged at: 256 B if measured, else the smallest.
    fn durable_payload(&self) -> Option<usize> {
        let mut sizes: Vec<usize> =
            self.combos.iter().flat_map(|c| c.points.iter().map(|p| p.payload)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.contains(&256) { Some(256) } else { sizes.first().copied() }
    }

    /// Every target with its verdict.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        for clients in COMPARE_TARGET_CLIENTS {
            let what = format!(
                "mem+mem, empty payload, {clients} client{}: raftkit ≥ {COMPARE_FACTOR}× openraft \
                 (both measured in this run)",
                if clients == 1 { "" } else { "s" },
            );
            let found = self.compare.iter().find(|p| p.clients == clients);
            t.push(match found.map(|p| (p, p.ratio())) {
                _ if self.compare.is_empty() => {
                    Target { what, figure: "—".into(), verdict: Verdict::NotMeasured }
                }
                _ if self.openraft.is_none() => Target {
                    what,
                    figure: "openraft baseline not built".into(),
                    verdict: Verdict::Skipped("openraft"),
                },
                Some((p, Some((ratio, lo, hi)))) => Target {
                    what,
                    figure: format!(
                        "{ratio:.2}× ({} vs {} commits/s; {lo:.2}–{hi:.2}× over all runs)",
                        thousands(p.raftkit.throughput()),
                        thousands(p.openraft.as_ref().map_or(0.0, PointResult::throughput)),
                    ),
                    verdict: Verdict::of(ratio >= COMPARE_FACTOR),
                },
                _ => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
            });
        }
        let what = format!(
            "core alone (3 simulated nodes, no IO, {} B entries, batches of {CORE_TARGET_BATCH}): ≥ {} commits/s",
            crate::run::CORE_ENTRY_BYTES,
            thousands(CORE_TARGET)
        );
        t.push(match self.core.iter().find(|c| c.batch == CORE_TARGET_BATCH) {
            Some(c) => Target {
                what,
                figure: format!("{} commits/s", thousands(c.throughput())),
                verdict: Verdict::of(c.throughput() >= CORE_TARGET),
            },
            None => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
        let m = &self.machine;
        let bound = |fsync: Duration| {
            DURABLE_LATENCY_FACTOR * (fsync + m.quic_rtt.median).as_secs_f64() * 1e6
        };
        let payload = self.durable_payload();
        for combo in Combo::ALL.into_iter().filter(|c| c.durable() && c.net == Net::Quic) {
            let found = self.combos.iter().find(|c| c.combo == combo);
            let skipped = self.skipped.contains(&combo);
            let pl = payload.map_or_else(|| "256 B".to_string(), |p| format!("{p} B"));
            let single = found.zip(payload).and_then(|(c, pl)| point(&c.points, 1, pl));
            let fsyncs =
                [("fsync", m.fsync.median), ("fsync with 3 writers", m.fsync_concurrent.median)];
            for (name, fsync) in fsyncs {
                let what = format!(
                    "{combo}, 1 client, {pl}: p50 ≤ {DURABLE_LATENCY_FACTOR} × ({name} {} + QUIC RTT {}) = {}",
                    dur(fsync),
                    dur(m.quic_rtt.median),
                    micros(bound(fsync))
                );
                t.push(match (single, skipped) {
                    (_, true) => {
                        Target { what, figure: "—".into(), verdict: Verdict::Skipped("rocksdb") }
                    }
                    (Some(p), _) => Target {
                        what,
                        figure: format!("p50 {}", micros(p.latency.p50 as f64)),
                        verdict: Verdict::of((p.latency.p50 as f64) <= bound(fsync)),
                    },
                    (None, _) => {
                        Target { what, figure: "—".into(), verdict: Verdict::NotMeasured }
                    }
                });
            }
            let what = format!(
                "{combo}, {pl}: throughput at 256 clients ≥ {GROUP_COMMIT_FACTOR} × 1 client (group commit)"
            );
            let many = found.zip(payload).and_then(|(c, pl)| point(&c.points, 256, pl));
            t.push(match (single, many, skipped) {
                (_, _, true) => {
                    Target { what, figure: "—".into(), verdict: Verdict::Skipped("rocksdb") }
                }
                (Some(one), Some(many), _) => {
                    let ratio = many.throughput() / one.throughput().max(1e-9);
                    Target {
                        what,
                        figure: format!(
                            "{ratio:.1}× ({} vs {} commits/s)",
                            thousands(many.throughput()),
                            thousands(one.throughput())
                        ),
                        verdict: Verdict::of(ratio >= GROUP_COMMIT_FACTOR),
                    }
                }
                _ => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
            });
        }
        t.push(match &self.memory {
            Some(m) if !m.samples.is_empty() => {
                let b = &m.budget;
                Target {
                    what: "memory: peak RSS within what the configuration bounds (mem+redb; \
                           baseline + nodes × (entry cache + store cache + in-flight window + \
                           batches + state))"
                        .into(),
                    figure: format!(
                        "peak {} ≤ {} = {} + {} × ({} + {} + {} + {} + {})",
                        mib(m.peak()),
                        mib(b.total()),
                        mib(b.baseline),
                        b.nodes,
                        mib(b.entry_cache),
                        mib(b.store_cache),
                        mib(b.inflight),
                        mib(b.batches),
                        mib(b.state)
                    ),
                    verdict: Verdict::of(m.peak() <= b.total()),
                }
            }
            _ => Target {
                what: "memory: peak RSS within what the configuration bounds".into(),
                figure: "—".into(),
                verdict: Verdict::NotMeasured,
            },
        });
        let what = format!(
            "memory: RSS flat as the log grows (mem+redb; from the first log compaction on, \
             last-quartile mean ≤ {FLAT_FACTOR} × first-quartile mean)"
        );
        t.push(match &self.memory {
            Some(m) => {
                let grown = |s: &[MemorySample]| {
                    s.last().map_or(0, |x| x.last_index) - s.first().map_or(0, |x| x.last_index)
                };
                let whole = m.quartiles().map_or(String::new(), |(a, b)| {
                    format!(
                        "; whole run, start-up fill included: {} → {} ({:+.1} %)",
                        mib(a as u64),
                        mib(b as u64),
                        (b / a - 1.0) * 100.0
                    )
                });
                match m.steady_quartiles() {
                    Some((first, last)) => Target {
                        what,
                        figure: format!(
                            "{} → {} ({:+.1} %) while the log grew by {} entries{whole}",
                            mib(first as u64),
                            mib(last as u64),
                            (last / first - 1.0) * 100.0,
                            thousands(grown(m.steady()) as f64)
                        ),
                        verdict: Verdict::of(last <= first * FLAT_FACTOR),
                    },
                    // Before the first compaction the log and its caches are still filling up
                    // to their configured bounds: growth then says nothing.
                    None => Target {
                        what,
                        figure: format!(
                            "too short to judge: fewer than 4 samples after the first log \
                             compaction (give --memory-secs more time){whole}"
                        ),
                        verdict: Verdict::NotMeasured,
                    },
                }
            }
            None => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
        t.push(self.membership_target());
        self.read_targets(&mut t);
        self.transfer_targets(&mut t);
        t
    }

    /// The reads part's targets: read throughput against writes at 256 clients (both
    /// combinations), and on quic+redb a 1-client Linearizable read without fsync and within
    /// two loopback round trips.
    fn read_targets(&self, t: &mut Vec<Target>) {
        let n = READ_TARGET_CLIENTS;
        for combo in crate::reads::COMBOS {
            let r = self.reads.iter().find(|r| r.combo == combo && r.skipped.is_none());
            for (op, factor) in
                [(Op::Linearizable, LINEARIZABLE_READ_FACTOR), (Op::Lease, LEASE_READ_FACTOR)]
            {
                let what = format!(
                    "{combo}, {n} clients: {}s ≥ {factor}× the write throughput (same clients, \
                     same window)",
                    op.name()
                );
                t.push(
                    match r.and_then(|r| {
                        Some((r.ratio(op, n)?, r.find(op, n)?, r.find(Op::Write, n)?))
                    }) {
                        Some((ratio, read, write)) => Target {
                            what,
                            figure: format!(
                                "{ratio:.1}× ({} reads/s vs {} writes/s)",
                                thousands(read.point.throughput()),
                                thousands(write.point.throughput())
                            ),
                            verdict: Verdict::of(ratio >= factor),
                        },
                        None => {
                            Target { what, figure: "—".into(), verdict: Verdict::NotMeasured }
                        }
                    },
                );
            }
        }
        let combo = Combo { net: Net::Quic, store: crate::combo::Store::Redb };
        let r = self.reads.iter().find(|r| r.combo == combo && r.skipped.is_none());
        let one = r.and_then(|r| r.find(Op::Linearizable, 1));
        let what = format!(
            "{combo}, 1 client, Linearizable read: no log-store fsync during the read window \
             (redb commits on all three nodes)"
        );
        t.push(match one {
            Some(p) => Target {
                what,
                figure: format!(
                    "{} redb commits while {} reads were answered in {:.2} s",
                    p.point.syncs,
                    thousands(p.point.commits as f64),
                    p.point.elapsed.as_secs_f64()
                ),
                verdict: Verdict::of(p.point.syncs == 0),
            },
            None => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
        let what = format!(
            "{combo}, 1 client, Linearizable read: p50 ≤ {READ_RTT_FACTOR} loopback QUIC round \
             trips (measured just before it)"
        );
        t.push(match (one, r.and_then(|r| r.rtt)) {
            (Some(p), Some(rtt)) if rtt.median > Duration::ZERO => {
                let rtt_us = rtt.median.as_secs_f64() * 1e6;
                let rtts = p.point.latency.p50 as f64 / rtt_us;
                let follower = r.and_then(|r| r.find(Op::Follower, 1)).map_or(String::new(), |f| {
                    format!(
                        "; 1-client Follower read p50 {} = {:.1} round trips",
                        micros(f.point.latency.p50 as f64),
                        f.point.latency.p50 as f64 / rtt_us
                    )
                });
                Target {
                    what,
                    figure: format!(
                        "p50 {} = {rtts:.1} round trips of {} (ping p50){follower}",
                        micros(p.point.latency.p50 as f64),
                        dur(rtt.median)
                    ),
                    verdict: Verdict::of(rtts <= READ_RTT_FACTOR),
                }
            }
            _ => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
    }

    /// The transfer part's targets: the median transfer within three heartbeat intervals, and
    /// no acknowledged write lost.
    fn transfer_targets(&self, t: &mut Vec<Target>) {
        let tr = self.transfer.as_ref().filter(|r| r.skipped.is_none());
        let combo = crate::transfer::COMBO;
        let what = format!(
            "{combo}, idle: leadership transfer, from the call until the target leads, median ≤ \
             {TRANSFER_HEARTBEATS} heartbeat intervals"
        );
        t.push(match tr {
            Some(r) if !r.transfers.is_empty() => {
                let hb = |d: Option<Duration>| {
                    d.map_or("—".to_string(), |d| {
                        format!("{} = {:.2} intervals", dur(d), r.in_heartbeats(d))
                    })
                };
                Target {
                    what,
                    figure: format!(
                        "median {}, max {} (interval {}); {} of {} transfers completed",
                        hb(r.median()),
                        hb(r.max()),
                        dur(r.heartbeat),
                        r.completed(),
                        r.transfers.len()
                    ),
                    verdict: Verdict::of(
                        r.median().is_some_and(|m| r.in_heartbeats(m) <= TRANSFER_HEARTBEATS),
                    ),
                }
            }
            _ => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
        let what = format!(
            "{combo}: no write acknowledged before or after the leadership transfers is lost \
             (a loss fails the run)"
        );
        t.push(match tr {
            Some(r) => Target {
                what,
                figure: match r.violation() {
                    Some(v) => v,
                    None => format!(
                        "{} acknowledged writes all read back (linearizable read on the leader, \
                         node {}; state machines of nodes {})",
                        r.acknowledged,
                        r.final_leader.map_or("?".into(), |n| n.0.to_string()),
                        r.checked_on.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                },
                verdict: Verdict::of(r.violation().is_none()),
            },
            None => Target { what, figure: "—".into(), verdict: Verdict::NotMeasured },
        });
    }

    /// What fails the transfer part (an acknowledged write lost, or the part could not
    /// finish); empty if nothing does or the part did not run.
    pub fn transfer_violations(&self) -> Vec<String> {
        self.transfer.iter().filter_map(TransferResult::violation).collect()
    }

    /// The membership part's rule: no write fails with an error not documented as retryable.
    fn membership_target(&self) -> Target {
        let what = format!(
            "membership change under load ({}, {} clients): no write fails with an error not \
             documented as retryable, and the change completes",
            crate::membership::COMBOS.map(Combo::name).join(", "),
            crate::membership::CLIENTS
        );
        let run: Vec<&MembershipResult> =
            self.membership.iter().filter(|m| m.skipped.is_none()).collect();
        if run.is_empty() {
            return Target { what, figure: "—".into(), verdict: Verdict::NotMeasured };
        }
        let violations: Vec<String> = run.iter().filter_map(|m| m.violation()).collect();
        let figure = if violations.is_empty() {
            run.iter()
                .map(|m| {
                    let failed: u64 = m
                        .change
                        .iter()
                        .flat_map(|p| p.failures.values())
                        .map(|k| k.count)
                        .sum();
                    let redirects = m.change.as_ref().map_or(0, |p| p.redirects);
                    format!(
                        "{}: change done in {}, {failed} failed writes (all retryable), {redirects} redirects",
                        m.combo,
                        dur(m.change_took())
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            violations.join("; ")
        };
        Target { what, figure, verdict: Verdict::of(violations.is_empty()) }
    }

    /// What breaks the membership part's rule (a write failed with an error not documented
    /// as retryable, or the change did not complete), one line per combination; empty if
    /// nothing does or the part did not run.
    pub fn membership_violations(&self) -> Vec<String> {
        self.membership.iter().filter_map(MembershipResult::violation).collect()
    }

    /// The report file's name stem: `<date>` or `<date>-quick`.
    pub fn stem(&self) -> String {
        let d = date(self.started.unwrap_or(UNIX_EPOCH));
        if self.quick { format!("{d}-quick") } else { d }
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let started = self.started.unwrap_or(UNIX_EPOCH);
        let _ = writeln!(s, "# raftkit benchmark results, {}\n", date(started));
        let _ = writeln!(
            s,
            "Run `{}` at {} UTC; {} mode, {} s measured per point after {} s of warm-up; \
             `{}` build; the whole run took {:.0} s.\n",
            self.command_line,
            time_of_day(started),
            if self.quick { "quick (smoke-check)" } else { "full" },
            self.measure.as_secs_f64(),
            self.warmup.as_secs_f64(),
            self.machine.profile,
            self.wall.as_secs_f64()
        );
        if let Some(note) = &self.note {
            let _ = writeln!(s, "> Conditions, as noted by whoever ran it: {note}\n");
        }
        if self.repeat > 1 {
            let _ = writeln!(
                s,
                "Every point of the comparison and the matrix was measured {} times on the same \
                 cluster; each row is the run with the median throughput, and *commits/s* gives \
                 the lowest and highest run in brackets. Targets are judged on the median run.\n",
                self.repeat
            );
        }
        if self.quick || self.machine.profile == "debug" {
            let _ = writeln!(
                s,
                "> These figures come from a quick and/or debug-profile run: they check that \
                 every combination works, not how fast it is.\n"
            );
        }
        self.machine_section(&mut s);
        self.targets_section(&mut s);
        self.compare_section(&mut s);
        self.core_section(&mut s);
        self.matrix_section(&mut s);
        self.memory_section(&mut s);
        self.membership_section(&mut s);
        self.reads_section(&mut s);
        self.transfer_section(&mut s);
        self.notes_section(&mut s);
        s
    }

    fn machine_section(&self, s: &mut String) {
        let m = &self.machine;
        let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} ({} cores available) |", m.cpu, m.cores);
        let _ = writeln!(s, "| memory | {:.1} GiB |", m.memory as f64 / (1u64 << 30) as f64);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(s, "| data directory | `{}`: {} |", m.data_dir.display(), m.file_system);
        let _ = writeln!(
            s,
            "| fsync (4 KiB append + fdatasync, one writer) | median {}, p99 {}, min {} ({} samples) |",
            dur(m.fsync.median),
            dur(m.fsync.p99),
            dur(m.fsync.min),
            m.fsync.samples
        );
        let _ = writeln!(
            s,
            "| fsync, three writers at once (one file each, as the three nodes) | median {}, p99 {}, min {} ({} samples) |",
            dur(m.fsync_concurrent.median),
            dur(m.fsync_concurrent.p99),
            dur(m.fsync_concurrent.min),
            m.fsync_concurrent.samples
        );
        let _ = writeln!(
            s,
            "| loopback QUIC round trip (raftkit-quic, heartbeat echoed) | median {}, p99 {}, min {} ({} samples) |",
            dur(m.quic_rtt.median),
            dur(m.quic_rtt.p99),
            dur(m.quic_rtt.min),
            m.quic_rtt.samples
        );
        let _ = writeln!(
            s,
            "| load average (1, 5, 15 min) at the start and the end of the run | {} / {} |",
            m.load.0, m.load.1
        );
        let _ = writeln!(s, "| build profile | {} |\n", crate::machine::BUILD);
    }

    fn targets_section(&self, s: &mut String) {
        let _ = writeln!(s, "## Targets\n\nReported, never asserted.\n");
        let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
        for t in self.targets() {
            let _ = writeln!(s, "| {} | {} | {} |", t.what, t.figure, t.verdict.label());
        }
        let _ = writeln!(s);
    }

    fn compare_section(&self, s: &mut String) {
        let build = crate::machine::BUILD;
        let _ = writeln!(
            s,
            "## Like-for-like with openraft\n\nBoth frameworks in one process, one after the other \
             in the same run, with the same load generator: 3 nodes, an in-memory log store, an \
             in-process network passing messages by value, empty commands, closed-loop clients \
             calling `client_write` on the leader and following redirects, all on the same \
             Tokio runtime ({} worker threads), {} s of warm-up then {} s measured per run. \
             raftkit: `MemNetwork`, `MemLogStore`, `NoopSm` (a command is the codec's single \
             version byte), `Config::new` defaults. openraft: `benches/src/openraft_baseline.rs` \
             (an in-memory `RaftLogStorage`, a network calling the target node's `Raft` handle \
             directly, an empty `RaftStateMachine`, `()` commands), with raftkit's timings and \
             per-message entry limit. Both clusters run for the whole part (the idle one only \
             sends heartbeats). For each client count the two are measured alternately, the \
             order swapped every round (raftkit, openraft, openraft, raftkit, …).\n\nBuild, \
             the same for both (one binary): {build}.\n",
            self.threads,
            self.warmup.as_secs_f64(),
            self.measure.as_secs_f64(),
        );
        match self.openraft {
            Some(v) => {
                let _ = writeln!(s, "openraft version: {v} (crates.io).\n");
            }
            None => {
                let _ = writeln!(
                    s,
                    "**The openraft baseline was not built** (build with `--features openraft`): \
                     raftkit alone, no ratio.\n"
                );
            }
        }
        let _ = writeln!(
            s,
            "*commits/s*: the median run, with the slowest and fastest in brackets. *ratio*: \
             raftkit's median over openraft's, and in brackets raftkit's slowest over \
             openraft's fastest and the reverse. *CPU*: cores busy (the whole process). \
             *entries/write*: entries per log-store write (raftkit `write`, openraft `append`), \
             averaged over the nodes. *elections*: how much the highest term rose during the \
             measured window of the median run (each election raises it); *redirects*: \
             `NotLeader` / `ForwardToLeader` answers; *errors*: other failed writes — all \
             counted in the measured window of the median run.\n"
        );
        if let Some(e) = &self.compare_error {
            let _ = writeln!(s, "Failed: {e}\n");
        }
        if self.compare.is_empty() {
            let _ = writeln!(s, "Not run.\n");
            return;
        }
        let _ = writeln!(
            s,
            "| clients | framework | commits/s | p50 | p99 | CPU | entries/write | elections | redirects | errors | raftkit ÷ openraft |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.compare {
            let ratio = match c.ratio() {
                Some((r, lo, hi)) => format!("{r:.2}× ({lo:.2}–{hi:.2}×)"),
                None => "—".into(),
            };
            let sides = std::iter::once(("raftkit", Some(&c.raftkit)))
                .chain(self.openraft.map(|_| ("openraft", c.openraft.as_ref())));
            for (i, (name, p)) in sides.enumerate() {
                let row = match p {
                    Some(p) => format!(
                        "{} | {} | {} | {:.2} | {:.1} | {} | {} | {}",
                        commits_cell(p),
                        micros(p.latency.p50 as f64),
                        micros(p.latency.p99 as f64),
                        p.cpu_cores(),
                        p.entries_per_sync(),
                        p.term_increase,
                        p.redirects,
                        p.errors,
                    ),
                    None => "not measured | | | | | | |".into(),
                };
                let last = if i == 0 { ratio.as_str() } else { "" };
                let _ = writeln!(s, "| {} | {name} | {row} | {last} |", c.clients);
            }
        }
        let _ = writeln!(s);
        for c in &self.compare {
            let sides = [("raftkit", Some(&c.raftkit)), ("openraft", c.openraft.as_ref())];
            for (name, p) in sides {
                if let Some(e) = p.and_then(|p| p.last_error.as_ref()) {
                    let _ = writeln!(s, "- {} clients, {name}: last error: {e}", c.clients);
                }
            }
        }
        let _ = writeln!(s);
    }

    fn core_section(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## The core alone\n\nThree `RaftCore`s, no IO: messages delivered at once, writes \
             acknowledged at once, entries applied at once. Each round proposes a batch of {} B \
             entries on the leader and runs until all three nodes are idle.\n",
            crate::run::CORE_ENTRY_BYTES
        );
        if let Some(e) = &self.core_error {
            let _ = writeln!(s, "Failed: {e}\n");
        }
        if self.core.is_empty() {
            let _ = writeln!(s, "Not run.\n");
            return;
        }
        let _ = writeln!(s, "| batch | commits/s | ns per commit |\n|---:|---:|---:|");
        for c in &self.core {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} |",
                c.batch,
                thousands(c.throughput()),
                1e9 / c.throughput().max(1e-9)
            );
        }
        let _ = writeln!(s);
    }

    fn matrix_section(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Adapter combinations\n\n3 nodes, `Config::new` defaults, `MemKv` state machine \
             (each client puts its own key, so the state stays small), closed-loop clients \
             writing to the leader. *commits/s*: acknowledged writes per second. *syncs/s*: \
             durable commits per second per node (for the memory store: `write` calls, which \
             do not fsync). *entries/sync*: entries appended per durable commit. *CPU*: user + \
             system time of the whole process (all three nodes and the clients) per second of \
             wall time (2.0 = both cores busy). *peak RSS*: of the whole process during the \
             point. *errors*: writes that failed other than `NotLeader` redirects (after a \
             leader change, for example); a note under the table gives the last error and the \
             elections during the point.\n"
        );
        for c in &self.combos {
            let _ = writeln!(s, "### {}\n", c.combo);
            if !c.sync_kind.is_empty() {
                let _ = writeln!(
                    s,
                    "Store commits counted: {}. Cluster start to first commit: {:.2} s.\n",
                    c.sync_kind,
                    c.startup.as_secs_f64()
                );
            }
            if let Some(e) = &c.error {
                let _ = writeln!(s, "**Failed**: {e}\n");
            }
            if c.points.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "| clients | payload | commits/s | p50 | p99 | p99.9 | syncs/s | entries/sync | CPU | peak RSS | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for p in &c.points {
                let _ = writeln!(
                    s,
                    "| {} | {} B | {} | {} | {} | {} | {} | {:.1} | {:.2} | {}{} | {} |",
                    p.clients,
                    p.payload,
                    commits_cell(p),
                    micros(p.latency.p50 as f64),
                    micros(p.latency.p99 as f64),
                    micros(p.latency.p999 as f64),
                    thousands(p.syncs_per_sec()),
                    p.entries_per_sync(),
                    p.cpu_cores(),
                    p.peak_rss.map_or("—".into(), mib),
                    if p.peak_rss_scoped { "" } else { " (since start)" },
                    p.errors,
                );
            }
            let _ = writeln!(s);
            for p in c.points.iter().filter(|p| p.errors > 0 || p.term_increase > 0) {
                let _ = writeln!(
                    s,
                    "- {} clients, {} B: {} failed writes{}, {} `NotLeader` redirects, term rose \
                     by {} (elections) during the window.",
                    p.clients,
                    p.payload,
                    p.errors,
                    p.last_error.as_ref().map_or(String::new(), |e| format!(" (last: {e})")),
                    p.redirects,
                    p.term_increase
                );
            }
            if c.points.iter().any(|p| p.errors > 0 || p.term_increase > 0) {
                let _ = writeln!(s);
            }
        }
        for c in &self.skipped {
            let _ = writeln!(s, "### {c}\n\nSkipped (build with `--features rocksdb`).\n");
        }
    }

    fn memory_section(&self, s: &mut String) {
        let _ = writeln!(s, "## Memory as the log grows\n");
        if let Some(e) = &self.memory_error {
            let _ = writeln!(s, "Failed: {e}\n");
        }
        let Some(m) = &self.memory else {
            let _ = writeln!(s, "Not run.\n");
            return;
        };
        let b = &m.budget;
        let _ = writeln!(
            s,
            "mem+redb, {} clients, {} B payloads, {:.0} s: {} commits/s. Process RSS sampled {} \
             times, peak {}. What the configuration (`Config::new` defaults) bounds, per node: \
             the entry cache (`entry_cache_bytes`, {}), redb's page cache ({}), the replication \
             window to the other nodes (`max_inflight_bytes` each, {} in all), proposal and \
             apply batches ({}) and the state ({}); with {} nodes and {} before the cluster \
             started, {} in all. The log itself is compacted every {} entries \
             (`snapshot_every`).\n",
            m.clients,
            m.payload,
            m.point.elapsed.as_secs_f64(),
            thousands(m.point.throughput()),
            m.samples.len(),
            mib(m.peak()),
            mib(b.entry_cache),
            mib(b.store_cache),
            mib(b.inflight),
            mib(b.batches),
            mib(b.state),
            b.nodes,
            mib(b.baseline),
            mib(b.total()),
            thousands(m.snapshot_every as f64),
        );
        let _ = writeln!(
            s,
            "| time | RSS | leader's last index | purged up to |\n|---:|---:|---:|---:|"
        );
        let n = m.samples.len();
        let step = (n / 10).max(1);
        for (i, x) in m.samples.iter().enumerate() {
            if i % step == 0 || i + 1 == n {
                let _ = writeln!(
                    s,
                    "| {:.1} s | {} | {} | {} |",
                    x.at.as_secs_f64(),
                    mib(x.rss),
                    thousands(x.last_index as f64),
                    thousands(x.purged_index as f64)
                );
            }
        }
        if let Some((first, last)) = m.quartiles() {
            let _ = writeln!(
                s,
                "\nWhole run: first-quartile mean {}, last-quartile mean {} ({:+.1} %; the first \
                 quarter includes the start-up fill).",
                mib(first as u64),
                mib(last as u64),
                (last / first - 1.0) * 100.0
            );
        }
        match m.steady_quartiles() {
            Some((first, last)) => {
                let _ = writeln!(
                    s,
                    "From the first log compaction on ({} samples): first-quartile mean {}, \
                     last-quartile mean {} ({:+.1} %): {}.\n",
                    m.steady().len(),
                    mib(first as u64),
                    mib(last as u64),
                    (last / first - 1.0) * 100.0,
                    if last <= first * FLAT_FACTOR { "flat" } else { "growing" }
                );
            }
            None => {
                let _ = writeln!(s, "Not judged: the run ended before the log was compacted.\n");
            }
        }
    }

    fn membership_section(&self, s: &mut String) {
        if self.membership.is_empty() {
            return;
        }
        let m0 = &self.membership[0];
        let window = m0.baseline.as_ref().map_or(Duration::ZERO, |p| p.elapsed);
        let _ = writeln!(
            s,
            "## Membership change under load\n\n{} clients writing {} B commands (`MemKv`, one \
             key each) to the leader of a 3-node cluster, following `NotLeader` redirects and \
             retrying other failed writes after 5 ms. For each combination, two fresh clusters \
             one after the other: **without change**, a measured window of {:.1} s after the \
             warm-up; **with change**, the same load, and a fifth of the way into the window \
             node 4 starts in join mode (a `Config` with no members), the leader adds it as a \
             learner (`add_learner`, blocking until it has caught up), promotes it to voter, \
             then removes one of the original voters that is not the leader (it keeps running, \
             outside the configuration, until the window ends). Each step is asked of whoever \
             leads at the time and asked again while it is refused with a retryable error. The \
             window with the change lasts until the change is done if that is later than its \
             nominal end, so its figures always cover the whole change.\n",
            crate::membership::CLIENTS,
            crate::membership::PAYLOAD,
            window.as_secs_f64(),
        );
        let _ = writeln!(
            s,
            "How to read it: compare *without change* with *with change*, both over a whole \
             measured window of the same nominal length (so the second mixes the time before, \
             during and after the change); *during the change only* counts the writes \
             acknowledged between the first step's start and the last step's end, which is \
             where a change shows, if anywhere (a short change on a long window barely moves the \
             whole-window figures). The change's steps and their durations follow each table. \
             *failed writes* lists every write that failed other than a `NotLeader` redirect, by \
             error kind, with whether raftkit documents the kind as retryable \
             (`WriteError::is_retryable`); the part fails (the harness exits with an error) if \
             any is not, or if the change does not complete. *elections*: how much the highest \
             term rose during the window.\n"
        );
        for m in &self.membership {
            let _ = writeln!(s, "### {}\n", m.combo);
            if let Some(why) = &m.skipped {
                let _ = writeln!(s, "Skipped: {why}.\n");
                continue;
            }
            if let Some(e) = &m.error {
                let _ = writeln!(s, "**Failed**: {e}\n");
            }
            let (a, b) = (m.baseline.as_ref(), m.change.as_ref());
            let span = b.and_then(|p| p.marked.as_ref());
            let win = |p: Option<&PointResult>, f: fn(&PointResult) -> String| {
                p.map_or_else(|| "not measured".to_string(), f)
            };
            let during = |f: fn(&Span) -> String| span.map_or_else(|| "—".to_string(), f);
            let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
            let rows = [
                (
                    "measured",
                    win(a, |p| format!("{:.2} s", p.elapsed.as_secs_f64())),
                    win(b, |p| format!("{:.2} s", p.elapsed.as_secs_f64())),
                    during(|x| micros(x.elapsed.as_secs_f64() * 1e6)),
                ),
                (
                    "commits/s",
                    win(a, |p| thousands(p.throughput())),
                    win(b, |p| thousands(p.throughput())),
                    during(|x| thousands(x.throughput())),
                ),
                (
                    "p50",
                    win(a, |p| micros(p.latency.p50 as f64)),
                    win(b, |p| micros(p.latency.p50 as f64)),
                    during(|x| micros(x.latency.p50 as f64)),
                ),
                (
                    "p99",
                    win(a, |p| micros(p.latency.p99 as f64)),
                    win(b, |p| micros(p.latency.p99 as f64)),
                    during(|x| micros(x.latency.p99 as f64)),
                ),
                (
                    "max",
                    win(a, |p| micros(p.latency.max as f64)),
                    win(b, |p| micros(p.latency.max as f64)),
                    during(|x| micros(x.latency.max as f64)),
                ),
                (
                    "`NotLeader` redirects",
                    win(a, |p| p.redirects.to_string()),
                    win(b, |p| p.redirects.to_string()),
                    "—".to_string(),
                ),
                (
                    "failed writes",
                    win(a, failures_cell),
                    win(b, failures_cell),
                    during(|x| x.errors.to_string()),
                ),
                (
                    "elections",
                    win(a, |p| p.term_increase.to_string()),
                    win(b, |p| p.term_increase.to_string()),
                    "—".to_string(),
                ),
            ];
            let _ = writeln!(
                s,
                "| | without change | with change: whole window | with change: during the \
                 change only |\n|---|---:|---:|---:|"
            );
            for (name, x, y, z) in rows {
                let _ = writeln!(s, "| {name} | {x} | {y} | {z} |");
            }
            if !m.steps.is_empty() {
                let _ = writeln!(
                    s,
                    "\nThe change, {} in all:\n\n| step | from (into the window) | took | on node | \
                     attempts |\n|---|---:|---:|---:|---:|",
                    dur(m.change_took())
                );
            }
            for st in &m.steps {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    st.what,
                    secs(st.at),
                    dur(st.took),
                    st.by.map_or("—".to_string(), |n| n.0.to_string()),
                    match &st.last_refusal {
                        Some(r) => format!("{} (last refusal: {r})", st.attempts),
                        None => st.attempts.to_string(),
                    }
                );
            }
            let _ = writeln!(s);
            if let Some(r) = m.removed {
                let voters: Vec<String> = m.voters.iter().map(|v| v.0.to_string()).collect();
                let _ = writeln!(
                    s,
                    "Removed: node {} (an original follower). Voters afterwards: {}.\n",
                    r.0,
                    voters.join(", ")
                );
            }
        }
    }

    fn reads_section(&self, s: &mut String) {
        if self.reads.is_empty() {
            return;
        }
        let window = self.reads_window().unwrap_or_default();
        let _ = writeln!(
            s,
            "## Reads against writes\n\nOne fresh 3-node cluster per combination (`Config::new` \
             defaults, `MemKv` applied on the driver). At each client count, in this order, \
             {} s of warm-up then {:.2} s measured: **write** — every closed-loop client puts its \
             own key (`client-<n>`, {} B value) with `client_write` on the leader; \
             **Linearizable** and **Lease** — every client reads its own key back with \
             `client_read(KvQuery::Get, policy)` on the leader; **Follower** — the same with \
             `ReadPolicy::Follower`, client *n* on follower *n* mod 2 (the *served by* column). \
             Every read must return the value written (a wrong or missing value counts as a \
             failed read, `WrongAnswer`).\n",
            self.warmup.as_secs_f64(),
            window.as_secs_f64(),
            crate::reads::PAYLOAD,
        );
        let _ = writeln!(
            s,
            "How to read it: *ops/s* is writes or reads answered per second in the window; \
             *× writes* is that over the write row of the same client count. *log writes* is \
             how much the log stores' counter rose during the window, summed over the three \
             nodes — redb: commits, one fsync each; memory store: `write` calls — so a read row \
             shows what the reads cost the log (0: nothing). *p50 in RTTs* (1 client, QUIC \
             only) divides p50 by the median loopback QUIC round trip measured just before the \
             1-client reads; that ping is echoed by a task of its own, so it is, if anything, a \
             little longer than the bare round trip a heartbeat sees. \
             *redirects*: `NotLeader` answers followed; *elections*: how much the highest \
             term rose.\n"
        );
        for r in &self.reads {
            let _ = writeln!(s, "### {}\n", r.combo);
            if let Some(why) = &r.skipped {
                let _ = writeln!(s, "Skipped: {why}.\n");
                continue;
            }
            if let Some(e) = &r.error {
                let _ = writeln!(s, "**Failed**: {e}\n");
            }
            if let Some(rtt) = &r.rtt {
                let _ = writeln!(
                    s,
                    "Loopback QUIC round trip, measured just before the 1-client reads (two more \
                     `QuicNetwork` endpoints on the same runtime, the cluster idle): median {}, \
                     p99 {}, min {} ({} pings).\n",
                    dur(rtt.median),
                    dur(rtt.p99),
                    dur(rtt.min),
                    rtt.samples
                );
            }
            let rtt_us = r.rtt.map(|l| l.median.as_secs_f64() * 1e6).filter(|v| *v > 0.0);
            let _ = writeln!(
                s,
                "| clients | operation | served by | ops/s | × writes | p50 | p50 in RTTs | p99 | \
                 p99.9 | log writes ({}) | CPU | redirects | failed | elections |\n\
                 |---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
                r.sync_kind
            );
            for p in &r.points {
                let q = &p.point;
                let ratio = match p.op {
                    Op::Write => "—".to_string(),
                    op => r.ratio(op, q.clients).map_or("—".into(), |x| format!("{x:.1}×")),
                };
                let nodes: Vec<String> = p.served_by.iter().map(|n| n.0.to_string()).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} {} | {} | {ratio} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                    q.clients,
                    p.op.name(),
                    if p.served_by.len() == 1 { "node" } else { "nodes" },
                    nodes.join(", "),
                    thousands(q.throughput()),
                    micros(q.latency.p50 as f64),
                    rtt_us
                        .filter(|_| q.clients == 1)
                        .map_or("—".into(), |rtt| format!("{:.1}", q.latency.p50 as f64 / rtt)),
                    micros(q.latency.p99 as f64),
                    micros(q.latency.p999 as f64),
                    q.syncs,
                    q.cpu_cores(),
                    q.redirects,
                    failures_cell(q),
                    q.term_increase
                );
            }
            let _ = writeln!(s);
        }
    }

    /// The length of the reads part's windows (the first measured one's).
    fn reads_window(&self) -> Option<Duration> {
        self.reads.iter().flat_map(|r| r.points.first()).map(|p| p.point.elapsed).next()
    }

    fn transfer_section(&self, s: &mut String) {
        let Some(r) = &self.transfer else { return };
        let _ = writeln!(
            s,
            "## Leadership transfer\n\nOne fresh, idle 3-node {} cluster (`Config::new` \
             defaults: heartbeat interval {}). {} transfers, one after the other: wait for a \
             stable leader, write {} keys on it, then `transfer_leadership(Some(target))`, the \
             targets taken in turn (nodes 1, 2, 3, 1, …, skipping the leader). \
             *target leads after* runs from the call until the target's own metrics say it leads \
             in a higher term; *call returned after* until the old leader's call returned. \
             Then {} more keys are written on the final leader, and every acknowledged write is \
             read back through a Linearizable `client_read` on the leader and from every node's \
             state machine (once it has applied the leader's commit index): a key missing or \
             changed anywhere fails the run.\n",
            r.combo,
            dur(r.heartbeat),
            r.transfers.len(),
            crate::transfer::WRITES_PER_TRANSFER,
            crate::transfer::WRITES_PER_TRANSFER,
        );
        if let Some(why) = &r.skipped {
            let _ = writeln!(s, "Skipped: {why}.\n");
            return;
        }
        if let Some(e) = &r.error {
            let _ = writeln!(s, "**Failed**: {e}\n");
        }
        if !r.transfers.is_empty() {
            let hb = |d: Option<Duration>| {
                d.map_or("—".to_string(), |d| {
                    format!("{} ({:.2} intervals)", dur(d), r.in_heartbeats(d))
                })
            };
            let _ = writeln!(
                s,
                "Median {}, max {}; {} of {} transfers completed.\n",
                hb(r.median()),
                hb(r.max()),
                r.completed(),
                r.transfers.len()
            );
            let _ = writeln!(
                s,
                "| # | from → to | term | target leads after | heartbeat intervals | call returned \
                 after | outcome |\n|---:|---|---|---:|---:|---:|---|"
            );
        }
        for (i, t) in r.transfers.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} → {} | {} → {} | {} | {} | {} | {} |",
                i + 1,
                t.from.0,
                t.to.0,
                t.term_before,
                t.term_after.map_or("—".into(), |x| x.to_string()),
                t.took.map_or("did not take over".into(), dur),
                t.took.map_or("—".into(), |d| format!("{:.2}", r.in_heartbeats(d))),
                dur(t.call),
                t.outcome
            );
        }
        let _ = writeln!(
            s,
            "\nWrites: {} acknowledged and checked; {} attempts failed and were retried{}. \
             Lost: {}.\n",
            r.acknowledged,
            r.failed_writes,
            r.last_write_error.as_ref().map_or(String::new(), |e| format!(" (last: {e})")),
            if r.lost.is_empty() && r.error.is_none() {
                "none".to_string()
            } else if r.lost.is_empty() {
                "not checked".to_string()
            } else {
                format!("**{}**: {}", r.lost.len(), r.lost.join("; "))
            }
        );
    }

    fn notes_section(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Notes\n\n- All three nodes and all clients share one process and its {} cores, \
             so CPU and memory figures cover the whole cluster.\n- Latency is measured by each \
             client from calling `client_write` to its answer (committed and applied on the \
             leader), or `client_read` to its answer in the reads part; percentiles come from an HDR histogram (1 µs to 100 s, 3 significant \
             digits).\n- Every combination runs all its points on one cluster, so durable logs \
             grow from point to point; warm-up time before each point is not measured.\n- The \
             allocator keeps memory freed by earlier points, so a point's peak RSS includes \
             what earlier points used; the memory check runs first for that reason.\n- \
             The files were produced by `raftkit-bench`; see `benches/README.md`.",
            self.machine.cores
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29");
        assert_eq!(date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14");
    }

    #[test]
    fn repeated_points_report_the_median_run_and_the_range() {
        let run = |commits: u64, p50: u64| PointResult {
            commits,
            elapsed: Duration::from_secs(1),
            latency: crate::load::LatencyUs { p50, ..Default::default() },
            ..PointResult::default()
        };
        let m = crate::load::median_run(vec![run(300, 3), run(100, 1), run(200, 2)]).unwrap();
        // The median run is reported whole (its latency too), with every run's throughput.
        assert_eq!((m.commits, m.latency.p50), (200, 2));
        assert_eq!(m.runs, vec![100.0, 200.0, 300.0]);
        assert_eq!(commits_cell(&m), "200 (100–300)");
        let single = crate::load::median_run(vec![run(1234, 1)]).unwrap();
        assert!(single.runs.is_empty());
        assert_eq!(commits_cell(&single), "1,234");
        assert!(crate::load::median_run(Vec::new()).is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(micros(850.0), "850 µs");
        assert_eq!(micros(1250.0), "1.25 ms");
    }

    #[test]
    fn memory_is_judged_from_the_first_compaction() {
        let sample = |i: u64, rss: u64, purged: u64| MemorySample {
            at: Duration::from_secs(i),
            rss: rss << 20,
            last_index: i * 1000,
            purged_index: purged,
        };
        // A fill from 10 to 100 MiB, then flat after the first compaction.
        let mut samples: Vec<MemorySample> = (0..4).map(|i| sample(i, 10 + 30 * i, 0)).collect();
        samples.extend((4..20).map(|i| sample(i, 100 + i % 2, 500)));
        let m = MemoryResult { samples, ..MemoryResult::default() };
        let (first, last) = m.quartiles().unwrap();
        assert!(last > first * FLAT_FACTOR, "the whole run looks like growth");
        assert_eq!(m.steady().len(), 16);
        let (first, last) = m.steady_quartiles().unwrap();
        assert!(last <= first * FLAT_FACTOR);
        let r = Results { memory: Some(m), ..Results::default() };
        let t = r.targets().into_iter().find(|t| t.what.starts_with("memory: RSS flat")).unwrap();
        assert_eq!(t.verdict, Verdict::Met, "{}", t.figure);
        assert!(t.figure.contains("whole run"), "{}", t.figure);
    }

    #[test]
    fn peak_memory_is_judged_against_the_configured_bound() {
        let sample = |rss_mib: u64| MemorySample {
            at: Duration::ZERO,
            rss: rss_mib << 20,
            last_index: 0,
            purged_index: 0,
        };
        let budget = MemoryBudget {
            nodes: 3,
            baseline: 10 << 20,
            entry_cache: 64 << 20,
            store_cache: 64 << 20,
            inflight: 64 << 20,
            batches: 6 << 20,
            state: 1 << 20,
        };
        assert_eq!(budget.total(), (10 + 3 * 199) << 20);
        let judge = |peak: u64| {
            let m = MemoryResult {
                budget,
                samples: vec![sample(50), sample(peak)],
                ..Default::default()
            };
            let r = Results { memory: Some(m), ..Results::default() };
            r.targets().into_iter().find(|t| t.what.starts_with("memory: peak")).unwrap()
        };
        assert_eq!(judge(600).verdict, Verdict::Met, "{}", judge(600).figure);
        assert_eq!(judge(700).verdict, Verdict::NotMet, "{}", judge(700).figure);
        assert!(judge(600).figure.contains("peak 600.0 MiB"), "{}", judge(600).figure);
    }

    #[test]
    fn comparison_is_judged_on_both_sides_measured_in_the_run() {
        let run = |commits: u64, runs: Vec<f64>| PointResult {
            clients: 256,
            commits,
            elapsed: Duration::from_secs(1),
            runs,
            redirects: 3,
            ..PointResult::default()
        };
        let point = ComparePoint {
            clients: 256,
            raftkit: run(1000, vec![900.0, 1000.0, 1100.0]),
            openraft: Some(run(400, vec![300.0, 400.0, 500.0])),
        };
        let (ratio, lo, hi) = point.ratio().unwrap();
        assert_eq!(ratio, 2.5);
        assert_eq!((lo, hi), (900.0 / 500.0, 1100.0 / 300.0));
        let with = Results {
            compare: vec![point.clone()],
            openraft: Some("0.9.25"),
            ..Default::default()
        };
        let t =
            with.targets().into_iter().find(|t| t.what.contains("256 clients: raftkit")).unwrap();
        assert_eq!(t.verdict, Verdict::Met, "{}", t.figure);
        let md = with.markdown();
        assert!(md.contains("| 256 | openraft | 400 (300–500)"), "{md}");
        assert!(md.contains("2.50× (1.80–3.67×)"), "{md}");
        // Without the baseline: raftkit alone, no ratio, the target skipped.
        let without = Results {
            compare: vec![ComparePoint { openraft: None, ..point }],
            openraft: None,
            ..Default::default()
        };
        let t = without.targets().into_iter().find(|t| t.what.contains("256 clients")).unwrap();
        assert_eq!(t.verdict, Verdict::Skipped("openraft"));
        let md = without.markdown();
        assert!(md.contains("openraft baseline was not built"), "{md}");
        assert!(!md.contains("| openraft |"), "{md}");
    }

    #[test]
    fn membership_tables_show_both_windows_and_non_retryable_failures_fail_the_part() {
        use crate::load::{KindCount, Span};
        use crate::membership::{MembershipResult, Step};
        let window = |commits: u64, marked: Option<Span>| PointResult {
            commits,
            elapsed: Duration::from_secs(1),
            marked,
            ..PointResult::default()
        };
        let span = Span { elapsed: Duration::from_millis(100), commits: 50, ..Span::default() };
        let mut change = window(900, Some(span));
        change
            .failures
            .insert("Overwritten", KindCount { count: 2, retryable: true, last: "o".into() });
        let step = |what: &str, at: u64| Step {
            what: what.into(),
            at: Duration::from_millis(at),
            took: Duration::from_millis(50),
            attempts: 1,
            by: Some(raftkit::NodeId(1)),
            last_refusal: None,
        };
        let m = MembershipResult {
            combo: Combo::default(),
            baseline: Some(window(1000, None)),
            change: Some(change),
            steps: vec![step("promote node 4 to voter", 200), step("remove voter 2", 250)],
            removed: Some(raftkit::NodeId(2)),
            voters: [1, 3, 4].map(raftkit::NodeId).to_vec(),
            ..MembershipResult::default()
        };
        let r = Results { membership: vec![m.clone()], ..Results::default() };
        let md = r.markdown();
        assert!(md.contains("| commits/s | 1,000 | 900 | 500 |"), "{md}");
        assert!(md.contains("Overwritten ×2 (retryable)"), "{md}");
        assert!(md.contains("The change, 100.00 ms in all"), "{md}");
        assert!(md.contains("Removed: node 2 (an original follower). Voters afterwards: 1, 3, 4."));
        let target = |r: &Results| {
            r.targets().into_iter().find(|t| t.what.starts_with("membership")).unwrap()
        };
        assert_eq!(target(&r).verdict, Verdict::Met, "{}", target(&r).figure);
        assert!(r.membership_violations().is_empty());

        let mut bad = m;
        if let Some(p) = &mut bad.change {
            p.failures
                .insert("Shutdown", KindCount { count: 1, retryable: false, last: "s".into() });
        }
        let r = Results { membership: vec![bad], ..Results::default() };
        assert!(r.markdown().contains("Shutdown ×1 (**not retryable**)"));
        assert_eq!(target(&r).verdict, Verdict::NotMet);
        assert_eq!(r.membership_violations().len(), 1);
    }

    #[test]
    fn read_and_transfer_targets_are_judged_from_their_parts() {
        use crate::reads::{ReadPoint, ReadsResult};
        use crate::transfer::{Transfer, TransferResult};
        use raftkit::NodeId;
        let point = |op: Op, clients: usize, per_sec: u64, p50: u64, syncs: u64| ReadPoint {
            op,
            served_by: vec![NodeId(1)],
            point: PointResult {
                clients,
                commits: per_sec,
                elapsed: Duration::from_secs(1),
                latency: crate::load::LatencyUs { p50, ..Default::default() },
                syncs,
                ..PointResult::default()
            },
        };
        let quic = Combo { net: Net::Quic, store: crate::combo::Store::Redb };
        let reads = ReadsResult {
            combo: quic,
            points: vec![
                point(Op::Write, 1, 1000, 900, 3000),
                point(Op::Linearizable, 1, 20_000, 50, 0),
                point(Op::Write, 256, 10_000, 9000, 100),
                point(Op::Linearizable, 256, 60_000, 1000, 0),
                point(Op::Lease, 256, 90_000, 500, 0),
            ],
            rtt: Some(crate::machine::Latency {
                median: Duration::from_micros(30),
                ..Default::default()
            }),
            ..ReadsResult::default()
        };
        let took = |ms: u64| Transfer {
            from: NodeId(1),
            to: NodeId(2),
            took: Some(Duration::from_millis(ms)),
            outcome: "ok".into(),
            ..Transfer::default()
        };
        let transfer = TransferResult {
            combo: quic,
            heartbeat: Duration::from_millis(50),
            transfers: vec![took(10), took(100), took(200)],
            acknowledged: 16,
            checked_on: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..TransferResult::default()
        };
        let r =
            Results { reads: vec![reads], transfer: Some(transfer.clone()), ..Results::default() };
        let verdict = |r: &Results, start: &str| {
            let t = r.targets().into_iter().find(|t| t.what.starts_with(start)).unwrap();
            (t.verdict, t.figure)
        };
        let (v, f) = verdict(&r, "quic+redb, 256 clients: Linearizable");
        assert_eq!(v, Verdict::Met, "{f}");
        assert!(f.starts_with("6.0×"), "{f}");
        let (v, f) = verdict(&r, "quic+redb, 256 clients: Lease");
        assert_eq!(v, Verdict::NotMet, "{f}");
        assert_eq!(verdict(&r, "mem+mem, 256 clients: Lease").0, Verdict::NotMeasured);
        let (v, f) = verdict(&r, "quic+redb, 1 client, Linearizable read: no log-store fsync");
        assert_eq!(v, Verdict::Met, "{f}");
        let (v, f) = verdict(&r, "quic+redb, 1 client, Linearizable read: p50");
        assert_eq!(v, Verdict::Met, "{f}");
        assert!(f.contains("1.7 round trips"), "{f}");
        let (v, f) = verdict(&r, "quic+redb, idle: leadership transfer");
        assert_eq!(v, Verdict::Met, "{f}");
        assert!(f.contains("median 100.00 ms = 2.00 intervals"), "{f}");
        assert_eq!(verdict(&r, "quic+redb: no write").0, Verdict::Met);
        assert!(r.transfer_violations().is_empty());
        let md = r.markdown();
        assert!(md.contains("## Reads against writes") && md.contains("## Leadership transfer"));
        assert!(md.contains("| 256 | Linearizable read | node 1 | 60,000 | 6.0× |"), "{md}");
        assert!(md.contains("| 1 | Linearizable read | node 1 | 20,000 | 20.0× | 50 µs | 1.7 |"));

        let mut lost = transfer;
        lost.lost.push("before-3-1: gone".into());
        let r = Results { transfer: Some(lost), ..Results::default() };
        assert_eq!(verdict(&r, "quic+redb: no write").0, Verdict::NotMet);
        assert_eq!(r.transfer_violations().len(), 1);
        assert!(r.markdown().contains("Lost: **1**"));
    }

    #[test]
    fn empty_results_render_without_panicking() {
        let r = Results::default();
        let md = r.markdown();
        assert!(md.contains("## Targets"));
        assert!(r.targets().iter().all(|t| t.verdict == Verdict::NotMeasured));
    }
}
