//! The cluster suite: N nodes on any network and log store, a nemesis, a client workload,
//! invariant checks throughout, a linearizability check of the history, and a liveness phase.
//! Every run derives from one seed; on an in-process network the run replays exactly.
//!
//! Every node's store is wrapped (`tracked.rs`) to record what it acknowledged, which gives the
//! checker a durable view of any store, and to inject disk failures.

pub mod checker;
pub mod faulty;
pub mod lease;
mod nemesis;
mod run;
pub mod scenarios;
mod store_read;
mod tracked;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftkit::{Config, NodeId};

pub use self::nemesis::FaultMix;
use self::nemesis::nemesis_step;
use self::run::Run;
use self::workload::{ClientSettings, OpCounts, Workload};
use crate::harness::{CrashModel, LogStoreHarness, NetworkHarness};
use crate::rng::Rng;

/// How many spare nodes (ids after the initial voters', started waiting to join) a run with
/// membership changes has: each fresh node the nemesis adds is one of them.
pub const SPARES: usize = 4;

/// A hook that adjusts each node's configuration (after the suite's own randomization).
pub type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Settings of a cluster run.
#[derive(Clone)]
pub struct ClusterOptions {
    /// How many nodes (voters).
    pub nodes: usize,
    /// How long the nemesis injects faults.
    pub fault_time: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the workload spreads over.
    pub keys: u64,
    /// Client patience before an operation counts as unknown.
    pub op_timeout: Duration,
    /// After faults stop, how long the cluster has to elect a leader, take a write and
    /// converge.
    pub liveness_bound: Duration,
    /// How often the logs in the stores are checked during the run.
    pub checkpoint_every: Duration,
    /// Adjusts every node's configuration (used to activate mutants).
    pub configure: Option<Configure>,
    /// How often the nemesis picks each kind of fault.
    pub faults: FaultMix,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            fault_time: Duration::from_secs(12),
            clients: 4,
            keys: 5,
            op_timeout: Duration::from_secs(2),
            liveness_bound: Duration::from_secs(30),
            checkpoint_every: Duration::from_millis(700),
            configure: None,
            faults: FaultMix::default(),
        }
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Client operation outcomes.
    pub ops: OpCounts,
    /// Distinct log entries applied.
    pub applied: usize,
    /// The highest term reached.
    pub max_term: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Invariant violations (empty when the run passed).
    pub violations: Vec<String>,
    /// The event trace (leader changes, faults, violations).
    pub trace: Vec<String>,
    /// Each node's final state and log, for failure reports.
    pub dump: String,
    /// How the log-store harness crashes its store.
    pub crash_model: Option<CrashModel>,
    /// Which durable view of the stores the checker used: the harness's
    /// ([`LogStoreHarness::durable`]) or the one tracked from what the stores acknowledged.
    pub durable_view: String,
}

impl RunReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "seed {} ({} nodes): {} ok / {} failed / {} unknown ops (reads outside the log: {} linearizable, {} lease, {} follower, {} stale), {} entries applied, max term {}, faults {:?}{}",
            self.seed,
            self.nodes,
            self.ops.ok,
            self.ops.failed,
            self.ops.unknown,
            self.ops.reads[0],
            self.ops.reads[1],
            self.ops.reads[2],
            self.ops.reads[3],
            self.applied,
            self.max_term,
            self.faults,
            if self.passed() {
                String::new()
            } else {
                format!(", {} VIOLATIONS", self.violations.len())
            }
        )
    }

    /// The crash model, and its warning if it has one, in one line each.
    pub fn crash_model_lines(&self) -> String {
        match self.crash_model {
            Some(m) => match m.warning() {
                Some(w) => format!("crash model: {m}\n{w}"),
                None => format!("crash model: {m}"),
            },
            None => "crash model: unknown".to_string(),
        }
    }

    /// The full failure report: the crash model and durable view, the violations, the end of
    /// the trace, and every node's log.
    pub fn failure_report(&self) -> String {
        let mut out = format!(
            "cluster run failed: {}\nreplay with RAFTKIT_SEED={}\n{}\ndurable view: {}\n\nviolations:\n",
            self.summary(),
            self.seed,
            self.crash_model_lines(),
            self.durable_view
        );
        for v in &self.violations {
            let _ = writeln!(out, "  - {v}");
        }
        out.push_str("\nlast events:\n");
        for line in self.trace.iter().rev().take(120).rev() {
            let _ = writeln!(out, "  {line}");
        }
        out.push_str("\nnodes:\n");
        out.push_str(&self.dump);
        out
    }
}

/// The seeds to run: `RAFTKIT_SEED=<n>` replays one; `RAFTKIT_SEEDS=<count>` runs `1..=count`;
/// otherwise `1..=default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Some(s) = crate::seed_from_env() {
        return vec![s];
    }
    let count = std::env::var("RAFTKIT_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (1..=count).collect()
}

