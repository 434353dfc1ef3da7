//! The SIGKILL suite for durable log stores ([`sigkill_suite!`](crate::sigkill_suite)).
//!
//! The suite is one test. It re-executes its own test binary, on that same test, as a child process
//! (told apart by its environment) that opens the store in a directory
//! and writes continuously — appends, conflicting-suffix replacements, hard states, purges —
//! announcing each operation before it starts (`BEGIN`) and after it is acknowledged (`ACK`).
//! The parent kills the child with SIGKILL at a seeded random moment (sometimes while it is
//! still opening the store), reopens the store itself, and checks that it holds exactly what
//! the acknowledged operations built — plus, at most, the one operation in flight at the kill,
//! applied entirely or not at all. So: every acknowledged entry and hard state is present and
//! intact, the log is a clean prefix without holes, and a truncation done before the kill never
//! comes back. Then the next child continues on the same store.
//!
//! A killed process loses only what the OS had not yet been given; page-cache contents survive
//! it. Power loss is harsher and needs a store-specific test (one that drops unsynced writes).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftkit::{Entry, HardState, LogId, LogIndex, LogStore, LogWrite, NodeId, StorageError, Term};

use crate::log_store::{LogModel, entries};
use crate::rng::Rng;

const ENV_DIR: &str = "RAFTKIT_CRASH_CHILD_DIR";
const ENV_SEED: &str = "RAFTKIT_CRASH_CHILD_SEED";
/// Marks the child's protocol lines; the test harness prints other things on stdout too.
const MARK: &str = "@@raftkit ";

/// One operation of the child, as announced on its stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Append { term: u64, first: u64, count: u64 },
    Replace { term: u64, from: u64, count: u64 },
    HardState { term: u64, vote: u64, commit: u64 },
    Purge { term: u64, index: u64 },
}

impl Op {
    fn encode(&self) -> String {
        match self {
            Op::Append { term, first, count } => format!("APPEND {term} {first} {count}"),
            Op::Replace { term, from, count } => format!("REPLACE {term} {from} {count}"),
            Op::HardState { term, vote, commit } => format!("HS {term} {vote} {commit}"),
            Op::Purge { term, index } => format!("PURGE {term} {index}"),
        }
    }

    fn decode(words: &[&str]) -> Option<Op> {
        let n = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        Some(match *words.first()? {
            "APPEND" => Op::Append { term: n(1)?, first: n(2)?, count: n(3)? },
            "REPLACE" => Op::Replace { term: n(1)?, from: n(2)?, count: n(3)? },
            "HS" => Op::HardState { term: n(1)?, vote: n(2)?, commit: n(3)? },
            "PURGE" => Op::Purge { term: n(1)?, index: n(2)? },
            _ => return None,
        })
    }

    /// The store operation: a write, or a purge.
    fn to_store(&self) -> Result<LogWrite, LogId> {
        match *self {
            Op::Append { term, first, count } => Ok(LogWrite {
                entries: entries(term, first..=first + count - 1),
                ..LogWrite::default()
            }),
            Op::Replace { term, from, count } => Ok(LogWrite {
                truncate_from: Some(LogIndex(from)),
                entries: if count == 0 { vec![] } else { entries(term, from..=from + count - 1) },
                hard_state: Some(HardState { term: Term(term), vote: None, commit: LogIndex(0) }),
            }),
            Op::HardState { term, vote, commit } => Ok(LogWrite {
                hard_state: Some(HardState {
                    term: Term(term),
                    vote: (vote > 0).then_some(NodeId(vote)),
                    commit: LogIndex(commit),
                }),
                ..LogWrite::default()
            }),
            Op::Purge { term, index } => Err(LogId::new(term, index)),
        }
    }

    fn apply_to(&self, m: &mut LogModel) -> Result<(), String> {
        match self.to_store() {
            Ok(w) => m.write(&w).map_err(|k| format!("{self:?} is invalid on the model: {k}")),
            Err(id) => m.purge(id).map_err(|k| format!("{self:?} is invalid on the model: {k}")),
        }
    }
}

/// Picks the child's next operation from the current state.
fn next_op(rng: &mut Rng, m: &LogModel) -> Op {
    let last = m.last();
    let term = m.hard_state.term.0.max(last.term.0).max(1);
    match rng.below(20) {
        0..=11 => Op::Append { term, first: last.index.0 + 1, count: 1 + rng.below(24) },
        12..=14 if last.index > m.purged.index => {
            let back = 1 + rng.below((last.index.0 - m.purged.index.0).min(12));
            Op::Replace { term: term + 1, from: last.index.0 - back + 1, count: rng.below(8) }
        }
        15..=17 => Op::HardState {
            term: term + rng.below(2),
            vote: rng.below(4),
            commit: m.purged.index.0.max(last.index.0.saturating_sub(rng.below(10))),
        },
        _ if last.index.0 > m.purged.index.0 + 20 => {
            let index = m.purged.index.0 + 1 + rng.below(last.index.0 - m.purged.index.0 - 10);
            let term = m.entries.get(&index).map_or(1, |e| e.term().0);
            Op::Purge { term, index }
        }
        _ => Op::Append { term, first: last.index.0 + 1, count: 1 },
    }
}

