//! The crash and fault cases of the log-store suite ([`log_store_suite!`](crate::log_store_suite)
//! runs them; they are re-exported from [`log_store`](crate::log_store)).
//!
//! - [`crash_keeps_every_acknowledged_write`]: after each kind of write (append, truncate +
//!   append, hard state, all three in one write, purge, install of a snapshot the log holds and
//!   of one it does not, a large append), the harness's [`crash`](LogStoreHarness::crash) must
//!   keep exactly what was acknowledged. Runs under every crash model.
//! - [`crash_mid_write_keeps_all_or_nothing`]: the same writes, with the power cut at every
//!   file operation of the write in turn; after the crash the store holds the state before the
//!   write or the state after it, never a mix (a new term with an old vote, half a batch), and
//!   it takes further writes. Needs [`CrashModel::LossyFs`].
//! - [`io_faults_poison_writes_and_reopen_is_valid`]: the same writes with an I/O error,
//!   `ENOSPC` or a short write at every operation in turn: the store reports the error, refuses
//!   every later write with `Poisoned`, never reads back wrong data, and after a crash holds the
//!   state before or after the failed write. Needs [`CrashModel::LossyFs`].
//! - [`snapshots_survive_crashes`]: a snapshot published through the store's
//!   [`snapshot_store`](raftkit::LogStore::snapshot_store) is there, intact, after a crash.
//!
//! Every failure message names the crash model, the write, the crash point and the seed
//! (`RAFTKIT_SEED` replays it), and says which side is the store and which the model.

// The suite's report (crash model, warnings, how many crash points ran) goes to the test's
// output, which libtest captures and shows with a failure or `--nocapture`.
#![allow(clippy::print_stdout)]

use raftkit::{
    Entry, HardState, LogId, LogIndex, LogStore, LogWrite, Membership, NodeId, StorageErrorKind,
    Term,
};

use crate::fs::{Fault, SimFs};
use crate::harness::{CrashModel, LogStoreHarness};
use crate::log_store::{LogModel, entries};
use crate::rng::Rng;
use crate::seed_from_env;

/// One kind of write the crash cases make, on top of [`preamble`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Append,
    TruncateAndAppend,
    HardState,
    AllInOne,
    Purge,
    InstallHeld,
    InstallNotHeld,
    LargeAppend,
}

const KINDS: [Kind; 8] = [
    Kind::Append,
    Kind::TruncateAndAppend,
    Kind::HardState,
    Kind::AllInOne,
    Kind::Purge,
    Kind::InstallHeld,
    Kind::InstallNotHeld,
    Kind::LargeAppend,
];

fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term: Term(term), vote: vote.map(NodeId), commit: LogIndex(commit) }
}

/// A store operation.
#[derive(Clone, Debug)]
enum StoreOp {
    Write(LogWrite),
    Purge(LogId),
    Install(LogId),
}

impl StoreOp {
    async fn run<S: LogStore>(&self, s: &S) -> Result<(), raftkit::StorageError> {
        match self {
            StoreOp::Write(w) => s.write(w.clone()).await,
            StoreOp::Purge(id) => s.purge(*id).await,
            StoreOp::Install(id) => s.install_snapshot(*id).await,
        }
    }

    fn apply(&self, m: &mut LogModel) {
        let r = match self {
            StoreOp::Write(w) => m.write(w),
            StoreOp::Purge(id) => m.purge(*id),
            StoreOp::Install(id) => {
                m.install(*id);
                Ok(())
            }
        };
        r.expect("the suite's own writes are valid");
    }
}

/// What every crash case writes first: 30 entries of term 1, a hard state, 10 entries of
/// term 2.
fn preamble() -> Vec<StoreOp> {
    vec![
        StoreOp::Write(LogWrite { entries: entries(1, 1..=30), ..LogWrite::default() }),
        StoreOp::Write(LogWrite { hard_state: Some(hs(2, Some(1), 5)), ..LogWrite::default() }),
        StoreOp::Write(LogWrite { entries: entries(2, 31..=40), ..LogWrite::default() }),
    ]
}