/// The seeds of a passed check, for its one-line summary: "12 seeds (1..=12)", "1 seed (42)".
pub fn describe_seeds(seeds: &[u64]) -> String {
    let contiguous = seeds.windows(2).all(|w| w[1] == w[0] + 1);
    let which = match seeds {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] if contiguous => format!("{first}..={last}"),
        _ => seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
    };
    let plural = if seeds.len() == 1 { "" } else { "s" };
    format!("{} seed{plural} ({which})", seeds.len())
}

/// Runs the cluster suite on a network harness and a log-store harness.
pub struct ClusterSuite<NH, LH> {
    net: Arc<NH>,
    logs: Arc<LH>,
    opts: ClusterOptions,
    name: String,
}

impl<NH: NetworkHarness, LH: LogStoreHarness> ClusterSuite<NH, LH> {
    /// A suite with default options (3 nodes).
    pub fn new(net: NH, logs: LH) -> Self {
        ClusterSuite {
            net: Arc::new(net),
            logs: Arc::new(logs),
            opts: ClusterOptions::default(),
            name: "cluster".to_string(),
        }
    }

    /// Names the suite in its summary line (the macro passes the test's name).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The line a passed check prints: its name, what passed (the seeds it ran, say), the
    /// harness's crash model (and its warning, if any, on a line of its own) and the durable view
    /// the checker used.
    pub fn passed_line(&self, what: &str, durable_view: &str) -> String {
        let model = self.logs.crash_model();
        let warning = model.warning().map(|w| format!("\n{w}")).unwrap_or_default();
        format!(
            "{}: {what} passed, crash model {model}, durable view {durable_view}{warning}",
            self.name
        )
    }

