//! The transfer part: leadership transfers on an idle 3-node quic+redb cluster, each timed
//! from the call until the target reports itself leader, and a check that no acknowledged
//! write was lost across them.
//!
//! On one fresh cluster (`Config::new` defaults, a [`MemKv`] applied on the driver), for each
//! transfer in turn:
//!
//! 1. wait until the cluster is stable (a leader every member follows);
//! 2. write [`WRITES_PER_TRANSFER`] keys on the leader, one after the other, and remember those
//!    acknowledged;
//! 3. call `transfer_leadership(Some(target))` on the leader, the targets taken in turn (nodes
//!    1, 2, 3, 1, …, skipping the leader), and time it from the call until the target's own
//!    metrics say it leads in a higher term (watched on a task started before the call), and
//!    until the call returns.
//!
//! Nothing else runs meanwhile. After the last transfer [`WRITES_PER_TRANSFER`] more keys are
//! written on the final leader (they must be acknowledged), then every acknowledged key is
//! read back twice: through `client_read(ReadPolicy::Linearizable)` on the leader, and straight
//! from every node's own copy of the state machine once it has applied the leader's commit
//! index. **A key missing or holding another value anywhere, or a check that cannot be made,
//! fails the run.**

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use raftkit::{Config, Network, NodeId, Raft, ReadPolicy, Role, WriteError};
use raftkit_mem::{KvCommand, KvOutput, KvQuery, MemKv};
use raftkit_redb::RedbLogStore;

use crate::cluster::{BenchStore, Cluster, Fabric, MEMBERS, MemFabric, QuicFabric};
use crate::combo::{Combo, Net, Store};
use crate::run::{ELECTION_TIMEOUT, say};

/// The combination the part measures.
pub const COMBO: Combo = Combo { net: Net::Quic, store: Store::Redb };
/// Keys written before each transfer (and after the last).
pub const WRITES_PER_TRANSFER: usize = 4;
/// How long a write or a read of the part may take, retries included.
const PATIENCE: Duration = Duration::from_secs(10);

/// One transfer.
#[derive(Clone, Debug, Default)]
pub struct Transfer {
    /// The leader asked to hand over.
    pub from: NodeId,
    /// The target.
    pub to: NodeId,
    /// The term before the call.
    pub term_before: u64,
    /// The term the target led in, if it did.
    pub term_after: Option<u64>,
    /// From the call until the target's metrics said it leads; `None`: it never did (within
    /// the part's patience).
    pub took: Option<Duration>,
    /// From the call until it returned.
    pub call: Duration,
    /// What the call returned: `ok` or the error.
    pub outcome: String,
}

/// The part's figures.
#[derive(Clone, Debug, Default)]
pub struct TransferResult {
    /// The combination.
    pub combo: Combo,
    /// Why it was not run, if it was not.
    pub skipped: Option<String>,
    /// `Config::heartbeat_interval` of the nodes.
    pub heartbeat: Duration,
    /// The transfers, in order.
    pub transfers: Vec<Transfer>,
    /// Writes acknowledged (before the transfers, and after the last), all checked.
    pub acknowledged: usize,
    /// Writes that failed before being acknowledged (retried; only acknowledged ones are
    /// checked), with the last error.
    pub failed_writes: u64,
    /// The last failed write's error.
    pub last_write_error: Option<String>,
    /// The nodes whose state machines were checked, and the leader read through.
    pub checked_on: Vec<NodeId>,
    /// The leader at the check.
    pub final_leader: Option<NodeId>,
    /// Acknowledged writes missing or wrong somewhere, in words (a loss: the part fails).
    pub lost: Vec<String>,
    /// Why the part could not finish, if it did not (the part fails).
    pub error: Option<String>,
}

impl TransferResult {
    /// Transfers whose target took over.
    pub fn completed(&self) -> usize {
        self.transfers.iter().filter(|t| t.took.is_some()).count()
    }

    /// The median time to a new leader, a transfer that never completed counting as slower
    /// than any (so with half or more of them failed there is no median).
    pub fn median(&self) -> Option<Duration> {
        let mut v: Vec<Option<Duration>> = self.transfers.iter().map(|t| t.took).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by_key(|d| d.unwrap_or(Duration::MAX));
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { Some((v[n / 2 - 1]? + v[n / 2]?) / 2) }
    }

