//! The nemesis of the randomized cluster suite: one random fault (or the end of one) per step,
//! drawn with the weights of a [`FaultMix`].

use std::collections::BTreeSet;
use std::time::Duration;

use raftkit::{ChangeMembers, ChangeOptions, JointPolicy, Membership, NodeId, Role};

use super::RunReport;
use super::faulty::MessageFaults;
use super::run::Run;
use crate::harness::{LogStoreHarness, NetworkHarness};
use crate::rng::Rng;

/// How often the nemesis picks each kind of fault: relative weights (0 leaves a kind out). The
/// default is the suite's mix; a test aimed at one kind of bug can favour the faults that bring
/// it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultMix {
    /// A majority/minority partition.
    pub partition: u32,
    /// A bridge: one node sees both halves of a partition, which cannot see each other.
    pub bridge: u32,
    /// One directed link blocked.
    pub one_way: u32,
    /// Every network fault removed.
    pub heal: u32,
    /// A node (the leader half the time) crashed, losing what was not durable, and restarted
    /// later.
    pub crash: u32,
    /// A node paused, as by a long GC pause or a stalled process.
    pub pause: u32,
    /// Message loss, duplication, delay and stalls, at rates drawn each time.
    pub message_faults: u32,
    /// Message faults turned off.
    pub message_faults_off: u32,
    /// One directed link made slow (a large fixed latency).
    pub slow_link: u32,
    /// A node's disk failing: its store fails its next write and every later one (reads may
    /// fail too); the disk is replaced later (a crash and restart on the store).
    pub disk_failure: u32,
    /// A membership change on the current leader: add a spare node as a learner, promote a
    /// learner, remove a voter (the leader half the time), demote a voter, replace a voter by
    /// a fresh node (through a joint configuration), shrink five voters to three or grow three
    /// to five (both joint). Only in clusters of three nodes or more, which then start with
    /// spare nodes waiting to join.
    pub membership: u32,
    /// A leadership transfer asked of the leader (to the most up-to-date voter or a random
    /// one), with whatever faults are in force. One asked while nothing is wrong (no network
    /// fault, every node up, unpaused, with a sound disk, the target caught up) must complete:
    /// a transfer that times out then is a liveness violation.
    pub transfer: u32,
    /// A node's clock set to run faster or slower than real time, within the drift the nodes'
    /// `clock_drift_bound` allows (or back to real time): lease reads must stay linearizable.
    pub clock_drift: u32,
    /// A node's clock set far beyond the drift bound (2.5–4× or 0.2–0.5× real time). Off by
    /// default: lease reads are not linearizable under it, which is what a test of the checker
    /// uses it for.
    pub clock_drift_beyond: u32,
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix {
            partition: 2,
            bridge: 1,
            one_way: 1,
            heal: 2,
            crash: 2,
            pause: 1,
            message_faults: 2,
            message_faults_off: 1,
            slow_link: 1,
            disk_failure: 1,
            membership: 3,
            transfer: 1,
            clock_drift: 1,
            clock_drift_beyond: 0,
        }
    }
}

/// The kinds of fault, in the order their weights are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Partition,
    Bridge,
    OneWay,
    Heal,
    Crash,
    Pause,
    MessageFaults,
    MessageFaultsOff,
    SlowLink,
    DiskFailure,
    Membership,
    Transfer,
    ClockDrift,
    ClockDriftBeyond,
}

impl FaultMix {
    fn weights(&self) -> [(Fault, u32); 14] {
        [
            (Fault::Partition, self.partition),
            (Fault::Bridge, self.bridge),
            (Fault::OneWay, self.one_way),
            (Fault::Heal, self.heal),
            (Fault::Crash, self.crash),
            (Fault::Pause, self.pause),
            (Fault::MessageFaults, self.message_faults),
            (Fault::MessageFaultsOff, self.message_faults_off),
            (Fault::SlowLink, self.slow_link),
            (Fault::DiskFailure, self.disk_failure),
            (Fault::Membership, self.membership),
            (Fault::Transfer, self.transfer),
            (Fault::ClockDrift, self.clock_drift),
            (Fault::ClockDriftBeyond, self.clock_drift_beyond),
        ]
    }

