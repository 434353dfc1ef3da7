//! The reads part: reads that do not write the log (`Raft::client_read` with the
//! `Linearizable`, `Lease` and `Follower` policies) against writes (`client_write`) of the same
//! combination, with the same closed-loop clients and the same windows.
//!
//! For each combination ([`COMBOS`]) one 3-node cluster (`Config::new` defaults, a [`MemKv`]
//! applied on the driver), then for each client count, in this order:
//!
//! 1. **write**: every client puts its own key (`client-<n>`, a [`PAYLOAD`]-byte value) on the
//!    leader, following `NotLeader` redirects, as the matrix's clients do;
//! 2. **Linearizable**, 3. **Lease**: every client reads its own key back through
//!    `client_read(KvQuery::Get, policy)` on the leader (a `NotLeader` answer is followed like a
//!    write's redirect);
//! 4. **Follower**: the same with `ReadPolicy::Follower`, the clients spread over the
//!    followers (client `n` on follower `n mod 2`), each staying on its follower.
//!
//! Every read must return the value its client wrote (a wrong or missing value is counted as a
//! failed read of kind `WrongAnswer`). Each window has the run's warm-up, then a measured window
//! of `--reads-secs`; the log store's counter (redb: commits, one fsync each; memory store:
//! `write` calls) is read before and after it, so a read window shows how many log writes the
//! reads caused (none expected). On QUIC, the loopback round trip is measured again just before
//! the 1-client reads (two more `QuicNetwork` endpoints pinging each other on the same runtime,
//! [`machine::measure_quic_rtt`], while the cluster idles), so the 1-client read latency can be
//! given in round trips.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use raftkit::{LogStore, Network, NodeId, Raft, ReadError, ReadPolicy};
use raftkit_mem::{KvCommand, KvOutput, KvQuery, MemKv, MemLogStore};
use raftkit_redb::RedbLogStore;

use crate::cluster::{BenchStore, Cluster, Fabric, MemFabric, QuicFabric};
use crate::combo::{Combo, Net, Store};
use crate::load::{self, Outcome, PointResult, RaftkitWriter, WriteFailure, Writer};
use crate::machine::{self, Latency};
use crate::run::{ELECTION_TIMEOUT, say};

/// The combinations the part measures.
pub const COMBOS: [Combo; 2] =
    [Combo { net: Net::Mem, store: Store::Mem }, Combo { net: Net::Quic, store: Store::Redb }];
/// Bytes of each client's value (written by the write window, read by the read windows).
pub const PAYLOAD: usize = 16;

/// What a window's clients do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `client_write` of a put, on the leader.
    #[default]
    Write,
    /// `client_read` with [`ReadPolicy::Linearizable`], on the leader.
    Linearizable,
    /// `client_read` with [`ReadPolicy::Lease`], on the leader.
    Lease,
    /// `client_read` with [`ReadPolicy::Follower`], spread over the followers.
    Follower,
}

impl Op {
    /// Every operation, in the order they are measured.
    pub const ALL: [Op; 4] = [Op::Write, Op::Linearizable, Op::Lease, Op::Follower];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Linearizable => "Linearizable read",
            Op::Lease => "Lease read",
            Op::Follower => "Follower read",
        }
    }

    /// The read policy, for a read.
    pub fn policy(self) -> Option<ReadPolicy> {
        match self {
            Op::Write => None,
            Op::Linearizable => Some(ReadPolicy::Linearizable),
            Op::Lease => Some(ReadPolicy::Lease),
            Op::Follower => Some(ReadPolicy::Follower),
        }
    }
}

/// How long the part runs, and how many clients.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Unmeasured load before each window.
    pub warmup: Duration,
    /// Each measured window.
    pub window: Duration,
    /// Client counts, ascending.
    pub clients: Vec<usize>,
    /// Pings of the round-trip measure (QUIC only).
    pub rtt_samples: usize,
    /// Seed of the cluster.
    pub seed: u64,
}

/// One window of the part.
#[derive(Clone, Debug, Default)]
pub struct ReadPoint {
    /// What the clients did.
    pub op: Op,
    /// The nodes the clients started on (the leader; for follower reads, the followers).
    pub served_by: Vec<NodeId>,
    /// The window's figures (`commits` counts reads for a read window).
    pub point: PointResult,
}

/// The part's figures for one combination.
#[derive(Clone, Debug, Default)]
pub struct ReadsResult {
    /// The combination.
    pub combo: Combo,
    /// Why it was not run, if it was not.
    pub skipped: Option<String>,
    /// What the store's counter counts.
    pub sync_kind: &'static str,
    /// The windows, in the order measured.
    pub points: Vec<ReadPoint>,
    /// The loopback QUIC round trip measured just before the 1-client reads (QUIC only).
    pub rtt: Option<Latency>,
    /// Why the part stopped early for this combination, if it did.
    pub error: Option<String>,
}

