//! The membership part: throughput and latency of a 3-node cluster under load while a fourth
//! node joins, is promoted to voter and one of the original followers is removed, against the
//! same load on a fresh cluster with no change; and every write that failed meanwhile,
//! classified. The rule checked: no write fails with anything but an error raftkit documents
//! as retryable ([`WriteError::is_retryable`](raftkit::WriteError::is_retryable)).
//!
//! Each combination gets two fresh clusters, one after the other, with the same clients:
//!
//! 1. **without change**: warm-up, then a measured window of [`Settings::window`];
//! 2. **with change**: the same, and [`Settings::lead_in`] into the window: start node 4 in
//!    join mode (a `Config` with no members), `add_learner(4, blocking)` on the leader,
//!    promote 4 to voter, remove an original follower — each step asked of whoever leads at
//!    the time and retried while its error is retryable. The window lasts until the change is
//!    done if that is later than its nominal end, so it always contains the whole change.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use raftkit::{
    ChangeMembers, ChangeMembershipError, ChangeOptions, Membership, NodeId, Raft, Role,
};
use raftkit_mem::{KvCommand, MemKv, MemLogStore};
use raftkit_redb::RedbLogStore;

use crate::cluster::{BenchStore, Cluster, Fabric, Joiner, MEMBERS, MemFabric, QuicFabric};
use crate::combo::{Combo, Net, Store};
use crate::load::{self, Marker, PointResult, RaftkitWriter, Window};
use crate::run::{ELECTION_TIMEOUT, say};

/// The combinations the part measures.
pub const COMBOS: [Combo; 2] =
    [Combo { net: Net::Mem, store: Store::Mem }, Combo { net: Net::Quic, store: Store::Redb }];
/// Concurrent clients.
pub const CLIENTS: usize = 64;
/// Payload bytes per command.
pub const PAYLOAD: usize = 16;
/// How long one step of the change may take, retries included, before the part fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The node that joins.
pub const JOINER: NodeId = NodeId(4);

/// How long the part runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Unmeasured load before each window.
    pub warmup: Duration,
    /// The nominal length of each measured window.
    pub window: Duration,
    /// How far into the window the change starts.
    pub lead_in: Duration,
    /// Seed of the clusters.
    pub seed: u64,
}

impl Settings {
    /// A window of `window` with the change starting a fifth of the way in.
    pub fn new(warmup: Duration, window: Duration, seed: u64) -> Settings {
        Settings { warmup, window, lead_in: window / 5, seed }
    }
}

/// One step of the change.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// What it did, such as `promote node 4 to voter`.
    pub what: String,
    /// When it started, from the start of the measured window.
    pub at: Duration,
    /// How long it took, retries included.
    pub took: Duration,
    /// Times it was asked (more than 1: it got retryable refusals first).
    pub attempts: u32,
    /// The node that carried it out (the leader at the time; for starting the joiner, the
    /// joiner itself).
    pub by: Option<NodeId>,
    /// The last retryable refusal before it was done, if it was refused at all.
    pub last_refusal: Option<String>,
}

/// The part's figures for one combination.
#[derive(Clone, Debug, Default)]
pub struct MembershipResult {
    /// The combination.
    pub combo: Combo,
    /// Why it was not run, if it was not.
    pub skipped: Option<String>,
    /// The window without a change.
    pub baseline: Option<PointResult>,
    /// The window containing the change.
    pub change: Option<PointResult>,
    /// The steps of the change, in order.
    pub steps: Vec<Step>,
    /// The original voter removed.
    pub removed: Option<NodeId>,
    /// The voters once the change was done, as the leader saw them.
    pub voters: Vec<NodeId>,
    /// Why the part failed for this combination, if it did.
    pub error: Option<String>,
}

impl MembershipResult {
    /// From the start of the first step to the end of the last.
    pub fn change_took(&self) -> Duration {
        match (self.steps.first(), self.steps.last()) {
            (Some(a), Some(b)) => (b.at + b.took).saturating_sub(a.at),
            _ => Duration::ZERO,
        }
    }

    /// Failed writes whose kind is not documented as retryable, in both windows.
    pub fn non_retryable(&self) -> u64 {
        [&self.baseline, &self.change]
            .into_iter()
            .flatten()
            .flat_map(|p| p.failures.values())
            .filter(|k| !k.retryable)
            .map(|k| k.count)
            .sum()
    }