    /// The slowest completed transfer.
    pub fn max(&self) -> Option<Duration> {
        self.transfers.iter().filter_map(|t| t.took).max()
    }

    /// `d` in heartbeat intervals.
    pub fn in_heartbeats(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.heartbeat.as_secs_f64().max(1e-9)
    }

    /// What fails the part, if anything: it could not finish, or an acknowledged write was
    /// lost.
    pub fn violation(&self) -> Option<String> {
        if self.skipped.is_some() {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(format!("transfer, {}: {e}", self.combo));
        }
        if !self.lost.is_empty() {
            return Some(format!(
                "transfer, {}: {} of {} acknowledged writes lost: {}",
                self.combo,
                self.lost.len(),
                self.acknowledged,
                self.lost.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        None
    }
}

/// Runs the part on `combo` (quic+redb in the harness; mem+mem in the unit test) under `dir`.
/// A failure is recorded in the result, not returned.
pub async fn bench(
    combo: Combo,
    transfers: usize,
    seed: u64,
    dir: &Path,
    bar: &ProgressBar,
) -> TransferResult {
    let mut out = TransferResult {
        combo,
        heartbeat: Config::new(MEMBERS[0], MEMBERS).heartbeat_interval,
        ..Default::default()
    };
    let r = match (combo.net, combo.store) {
        (Net::Quic, Store::Redb) => match QuicFabric::new() {
            Ok(f) => run::<_, RedbLogStore>(f, transfers, seed, dir, bar, &mut out).await,
            Err(e) => Err(e),
        },
        (Net::Mem, Store::Mem) => {
            run::<_, raftkit_mem::MemLogStore>(
                MemFabric::new(seed),
                transfers,
                seed,
                dir,
                bar,
                &mut out,
            )
            .await
        }
        _ => Err(anyhow::anyhow!("the transfer part does not measure {combo}")),
    };
    if let Err(e) = r {
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn run<F: Fabric, L: BenchStore>(
    fabric: F,
    transfers: usize,
    seed: u64,
    dir: &Path,
    bar: &ProgressBar,
    out: &mut TransferResult,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Keep a clone of every node's state machine (clones share the state) to check them.
    let machines = Mutex::new(Vec::new());
    let cluster = Cluster::<F::Net, L, MemKv>::start(fabric.members()?, dir, seed, || {
        let kv = crate::cluster::bench_kv();
        machines.lock().unwrap_or_else(|p| p.into_inner()).push(kv.clone());
        kv
    })
    .await?;
    let machines = machines.into_inner().unwrap_or_else(|p| p.into_inner());
    let r = transfers_and_check(&cluster, &machines, transfers, bar, out).await;
    let stopped = cluster.shutdown().await;
    r.and(stopped)
}

/// Writes `key = value` through whoever leads, retrying retryable failures for at most
/// [`PATIENCE`]. Returns whether it was acknowledged.
async fn write<N: Network, L: BenchStore>(
    cluster: &Cluster<N, L, MemKv>,
    key: &str,
    value: &str,
    out: &mut TransferResult,
) -> Result<bool> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
        let r = cluster.nodes[leader].client_write(KvCommand::put(key, value)).await;
        match r {
            Ok(_) => return Ok(true),
            Err(e) => {
                out.failed_writes += 1;
                out.last_write_error = Some(e.to_string());
                let retry = e.is_retryable() || matches!(e, WriteError::TransferInProgress { .. });
                if !retry || Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn transfers_and_check<N: Network, L: BenchStore>(
    cluster: &Cluster<N, L, MemKv>,
    machines: &[MemKv],
    transfers: usize,
    bar: &ProgressBar,
    out: &mut TransferResult,
) -> Result<()> {
    let combo = out.combo;
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let n = cluster.nodes.len();
    let mut next = 0;
    for i in 0..transfers {
        bar.set_message(format!("transfer: {combo}, transfer {}/{transfers}", i + 1));
        for k in 0..WRITES_PER_TRANSFER {
            let (key, value) = (format!("before-{i}-{k}"), format!("value-{i}-{k}"));
            if write(cluster, &key, &value, out).await? {
                acked.insert(key, value);
            }
        }
        let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
        // Targets in turn 1, 2, 3, 1, …, skipping the leader: every node leads in turn.
        if next % n == leader {
            next += 1;
        }
        let target = next % n;
        next += 1;
        let t = transfer(&cluster.nodes[leader], &cluster.nodes[target]).await;
        say(
            bar,
            format!(
                "  transfer {:>2}/{transfers} {} → {}: {}, call returned after {:.1} ms ({})",
                i + 1,
                t.from.0,
                t.to.0,
                match t.took {
                    Some(d) => format!(
                        "target leads after {:.1} ms = {:.2} heartbeat intervals",
                        d.as_secs_f64() * 1e3,
                        out.in_heartbeats(d)
                    ),
                    None => "target did NOT take over".to_string(),
                },
                t.call.as_secs_f64() * 1e3,
                t.outcome
            ),
        );
        out.transfers.push(t);
        bar.inc(1);
    }

    bar.set_message(format!("transfer: {combo}, writing after the transfers and checking"));
    for k in 0..WRITES_PER_TRANSFER {
        let (key, value) = (format!("after-{k}"), format!("value-after-{k}"));
        if !write(cluster, &key, &value, out).await? {
            bail!(
                "a write after the transfers was not acknowledged within {PATIENCE:?}: {}",
                out.last_write_error.as_deref().unwrap_or("?")
            );
        }
        acked.insert(key, value);
    }
    out.acknowledged = acked.len();
    check(cluster, machines, &acked, out).await?;
    say(
        bar,
        format!(
            "  transfer {combo}: {} of {} transfers completed, median {}, max {}; {} acknowledged \
             writes checked on nodes {:?}: {} lost",
            out.completed(),
            out.transfers.len(),
            out.median().map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
            out.max().map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
            out.acknowledged,
            out.checked_on.iter().map(|n| n.0).collect::<Vec<_>>(),
            out.lost.len()
        ),
    );
    bar.inc(1);
    Ok(())
}

/// One transfer from `from` (the leader) to `to`, timed.
async fn transfer<N: Network, L: BenchStore>(
    from: &Raft<N, L, MemKv>,
    to: &Raft<N, L, MemKv>,
) -> Transfer {
    let term_before = from.metrics().borrow().term.0;
    let mut rx = to.metrics();
    let t0 = Instant::now();
    // Watches the target from before the call: the moment it says it leads in a later term.
    let watch = tokio::spawn(async move {
        let r = tokio::time::timeout(
            PATIENCE,
            rx.wait_for(|m| m.role == Role::Leader && m.term.0 > term_before),
        )
        .await;
        match r {
            Ok(Ok(m)) => Some((t0.elapsed(), m.term.0)),
            _ => None,
        }
    });
    let result = from.transfer_leadership(Some(to.id())).await;
    let call = t0.elapsed();
    // After a refusal the target may still win (a timed-out transfer's campaign goes on for a
    // while): give it two election timeouts more.
    let grace = Config::new(MEMBERS[0], MEMBERS).election_timeout_max * 2;
    let seen = match result {
        Ok(_) => watch.await.ok().flatten(),
        Err(_) => {
            let abort = watch.abort_handle();
            let seen = tokio::time::timeout(grace, watch).await;
            abort.abort();
            seen.ok().and_then(|r| r.ok()).flatten()
        }
    };
    Transfer {
        from: from.id(),
        to: to.id(),
        term_before,
        term_after: seen.map(|(_, term)| term),
        took: seen.map(|(d, _)| d),
        call,
        outcome: match result {
            Ok(id) if id == to.id() => "ok".to_string(),
            Ok(id) => format!("ok, but node {id} leads"),
            Err(e) => format!("error: {e}"),
        },
    }
}

/// Reads every acknowledged key through the leader (linearizable) and from every node's state
/// machine once it has applied the leader's commit index; records what is missing or wrong.
async fn check<N: Network, L: BenchStore>(
    cluster: &Cluster<N, L, MemKv>,
    machines: &[MemKv],
    acked: &BTreeMap<String, String>,
    out: &mut TransferResult,
) -> Result<()> {
    let leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    let node = &cluster.nodes[leader];
    out.final_leader = Some(node.id());
    for (key, value) in acked {
        let deadline = Instant::now() + PATIENCE;
        let got = loop {
            match node.client_read(KvQuery::get(key.clone()), ReadPolicy::Linearizable).await {
                Ok(KvOutput::Value(v)) => break v,
                Ok(other) => bail!("reading {key} answered {other:?}"),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => bail!("could not read {key} on the leader (node {}): {e}", node.id()),
            }
        };
        if got.as_deref() != Some(value.as_str()) {
            out.lost.push(format!(
                "{key}: linearizable read on the leader (node {}) found {got:?}, acknowledged {value:?}",
                node.id()
            ));
        }
    }
    // Every node's own copy, once it has applied everything the leader had committed.
    let commit = node.metrics().borrow().commit;
    for (raft, kv) in cluster.nodes.iter().zip(machines) {
        let mut rx = raft.metrics();
        tokio::time::timeout(PATIENCE, rx.wait_for(|m| m.applied >= commit))
            .await
            .with_context(|| format!("node {} did not apply up to {commit:?}", raft.id()))?
            .with_context(|| format!("node {} stopped", raft.id()))?;
        for (key, value) in acked {
            let got = kv.get_local(key);
            if got.as_deref() != Some(value.as_str()) {
                out.lost.push(format!(
                    "{key}: node {}'s state machine holds {got:?}, acknowledged {value:?}",
                    raft.id()
                ));
            }
        }
        out.checked_on.push(raft.id());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part on mem+mem with a few transfers: every target takes over, nothing is lost.
    /// Nothing about speed is asserted.
    #[test]
    fn a_few_transfers_on_mem_complete_and_lose_nothing() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bar = ProgressBar::hidden();
        let combo = Combo { net: Net::Mem, store: Store::Mem };
        let r = rt.block_on(bench(combo, 4, 5, dir.path(), &bar));
        assert_eq!(r.violation(), None, "{r:?}");
        assert_eq!(r.transfers.len(), 4);
        assert_eq!(r.completed(), 4, "{:?}", r.transfers);
        assert!(r.transfers.iter().all(|t| t.from != t.to && t.outcome == "ok"), "{r:?}");
        // Every node was a target.
        let targets: std::collections::BTreeSet<_> = r.transfers.iter().map(|t| t.to).collect();
        assert_eq!(targets.len(), 3, "{:?}", r.transfers);
        assert!(r.transfers.windows(2).all(|w| w[0].to == w[1].from), "{:?}", r.transfers);
        assert_eq!(r.acknowledged, 5 * WRITES_PER_TRANSFER);
        assert_eq!(r.checked_on.len(), 3);
        assert!(r.median().is_some() && r.max() >= r.median());
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    #[test]
    fn medians_count_failed_transfers_as_slowest_and_losses_fail_the_part() {
        let t = |ms: Option<u64>| Transfer {
            took: ms.map(Duration::from_millis),
            ..Default::default()
        };
        let mut r = TransferResult {
            heartbeat: Duration::from_millis(50),
            transfers: vec![t(Some(10)), t(Some(30)), t(None)],
            ..Default::default()
        };
        assert_eq!(r.median(), Some(Duration::from_millis(30)));
        assert_eq!(r.max(), Some(Duration::from_millis(30)));
        assert_eq!(r.completed(), 2);
        assert!((r.in_heartbeats(Duration::from_millis(75)) - 1.5).abs() < 1e-9);
        r.transfers.push(t(None));
        assert_eq!(r.median(), None, "half failed: no median");
        assert_eq!(r.violation(), None);
        r.lost.push("before-0-0: gone".into());
        assert!(r.violation().unwrap().contains("lost"), "{:?}", r.violation());
        r.skipped = Some("not run".into());
        assert_eq!(r.violation(), None);
    }
}