fn op_of(kind: Kind) -> StoreOp {
    match kind {
        Kind::Append => {
            StoreOp::Write(LogWrite { entries: entries(2, 41..=60), ..LogWrite::default() })
        }
        Kind::TruncateAndAppend => StoreOp::Write(LogWrite {
            truncate_from: Some(LogIndex(35)),
            entries: entries(3, 35..=50),
            ..LogWrite::default()
        }),
        // A new term and a new vote: a store that writes them in two steps shows it here.
        Kind::HardState => {
            StoreOp::Write(LogWrite { hard_state: Some(hs(3, Some(2), 20)), ..LogWrite::default() })
        }
        Kind::AllInOne => StoreOp::Write(LogWrite {
            hard_state: Some(hs(4, Some(3), 25)),
            truncate_from: Some(LogIndex(38)),
            entries: entries(4, 38..=45),
        }),
        Kind::Purge => StoreOp::Purge(LogId::new(1, 25)),
        Kind::InstallHeld => StoreOp::Install(LogId::new(2, 35)),
        Kind::InstallNotHeld => StoreOp::Install(LogId::new(5, 100)),
        Kind::LargeAppend => {
            StoreOp::Write(LogWrite { entries: entries(2, 41..=2_040), ..LogWrite::default() })
        }
    }
}

/// What the store holds: its hard state, purged id and every entry.
async fn contents<S: LogStore>(s: &S) -> Result<LogModel, String> {
    crate::crash::load_model(s).await.map_err(|e| format!("the store cannot load or read: {e}"))
}

/// A short description of a log, and where two logs first differ.
fn describe(m: &LogModel) -> String {
    format!(
        "{{hard state {:?}, purged {}, last {}, {} entries}}",
        m.hard_state,
        m.purged,
        m.last(),
        m.entries.len()
    )
}

fn first_difference(store: &LogModel, model: &LogModel) -> String {
    if store.hard_state != model.hard_state {
        return format!(
            "hard state: the store has {:?}, the model {:?}",
            store.hard_state, model.hard_state
        );
    }
    if store.purged != model.purged {
        return format!("purged id: the store has {}, the model {}", store.purged, model.purged);
    }
    let keys: std::collections::BTreeSet<u64> =
        store.entries.keys().chain(model.entries.keys()).copied().collect();
    for k in keys {
        let (a, b) = (store.entries.get(&k), model.entries.get(&k));
        if a != b {
            return format!(
                "entry {k}: the store has {}, the model {}",
                a.map_or("nothing".into(), |e: &Entry| format!("{:?}", e.log_id)),
                b.map_or("nothing".into(), |e: &Entry| format!("{:?}", e.log_id))
            );
        }
    }
    "no difference".into()
}

struct Ctx {
    model: CrashModel,
    seed: u64,
}

impl Ctx {
    fn new<H: LogStoreHarness>(h: &H) -> Ctx {
        let model = h.crash_model();
        if let Some(w) = model.warning() {
            crate::report_line(w);
        }
        Ctx { model, seed: seed_from_env().unwrap_or(0x00C0_FFEE) }
    }

    fn fail(&self, what: String) -> ! {
        panic!("crash model {}; RAFTKIT_SEED={}: {what}", self.model, self.seed)
    }
}

/// Crashes the store through the harness, first reseeding its [`SimFs`] (if any) so the crash
/// replays from the seed.
async fn crash<H: LogStoreHarness>(h: &H, s: H::Store, g: &H::Guard, seed: u64) -> H::Store {
    if let Some(fs) = h.sim_fs(g) {
        fs.reseed(seed);
    }
    h.crash(s, g).await
}

async fn build_with_preamble<H: LogStoreHarness>(
    h: &H,
    ctx: &Ctx,
) -> (H::Store, H::Guard, LogModel) {
    let (s, g) = h.build().await;
    let mut m = LogModel::default();
    for op in preamble() {
        if let Err(e) = op.run(&s).await {
            ctx.fail(format!("the store refused a valid write of the preamble ({op:?}): {e}"));
        }
        op.apply(&mut m);
    }
    (s, g, m)
}