    /// What breaks the part's rule, if anything: the part failed, or a write failed with an
    /// error not documented as retryable.
    pub fn violation(&self) -> Option<String> {
        if self.skipped.is_some() {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(format!("{}: {e}", self.combo));
        }
        let n = self.non_retryable();
        if n > 0 {
            let kinds: Vec<String> = [&self.baseline, &self.change]
                .into_iter()
                .flatten()
                .flat_map(|p| p.failures.iter())
                .filter(|(_, k)| !k.retryable)
                .map(|(kind, k)| format!("{kind} ×{} (last: {})", k.count, k.last))
                .collect();
            return Some(format!(
                "{}: {n} writes failed with errors not documented as retryable: {}",
                self.combo,
                kinds.join("; ")
            ));
        }
        None
    }
}

/// Runs the part for `combo`: a window without a change, then one with it, each on a fresh
/// cluster under `dir`. A failure is recorded in the result, not returned.
pub async fn bench(combo: Combo, s: Settings, dir: &Path, bar: &ProgressBar) -> MembershipResult {
    let mut out = MembershipResult { combo, ..Default::default() };
    let r = match (combo.net, combo.store) {
        (Net::Mem, Store::Mem) => {
            both::<_, MemLogStore>(|| Ok(MemFabric::new(s.seed)), s, dir, bar, &mut out).await
        }
        (Net::Quic, Store::Redb) => {
            both::<_, RedbLogStore>(QuicFabric::new, s, dir, bar, &mut out).await
        }
        _ => Err(anyhow::anyhow!("the membership part does not measure {combo}")),
    };
    if let Err(e) = r {
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn both<F: Fabric, L: BenchStore>(
    fabric: impl Fn() -> Result<F>,
    s: Settings,
    dir: &Path,
    bar: &ProgressBar,
    out: &mut MembershipResult,
) -> Result<()> {
    let combo = out.combo;
    for change in [false, true] {
        let what = if change { "with change" } else { "without change" };
        bar.set_message(format!("membership: {combo}, {CLIENTS} clients, {what}"));
        let sub = dir.join(if change { "change" } else { "baseline" });
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        let p = window::<F, L>(fabric()?, s, &sub, change, out)
            .await
            .with_context(|| format!("{combo}, {what}"))?;
        say(bar, line(combo, what, &p, out.change_took(), change));
        if change {
            out.change = Some(p);
        } else {
            out.baseline = Some(p);
        }
        bar.inc(1);
    }
    Ok(())
}

fn line(combo: Combo, what: &str, p: &PointResult, took: Duration, change: bool) -> String {
    let failed: u64 = p.failures.values().map(|k| k.count).sum();
    let change = match (&p.marked, change) {
        (Some(x), true) => format!(
            "; the change took {:.0} ms: {:.0} commits/s, p99 {} µs, {} failed writes during it",
            took.as_secs_f64() * 1e3,
            x.throughput(),
            x.latency.p99,
            x.errors
        ),
        _ => String::new(),
    };
    format!(
        "  membership {combo:<9} {what:<14}: {:>8.0} commits/s  p50 {:>6} µs  p99 {:>7} µs, {} redirects, {failed} failed writes{change}",
        p.throughput(),
        p.latency.p50,
        p.latency.p99,
        p.redirects,
    )
}

/// One fresh cluster, one measured window, with the change in it if `change`.
async fn window<F: Fabric, L: BenchStore>(
    fabric: F,
    s: Settings,
    dir: &Path,
    change: bool,
    out: &mut MembershipResult,
) -> Result<PointResult> {
    let mut cluster = Cluster::<F::Net, L, MemKv>::start(
        fabric.members()?,
        dir,
        s.seed,
        crate::cluster::bench_kv,
    )
    .await?;
    let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    let value: Arc<str> = "x".repeat(PAYLOAD).into();
    // One key per client: the state machine stays small however long the run.
    let command = Arc::new(move |c: usize| KvCommand::put(format!("client-{c}"), &*value));
    // A spare slot for the joiner in both runs, so both drive the same writer.
    let writer = Arc::new(RaftkitWriter::with_spare(cluster.nodes.clone(), 1, command));
    let shape =
        Window { leader, clients: CLIENTS, payload: PAYLOAD, warmup: s.warmup, measure: s.window };
    let (c, f, w) = (&cluster, &fabric, &*writer);
    let during = move |marker: Marker| async move {
        if change { Some(run_change(c, f, w, dir, s.lead_in, marker).await) } else { None }
    };
    let (point, run) = load::run_window(writer.clone(), &cluster, shape, during).await?;
    if let Some(run) = run {
        if let Some(j) = run.joiner {
            cluster.adopt(j)?;
        }
        out.steps = run.steps;
        out.removed = run.removed;
        out.voters = run.voters;
        if let Some(e) = run.error {
            // Stop the nodes before reporting, so nothing keeps running.
            let _ = cluster.shutdown().await;
            return Err(e.context("the membership change failed"));
        }
    }
    cluster.shutdown().await?;
    Ok(point)
}

/// What the change did, and the joiner to take into the cluster.
struct ChangeRun<N: raftkit::Network, L: BenchStore> {
    joiner: Option<Joiner<N, L, MemKv>>,
    steps: Vec<Step>,
    removed: Option<NodeId>,
    voters: Vec<NodeId>,
    error: Option<anyhow::Error>,
}

/// The change, started when the measured window starts: waits `lead_in`, then runs every step.
async fn run_change<F: Fabric, L: BenchStore>(
    cluster: &Cluster<F::Net, L, MemKv>,
    fabric: &F,
    writer: &RaftkitWriter<F::Net, L, MemKv>,
    dir: &Path,
    lead_in: Duration,
    marker: Marker,
) -> ChangeRun<F::Net, L> {
    let window_start = Instant::now();
    tokio::time::sleep(lead_in).await;
    let mut run = ChangeRun {
        joiner: None,
        steps: Vec::new(),
        removed: None,
        voters: Vec::new(),
        error: None,
    };
    // The marked span is the change itself: from starting the joiner to the removal committed.
    marker.begin();
    let r = steps(cluster, fabric, writer, dir, window_start, &mut run).await;
    marker.end();
    if let Err(e) = r {
        run.error = Some(e);
    }
    run
}

async fn steps<F: Fabric, L: BenchStore>(
    cluster: &Cluster<F::Net, L, MemKv>,
    fabric: &F,
    writer: &RaftkitWriter<F::Net, L, MemKv>,
    dir: &Path,
    window_start: Instant,
    run: &mut ChangeRun<F::Net, L>,
) -> Result<()> {
    let id = cluster.next_id();
    if id != JOINER {
        bail!("the cluster has {} nodes, expected {}", cluster.nodes.len(), MEMBERS.len());
    }
    // 1. Start the joiner.
    let t = Instant::now();
    let net = fabric.endpoint(id)?;
    let info = fabric.node_info(&net);
    let joiner = cluster.start_joiner(net, dir, crate::cluster::bench_kv()).await?;
    writer.add(joiner.node.clone())?;
    let mut nodes = cluster.nodes.clone();
    nodes.push(joiner.node.clone());
    run.joiner = Some(joiner);
    run.steps.push(Step {
        what: format!("start node {} in join mode (no members)", id.0),
        at: t.duration_since(window_start),
        took: t.elapsed(),
        attempts: 1,
        by: Some(id),
        last_refusal: None,
    });

    // 2. Add it as a learner, waiting until it has caught up.
    let what = format!("add node {} as a learner (blocking: until caught up)", id.0);
    let step = on_leader(&nodes, &what, window_start, |n| {
        let info = info.clone();
        async move { n.add_learner(id, info, true).await }
    })
    .await?;
    run.steps.push(step);

    // 3. Promote it.
    let what = format!("promote node {} to voter", id.0);
    let change = ChangeMembers::PromoteLearners(BTreeSet::from([id]));
    let step = on_leader(&nodes, &what, window_start, |n| {
        let change = change.clone();
        async move { n.change_membership(change, ChangeOptions::default()).await }
    })
    .await?;
    run.steps.push(step);

    // 4. Remove an original voter that does not lead.
    let leader = current_leader(&nodes).map(|n| n.id());
    let removed = MEMBERS
        .into_iter()
        .find(|m| Some(*m) != leader)
        .context("no original voter other than the leader")?;
    run.removed = Some(removed);
    let what = format!("remove voter {} (a follower)", removed.0);
    let change = ChangeMembers::RemoveVoters(BTreeSet::from([removed]));
    let step = on_leader(&nodes, &what, window_start, |n| {
        let change = change.clone();
        async move { n.change_membership(change, ChangeOptions::default()).await }
    })
    .await?;
    run.steps.push(step);

    let leader = current_leader(&nodes).context("no leader after the change")?;
    let m = leader.metrics().borrow().membership.clone();
    run.voters = m.voters().into_iter().collect();
    Ok(())
}

/// The node that leads in the highest term, if any.
fn current_leader<N: raftkit::Network, L: BenchStore>(
    nodes: &[Raft<N, L, MemKv>],
) -> Option<&Raft<N, L, MemKv>> {
    nodes
        .iter()
        .filter_map(|n| {
            let m = n.metrics().borrow().clone();
            (m.role == Role::Leader).then_some((m.term, n))
        })
        .max_by_key(|(term, _)| *term)
        .map(|(_, n)| n)
}

/// Asks whoever leads for a change (`call`), again while the refusal is retryable, for at most
/// [`STEP_TIMEOUT`]. A `NoChange` answer to a retry counts as done: an earlier attempt made the
/// change (an `add_learner` that lost its leadership while waiting for the learner, say).
async fn on_leader<N, L, Fut>(
    nodes: &[Raft<N, L, MemKv>],
    what: &str,
    window_start: Instant,
    mut call: impl FnMut(Raft<N, L, MemKv>) -> Fut,
) -> Result<Step>
where
    N: raftkit::Network,
    L: BenchStore,
    Fut: Future<Output = Result<Membership, ChangeMembershipError>>,
{
    let t = Instant::now();
    let deadline = t + STEP_TIMEOUT;
    let mut attempts = 0;
    let mut last = None;
    loop {
        if let Some(node) = current_leader(nodes) {
            attempts += 1;
            let by = Some(node.id());
            let remaining = deadline.saturating_duration_since(Instant::now());
            let done = match tokio::time::timeout(remaining, call(node.clone())).await {
                Ok(Ok(_)) => true,
                Ok(Err(ChangeMembershipError::NoChange)) if attempts > 1 => true,
                Ok(Err(e)) if e.is_retryable() => {
                    last = Some(e.to_string());
                    false
                }
                Ok(Err(e)) => bail!("{what}: refused with a non-retryable error: {e}"),
                Err(_) => bail!("{what}: no answer within {STEP_TIMEOUT:?}"),
            };
            if done {
                let took = t.elapsed();
                return Ok(Step {
                    what: what.to_string(),
                    at: t - window_start,
                    took,
                    attempts,
                    by,
                    last_refusal: last,
                });
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: not done within {STEP_TIMEOUT:?} ({attempts} attempts; last refusal: {})",
                last.as_deref().unwrap_or("none, no leader")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part on mem+mem with short windows: the change completes, node 4 ends a voter,
    /// the removed follower is gone, and no write failed with a non-retryable error. Nothing
    /// about speed is asserted.
    #[test]
    fn a_quick_membership_run_on_mem_completes_with_only_retryable_errors() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::new(Duration::from_millis(100), Duration::from_millis(500), 7);
        let bar = ProgressBar::hidden();
        let r = rt.block_on(bench(COMBOS[0], s, dir.path(), &bar));
        assert_eq!(r.violation(), None, "{r:?}");
        let (base, change) = (r.baseline.as_ref().unwrap(), r.change.as_ref().unwrap());
        assert!(base.commits > 0 && change.commits > 0, "{r:?}");
        assert_eq!(r.steps.len(), 4, "{:?}", r.steps);
        let removed = r.removed.unwrap();
        assert!(MEMBERS.contains(&removed));
        assert!(r.voters.contains(&JOINER) && !r.voters.contains(&removed), "{:?}", r.voters);
        assert_eq!(r.voters.len(), 3);
        // The window contains the whole change, and the change's own span is within it.
        assert!(change.elapsed >= r.steps.last().map(|s| s.at + s.took).unwrap());
        let span = change.marked.as_ref().expect("the change is marked");
        assert!(span.elapsed <= change.elapsed && span.commits <= change.commits);
        assert!(base.marked.is_none());
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    #[test]
    fn non_retryable_failures_are_violations() {
        let mut p = PointResult::default();
        p.failures.insert(
            "Overwritten",
            load::KindCount { count: 3, retryable: true, last: "overwritten".into() },
        );
        let mut r = MembershipResult { change: Some(p.clone()), ..Default::default() };
        assert_eq!(r.violation(), None);
        p.failures.insert(
            "Shutdown",
            load::KindCount { count: 1, retryable: false, last: "shutting down".into() },
        );
        r.baseline = Some(p);
        assert_eq!(r.non_retryable(), 1);
        assert!(r.violation().unwrap().contains("Shutdown ×1"), "{:?}", r.violation());
        r.skipped = Some("not compiled".into());
        assert_eq!(r.violation(), None);
    }
}