pub(crate) async fn load_model<S: LogStore>(s: &S) -> Result<LogModel, StorageError> {
    let st = s.load().await?;
    let mut m = LogModel { hard_state: st.hard_state, purged: st.purged, ..LogModel::default() };
    if st.last.index > st.purged.index {
        for e in s.read(st.purged.index.next(), st.last.index).await? {
            m.entries.insert(e.index().0, e);
        }
    }
    Ok(m)
}

/// The SIGKILL suite, as [`sigkill_suite!`](crate::sigkill_suite)'s one test calls it; `test` is
/// that test's full libtest name. In a child process (the parent re-executes the test binary on
/// `test` with the child's environment set) this is the child's write loop, which exits the
/// process and never returns; otherwise it is the [`parent`].
pub fn run<S: LogStore, F: Fn(&Path) -> Result<S, StorageError>>(test: &str, open: F) {
    match (std::env::var(ENV_DIR), std::env::var(ENV_SEED)) {
        (Ok(dir), Ok(seed)) => child(&dir, &seed, open),
        _ => parent(test, open),
    }
}

/// The child process: writes until killed. Exits the process (never returning to the test
/// harness, which would otherwise report a passed test of its own).
fn child<S: LogStore, F: Fn(&Path) -> Result<S, StorageError>>(
    dir: &str,
    seed: &str,
    open: F,
) -> ! {
    let seed: u64 = seed.parse().expect("numeric seed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let store = open(Path::new(dir)).map_err(|e| format!("open: {e}"))?;
        let mut model = load_model(&store).await.map_err(|e| format!("load: {e}"))?;
        let mut out = std::io::stdout().lock();
        let say = |out: &mut std::io::StdoutLock<'_>, line: String| -> Result<(), String> {
            // A closed pipe means the parent is gone: stop.
            writeln!(out, "\n{MARK}{line}")
                .and_then(|()| out.flush())
                .map_err(|e| format!("stdout: {e}"))
        };
        say(&mut out, format!("READY {}", model.last()))?;
        let mut rng = Rng::new(seed);
        for n in 0..1_000_000u64 {
            let op = next_op(&mut rng, &model);
            say(&mut out, format!("BEGIN {n} {}", op.encode()))?;
            match op.to_store() {
                Ok(w) => store.write(w).await,
                Err(id) => store.purge(id).await,
            }
            .map_err(|e| format!("{op:?}: {e}"))?;
            op.apply_to(&mut model)?;
            say(&mut out, format!("ACK {n}"))?;
        }
        Ok(())
    });
    if let Err(e) = result {
        // The parent reads this from stderr and fails the test with it.
        let _ = writeln!(std::io::stderr(), "crash child failed: {e}");
        std::process::exit(3);
    }
    std::process::exit(0);
}