/// After each kind of acknowledged write, a crash keeps exactly what was acknowledged; the store
/// then takes more writes and keeps those across another crash. Under every crash model (under
/// [`CrashModel::CleanReopenOnly`] it only checks a reopen, and says so).
pub async fn crash_keeps_every_acknowledged_write<H: LogStoreHarness>(h: &H) {
    let ctx = Ctx::new(h);
    for (round, kind) in KINDS.into_iter().enumerate() {
        for rep in 0..3u64 {
            let crash_seed = ctx.seed ^ (round as u64) << 8 ^ rep;
            let (s, g, mut m) = build_with_preamble(h, &ctx).await;
            let s = crash(h, s, &g, crash_seed).await;
            check_holds(&ctx, &s, &m, &format!("after the preamble and a crash ({kind:?} round)"))
                .await;
            let op = op_of(kind);
            if let Err(e) = op.run(&s).await {
                ctx.fail(format!("the store refused a valid {kind:?} write: {e}"));
            }
            op.apply(&mut m);
            let s = crash(h, s, &g, crash_seed + 1).await;
            check_holds(&ctx, &s, &m, &format!("after an acknowledged {kind:?} and a crash")).await;
            // The store goes on after the crash.
            let next = m.last().index.0 + 1;
            let term = m.last().term.0.max(m.hard_state.term.0);
            let more = StoreOp::Write(LogWrite {
                entries: entries(term, next..=next + 4),
                ..LogWrite::default()
            });
            if let Err(e) = more.run(&s).await {
                ctx.fail(format!(
                    "after a crash following {kind:?}, the store refused an append: {e}"
                ));
            }
            more.apply(&mut m);
            let s = crash(h, s, &g, crash_seed + 2).await;
            check_holds(&ctx, &s, &m, &format!("after {kind:?}, a crash, an append and a crash"))
                .await;
        }
    }
}

async fn check_holds<S: LogStore>(ctx: &Ctx, s: &S, want: &LogModel, when: &str) {
    let found = match contents(s).await {
        Ok(f) => f,
        Err(e) => ctx.fail(format!("{when}: {e}")),
    };
    if &found != want {
        ctx.fail(format!(
            "{when}: the store holds {} but the acknowledged writes built {} (model); first \
             difference: {}",
            describe(&found),
            describe(want),
            first_difference(&found, want)
        ));
    }
}

/// The file operations a write makes on the store's [`SimFs`], counted on a dry run.
async fn ops_of<H: LogStoreHarness>(h: &H, ctx: &Ctx, kind: Kind) -> u64 {
    let (s, g, _) = build_with_preamble(h, ctx).await;
    let fs = h.sim_fs(&g).expect("a LossyFs harness gives its SimFs");
    let before = fs.op_count();
    if let Err(e) = op_of(kind).run(&s).await {
        ctx.fail(format!("the store refused a valid {kind:?} write: {e}"));
    }
    fs.op_count() - before
}

/// The crash points to try for a write of `n` operations: every one when there are few, else
/// 48 spread over the write (its start and end included) and drawn from the seed.
fn points(n: u64, rng: &mut Rng) -> Vec<u64> {
    if n <= 48 {
        return (0..=n).collect();
    }
    let mut p: Vec<u64> = (0..8).chain(n - 8..=n).collect();
    while p.len() < 48 {
        p.push(rng.below(n));
    }
    p.sort_unstable();
    p.dedup();
    p
}

fn sim_fs_or_note<H: LogStoreHarness>(h: &H, ctx: &Ctx, case: &str) -> bool {
    if ctx.model == CrashModel::LossyFs {
        return true;
    }
    crate::report_line(&format!(
        "{case}: not run: crash model {} cannot stop a write half-way or inject I/O faults \
         (CrashModel::LossyFs can)",
        ctx.model
    ));
    let _ = h;
    false
}