impl ReadsResult {
    /// The window of `op` at `clients`, if measured with at least one answer.
    pub fn find(&self, op: Op, clients: usize) -> Option<&ReadPoint> {
        self.points.iter().find(|p| p.op == op && p.point.clients == clients && p.point.commits > 0)
    }

    /// `op`'s throughput over the writes' at `clients`.
    pub fn ratio(&self, op: Op, clients: usize) -> Option<f64> {
        let w = self.find(Op::Write, clients)?.point.throughput();
        let r = self.find(op, clients)?.point.throughput();
        (w > 0.0).then(|| r / w)
    }
}

/// Reads through raftkit: each client reads its own key with one policy.
pub struct RaftkitReader<N: Network, L: LogStore> {
    nodes: Vec<Raft<N, L, MemKv>>,
    policy: ReadPolicy,
    /// Where each client reads, for follower reads (client `c` on `serve[c % len]`); empty:
    /// wherever the load generator says (the leader, following redirects).
    serve: Vec<usize>,
    /// The length of the value every key holds.
    value_len: usize,
}

impl<N: Network, L: LogStore> RaftkitReader<N, L> {
    /// Readers of `nodes` under `policy`; with `serve` not empty, client `c` always reads on
    /// `nodes[serve[c % serve.len()]]`. Each read must find a value of `value_len` bytes.
    pub fn new(
        nodes: Vec<Raft<N, L, MemKv>>,
        policy: ReadPolicy,
        serve: Vec<usize>,
        value_len: usize,
    ) -> Self {
        RaftkitReader { nodes, policy, serve, value_len }
    }

    fn position(&self, id: NodeId) -> Option<usize> {
        usize::try_from(id.0).ok()?.checked_sub(1).filter(|p| *p < self.nodes.len())
    }
}

/// A failed read, classified like a failed write.
pub fn read_failure(e: &ReadError) -> WriteFailure {
    let kind = match e {
        ReadError::NotLeader { .. } => "NotLeader",
        ReadError::LeaseNeedsCheckQuorum => "LeaseNeedsCheckQuorum",
        ReadError::LeadershipLost => "LeadershipLost",
        ReadError::TooManyReads => "TooManyReads",
        ReadError::Timeout(_) => "Timeout",
        ReadError::Shutdown => "Shutdown",
        ReadError::Fatal(_) => "Fatal",
        _ => "other",
    };
    WriteFailure { kind, retryable: e.is_retryable(), message: e.to_string() }
}

impl<N: Network, L: LogStore> Writer for RaftkitReader<N, L> {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    async fn write(&self, node: usize, client: usize) -> Outcome {
        let pinned = !self.serve.is_empty();
        let pos = if pinned { self.serve[client % self.serve.len()] } else { node };
        let key = format!("client-{client}");
        match self.nodes[pos].client_read(KvQuery::get(key), self.policy).await {
            Ok(KvOutput::Value(Some(v))) if v.len() == self.value_len => Outcome::Ok,
            Ok(other) => Outcome::Error(WriteFailure {
                kind: "WrongAnswer",
                retryable: false,
                message: format!("client-{client} on node {} read {other:?}", pos + 1),
            }),
            Err(ReadError::NotLeader { leader }) if !pinned => {
                Outcome::Redirect(leader.and_then(|l| self.position(l)))
            }
            Err(e) => Outcome::Error(read_failure(&e)),
        }
    }
}

/// Runs the part for `combo` on a fresh cluster under `dir`. A failure is recorded in the
/// result, not returned.
pub async fn bench(combo: Combo, s: &Settings, dir: &Path, bar: &ProgressBar) -> ReadsResult {
    let mut out = ReadsResult { combo, ..Default::default() };
    let r = match (combo.net, combo.store) {
        (Net::Mem, Store::Mem) => {
            windows::<_, MemLogStore>(MemFabric::new(s.seed), s, dir, bar, &mut out).await
        }
        (Net::Quic, Store::Redb) => match QuicFabric::new() {
            Ok(f) => windows::<_, RedbLogStore>(f, s, dir, bar, &mut out).await,
            Err(e) => Err(e),
        },
        _ => Err(anyhow::anyhow!("the reads part does not measure {combo}")),
    };
    if let Err(e) = r {
        out.error = Some(format!("{e:#}"));
    }
    out
}

fn line(combo: Combo, r: &ReadPoint, writes: Option<f64>) -> String {
    let p = &r.point;
    let failed: u64 = p.failures.values().map(|k| k.count).sum();
    let ratio = match (r.op, writes) {
        (Op::Write, _) | (_, None) => String::new(),
        (_, Some(w)) => format!(" ({:.1}× writes)", p.throughput() / w.max(1e-9)),
    };
    let failed = if failed > 0 { format!(", {failed} failed") } else { String::new() };
    format!(
        "  reads {combo:<9} {:>3} clients {:<17}: {:>9.0}/s{ratio}  p50 {:>6} µs  p99 {:>6} µs, {} log writes{failed}",
        p.clients,
        r.op.name(),
        p.throughput(),
        p.latency.p50,
        p.latency.p99,
        p.syncs,
    )
}

