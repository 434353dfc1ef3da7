//! The whole harness, step by step: machine facts, the combination matrix, the openraft
//! comparison, the core alone, the memory check, the membership change, reads against writes
//! and leadership transfers. A failing combination is reported and the run goes on with the
//! next.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use raftkit::{Network, StateMachine};
use raftkit_mem::{KvCommand, MemKv, MemLogStore, MemNetwork};
use raftkit_quic::QuicNetwork;
use raftkit_redb::RedbLogStore;

use crate::cli::{Part, Plan};
use crate::cluster::{self, BenchStore, Cluster};
use crate::combo::{Combo, Net, Store};
use crate::core_sim::CoreCluster;
use crate::load::{self, FixedRun, PointResult, RaftkitWriter};
use crate::machine;
use crate::membership::{self, MembershipResult};
use crate::noop::NoopSm;
use crate::process;
use crate::reads::{self, ReadsResult};
use crate::report::{ComboResult, ComparePoint, CoreResult, MemoryResult, MemorySample, Results};

/// The openraft version of the baseline, if this build has it.
#[cfg(feature = "openraft")]
pub const OPENRAFT: Option<&str> = Some(crate::openraft_baseline::OPENRAFT_VERSION);
/// The openraft version of the baseline, if this build has it.
#[cfg(not(feature = "openraft"))]
pub const OPENRAFT: Option<&str> = None;

/// How long a new cluster may take to elect a leader.
pub(crate) const ELECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Batch sizes of the core-alone measure (the target is judged at 256).
pub const CORE_BATCHES: [usize; 4] = [1, 64, 256, 4096];
/// Entry size of the core-alone measure.
pub const CORE_ENTRY_BYTES: usize = 256;
/// Clients and payload of the memory check.
pub const MEMORY_CLIENTS: usize = 64;
/// Payload of the memory check.
pub const MEMORY_PAYLOAD: usize = 256;

/// Prints a line above the progress bar (or to stderr when the bar is hidden, as in CI).
#[allow(clippy::print_stderr)]
pub(crate) fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn point_line(name: &str, p: &PointResult) -> String {
    let errors = if p.errors > 0 { format!(", {} errors", p.errors) } else { String::new() };
    format!(
        "  {name:<13} {:>5} clients {:>5} B: {:>10.0} commits/s  p50 {:>7} µs  p99 {:>7} µs{errors}",
        p.clients,
        p.payload,
        p.throughput(),
        p.latency.p50,
        p.latency.p99
    )
}

