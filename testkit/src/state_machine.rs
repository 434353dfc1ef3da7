//! The state-machine suite: determinism, outputs, and the applied index across reopen. One
//! `#[test]` per case through [`state_machine_suite!`](crate::state_machine_suite).

use std::fmt::Debug;

use raftkit::{ApplyEntry, ApplyPayload, LogId, Membership, NodeId, StateMachine};

use crate::harness::StateMachineHarness;

type Cmd<H> = <<H as StateMachineHarness>::Machine as StateMachine>::Command;
type Out<H> = <<H as StateMachineHarness>::Machine as StateMachine>::Output;

/// A deterministic mix of commands, no-ops and configuration entries at indexes `1..=n` (term
/// changes every 97 entries).
fn script<H: StateMachineHarness>(h: &H, n: u64, seed: u64) -> Vec<ApplyEntry<Cmd<H>>> {
    (1..=n)
        .map(|i| {
            let log_id = LogId::new(1 + i / 97, i);
            let payload = match i % 11 {
                0 => ApplyPayload::Blank,
                5 => ApplyPayload::Membership(
                    Membership::new([NodeId(1), NodeId(2)]).expect("valid"),
                ),
                _ => ApplyPayload::Command(h.command(seed.wrapping_mul(1_000_003).wrapping_add(i))),
            };
            ApplyEntry { log_id, payload }
        })
        .collect()
}

fn commands<C>(batch: &[ApplyEntry<C>]) -> usize {
    batch.iter().filter(|e| matches!(e.payload, ApplyPayload::Command(_))).count()
}

/// Applies `entries` in batches of the given sizes (cycled), checking one output per command.
async fn apply_in_batches<H: StateMachineHarness>(
    sm: &mut H::Machine,
    entries: Vec<ApplyEntry<Cmd<H>>>,
    sizes: &[usize],
) -> Vec<Out<H>>
where
    Cmd<H>: Clone,
{
    let mut outputs = Vec::new();
    let mut rest = entries.as_slice();
    let mut k = 0;
    while !rest.is_empty() {
        let size = sizes[k % sizes.len()].clamp(1, rest.len());
        k += 1;
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        let out = sm.apply(batch.to_vec()).await.expect("apply");
        assert_eq!(out.len(), commands(batch), "one output per command, none for other entries");
        outputs.extend(out);
    }
    outputs
}

/// A new machine has applied nothing.
pub async fn fresh_machine_has_applied_nothing<H: StateMachineHarness>(h: &H) {
    let (mut sm, _g) = h.build().await;
    assert_eq!(sm.applied().await.expect("applied"), None);
}

/// The same entries give the same state and outputs on two instances, however they are split
/// into batches.
pub async fn apply_is_deterministic<H: StateMachineHarness>(h: &H)
where
    Cmd<H>: Clone,
    Out<H>: PartialEq + Debug,
{
    let entries = script(h, 600, 1);
    let (mut a, _ga) = h.build().await;
    let (mut b, _gb) = h.build().await;
    let out_a = apply_in_batches::<H>(&mut a, entries.clone(), &[1]).await;
    let out_b = apply_in_batches::<H>(&mut b, entries, &[64, 3, 200, 1, 17]).await;
    assert_eq!(out_a, out_b, "outputs depend on batching");
    assert_eq!(h.digest(&mut a).await, h.digest(&mut b).await, "state depends on batching");
}

/// Outputs come one per command, in entry order: applying a batch gives the same outputs as
/// applying its entries one at a time.
pub async fn outputs_in_order<H: StateMachineHarness>(h: &H)
where
    Cmd<H>: Clone,
    Out<H>: PartialEq + Debug,
{
    let entries = script(h, 300, 2);
    let (mut a, _ga) = h.build().await;
    let (mut b, _gb) = h.build().await;
    let whole = apply_in_batches::<H>(&mut a, entries.clone(), &[300]).await;
    let singles = apply_in_batches::<H>(&mut b, entries.clone(), &[1]).await;
    assert_eq!(whole.len(), commands(&entries));
    assert_eq!(whole, singles, "outputs out of order");
}

/// `applied` reports the last entry of every batch, whatever its kind.
pub async fn applied_tracks_the_last_entry<H: StateMachineHarness>(h: &H)
where
    Cmd<H>: Clone,
{
    let (mut sm, _g) = h.build().await;
    let entries = script(h, 120, 3);
    for chunk in entries.chunks(13) {
        sm.apply(chunk.to_vec()).await.expect("apply");
        let last = chunk.last().map(|e| e.log_id);
        assert_eq!(sm.applied().await.expect("applied"), last);
    }
}