/// The power is cut at every file operation of each kind of write in turn (sampled for long
/// writes); after the crash the store holds the state before the write or the one after it —
/// all or nothing per write, the hard state one atomic record — and the one after it if the
/// write had returned `Ok`. Then it takes an append and keeps it across another crash.
pub async fn crash_mid_write_keeps_all_or_nothing<H: LogStoreHarness>(h: &H) {
    let ctx = Ctx::new(h);
    if !sim_fs_or_note(h, &ctx, "crash_mid_write_keeps_all_or_nothing") {
        return;
    }
    let mut rng = Rng::new(ctx.seed);
    let mut tried = 0u64;
    for kind in KINDS {
        let n = ops_of(h, &ctx, kind).await;
        for k in points(n, &mut rng) {
            let (s, g, before) = build_with_preamble(h, &ctx).await;
            let fs: SimFs = h.sim_fs(&g).expect("a LossyFs harness gives its SimFs");
            let op = op_of(kind);
            let mut after = before.clone();
            op.apply(&mut after);
            fs.inject(k, Fault::PowerCut);
            let result = op.run(&s).await;
            let cut = fs.power_lost();
            fs.clear_faults();
            let crash_seed = rng.next_u64();
            let s = crash(h, s, &g, crash_seed).await;
            tried += 1;
            let when = format!(
                "{kind:?} with the power cut at its file operation {k} of {n} (crash seed \
                 {crash_seed}, write returned {})",
                if result.is_ok() { "Ok" } else { "an error" }
            );
            let found = match contents(&s).await {
                Ok(f) => f,
                Err(e) => ctx.fail(format!("after {when}: {e}")),
            };
            let ok = found == after || (result.is_err() && found == before);
            if !ok {
                ctx.fail(format!(
                    "after {when}, the store holds {}; the model allows only {}{}; first \
                     difference from the state after the write: {}",
                    describe(&found),
                    describe(&after),
                    if result.is_err() {
                        format!(" (after the write) or {} (before it)", describe(&before))
                    } else {
                        " (the write was acknowledged)".into()
                    },
                    first_difference(&found, &after)
                ));
            }
            if !cut && result.is_err() {
                ctx.fail(format!("{when}: the write failed but no fault fired"));
            }
            // The store goes on from what it recovered.
            let mut m = found;
            let next = m.last().index.0 + 1;
            let term = m.last().term.0.max(m.hard_state.term.0);
            let more = StoreOp::Write(LogWrite {
                entries: entries(term, next..=next + 2),
                ..LogWrite::default()
            });
            if let Err(e) = more.run(&s).await {
                ctx.fail(format!("after {when}, the recovered store refused an append: {e}"));
            }
            more.apply(&mut m);
            let s = crash(h, s, &g, crash_seed ^ 1).await;
            check_holds(&ctx, &s, &m, &format!("after {when}, an append and a crash")).await;
        }
    }
    crate::report_line(&format!("crash_mid_write_keeps_all_or_nothing: {tried} crash points"));
}

/// An I/O error, `ENOSPC` or a short write at every file operation of each kind of write in
/// turn (sampled for long writes): the store returns an error (never `Ok` for a write it did
/// not make durable), refuses every later write with `Poisoned` until reopened, never reads
/// back data it was not given, and after a crash holds the state before or after the write.
pub async fn io_faults_poison_writes_and_reopen_is_valid<H: LogStoreHarness>(h: &H) {
    let ctx = Ctx::new(h);
    if !sim_fs_or_note(h, &ctx, "io_faults_poison_writes_and_reopen_is_valid") {
        return;
    }
    let mut rng = Rng::new(ctx.seed ^ 0xFA17);
    let mut tried = 0u64;
    for kind in KINDS {
        let n = ops_of(h, &ctx, kind).await;
        let mut pts = points(n, &mut rng);
        // Every fault kind at every point would be slow on long writes: rotate them.
        pts.truncate(32);
        for (i, k) in pts.into_iter().enumerate() {
            let fault = [Fault::Io, Fault::NoSpace, Fault::ShortWrite][(i + kind as usize) % 3];
            let (s, g, before) = build_with_preamble(h, &ctx).await;
            let fs = h.sim_fs(&g).expect("a LossyFs harness gives its SimFs");
            let op = op_of(kind);
            let mut after = before.clone();
            op.apply(&mut after);
            let fired_before = fs.stats().faults;
            fs.inject(k, fault);
            let result = op.run(&s).await;
            let fired = fs.stats().faults > fired_before;
            fs.clear_faults();
            tried += 1;
            let when = format!("{kind:?} with {fault:?} at its file operation {k} of {n}");
            match &result {
                Err(e) if e.kind() == StorageErrorKind::InvalidInput => {
                    ctx.fail(format!("{when}: the store called an I/O failure invalid input: {e}"))
                }
                Err(_) if !fired => {
                    ctx.fail(format!("{when}: the write failed but no fault fired"))
                }
                _ => {}
            }
            // Whatever it holds in memory now must be the state before or after the write.
            match contents(&s).await {
                Ok(now) if now == before || now == after => {}
                Ok(now) => ctx.fail(format!(
                    "{when}: the store now reads back {}, neither the state before the write \
                     {} nor after it {}; first difference from after: {}",
                    describe(&now),
                    describe(&before),
                    describe(&after),
                    first_difference(&now, &after)
                )),
                // Refusing to read after a failure is allowed.
                Err(_) => {}
            }
            if result.is_err() {
                // A write that is valid on whatever the store now holds, so only poisoning
                // can refuse it.
                let last = match s.load().await {
                    Ok(st) => st.last,
                    Err(_) => before.last(),
                };
                let next = last.index.0 + 1;
                let probe = LogWrite { entries: entries(9, next..=next), ..LogWrite::default() };
                match s.write(probe).await {
                    Err(e) if e.kind() == StorageErrorKind::Poisoned => {}
                    other => ctx.fail(format!(
                        "{when}: the write failed, so every later write must be refused with \
                         Poisoned until a reopen; the next write returned {other:?}"
                    )),
                }
            }
            let s = crash(h, s, &g, rng.next_u64()).await;
            let found = match contents(&s).await {
                Ok(f) => f,
                Err(e) => ctx.fail(format!("after {when} and a crash: {e}")),
            };
            let ok = found == after || (result.is_err() && found == before);
            if !ok {
                ctx.fail(format!(
                    "after {when} (write returned {}) and a crash, the store holds {}; the \
                     model allows {} (after){}; first difference from after: {}",
                    if result.is_ok() { "Ok" } else { "an error" },
                    describe(&found),
                    describe(&after),
                    if result.is_err() {
                        format!(" or {} (before)", describe(&before))
                    } else {
                        String::new()
                    },
                    first_difference(&found, &after)
                ));
            }
        }
    }
    crate::report_line(&format!(
        "io_faults_poison_writes_and_reopen_is_valid: {tried} faults injected"
    ));
}