/// Runs every part of `plan`, showing progress, and returns the results (not yet written).
pub fn run(plan: &Plan, command_line: String) -> Result<Results> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let steps =
        1 + if plan.runs(Part::Matrix) {
            plan.combos.len() * plan.clients.len() * plan.payloads.len()
        } else {
            0
        } + if plan.runs(Part::Compare) { plan.compare_clients.len() } else { 0 }
            + if plan.runs(Part::Core) { CORE_BATCHES.len() } else { 0 }
            + usize::from(plan.runs(Part::Memory))
            + if plan.runs(Part::Membership) { 2 * membership::COMBOS.len() } else { 0 }
            + if plan.runs(Part::Reads) {
                reads::COMBOS.len() * plan.read_clients.len() * reads::Op::ALL.len()
            } else {
                0
            }
            + if plan.runs(Part::Transfer) { plan.transfers + 1 } else { 0 };
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
            .context("progress bar template")?,
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let data = tempfile::Builder::new()
        .prefix("raftkit-bench-")
        .tempdir_in(&plan.data_parent)
        .with_context(|| format!("creating a data directory in {}", plan.data_parent.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;

    bar.set_message("measuring the machine (fsync, QUIC round trip)");
    let mut machine = machine::describe(&plan.data_parent);
    machine.fsync = machine::measure_fsync(data.path(), plan.fsync_samples)
        .context("measuring fsync latency")?;
    machine.fsync_concurrent =
        machine::measure_fsync_concurrent(data.path(), plan.fsync_samples, 3)
            .context("measuring fsync latency with three writers")?;
    machine.quic_rtt = rt
        .block_on(machine::measure_quic_rtt(plan.rtt_samples))
        .context("measuring the loopback QUIC round trip")?;
    say(
        &bar,
        format!(
            "machine: {} cores, fsync median {:?} (3 writers: {:?}), QUIC round trip median {:?}",
            machine.cores,
            machine.fsync.median,
            machine.fsync_concurrent.median,
            machine.quic_rtt.median
        ),
    );
    bar.inc(1);

    let mut results = Results {
        started: Some(started),
        command_line,
        note: plan.note.clone(),
        quick: plan.quick,
        measure: plan.measure,
        warmup: plan.warmup,
        repeat: plan.repeat,
        threads: plan.threads,
        machine,
        skipped: plan.skipped.clone(),
        ..Results::default()
    };

    // The memory check runs first, while the heap holds nothing from earlier parts (the
    // allocator keeps freed memory, so later RSS readings include what earlier parts used).
    if plan.runs(Part::Memory) {
        let dir = data.path().join("memory-check");
        let r = std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {}", dir.display()))
            .and_then(|()| rt.block_on(memory_check(plan, &dir, &bar)));
        match r {
            Ok(m) => results.memory = Some(m),
            Err(e) => {
                say(&bar, format!("  memory check FAILED: {e:#}"));
                results.memory_error = Some(format!("{e:#}"));
            }
        }
        bar.inc(1);
    }

    if plan.runs(Part::Matrix) {
        for combo in &plan.combos {
            let dir = data.path().join(combo.name());
            let r = std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {}", dir.display()))
                .map(|()| rt.block_on(bench_combo(*combo, plan, &dir, &bar)));
            let r = match r {
                Ok(r) => r,
                Err(e) => ComboResult {
                    combo: *combo,
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                },
            };
            if let Some(e) = &r.error {
                say(&bar, format!("  {combo}: FAILED: {e}"));
                // Keep the bar's count right when a combination stops early.
                let missing = plan.clients.len() * plan.payloads.len() - r.points.len();
                bar.inc(missing as u64);
            }
            results.combos.push(r);
            // Free the disk space as we go.
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    if plan.runs(Part::Compare) {
        results.openraft = OPENRAFT;
        let r = rt.block_on(compare(plan, &bar));
        match r {
            Ok(points) => results.compare = points,
            Err(e) => {
                say(&bar, format!("  openraft comparison FAILED: {e:#}"));
                results.compare_error = Some(format!("{e:#}"));
            }
        }
    }

    if plan.runs(Part::Core) {
        bar.set_message("core alone (3 simulated nodes, no IO)");
        for batch in CORE_BATCHES {
            let r = core_alone(batch, plan.core);
            match r {
                Ok(c) => {
                    say(
                        &bar,
                        format!(
                            "  core alone, batch {batch:>4}: {:>10.0} commits/s",
                            c.throughput()
                        ),
                    );
                    results.core.push(c);
                }
                Err(e) => results.core_error = Some(format!("{e:#}")),
            }
            bar.inc(1);
        }
    }

    if plan.runs(Part::Membership) {
        let settings = membership::Settings::new(plan.warmup, plan.membership, plan.seed);
        for combo in membership::COMBOS {
            let skipped = if plan.combos.contains(&combo) {
                None
            } else if !combo.compiled() {
                Some("not compiled in this build")
            } else {
                Some("left out by --only")
            };
            let r = match skipped {
                Some(why) => {
                    bar.inc(2);
                    MembershipResult { combo, skipped: Some(why.into()), ..Default::default() }
                }
                None => {
                    let dir = data.path().join(format!("membership-{}", combo.name()));
                    let r = rt.block_on(membership::bench(combo, settings, &dir, &bar));
                    let _ = std::fs::remove_dir_all(&dir);
                    r
                }
            };
            if let Some(v) = r.violation() {
                say(&bar, format!("  membership FAILED: {v}"));
                // Keep the bar's count right when a combination stops early.
                let done = usize::from(r.baseline.is_some()) + usize::from(r.change.is_some());
                bar.inc(2 - done as u64);
            }
            results.membership.push(r);
        }
    }

    if plan.runs(Part::Reads) {
        let settings = reads::Settings {
            warmup: plan.warmup,
            window: plan.reads,
            clients: plan.read_clients.clone(),
            rtt_samples: plan.rtt_samples,
            seed: plan.seed,
        };
        let points = (plan.read_clients.len() * reads::Op::ALL.len()) as u64;
        for combo in reads::COMBOS {
            let r = match skipped(plan, combo) {
                Some(why) => {
                    bar.inc(points);
                    ReadsResult { combo, skipped: Some(why.into()), ..Default::default() }
                }
                None => {
                    let dir = data.path().join(format!("reads-{}", combo.name()));
                    let r = rt.block_on(reads::bench(combo, &settings, &dir, &bar));
                    let _ = std::fs::remove_dir_all(&dir);
                    if let Some(e) = &r.error {
                        say(&bar, format!("  reads {combo}: FAILED: {e}"));
                        // Keep the bar's count right when a combination stops early.
                        bar.inc(points.saturating_sub(r.points.len() as u64));
                    }
                    r
                }
            };
            results.reads.push(r);
        }
    }

    if plan.runs(Part::Transfer) {
        let combo = crate::transfer::COMBO;
        let r = match skipped(plan, combo) {
            Some(why) => {
                bar.inc(plan.transfers as u64 + 1);
                crate::transfer::TransferResult {
                    combo,
                    skipped: Some(why.into()),
                    ..Default::default()
                }
            }
            None => {
                let dir = data.path().join("transfer");
                let r = rt.block_on(crate::transfer::bench(
                    combo,
                    plan.transfers,
                    plan.seed,
                    &dir,
                    &bar,
                ));
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(v) = r.violation() {
                    say(&bar, format!("  transfer FAILED: {v}"));
                    let done = r.transfers.len() as u64 + u64::from(r.error.is_none());
                    bar.inc((plan.transfers as u64 + 1).saturating_sub(done));
                }
                r
            }
        };
        results.transfer = Some(r);
    }

    // Close QUIC sockets and node tasks before the data directory goes away.
    rt.shutdown_timeout(Duration::from_secs(5));
    data.close().context("removing the data directory")?;
    bar.finish_and_clear();
    results.machine.load.1 = machine::load_average();
    results.wall = clock.elapsed();
    Ok(results)
}

/// Why a part that measures fixed combinations leaves `combo` out, if it does.
fn skipped(plan: &Plan, combo: Combo) -> Option<&'static str> {
    if plan.combos.contains(&combo) {
        None
    } else if !combo.compiled() {
        Some("not compiled in this build")
    } else {
        Some("left out by --only")
    }
}

/// Runs every point of one combination on one cluster.
async fn bench_combo(combo: Combo, plan: &Plan, dir: &Path, bar: &ProgressBar) -> ComboResult {
    let mut out = ComboResult { combo, ..Default::default() };
    let r = match (combo.net, combo.store) {
        (Net::Mem, Store::Mem) => {
            matrix::<MemNetwork, MemLogStore>(
                cluster::mem_networks(plan.seed),
                combo,
                plan,
                dir,
                bar,
                &mut out,
            )
            .await
        }
        (Net::Mem, Store::Redb) => {
            matrix::<MemNetwork, RedbLogStore>(
                cluster::mem_networks(plan.seed),
                combo,
                plan,
                dir,
                bar,
                &mut out,
            )
            .await
        }
        (Net::Quic, Store::Mem) => match cluster::quic_networks() {
            Ok(nets) => {
                matrix::<QuicNetwork, MemLogStore>(nets, combo, plan, dir, bar, &mut out).await
            }
            Err(e) => Err(e),
        },
        (Net::Quic, Store::Redb) => match cluster::quic_networks() {
            Ok(nets) => {
                matrix::<QuicNetwork, RedbLogStore>(nets, combo, plan, dir, bar, &mut out).await
            }
            Err(e) => Err(e),
        },
        #[cfg(feature = "rocksdb")]
        (Net::Mem, Store::Rocksdb) => {
            matrix::<MemNetwork, raftkit_rocksdb::RocksLogStore>(
                cluster::mem_networks(plan.seed),
                combo,
                plan,
                dir,
                bar,
                &mut out,
            )
            .await
        }
        #[cfg(feature = "rocksdb")]
        (Net::Quic, Store::Rocksdb) => match cluster::quic_networks() {
            Ok(nets) => {
                matrix::<QuicNetwork, raftkit_rocksdb::RocksLogStore>(
                    nets, combo, plan, dir, bar, &mut out,
                )
                .await
            }
            Err(e) => Err(e),
        },
        #[cfg(not(feature = "rocksdb"))]
        (_, Store::Rocksdb) => {
            Err(anyhow::anyhow!("RocksDB is not compiled in (build with --features rocksdb)"))
        }
    };
    if let Err(e) = r {
        out.error = Some(format!("{e:#}"));
    }
    out
}

/// The matrix of one combination: every payload × every client count, on one cluster.
async fn matrix<N: Network, L: BenchStore>(
    nets: Vec<N>,
    combo: Combo,
    plan: &Plan,
    dir: &Path,
    bar: &ProgressBar,
    out: &mut ComboResult,
) -> Result<()> {
    out.sync_kind = L::SYNC_KIND;
    bar.set_message(format!("{combo}: starting the cluster"));
    let t = Instant::now();
    let cluster =
        Cluster::<N, L, MemKv>::start(nets, dir, plan.seed, crate::cluster::bench_kv).await?;
    let mut leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    out.startup = t.elapsed();
    for &payload in &plan.payloads {
        let value: Arc<str> = "x".repeat(payload).into();
        for &clients in &plan.clients {
            bar.set_message(format!("{combo}: {clients} clients, {payload} B"));
            let value = value.clone();
            // One key per client: the state machine stays small however long the run.
            let command = Arc::new(move |c: usize| KvCommand::put(format!("client-{c}"), &*value));
            let p = repeated(plan, &cluster, &mut leader, clients, payload, command)
                .await
                .with_context(|| format!("{clients} clients, {payload} B"))?;
            say(bar, point_line(combo.name(), &p));
            out.points.push(p);
            bar.inc(1);
            leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
        }
    }
    cluster.shutdown().await
}

/// Measures one point `plan.repeat` times and returns the median run (see
/// [`load::median_run`]), following the leader between runs.
async fn repeated<N: Network, L: BenchStore, S: StateMachine>(
    plan: &Plan,
    cluster: &Cluster<N, L, S>,
    leader: &mut usize,
    clients: usize,
    payload: usize,
    command: Arc<dyn Fn(usize) -> S::Command + Send + Sync>,
) -> Result<PointResult> {
    let writer = Arc::new(RaftkitWriter::new(cluster.nodes.clone(), command));
    let mut runs = Vec::with_capacity(plan.repeat);
    for _ in 0..plan.repeat {
        let p = load::run_point(
            writer.clone(),
            cluster,
            *leader,
            clients,
            payload,
            plan.warmup,
            plan.measure,
        )
        .await?;
        runs.push(p);
        *leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    }
    load::median_run(runs).context("no run of the point")
}

/// raftkit's side of the comparison: mem+mem, empty commands (`NoopSm`).
type CompareCluster = Cluster<MemNetwork, MemLogStore, NoopSm>;

async fn start_compare_cluster(plan: &Plan) -> Result<(CompareCluster, usize)> {
    let cluster = CompareCluster::start(
        cluster::mem_networks(plan.seed),
        &std::env::temp_dir(),
        plan.seed,
        NoopSm::new,
    )
    .await?;
    let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    Ok((cluster, leader))
}

/// The comparison with openraft: mem+mem with empty commands on raftkit, the same setup on
/// openraft (when built with it), both running side by side for the whole part. For each
/// client count the two are measured alternately, `plan.repeat` rounds, the order swapped
/// every round (raftkit, openraft, openraft, raftkit, …) so a drift of the machine's speed
/// during a point weighs on both alike.
async fn compare(plan: &Plan, bar: &ProgressBar) -> Result<Vec<ComparePoint>> {
    bar.set_message("openraft comparison: starting raftkit (mem+mem, empty commands)");
    let (rk, mut rk_leader) = start_compare_cluster(plan).await?;
    let rk_writer = Arc::new(RaftkitWriter::new(rk.nodes.clone(), Arc::new(|_c: usize| ())));
    #[cfg(feature = "openraft")]
    let (or, mut or_leader) = {
        bar.set_message("openraft comparison: starting the openraft baseline");
        let or = crate::openraft_baseline::Cluster::start().await?;
        let leader = or.wait_leader(ELECTION_TIMEOUT).await?;
        (or, leader)
    };
    #[cfg(feature = "openraft")]
    let or_writer = Arc::new(or.writer());
    let mut points = Vec::new();
    for &clients in &plan.compare_clients {
        let mut rk_runs = Vec::with_capacity(plan.repeat);
        #[cfg_attr(not(feature = "openraft"), allow(unused_mut))]
        let mut or_runs: Vec<PointResult> = Vec::with_capacity(plan.repeat);
        for round in 0..plan.repeat {
            let order = if round % 2 == 0 { [true, false] } else { [false, true] };
            for raftkit_turn in order {
                if raftkit_turn {
                    bar.set_message(format!(
                        "openraft comparison: raftkit, {clients} clients, round {}/{}",
                        round + 1,
                        plan.repeat
                    ));
                    let p = load::run_point(
                        rk_writer.clone(),
                        &rk,
                        rk_leader,
                        clients,
                        0,
                        plan.warmup,
                        plan.measure,
                    )
                    .await
                    .with_context(|| format!("raftkit, {clients} clients"))?;
                    say(bar, point_line("raftkit", &p));
                    rk_runs.push(p);
                    rk_leader = rk.wait_leader(ELECTION_TIMEOUT).await?;
                } else {
                    #[cfg(feature = "openraft")]
                    {
                        bar.set_message(format!(
                            "openraft comparison: openraft, {clients} clients, round {}/{}",
                            round + 1,
                            plan.repeat
                        ));
                        let p = load::run_point(
                            or_writer.clone(),
                            &or,
                            or_leader,
                            clients,
                            0,
                            plan.warmup,
                            plan.measure,
                        )
                        .await
                        .with_context(|| format!("openraft, {clients} clients"))?;
                        say(bar, point_line("openraft", &p));
                        or_runs.push(p);
                        or_leader = or.wait_leader(ELECTION_TIMEOUT).await?;
                    }
                }
            }
        }
        points.push(ComparePoint {
            clients,
            raftkit: load::median_run(rk_runs).context("no raftkit run")?,
            openraft: load::median_run(or_runs),
        });
        bar.inc(1);
    }
    rk.shutdown().await?;
    #[cfg(feature = "openraft")]
    or.shutdown().await?;
    Ok(points)
}

/// Which framework the fixed-commit mode drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Framework {
    /// raftkit, mem+mem, empty commands.
    Raftkit,
    /// The openraft baseline (needs `--features openraft`).
    Openraft,
}

/// The fixed-commit mode (`--commits N`): for each comparison client count, start the
/// comparison's cluster of `framework` (one at a time, nothing else running), run exactly
/// `commits` writes, stop it. No machine measures, no report: what runs is the cluster and its
/// clients only, so a whole-process instruction count (callgrind) divided by `commits` is the
/// cost of a commit, start-up and shutdown included.
pub fn fixed_commits(plan: &Plan, framework: Framework, commits: u64) -> Result<Vec<FixedRun>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let mut out = Vec::new();
    for &clients in &plan.compare_clients {
        let r = rt.block_on(async {
            match framework {
                Framework::Raftkit => {
                    let (rk, leader) = start_compare_cluster(plan).await?;
                    let w =
                        Arc::new(RaftkitWriter::new(rk.nodes.clone(), Arc::new(|_c: usize| ())));
                    let r = load::run_commits(w, &rk, leader, clients, commits).await;
                    rk.shutdown().await?;
                    r
                }
                #[cfg(feature = "openraft")]
                Framework::Openraft => {
                    let or = crate::openraft_baseline::Cluster::start().await?;
                    let leader = or.wait_leader(ELECTION_TIMEOUT).await?;
                    let r = load::run_commits(Arc::new(or.writer()), &or, leader, clients, commits)
                        .await;
                    or.shutdown().await?;
                    r
                }
                #[cfg(not(feature = "openraft"))]
                Framework::Openraft => {
                    anyhow::bail!(
                        "the openraft baseline is not built (build with --features openraft)"
                    )
                }
            }
        })?;
        out.push(r);
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(out)
}

/// The core alone at one batch size.
fn core_alone(batch: usize, duration: Duration) -> Result<CoreResult> {
    let mut c = CoreCluster::new(CORE_ENTRY_BYTES)?;
    // A short unmeasured run fills the caches and settles the allocator.
    c.run_for(batch, duration / 10)?;
    let (commits, elapsed) = c.run_for(batch, duration)?;
    Ok(CoreResult { batch, entry_bytes: CORE_ENTRY_BYTES, commits, elapsed })
}

/// A long mem+redb run with RSS sampled as the log grows.
async fn memory_check(plan: &Plan, dir: &Path, bar: &ProgressBar) -> Result<MemoryResult> {
    bar.set_message(format!(
        "memory check: mem+redb, {MEMORY_CLIENTS} clients, {MEMORY_PAYLOAD} B for {:?}",
        plan.memory
    ));
    let baseline = process::rss().unwrap_or(0);
    let cluster = Cluster::<MemNetwork, RedbLogStore, MemKv>::start(
        cluster::mem_networks(plan.seed),
        dir,
        plan.seed,
        crate::cluster::bench_kv,
    )
    .await?;
    let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    let value: Arc<str> = "x".repeat(MEMORY_PAYLOAD).into();
    let budget = memory_budget(baseline, cluster.nodes.len());
    let command = Arc::new(move |c: usize| KvCommand::put(format!("client-{c}"), &*value));
    let node = cluster.nodes[leader].clone();
    let duration = plan.memory;
    let sampler = async move {
        let start = Instant::now();
        let mut samples = Vec::new();
        let every = (duration / 80).max(Duration::from_millis(50));
        while start.elapsed() < duration {
            let m = node.metrics().borrow().clone();
            samples.push(MemorySample {
                at: start.elapsed(),
                rss: process::rss().unwrap_or(0),
                last_index: m.last_log.index.0,
                purged_index: m.purged.index.0,
            });
            tokio::time::sleep(every).await;
        }
        samples
    };
    let writer = Arc::new(RaftkitWriter::new(cluster.nodes.clone(), command));
    let (point, samples) = tokio::join!(
        load::run_point(
            writer,
            &cluster,
            leader,
            MEMORY_CLIENTS,
            MEMORY_PAYLOAD,
            Duration::from_millis(1),
            plan.memory,
        ),
        sampler
    );
    let point = point?;
    say(bar, point_line("memory check", &point));
    cluster.shutdown().await?;
    Ok(MemoryResult {
        budget,
        clients: MEMORY_CLIENTS,
        payload: MEMORY_PAYLOAD,
        snapshot_every: raftkit::Config::new(raftkit::NodeId(1), [raftkit::NodeId(1)])
            .snapshot_every,
        point,
        samples,
    })
}

/// What the memory check's configuration (`Config::new` defaults, redb's default options)
/// lets `nodes` nodes hold, on top of `baseline`.
fn memory_budget(baseline: u64, nodes: usize) -> crate::report::MemoryBudget {
    let cfg = raftkit::Config::new(raftkit::NodeId(1), [raftkit::NodeId(1)]);
    // An entry in memory: payload, key, command framing and the entry's own fields.
    let entry = (MEMORY_PAYLOAD + 64) as u64;
    crate::report::MemoryBudget {
        nodes,
        baseline,
        entry_cache: cfg.entry_cache_bytes as u64,
        store_cache: raftkit_redb::RedbOptions::default().cache_size as u64,
        inflight: cfg.max_inflight_bytes as u64 * (nodes as u64 - 1),
        batches: (cfg.max_proposal_batch as u64 + 4 * cfg.max_apply_batch as u64) * entry,
        state: MEMORY_CLIENTS as u64 * entry,
    }
}