async fn windows<F: Fabric, L: BenchStore>(
    fabric: F,
    s: &Settings,
    dir: &Path,
    bar: &ProgressBar,
    out: &mut ReadsResult,
) -> Result<()> {
    let combo = out.combo;
    out.sync_kind = L::SYNC_KIND;
    bar.set_message(format!("reads: {combo}: starting the cluster"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cluster = Cluster::<F::Net, L, MemKv>::start(
        fabric.members()?,
        dir,
        s.seed,
        crate::cluster::bench_kv,
    )
    .await?;
    let r = measure(&cluster, combo, s, bar, out).await;
    let stopped = cluster.shutdown().await;
    r.and(stopped)
}

async fn measure<N: Network, L: BenchStore>(
    cluster: &Cluster<N, L, MemKv>,
    combo: Combo,
    s: &Settings,
    bar: &ProgressBar,
    out: &mut ReadsResult,
) -> Result<()> {
    let mut leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
    let value: Arc<str> = "x".repeat(PAYLOAD).into();
    let command = Arc::new(move |c: usize| KvCommand::put(format!("client-{c}"), &*value));
    let writer = Arc::new(RaftkitWriter::new(cluster.nodes.clone(), command));
    for &clients in &s.clients {
        let mut writes = None;
        for op in Op::ALL {
            bar.set_message(format!("reads: {combo}, {clients} clients, {}", op.name()));
            if combo.net == Net::Quic && clients == 1 && op == Op::Linearizable {
                bar.set_message(format!("reads: {combo}: loopback QUIC round trip"));
                let rtt = machine::measure_quic_rtt(s.rtt_samples)
                    .await
                    .context("measuring the loopback QUIC round trip")?;
                out.rtt = Some(rtt);
            }
            let id = |pos: usize| cluster.nodes[pos].id();
            let followers: Vec<usize> = (0..cluster.nodes.len()).filter(|p| *p != leader).collect();
            let (w, warmup) = (s.window, s.warmup);
            let (served_by, point) = match op.policy() {
                None => {
                    let p = load::run_point(
                        writer.clone(),
                        cluster,
                        leader,
                        clients,
                        PAYLOAD,
                        warmup,
                        w,
                    )
                    .await;
                    (vec![id(leader)], p)
                }
                Some(policy) => {
                    let serve = if op == Op::Follower { followers.clone() } else { Vec::new() };
                    let served_by = if serve.is_empty() {
                        vec![id(leader)]
                    } else {
                        // Only the followers some client reads on.
                        serve.iter().take(clients).map(|p| id(*p)).collect()
                    };
                    let reader =
                        Arc::new(RaftkitReader::new(cluster.nodes.clone(), policy, serve, PAYLOAD));
                    let p =
                        load::run_point(reader, cluster, leader, clients, PAYLOAD, warmup, w).await;
                    (served_by, p)
                }
            };
            let point = point.with_context(|| format!("{clients} clients, {}", op.name()))?;
            let r = ReadPoint { op, served_by, point };
            if op == Op::Write {
                writes = Some(r.point.throughput());
            }
            say(bar, line(combo, &r, writes));
            out.points.push(r);
            bar.inc(1);
            leader = cluster.wait_leader(ELECTION_TIMEOUT).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part on mem+mem with short windows: every window answers, reads find the values
    /// the writes left, and read windows write nothing to the log. Nothing about speed is
    /// asserted.
    #[test]
    fn a_quick_reads_run_on_mem_answers_every_policy() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            warmup: Duration::from_millis(100),
            window: Duration::from_millis(300),
            clients: vec![1, 8],
            rtt_samples: 10,
            seed: 3,
        };
        let bar = ProgressBar::hidden();
        let r = rt.block_on(bench(COMBOS[0], &s, dir.path(), &bar));
        assert_eq!(r.error, None, "{r:?}");
        assert_eq!(r.points.len(), 8);
        for clients in [1, 8] {
            for op in Op::ALL {
                let p = r.find(op, clients).unwrap_or_else(|| panic!("{op:?} {clients}: {r:?}"));
                assert!(p.point.failures.is_empty(), "{op:?} {clients}: {:?}", p.point.failures);
                if op != Op::Write {
                    assert_eq!(p.point.syncs, 0, "{op:?} {clients} wrote the log");
                    assert!(r.ratio(op, clients).unwrap() > 0.0);
                }
            }
            let f = r.find(Op::Follower, clients).unwrap();
            let leader = r.find(Op::Linearizable, clients).unwrap().served_by.clone();
            assert!(f.served_by.iter().all(|n| !leader.contains(n)), "{r:?}");
        }
        // Two followers, but one client reads on one only.
        assert_eq!(r.find(Op::Follower, 1).unwrap().served_by.len(), 1);
        assert_eq!(r.find(Op::Follower, 8).unwrap().served_by.len(), 2);
        assert!(r.rtt.is_none(), "no QUIC round trip on mem+mem");
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}