    /// Draws a kind of fault by weight (message faults off when every weight is 0).
    fn pick(&self, rng: &mut Rng) -> Fault {
        let weights = self.weights();
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Fault::MessageFaultsOff;
        }
        let mut x = rng.below(total);
        for (fault, w) in weights {
            if x < u64::from(w) {
                return fault;
            }
            x -= u64::from(w);
        }
        Fault::MessageFaultsOff
    }
}

/// One random fault (or the end of one), after restarting nodes whose downtime is over.
pub(crate) async fn nemesis_step<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    mix: &FaultMix,
    rng: &mut Rng,
    report: &mut RunReport,
) {
    for id in run.due_for_restart() {
        run.restart_node(id).await;
    }
    for id in run.due_for_disk_replacement() {
        run.replace_disk(id).await;
    }
    let ids = run.ids.clone();
    let (faults, checker) = (run.faults.clone(), run.checker.clone());
    let n = ids.len();
    let mut count = |k: &'static str| *report.faults.entry(k).or_default() += 1;
    let fault = mix.pick(rng);
    match fault {
        Fault::Partition if n > 1 => {
            // Majority / minority partition.
            let mut shuffled = ids.clone();
            rng.shuffle(&mut shuffled);
            let cut = 1 + rng.below(n as u64 - 1) as usize;
            let (a, b) = shuffled.split_at(cut);
            faults.set_blocked(cut_between(a, b));
            checker.note(format!("nemesis: partition {a:?} | {b:?}"));
            count("partition");
        }
        Fault::Bridge if n > 2 => {
            // Bridge: one node sees both halves, which cannot see each other.
            let mut shuffled = ids.clone();
            rng.shuffle(&mut shuffled);
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let cut = 1 + rng.below(rest.len() as u64 - 1).min(rest.len() as u64 - 2) as usize;
            let (a, b) = rest.split_at(cut.min(rest.len() - 1));
            faults.set_blocked(cut_between(a, b));
            checker.note(format!("nemesis: bridge {bridge} between {a:?} and {b:?}"));
            count("bridge");
        }
        Fault::SlowLink if n > 1 => {
            let (a, b) = (*rng.pick(&ids), *rng.pick(&ids));
            if a != b {
                let latency = rng.duration(Duration::from_millis(300), Duration::from_millis(1500));
                faults.slow_link(a, b, latency);
                checker.note(format!("nemesis: slow link {a} -> {b} ({}ms)", latency.as_millis()));
                count("slow-link");
            }
        }
        Fault::OneWay if n > 1 => {
            let (a, b) = (*rng.pick(&ids), *rng.pick(&ids));
            if a != b {
                faults.block(a, b);
                checker.note(format!("nemesis: one-way block {a} -> {b}"));
                count("one-way");
            }
        }
        Fault::Heal => {
            faults.heal();
            checker.note("nemesis: heal the network");
            count("heal");
        }
        Fault::Crash => {
            let live = run.live();
            let leader = live
                .iter()
                .find(|(_, n)| n.metrics().borrow().role == Role::Leader)
                .map(|(id, _)| *id);
            if !live.is_empty() {
                // Half the time the leader: elections are where most bugs hide.
                let victim = match leader {
                    Some(l) if rng.chance(0.5) => l,
                    _ => rng.pick(&live).0,
                };
                let down = rng.duration(Duration::from_millis(100), Duration::from_millis(2500));
                checker.note(format!("nemesis: crash {victim} for {}ms", down.as_millis()));
                run.crash_node(victim, Some(down)).await;
                count("crash");
            }
        }
        Fault::Pause => {
            let live = run.live();
            if !live.is_empty() {
                let (id, node) = rng.pick(&live).clone();
                let d = rng.duration(Duration::from_millis(100), Duration::from_millis(1500));
                node.pause(d).await;
                run.paused_until = run.paused_until.max(tokio::time::Instant::now() + d);
                checker.note(format!("nemesis: pause {id} for {}ms", d.as_millis()));
                count("pause");
            }
        }
        Fault::MessageFaults => {
            let f = MessageFaults {
                drop: rng.below(20) as f64 / 100.0,
                duplicate: rng.below(10) as f64 / 100.0,
                delay: rng.chance(0.6).then(|| {
                    (
                        Duration::ZERO,
                        rng.duration(Duration::from_millis(2), Duration::from_millis(40)),
                    )
                }),
                stall: if rng.chance(0.4) { rng.below(30) as f64 / 100.0 } else { 0.0 },
            };
            faults.set_message_faults(f);
            checker.note(format!("nemesis: message faults {f:?}"));
            count("message-faults");
        }
        Fault::DiskFailure => {
            // Disk failure: at most a minority at a time (one in a 1- or 2-node cluster), so
            // the cluster can go on; the disk is replaced (crash, restart) some time later.
            let failing = run.failing_disks();
            let candidates: Vec<NodeId> =
                run.live().iter().map(|(id, _)| *id).filter(|id| !failing.contains(id)).collect();
            if failing.len() < ((n - 1) / 2).max(1) && !candidates.is_empty() {
                let victim = *rng.pick(&candidates);
                let replace_after =
                    rng.duration(Duration::from_millis(300), Duration::from_millis(3000));
                run.fail_disk(victim, rng, tokio::time::Instant::now() + replace_after);
                count("disk-failure");
            }
        }
        Fault::Membership if run.spares => membership_step(run, rng, report).await,
        Fault::Transfer => transfer_step(run, rng, report).await,
        Fault::ClockDrift | Fault::ClockDriftBeyond => {
            let live = run.live();
            if !live.is_empty() {
                let (id, node) = rng.pick(&live).clone();
                let permille = |rng: &mut Rng, lo: f64, hi: f64| {
                    lo + (hi - lo) * (rng.below(1001) as f64 / 1000.0)
                };
                let rate = if matches!(fault, Fault::ClockDriftBeyond) {
                    count("clock-drift-beyond");
                    if rng.chance(0.5) { permille(rng, 0.2, 0.5) } else { permille(rng, 2.5, 4.0) }
                } else {
                    count("clock-drift");
                    // Two clocks at 1 - f/2 and 1 + f/2 drift apart by less than the bound over
                    // an election timeout (f = clock_drift_bound / election_timeout_min).
                    let cfg = &run.configs[&id];
                    let f = cfg.clock_drift_bound.as_secs_f64()
                        / cfg.election_timeout_min.as_secs_f64();
                    if rng.chance(0.3) {
                        1.0
                    } else {
                        permille(rng, 1.0 - 0.45 * f, 1.0 + 0.45 * f)
                    }
                };
                node.set_clock_rate(rate).await;
                run.clock_rates.insert(id, rate);
                checker.note(format!("nemesis: clock of {id} runs at {rate:.3}x real time"));
            }
        }
        // Message faults off, and any fault that does not apply to a cluster this small.
        _ => {
            faults.set_message_faults(MessageFaults::default());
            checker.note("nemesis: message faults off");
        }
    }
}

