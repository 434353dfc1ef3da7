//! Power loss is harsher than SIGKILL: the page cache dies too. This test runs `RedbLogStore`
//! on a redb storage backend that keeps a *durable* image updated only by `sync_data`, cuts the
//! power after a seeded number of backend operations (every later operation fails), and then
//! reopens a fresh store on the durable image alone. Every write acknowledged before the cut
//! must be there; the write that was in flight must be there entirely or not at all.

use std::io;
use std::sync::{Arc, Mutex};

use raftkit::{HardState, LogId, LogIndex, LogStore, LogWrite, NodeId, Term};
use raftkit_redb::{RedbLogStore, RedbOptions};
use raftkit_testkit::log_store::{LogModel, entries};
use raftkit_testkit::rng::Rng;
use redb::StorageBackend;

#[derive(Debug, Default)]
struct Disk {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Operations left before the power goes out.
    budget: u64,
    dead: bool,
    syncs: u64,
}

#[derive(Debug, Clone)]
struct PowerLossBackend(Arc<Mutex<Disk>>);

fn power_cut() -> io::Error {
    io::Error::other("power cut")
}

impl PowerLossBackend {
    fn tick(d: &mut Disk) -> io::Result<()> {
        if d.dead {
            return Err(power_cut());
        }
        if d.budget == 0 {
            d.dead = true;
            return Err(power_cut());
        }
        d.budget -= 1;
        Ok(())
    }
}

impl StorageBackend for PowerLossBackend {
    fn len(&self) -> io::Result<u64> {
        let d = self.0.lock().unwrap();
        if d.dead {
            return Err(power_cut());
        }
        Ok(d.volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.0.lock().unwrap();
        if d.dead {
            return Err(power_cut());
        }
        let start = offset as usize;
        let end = start + out.len();
        if end > d.volatile.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        out.copy_from_slice(&d.volatile[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        Self::tick(&mut d)?;
        d.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        Self::tick(&mut d)?;
        d.durable = d.volatile.clone();
        d.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        Self::tick(&mut d)?;
        let end = offset as usize + data.len();
        if end > d.volatile.len() {
            d.volatile.resize(end, 0);
        }
        d.volatile[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// A random valid operation on the model's current state.
fn next_write(rng: &mut Rng, m: &LogModel) -> LogWrite {
    let last = m.last();
    let term = m.hard_state.term.0.max(last.term.0).max(1);
    match rng.below(10) {
        0..=5 => {
            let n = 1 + rng.below(30);
            LogWrite {
                entries: entries(term, last.index.0 + 1..=last.index.0 + n),
                ..LogWrite::default()
            }
        }
        6 | 7 if last.index > m.purged.index => {
            let back = 1 + rng.below((last.index.0 - m.purged.index.0).min(10));
            let from = last.index.0 - back + 1;
            LogWrite {
                hard_state: Some(HardState {
                    term: Term(term + 1),
                    vote: Some(NodeId(1)),
                    commit: LogIndex(0),
                }),
                truncate_from: Some(LogIndex(from)),
                entries: entries(term + 1, from..=from + rng.below(5)),
            }
        }
        _ => LogWrite {
            hard_state: Some(HardState {
                term: Term(term),
                vote: Some(NodeId(1 + rng.below(3))),
                commit: last.index,
            }),
            ..LogWrite::default()
        },
    }
}

async fn contents(s: &RedbLogStore) -> LogModel {
    let st = s.load().await.expect("load");
    let mut m = LogModel { hard_state: st.hard_state, purged: st.purged, ..LogModel::default() };
    if st.last.index > st.purged.index {
        for e in s.read(st.purged.index.next(), st.last.index).await.expect("read") {
            m.entries.insert(e.index().0, e);
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn power_loss_keeps_every_acknowledged_write() {
    let rounds: u64 =
        std::env::var("RAFTKIT_POWER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let seed = raftkit_testkit::seed_from_env().unwrap_or(1);
    let mut rng = Rng::new(seed);
    let mut image = Vec::new();
    let mut acked = LogModel::default();
    let mut in_flight: Option<LogWrite> = None;
    let (mut writes, mut cuts_mid_write, mut landed) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let ctx = format!("round {round} (RAFTKIT_SEED={seed})");
        // Power comes back: the disk holds only what was synced.
        let disk = Arc::new(Mutex::new(Disk {
            durable: image.clone(),
            volatile: image.clone(),
            budget: u64::MAX,
            ..Disk::default()
        }));
        let backend = PowerLossBackend(disk.clone());
        let snapshots = Arc::new(raftkit::MemSnapshotStore::new());
        let store = RedbLogStore::with_backend(backend, RedbOptions::default(), snapshots)
            .unwrap_or_else(|e| panic!("{ctx}: reopening after a power cut failed: {e}"));
        let found = contents(&store).await;
        if found != acked {
            let mut with = acked.clone();
            let matches =
                in_flight.as_ref().is_some_and(|w| with.write(w).is_ok() && found == with);
            assert!(
                matches,
                "{ctx}: after a power cut the store holds last={} hs={:?} ({} entries) but acknowledged writes built last={} hs={:?} ({} entries)",
                found.last(),
                found.hard_state,
                found.entries.len(),
                acked.last(),
                acked.hard_state,
                acked.entries.len()
            );
            landed += 1;
            acked = found;
        }
        // Run until the power goes out, somewhere in the next few hundred disk operations.
        disk.lock().unwrap().budget = rng.below(600);
        loop {
            let w = next_write(&mut rng, &acked);
            match store.write(w.clone()).await {
                Ok(()) => {
                    acked
                        .write(&w)
                        .unwrap_or_else(|k| panic!("{ctx}: generated an invalid write: {k}"));
                    writes += 1;
                }
                Err(_) => {
                    in_flight = Some(w);
                    cuts_mid_write += 1;
                    break;
                }
            }
        }
        // The store is poisoned now: it must refuse anything further.
        assert!(
            store.write(LogWrite::default()).await.is_err(),
            "{ctx}: a failed store accepted a write"
        );
        drop(store);
        image = disk.lock().unwrap().durable.clone();
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{rounds} power cuts: {writes} acknowledged writes all survived; {cuts_mid_write} cuts hit a write, \
             {landed} of those writes had landed entirely; final log last={} ({} entries)",
            acked.last(),
            acked.entries.len()
        );
    }
    assert!(writes > rounds, "too few writes to exercise anything");
    assert!(acked.last() > LogId::ZERO);
}