/// After a reopen, the applied index matches the data: a fresh machine that applies exactly
/// the entries up to the reported index has the same digest. (For an in-memory machine the
/// reopened instance is empty and must report nothing applied.)
pub async fn applied_survives_reopen_consistent_with_data<H: StateMachineHarness>(h: &H)
where
    Cmd<H>: Clone,
{
    let entries = script(h, 400, 4);
    let (mut sm, g) = h.build().await;
    apply_in_batches::<H>(&mut sm, entries.clone(), &[50, 7]).await;
    let mut sm = h.reopen(sm, &g).await;
    let applied = sm.applied().await.expect("applied after reopen");
    let upto = applied.map_or(0, |id| id.index.0 as usize);
    assert!(upto <= entries.len(), "applied {applied:?} beyond what was applied");
    if let Some(id) = applied {
        assert_eq!(
            id,
            entries[upto - 1].log_id,
            "applied id does not match the entry at its index"
        );
    }
    let (mut fresh, _g2) = h.build().await;
    if upto > 0 {
        apply_in_batches::<H>(&mut fresh, entries[..upto].to_vec(), &[64]).await;
    }
    assert_eq!(
        h.digest(&mut sm).await,
        h.digest(&mut fresh).await,
        "after reopen the data does not match the applied index {applied:?}"
    );
    // And it resumes: applying the rest reaches the same state as a machine that never stopped.
    apply_in_batches::<H>(&mut sm, entries[upto..].to_vec(), &[33]).await;
    let (mut full, _g3) = h.build().await;
    apply_in_batches::<H>(&mut full, entries, &[100]).await;
    assert_eq!(h.digest(&mut sm).await, h.digest(&mut full).await, "resumed state differs");
}

/// A snapshot captures the state at the moment it is taken, even while more entries are
/// applied before it is read; restoring it into a fresh machine gives the same state and
/// applied index, and both machines then move on identically.
pub async fn snapshot_and_restore_round_trip<H: StateMachineHarness>(h: &H)
where
    Cmd<H>: Clone,
    Out<H>: PartialEq + Debug,
{
    use raftkit::{Membership, NodeId, SnapshotMeta, SnapshotSource};
    let entries = script(h, 500, 5);
    let (mut a, _ga) = h.build().await;
    apply_in_batches::<H>(&mut a, entries[..300].to_vec(), &[40]).await;
    let digest_at_300 = h.digest(&mut a).await;
    let applied = a.applied().await.expect("applied").expect("something applied");
    let mut source: Box<dyn SnapshotSource> = a.snapshot().await.expect("snapshot");
    // Apply more before the snapshot is read out: it must still describe index 300.
    apply_in_batches::<H>(&mut a, entries[300..400].to_vec(), &[25]).await;
    let mut bytes = Vec::new();
    while source.next_chunk(&mut bytes, 97).expect("chunk") {}
    let meta = SnapshotMeta {
        last_log_id: applied,
        membership: Membership::new([NodeId(1), NodeId(2)]).expect("valid"),
        size: bytes.len() as u64,
        checksum: 0,
    };
    let (mut b, _gb) = h.build().await;
    b.restore(&meta, Box::new(std::io::Cursor::new(bytes.clone()))).await.expect("restore");
    assert_eq!(b.applied().await.expect("applied"), Some(applied), "applied after restore");
    assert_eq!(
        h.digest(&mut b).await,
        digest_at_300,
        "the snapshot must hold the state at its index"
    );
    let out_a = apply_in_batches::<H>(&mut a, entries[400..].to_vec(), &[50]).await;
    let out_b = apply_in_batches::<H>(&mut b, entries[300..].to_vec(), &[50]).await;
    assert_eq!(out_a[..], out_b[out_b.len() - out_a.len()..], "outputs differ after the restore");
    assert_eq!(h.digest(&mut a).await, h.digest(&mut b).await, "states differ after the restore");
    // A damaged snapshot is refused, not half-restored into garbage.
    let (mut c, _gc) = h.build().await;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    assert!(
        c.restore(&meta, Box::new(std::io::Cursor::new(truncated))).await.is_err(),
        "a truncated snapshot must be refused"
    );
}

/// Runs a case on a fresh runtime.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    crate::log_store::block_on(f)
}

/// Expands to one `#[test]` per case of the state-machine suite.
#[macro_export]
macro_rules! state_machine_suite {
    ($harness:expr) => {
        $crate::__state_machine_cases!(
            $harness;
            fresh_machine_has_applied_nothing,
            apply_is_deterministic,
            outputs_in_order,
            applied_tracks_the_last_entry,
            applied_survives_reopen_consistent_with_data,
            snapshot_and_restore_round_trip,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __state_machine_cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::state_machine::run($crate::state_machine::$case(&$harness));
            }
        )*
    };
}