/// Asks the leader for a leadership transfer and waits for its outcome. While nothing is
/// wrong, the transfer must complete (liveness: a target that keeps PreVote, say, is refused
/// by voters loyal to the leader, and the transfer never completes).
async fn transfer_step<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    rng: &mut Rng,
    report: &mut RunReport,
) {
    let live = run.live();
    let Some((leader, node)) =
        live.iter().find(|(_, n)| n.metrics().borrow().role == Role::Leader).cloned()
    else {
        return;
    };
    let m = node.metrics().borrow().clone();
    let voters: Vec<NodeId> = m
        .membership
        .configs()
        .last()
        .map(|c| c.iter().copied().filter(|v| *v != leader).collect())
        .unwrap_or_default();
    if voters.is_empty() {
        return;
    }
    let to = if rng.chance(0.5) { None } else { Some(*rng.pick(&voters)) };
    let caught_up = |n: NodeId| m.replication.get(&n).is_some_and(|i| *i >= m.commit);
    let up = run.ids.iter().all(|id| live.iter().any(|(l, _)| l == id));
    let healthy = run.faults.is_healthy()
        && up
        && run.failing_disks().is_empty()
        && tokio::time::Instant::now() > run.paused_until
        && run.clock_rates.values().all(|r| (*r - 1.0).abs() < 0.2)
        && !m.membership.is_joint()
        && to.is_none_or(caught_up)
        && voters.iter().any(|v| caught_up(*v));
    *report.faults.entry("transfer").or_default() += 1;
    run.checker
        .note(format!("nemesis: transfer leadership from {leader} to {to:?} (healthy: {healthy})"));
    let wait = run.configs[&leader].election_timeout_max * 3;
    let outcome = tokio::time::timeout(wait, node.transfer_leadership(to)).await;
    match outcome {
        Ok(Ok(new)) => run.checker.note(format!("nemesis: leadership transferred to {new}")),
        Ok(Err(e)) => {
            run.checker.note(format!("nemesis: transfer from {leader} failed: {e}"));
            if healthy && matches!(e, raftkit::TransferError::TimedOut(_)) {
                run.checker.violation(format!(
                    "liveness: a leadership transfer from {leader} to {to:?} asked while the \
                     network, the nodes and their disks were sound did not complete: {e}"
                ));
            }
        }
        Err(_) => {
            run.checker.note(format!("nemesis: transfer from {leader} still open after {wait:?}"))
        }
    }
}