/// The parent: runs `kills` children (default 50, or `RAFTKIT_KILLS`), killing each at a
/// random moment drawn from `RAFTKIT_SEED` (default 1), and checks the store after each kill.
/// `child_test` is the full libtest name of the test calling [`run`], which the children
/// re-execute.
pub fn parent<S: LogStore, F: Fn(&Path) -> Result<S, StorageError>>(child_test: &str, open: F) {
    let kills: u64 = std::env::var("RAFTKIT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed = crate::seed_from_env().unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("raftkit-crash-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the store directory");
    let guard = RemoveOnDrop(dir.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = Rng::new(seed);
    let mut model = LogModel::default();
    let mut stats = (0u64, 0u64, 0u64); // acknowledged ops, in-flight ops found applied, early kills
    for kill in 0..kills {
        let ctx = |what: String| format!("kill {kill} (RAFTKIT_SEED={seed}): {what}");
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, &dir)
            .env(ENV_SEED, rng.next_u64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(msg) = line.strip_prefix(MARK) else { continue };
                if tx.send(msg.to_string()).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        // Now and then kill before the child has even opened the store (recovery is code too).
        let early = rng.chance(0.1);
        let wait = if early {
            rng.duration(Duration::ZERO, Duration::from_millis(30))
        } else {
            rng.duration(Duration::from_millis(1), Duration::from_millis(120))
        };
        if !early {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(l) => {
                        let ready = l.starts_with("READY");
                        lines.push(l);
                        if ready {
                            break;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                        if let Ok(Some(status)) = child.try_wait() {
                            let err = read_stderr(&mut child);
                            panic!(
                                "{}",
                                ctx(format!(
                                    "the child exited ({status}) before it was ready: {err}"
                                ))
                            );
                        }
                    }
                    Err(_) => panic!("{}", ctx("the child never became ready".into())),
                }
            }
        } else {
            stats.2 += 1;
        }
        std::thread::sleep(wait);
        if let Ok(Some(status)) = child.try_wait() {
            let err = read_stderr(&mut child);
            panic!("{}", ctx(format!("the child stopped on its own ({status}): {err}")));
        }
        child.kill().expect("SIGKILL the child");
        let _ = child.wait();
        let _ = reader.join();
        lines.extend(rx.try_iter());

        // What did the child announce?
        let mut acked = model.clone();
        let mut in_flight: Option<Op> = None;
        for l in &lines {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.first().copied() {
                Some("READY") => {
                    let expect = format!("READY {}", acked.last());
                    assert_eq!(l, &expect, "{}", ctx("the child opened a different log".into()));
                }
                Some("BEGIN") => {
                    let op = Op::decode(&words[2..])
                        .unwrap_or_else(|| panic!("{}", ctx(format!("bad line {l}"))));
                    in_flight = Some(op);
                }
                Some("ACK") => {
                    let op = in_flight
                        .take()
                        .unwrap_or_else(|| panic!("{}", ctx("ACK without BEGIN".into())));
                    op.apply_to(&mut acked).unwrap_or_else(|e| panic!("{}", ctx(e)));
                    stats.0 += 1;
                }
                _ => panic!("{}", ctx(format!("unexpected child output {l:?}"))),
            }
        }

        // Reopen and compare: exactly the acknowledged state, or that plus the op in flight.
        let found = rt
            .block_on(async {
                let s = open(&dir)?;
                load_model(&s).await
            })
            .unwrap_or_else(|e| {
                panic!("{}", ctx(format!("the store does not reopen after SIGKILL: {e}")))
            });
        if found == acked {
            model = acked;
            continue;
        }
        if let Some(op) = &in_flight {
            let mut with = acked.clone();
            if op.apply_to(&mut with).is_ok() && found == with {
                model = with;
                stats.1 += 1;
                continue;
            }
        }
        panic!(
            "{}",
            ctx(format!(
                "after the kill the store holds {} but acknowledged writes built {}{}",
                describe(&found),
                describe(&acked),
                in_flight.map(|op| format!(" (in flight: {op:?})")).unwrap_or_default()
            ))
        );
    }
    drop(guard);
    tracing::info!(
        "{kills} kills ({} before the store opened): {} acknowledged operations survived, \
         {} in-flight operations found complete; final log {}",
        stats.2,
        stats.0,
        stats.1,
        describe(&model)
    );
    assert!(stats.0 > 0, "the children acknowledged nothing: the test exercised nothing");
}

fn describe(m: &LogModel) -> String {
    let holes =
        m.entries.keys().zip(m.entries.keys().skip(1)).filter(|(a, b)| **b != **a + 1).count();
    format!(
        "{{hard state {:?}, purged {}, last {}, {} entries, {holes} holes}}",
        m.hard_state,
        m.purged,
        m.last(),
        m.entries.len()
    )
}

fn read_stderr(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s.lines().filter(|l| l.contains("crash child")).collect::<Vec<_>>().join("; ")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads every entry of a store into a list (for store-specific tests).
pub async fn read_all<S: LogStore>(s: &S) -> Result<Vec<Entry>, StorageError> {
    Ok(load_model(s).await?.entries.into_values().collect())
}

/// Expands to the SIGKILL suite for a durable store: `$open` is a `Fn(&Path) -> Result<Store,
/// StorageError>` that opens (or creates) the store in a directory. One test: the parent, which
/// kills children and checks the store; the children are that same test re-executed with the
/// child environment set (see [`run`](crate::crash::run)), so no test stands in the list only
/// as their entry point.
#[macro_export]
macro_rules! sigkill_suite {
    ($open:expr) => {
        #[test]
        fn sigkill_loses_nothing_acknowledged() {
            let full = concat!(module_path!(), "::sigkill_loses_nothing_acknowledged");
            // libtest names tests without the crate name.
            let name = full.split_once("::").map_or(full, |(_, rest)| rest);
            $crate::crash::run(name, $open);
        }
    };
}
