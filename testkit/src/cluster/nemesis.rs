//! The nemesis of the randomized cluster suite: one random fault (or the end of one) per step,
//! drawn with the weights of a [`FaultMix`].

use std::collections::BTreeSet;
use std::time::Duration;

use raftkit::{NodeId, Role};

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
}

impl FaultMix {
    fn weights(&self) -> [(Fault, u32); 10] {
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
    match mix.pick(rng) {
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
        // Message faults off, and any fault that does not apply to a cluster this small.
        _ => {
            faults.set_message_faults(MessageFaults::default());
            checker.note("nemesis: message faults off");
        }
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
        };
        assert!((0..100).all(|_| only_crashes.pick(&mut rng) == Fault::Crash));
        let none = FaultMix { crash: 0, ..only_crashes };
        assert_eq!(none.pick(&mut rng), Fault::MessageFaultsOff);
        // The default mix draws every kind.
        let mut seen: Vec<Fault> = (0..1000).map(|_| FaultMix::default().pick(&mut rng)).collect();
        seen.sort_by_key(|f| *f as u8);
        seen.dedup();
        assert_eq!(seen.len(), FaultMix::default().weights().len(), "{seen:?}");
    }
}