/// The membership changes the nemesis makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    AddLearner,
    Promote,
    Remove,
    Demote,
    Replace,
    Shrink,
    Grow,
}

/// The longest the nemesis waits for a membership change to complete (it draws how long each
/// time, so a change is sometimes still in progress at its next step).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `node` (the leader) for `change`; returns the configuration it led to, or `None` if
/// it was refused (a retryable refusal is expected: the leader changed, a change is in
/// progress, a learner lags) or did not complete in time (it may still complete later).
async fn ask<N: raftkit::Network, L: raftkit::LogStore + Clone>(
    node: &super::workload::Node<N, L>,
    what: &str,
    change: ChangeMembers,
    joint: JointPolicy,
    checker: &super::checker::Checker,
    wait: Duration,
) -> Option<Membership> {
    checker.note(format!("nemesis: membership: {what}"));
    let options = ChangeOptions { joint, ..ChangeOptions::default() };
    match tokio::time::timeout(wait, node.change_membership(change, options)).await {
        Ok(Ok(m)) => {
            checker.note(format!(
                "nemesis: membership: {what}: done, voters {:?} learners {:?}",
                m.configs(),
                m.learners()
            ));
            Some(m)
        }
        Ok(Err(e)) => {
            checker.note(format!(
                "nemesis: membership: {what}: refused ({}): {e}",
                if e.is_retryable() { "retryable" } else { "not retryable" }
            ));
            None
        }
        Err(_) => {
            checker.note(format!(
                "nemesis: membership: {what}: not done within {wait:?} (it may still complete)"
            ));
            None
        }
    }
}