    /// Sets the number of nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.opts.nodes = n;
        self
    }

    /// Changes the options.
    pub fn with(mut self, f: impl FnOnce(&mut ClusterOptions)) -> Self {
        f(&mut self.opts);
        self
    }

    /// The options.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Whether runs are in-process and free of real time: both harnesses say so. Such runs use a
    /// paused clock and replay exactly.
    pub fn deterministic(&self) -> bool {
        self.net.deterministic() && self.logs.deterministic()
    }

    /// Runs the default seed budget for this cluster size (`RAFTKIT_SEEDS` / `RAFTKIT_SEED`
    /// override it). Runs on real time are slow, so they get fewer seeds and a shorter fault
    /// phase by default.
    pub fn check_default_seeds(mut self) {
        let n = self.opts.nodes as u64;
        let default = if self.deterministic() {
            match n {
                1 => 2,
                3 => 4,
                _ => 3,
            }
        } else {
            self.opts.fault_time = self.opts.fault_time.min(Duration::from_secs(6));
            1
        };
        self.check_seeds(&seeds_from_env(default));
    }

    /// Runs one seed on a fresh runtime: a paused clock for deterministic networks, real time
    /// otherwise.
    pub fn run(&self, seed: u64) -> RunReport {
        self.runtime().block_on(self.run_async(seed))
    }

    /// A fresh runtime: a paused clock for deterministic harnesses, real time otherwise.
    fn runtime(&self) -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_current_thread();
        if self.deterministic() {
            b.enable_time().start_paused(true);
        } else {
            b.enable_all();
        }
        b.build().expect("tokio runtime")
    }

    /// Runs `seeds` in order and panics with a full report at the first failure; prints a
    /// one-line summary ([`passed_line`](Self::passed_line)) when all pass.
    pub fn check_seeds(&self, seeds: &[u64]) {
        let mut view = String::new();
        for &seed in seeds {
            let report = self.run(seed);
            // A failure panics below with the seed and the report; passing runs are logged.
            tracing::info!(seed, "{}", report.summary());
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(seed, "event trace:\n{}", report.trace.join("\n"));
            }
            if !report.passed() {
                panic!("{}: {}", self.name, report.failure_report());
            }
            view = report.durable_view;
        }
        crate::report_line(&self.passed_line(&describe_seeds(seeds), &view));
    }

    /// A randomized configuration for this seed: protocol options and flow-control limits vary
    /// between runs, so faults meet different code paths.
    fn config(&self, id: NodeId, ids: &[NodeId], rng: &mut Rng, seed: u64) -> Config {
        let mut c = Config::new(id, ids.iter().copied());
        c.seed = seed;
        c.heartbeat_interval = Duration::from_millis(*rng.pick(&[20, 50]));
        c.election_timeout_min = c.heartbeat_interval * *rng.pick(&[5, 6, 10]);
        c.election_timeout_max = c.election_timeout_min * 2;
        c.pre_vote = rng.chance(0.75);
        c.check_quorum = rng.chance(0.75);
        c.max_entries_per_message = *rng.pick(&[1, 7, 64, 4096]);
        c.max_inflight_messages = *rng.pick(&[1, 4, 64]);
        c.entry_cache_bytes = *rng.pick(&[2_048, 64 << 20]);
        c.max_proposal_batch = *rng.pick(&[1, 64, 4096]);
        c.max_apply_batch = *rng.pick(&[1, 64, 4096]);
        // Snapshots and purges happen during the faults too: often, with short kept tails and
        // small chunks, so lagging nodes install snapshots and transfers get interrupted.
        c.snapshot_every = *rng.pick(&[0, 40, 150, 600]);
        c.snapshot_keep = *rng.pick(&[0, 5, 100]);
        c.snapshot_chunk_bytes = *rng.pick(&[256, 4096, 1 << 20]);
        if let Some(f) = &self.opts.configure {
            f(&mut c);
        }
        c
    }

    /// Each node's configuration for this seed.
    fn configs(&self, ids: &[NodeId], rng: &mut Rng, seed: u64) -> BTreeMap<NodeId, Config> {
        let template = self.config(ids[0], ids, rng, seed);
        ids.iter()
            .map(|id| {
                let mut c = template.clone();
                c.id = *id;
                (*id, c)
            })
            .collect()
    }

    async fn run_async(&self, seed: u64) -> RunReport {
        let n = self.opts.nodes;
        let ids: Vec<NodeId> = (1..=n as u64).map(NodeId).collect();
        let mut rng = Rng::new(seed);
        let mut configs = self.configs(&ids, &mut rng.fork(), seed);
        // Spare nodes waiting to join (no configuration of their own), for the nemesis's
        // membership changes.
        if self.opts.faults.membership > 0 && n >= 3 {
            let template = configs[&ids[0]].clone();
            for k in 1..=SPARES as u64 {
                let mut c = template.clone();
                c.id = NodeId(n as u64 + k);
                c.members = Vec::new();
                configs.insert(c.id, c);
            }
        }
        let t = configs[&ids[0]].clone();
        let fault_seed = rng.next_u64();
        let mut run = Run::start(
            self.net.clone(),
            self.logs.clone(),
            configs,
            seed,
            fault_seed,
            self.opts.liveness_bound,
        )
        .await;
        let mut report = RunReport {
            seed,
            nodes: n,
            crash_model: Some(self.logs.crash_model()),
            ..RunReport::default()
        };
        run.checker.note(format!(
            "seed {seed}: {n} nodes, pre_vote={} check_quorum={} max_entries={} window={} cache={} snapshot_every={} keep={} chunk={}",
            t.pre_vote,
            t.check_quorum,
            t.max_entries_per_message,
            t.max_inflight_messages,
            t.entry_cache_bytes,
            t.snapshot_every,
            t.snapshot_keep,
            t.snapshot_chunk_bytes
        ));

        // Clients.
        let workload = Arc::new(Workload::new());
        let mut clients = Vec::new();
        for c in 0..self.opts.clients {
            let settings = ClientSettings {
                id: c as u64 + 1,
                keys: self.opts.keys,
                op_timeout: self.opts.op_timeout,
                think: Duration::from_millis(20),
            };
            clients.push(tokio::spawn(workload::client(
                settings,
                run.table.clone(),
                workload.clone(),
                rng.fork(),
            )));
        }

        // Nemesis.
        let start = tokio::time::Instant::now();
        let mut next_checkpoint = start + self.opts.checkpoint_every;
        while start.elapsed() < self.opts.fault_time {
            tokio::time::sleep(rng.duration(Duration::from_millis(50), Duration::from_millis(600)))
                .await;
            nemesis_step(&mut run, &self.opts.faults, &mut rng, &mut report).await;
            if tokio::time::Instant::now() >= next_checkpoint {
                run.checkpoint().await;
                next_checkpoint = tokio::time::Instant::now() + self.opts.checkpoint_every;
            }
        }

        // Liveness: faults stop, everyone comes back.
        run.checker.note("nemesis stops: heal, replace failed disks, restart every node");
        run.faults.heal();
        for id in run.failing_disks() {
            run.replace_disk(id).await;
        }
        for id in run.down() {
            run.restart_node(id).await;
        }
        let deadline = tokio::time::Instant::now() + self.opts.liveness_bound;
        if run.elect_and_write(seed, deadline).await {
            // Nodes a change removed (one that completed after the nemesis gave up waiting)
            // are stopped, as an operator would; the rest converge.
            if let Some(m) = run.final_membership(deadline).await {
                run.retire_removed(&m).await;
            }
            // Convergence is judged with the clients stopped: with writes in flight, some node
            // is always an entry behind.
            workload.stop.store(true, Ordering::Relaxed);
            for c in clients.drain(..) {
                let _ = c.await;
            }
            run.converge(deadline).await;
        }
        workload.stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        run.checkpoint().await;

        // Linearizability of what the clients saw.
        let history =
            std::mem::take(&mut *workload.history.lock().unwrap_or_else(|p| p.into_inner()));
        run.check_history(&history);

        let (dump, max_term) = run.dump().await;
        run.kill_all().await;
        report.max_term = max_term;
        report.ops = *workload.counts.lock().unwrap_or_else(|p| p.into_inner());
        report.applied = run.checker.applied_count();
        report.violations = run.checker.violations();
        report.trace = run.checker.trace();
        report.dump = dump;
        report.durable_view = run.durable_view();
        report
    }
}