/// A snapshot published through the store's snapshot store, and the log installed at it, are
/// there and intact after a crash; so is a second one that replaces it.
pub async fn snapshots_survive_crashes<H: LogStoreHarness>(h: &H) {
    let ctx = Ctx::new(h);
    let (s, g, mut m) = build_with_preamble(h, &ctx).await;
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]).expect("membership");
    let mut s = s;
    for (i, at) in [LogId::new(2, 35), LogId::new(6, 300)].into_iter().enumerate() {
        let data: Vec<u8> =
            (0..200_000u32).map(|b| (b.wrapping_mul(31) ^ i as u32) as u8).collect();
        let snaps = s.snapshot_store();
        let mut w = match snaps.begin(at, membership.clone(), None).await {
            Ok(w) => w,
            Err(e) => ctx.fail(format!("begin a snapshot at {at}: {e}")),
        };
        for chunk in data.chunks(65_536) {
            if let Err(e) = w.write(chunk).await {
                ctx.fail(format!("write a snapshot chunk: {e}"));
            }
        }
        let meta = match w.finish().await {
            Ok(meta) => meta,
            Err(e) => ctx.fail(format!("finish a snapshot: {e}")),
        };
        if let Err(e) = s.install_snapshot(at).await {
            ctx.fail(format!("install_snapshot({at}): {e}"));
        }
        m.install(at);
        s = crash(h, s, &g, ctx.seed + i as u64).await;
        check_holds(&ctx, &s, &m, &format!("after snapshot {i} at {at} and a crash")).await;
        let snaps = s.snapshot_store();
        match snaps.latest().await {
            Ok(Some(latest)) if latest == meta => {}
            other => ctx.fail(format!(
                "after publishing snapshot {i} ({meta:?}) and a crash, the snapshot store's \
                 latest is {other:?}: published snapshots must be durable"
            )),
        }
        match snaps.read(&meta, 0, meta.size).await {
            Ok(bytes) if bytes[..] == data[..] => {}
            Ok(bytes) => ctx.fail(format!(
                "snapshot {i} reads back {} bytes that differ from the {} written",
                bytes.len(),
                data.len()
            )),
            Err(e) => ctx.fail(format!("read snapshot {i} after a crash: {e}")),
        }
    }
}