/// One membership change on the current leader, if its configuration is committed and not
/// joint. Keeps at least three voters and at most five, and never makes a configuration in
/// which fewer than a majority of the voters are running. Nodes removed by a change (once it
/// is committed) are stopped for good, as an operator would.
async fn membership_step<NH: NetworkHarness, LH: LogStoreHarness>(
    run: &mut Run<NH, LH>,
    rng: &mut Rng,
    report: &mut RunReport,
) {
    let checker = run.checker.clone();
    let Some((leader, node)) = run.leader() else { return };
    let m = node.metrics().borrow().clone();
    let conf = m.membership.clone();
    if m.membership_committed && !conf.is_joint() {
        run.retire_removed(&conf).await;
    } else if !rng.chance(0.3) {
        // A change is in progress: most of the time wait for it; now and then ask anyway (the
        // leader must refuse a second change while one is uncommitted).
        return;
    }
    run.was_member.extend(conf.nodes());
    let wait = rng.duration(Duration::from_millis(100), CHANGE_TIMEOUT);
    let voters: BTreeSet<NodeId> = conf.voters();
    let learners: Vec<NodeId> = conf.learners().iter().copied().collect();
    // Learners the leader has replicated to nearly up to its commit: only those are promoted,
    // as a careful operator would (a voter that has none of the log cannot vote usefully, and
    // one that does not know it is a voter cannot vote at all).
    let ready: Vec<NodeId> = learners
        .iter()
        .copied()
        .filter(|l| m.replication.get(l).is_some_and(|x| x.0 + 64 >= m.commit.0))
        .collect();
    let live: BTreeSet<NodeId> = run.live().iter().map(|(id, _)| *id).collect();
    let fresh: Vec<NodeId> = run
        .ids
        .iter()
        .copied()
        .filter(|id| !run.was_member.contains(id) && live.contains(id))
        .collect();
    let runs =
        |next: &BTreeSet<NodeId>| next.iter().filter(|n| live.contains(n)).count() * 2 > next.len();
    let mut kinds = Vec::new();
    if !fresh.is_empty() && learners.len() < 2 {
        kinds.push(Change::AddLearner);
    }
    if !ready.is_empty() && voters.len() < 5 {
        kinds.push(Change::Promote);
    }
    if voters.len() > 3 {
        kinds.extend([Change::Remove, Change::Demote]);
    }
    if !fresh.is_empty() {
        kinds.push(Change::Replace);
    }
    if voters.len() == 5 {
        kinds.push(Change::Shrink);
    }
    if voters.len() == 3 && ready.len() >= 2 {
        kinds.push(Change::Grow);
    }
    if kinds.is_empty() {
        return;
    }
    let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != leader).collect();
    let pick_voter = |rng: &mut Rng| if rng.chance(0.5) { leader } else { *rng.pick(&others) };
    let without = |gone: &[NodeId]| -> BTreeSet<NodeId> {
        voters.iter().copied().filter(|v| !gone.contains(v)).collect()
    };
    let blank = |ids: &[NodeId]| -> std::collections::BTreeMap<NodeId, String> {
        ids.iter().map(|id| (*id, String::new())).collect()
    };
    let kind = *rng.pick(&kinds);
    // Now and then a second administrator adds a fresh node as a learner at the same moment:
    // one of the two changes must be refused while the other is uncommitted.
    let concurrent = if !matches!(kind, Change::AddLearner | Change::Replace)
        && !fresh.is_empty()
        && rng.chance(0.25)
    {
        let id = *rng.pick(&fresh);
        checker.note(format!("nemesis: membership: add learner {id} (concurrently)"));
        let (node, checker) = (node.clone(), checker.clone());
        let change = ChangeMembers::AddLearners([(id, String::new())].into());
        let task = tokio::spawn(async move {
            let r = tokio::time::timeout(
                wait,
                node.change_membership(change, ChangeOptions::default()),
            )
            .await;
            checker.note(format!("nemesis: membership: add learner {id} (concurrently): {r:?}"));
        });
        tokio::task::yield_now().await;
        Some(task)
    } else {
        None
    };
    let (label, done, retire): (&'static str, Option<Membership>, Vec<NodeId>) = match kind {
        Change::AddLearner => {
            let id = *rng.pick(&fresh);
            let r = ask(
                &node,
                &format!("add learner {id}"),
                ChangeMembers::AddLearners(blank(&[id])),
                JointPolicy::Auto,
                &checker,
                wait,
            )
            .await;
            ("member-add-learner", r, vec![])
        }
        Change::Promote => {
            let id = *rng.pick(&ready);
            let mut next = voters.clone();
            next.insert(id);
            if !runs(&next) {
                return;
            }
            let r = ask(
                &node,
                &format!("promote {id}"),
                ChangeMembers::PromoteLearners([id].into()),
                JointPolicy::Auto,
                &checker,
                wait,
            )
            .await;
            ("member-promote", r, vec![])
        }
        Change::Remove | Change::Demote => {
            let id = pick_voter(rng);
            if !runs(&without(&[id])) {
                return;
            }
            if kind == Change::Remove {
                let r = ask(
                    &node,
                    &format!("remove voter {id}"),
                    ChangeMembers::RemoveVoters([id].into()),
                    JointPolicy::Auto,
                    &checker,
                    wait,
                )
                .await;
                (if id == leader { "member-remove-leader" } else { "member-remove" }, r, vec![id])
            } else {
                let r = ask(
                    &node,
                    &format!("demote {id}"),
                    ChangeMembers::DemoteVoters([id].into()),
                    JointPolicy::Auto,
                    &checker,
                    wait,
                )
                .await;
                ("member-demote", r, vec![])
            }
        }
        Change::Replace => {
            // A fresh node joins as a learner, catches up, then takes the place of a voter (a
            // down one if any) in one joint change.
            let new = *rng.pick(&fresh);
            let down: Vec<NodeId> = voters.iter().copied().filter(|v| !live.contains(v)).collect();
            let old = if down.is_empty() { pick_voter(rng) } else { *rng.pick(&down) };
            let mut next = without(&[old]);
            next.insert(new);
            if !runs(&next) {
                return;
            }
            checker.note(format!(
                "nemesis: membership: replace {old} by {new}: add {new} as a learner"
            ));
            let added = tokio::time::timeout(wait, node.add_learner(new, "", true)).await;
            if !matches!(added, Ok(Ok(_))) {
                checker.note(format!("nemesis: membership: adding {new} failed: {added:?}"));
                *report.faults.entry("member-refused").or_default() += 1;
                return;
            }
            let mut keep: Vec<NodeId> = learners.clone();
            keep.retain(|l| *l != new);
            let vs: Vec<NodeId> = next.iter().copied().collect();
            let change = ChangeMembers::ReplaceAll { voters: blank(&vs), learners: blank(&keep) };
            let r = ask(
                &node,
                &format!("replace {old} by {new} (joint)"),
                change,
                JointPolicy::JointAutoLeave,
                &checker,
                wait,
            )
            .await;
            ("member-replace", r, vec![old])
        }
        Change::Shrink => {
            let first = pick_voter(rng);
            let rest: Vec<NodeId> = voters.iter().copied().filter(|v| *v != first).collect();
            let gone = [first, *rng.pick(&rest)];
            if !runs(&without(&gone)) {
                return;
            }
            let r = ask(
                &node,
                &format!("shrink: remove {gone:?} (joint)"),
                ChangeMembers::RemoveVoters(gone.into()),
                JointPolicy::JointAutoLeave,
                &checker,
                wait,
            )
            .await;
            ("member-shrink", r, gone.to_vec())
        }
        Change::Grow => {
            let mut ls = ready.clone();
            rng.shuffle(&mut ls);
            let two: BTreeSet<NodeId> = ls.into_iter().take(2).collect();
            let mut next = voters.clone();
            next.extend(two.iter().copied());
            if !runs(&next) {
                return;
            }
            let r = ask(
                &node,
                &format!("grow: promote {two:?} (joint)"),
                ChangeMembers::PromoteLearners(two),
                JointPolicy::JointAutoLeave,
                &checker,
                wait,
            )
            .await;
            ("member-grow", r, vec![])
        }
    };
    if let Some(task) = concurrent {
        let _ = task.await;
        *report.faults.entry("member-concurrent").or_default() += 1;
    }
    match done {
        Some(m) => {
            *report.faults.entry(label).or_default() += 1;
            run.was_member.extend(m.nodes());
            for id in retire.into_iter().filter(|id| !m.contains(*id)) {
                run.retire(id).await;
            }
        }
        None => *report.faults.entry("member-refused").or_default() += 1,
    }
}