/// Expands to the cluster suite's tests for a network harness and a log-store harness: runs of
/// 1, 3 and 5 nodes over the seed budget (`RAFTKIT_SEEDS`, or one seed with `RAFTKIT_SEED`),
/// and, with `replay`, a check that one seed run twice gives the same trace (for in-process
/// networks).
///
/// ```ignore
/// raftkit_testkit::cluster_suite!(net: MemNetHarness, logs: MemStoreHarness::default(), replay);
/// ```
#[macro_export]
macro_rules! cluster_suite {
    (net: $net:expr, logs: $logs:expr $(, $replay:ident)? $(,)?) => {
        #[test]
        fn cluster_1_node() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_1_node")
                .nodes(1)
                .check_default_seeds();
        }

        #[test]
        fn cluster_3_nodes() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_3_nodes")
                .nodes(3)
                .check_default_seeds();
        }

        #[test]
        fn cluster_5_nodes() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_5_nodes")
                .nodes(5)
                .check_default_seeds();
        }

        $(
            #[test]
            fn cluster_replays_exactly_from_a_seed() {
                let _ = stringify!($replay);
                $crate::cluster::check_replay(
                    $crate::cluster::ClusterSuite::new($net, $logs)
                        .named("cluster_replays_exactly_from_a_seed")
                        .nodes(3),
                );
            }
        )?

        #[test]
        fn cluster_snapshot_catch_up() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_snapshot_catch_up")
                .check_scenario($crate::cluster::scenarios::Scenario::SnapshotCatchUp);
        }

        #[test]
        fn cluster_interrupted_snapshot_transfer_resumes() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_interrupted_snapshot_transfer_resumes")
                .check_scenario($crate::cluster::scenarios::Scenario::InterruptedTransfer);
        }

        #[test]
        fn cluster_crash_during_snapshot_install() {
            $crate::cluster::ClusterSuite::new($net, $logs)
                .named("cluster_crash_during_snapshot_install")
                .check_scenario($crate::cluster::scenarios::Scenario::CrashDuringInstall);
        }
    };
}

/// Runs one seed twice and checks that the traces are identical (exact replay).
pub fn check_replay<NH: NetworkHarness, LH: LogStoreHarness>(suite: ClusterSuite<NH, LH>) {
    assert!(suite.deterministic(), "replay is only exact on a deterministic network and store");
    let seed = crate::seed_from_env().unwrap_or(7);
    let a = suite.run(seed);
    let b = suite.run(seed);
    assert!(a.passed(), "{}", a.failure_report());
    assert!(a.trace.len() > 10, "the trace is too short to show anything");
    if a.trace != b.trace {
        let at = a
            .trace
            .iter()
            .zip(&b.trace)
            .position(|(x, y)| x != y)
            .unwrap_or(a.trace.len().min(b.trace.len()));
        panic!(
            "seed {seed} did not replay exactly: traces differ at event {at}:\n  first:  {:?}\n  second: {:?}",
            a.trace.get(at),
            b.trace.get(at)
        );
    }
    assert_eq!((a.ops, a.applied, a.max_term), (b.ops, b.applied, b.max_term));
    let what = format!("seed {seed} run twice ({} trace events alike)", a.trace.len());
    crate::report_line(&suite.passed_line(&what, &a.durable_view));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_the_seeds_and_the_crash_model() {
        assert_eq!(describe_seeds(&[1, 2, 3, 4]), "4 seeds (1..=4)");
        assert_eq!(describe_seeds(&[42]), "1 seed (42)");
        assert_eq!(describe_seeds(&[3, 7]), "2 seeds (3, 7)");
        let report = RunReport {
            seed: 9,
            crash_model: Some(CrashModel::CleanReopenOnly),
            durable_view: "tracked".into(),
            violations: vec!["election safety: two leaders".into()],
            ..RunReport::default()
        };
        let text = report.failure_report();
        let header: Vec<&str> = text.lines().take(5).collect();
        assert!(header[2].starts_with("crash model: CleanReopenOnly"), "{header:?}");
        assert!(header[3].starts_with("WARNING: this harness's crash model"), "{header:?}");
        assert_eq!(header[4], "durable view: tracked");
    }
}