/// Every directed link between the two groups.
pub(crate) fn cut_between(a: &[NodeId], b: &[NodeId]) -> BTreeSet<(NodeId, NodeId)> {
    let mut links = BTreeSet::new();
    for x in a {
        for y in b {
            links.insert((*x, *y));
            links.insert((*y, *x));
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_drawn_by_weight() {
        let mut rng = Rng::new(1);
        let only_crashes = FaultMix {
            partition: 0,
            bridge: 0,
            one_way: 0,
            heal: 0,
            crash: 1,
            pause: 0,
            message_faults: 0,
            message_faults_off: 0,
            slow_link: 0,
            disk_failure: 0,
            membership: 0,
            transfer: 0,
            clock_drift: 0,
            clock_drift_beyond: 0,
        };
        assert!((0..100).all(|_| only_crashes.pick(&mut rng) == Fault::Crash));
        let none = FaultMix { crash: 0, ..only_crashes };
        assert_eq!(none.pick(&mut rng), Fault::MessageFaultsOff);
        // The default mix draws every kind it weighs.
        let mut seen: Vec<Fault> = (0..1000).map(|_| FaultMix::default().pick(&mut rng)).collect();
        seen.sort_by_key(|f| *f as u8);
        seen.dedup();
        let weighed = FaultMix::default().weights().iter().filter(|(_, w)| *w > 0).count();
        assert_eq!(seen.len(), weighed, "{seen:?}");
    }
}
