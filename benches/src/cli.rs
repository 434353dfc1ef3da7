//! Command-line options, validated into a [`Plan`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::combo::Combo;

/// Benchmarks a 3-node raftkit cluster for every adapter combination and writes a report.
#[derive(Parser, Debug, Clone)]
#[command(name = "raftkit-bench", version, about, long_about = None)]
pub struct Args {
    /// Smoke check for CI: few points, short runs, every compiled-in combination; finishes in
    /// under two minutes. Results go to `<date>-quick.md`.
    #[arg(long)]
    pub quick: bool,
    /// Measured seconds per point (after the warm-up). Default: 5, or 1 with --quick.
    #[arg(long, value_name = "SECS")]
    pub secs: Option<f64>,
    /// Warm-up seconds per point, not measured. Default: 1, or 0.25 with --quick.
    #[arg(long, value_name = "SECS")]
    pub warmup: Option<f64>,
    /// Where the report and plots are written.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// Where the nodes' data directories are created (a temporary directory inside it, removed
    /// afterwards). Default: the OS temporary directory. Its file system is the one whose fsync
    /// latency is measured.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Only these combinations, comma-separated: mem+mem, mem+redb, mem+rocksdb, quic+mem,
    /// quic+redb, quic+rocksdb.
    #[arg(long, value_name = "COMBO,...", value_delimiter = ',', ignore_case = true)]
    pub only: Option<Vec<Combo>>,
    /// Concurrent clients per point, comma-separated. Default: 1,16,64,256 (quick: 1,256).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub clients: Option<Vec<String>>,
    /// Payload sizes per point, comma-separated, such as 16, 256B, 4KiB or 1MiB (KB and MB are
    /// decimal: 1000 and 1000000). Default: 16,256,4KiB (quick: 256).
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',')]
    pub payloads: Option<Vec<String>>,
    /// Client counts of the openraft comparison (mem+mem, empty payload). Default:
    /// 1,64,256,4096 (quick: 1,256).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub compare_clients: Option<Vec<String>>,
    /// Length of the memory check (a long mem+redb run). Default: 40 s (quick: 3 s).
    #[arg(long, value_name = "SECS")]
    pub memory_secs: Option<f64>,
    /// Length of each measured window of the membership part (with and without the change;
    /// the window with the change lasts until the change is done if that is later). Default:
    /// 5 s (quick: 1.5 s).
    #[arg(long, value_name = "SECS")]
    pub membership_secs: Option<f64>,
    /// Client counts of the reads part (each measured with writes and with Linearizable,
    /// Lease and Follower reads). Default: 1,64,256 (quick: 1,256).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub read_clients: Option<Vec<String>>,
    /// Length of each measured window of the reads part. Default: 5 s (quick: 0.4 s).
    #[arg(long, value_name = "SECS")]
    pub reads_secs: Option<f64>,
    /// Leadership transfers of the transfer part. Default: 20 (quick: 6).
    #[arg(long, value_name = "N")]
    pub transfers: Option<usize>,
    /// Which parts to run, comma-separated: matrix, compare, core, memory, membership, reads,
    /// transfer. Default: all.
    #[arg(long, value_name = "PART,...", value_delimiter = ',', ignore_case = true)]
    pub parts: Option<Vec<Part>>,
    /// Tokio worker threads shared by the three nodes and the clients. Default: one per core.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seed of the in-memory network and the nodes' election jitter.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Measure every matrix and comparison point this many times and report the run with the
    /// median throughput, with the range of all runs (shared machines vary from minute to
    /// minute). Default: 1.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: usize,
    /// A remark on the conditions of the run, printed at the top of the report (for example
    /// that other builds shared the machine).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Profiling mode: for each --compare-clients count, start the comparison's cluster
    /// (mem+mem, empty commands), run exactly N writes, stop, and exit without a report. Run it
    /// under `valgrind --tool=callgrind` to count instructions per commit.
    #[arg(long, value_name = "N")]
    pub commits: Option<u64>,
    /// Which framework --commits drives (openraft needs --features openraft).
    #[arg(long, value_enum, default_value = "raftkit")]
    pub framework: crate::run::Framework,
}

/// The most runs per point `--repeat` takes.
pub const MAX_REPEAT: usize = 25;

/// One part of the harness (`--parts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Part {
    /// Every combination × clients × payloads.
    Matrix,
    /// The like-for-like openraft comparison.
    Compare,
    /// The core alone, without IO.
    Core,
    /// RSS as the log grows.
    Memory,
    /// Throughput and latency during a membership change, against none.
    Membership,
    /// Reads (Linearizable, Lease, Follower) against writes, same clients and window.
    Reads,
    /// Leadership transfers on an idle cluster, and no acknowledged write lost.
    Transfer,
}

impl Part {
    const ALL: [Part; 7] = [
        Part::Matrix,
        Part::Compare,
        Part::Core,
        Part::Memory,
        Part::Membership,
        Part::Reads,
        Part::Transfer,
    ];
}

/// What one run does, every option checked and every default filled in.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Quick (smoke) mode.
    pub quick: bool,
    /// Measured time per point.
    pub measure: Duration,
    /// Unmeasured warm-up per point.
    pub warmup: Duration,
    /// Output directory.
    pub out: PathBuf,
    /// Parent of the temporary data directory.
    pub data_parent: PathBuf,
    /// Combinations requested that this build can run, in report order.
    pub combos: Vec<Combo>,
    /// Combinations requested that this build cannot run.
    pub skipped: Vec<Combo>,
    /// Client counts of the matrix.
    pub clients: Vec<usize>,
    /// Payload sizes of the matrix, in bytes.
    pub payloads: Vec<usize>,
    /// Client counts of the openraft comparison.
    pub compare_clients: Vec<usize>,
    /// Length of the memory check.
    pub memory: Duration,
    /// Nominal length of each measured window of the membership part.
    pub membership: Duration,
    /// Client counts of the reads part.
    pub read_clients: Vec<usize>,
    /// Length of each measured window of the reads part.
    pub reads: Duration,
    /// Leadership transfers of the transfer part.
    pub transfers: usize,
    /// How long the core alone runs per batch size.
    pub core: Duration,
    /// Samples of the fsync measure.
    pub fsync_samples: usize,
    /// Samples of the QUIC round-trip measure.
    pub rtt_samples: usize,
    /// Parts to run.
    pub parts: Vec<Part>,
    /// Tokio worker threads.
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// Runs per matrix and comparison point (the median is reported).
    pub repeat: usize,
    /// The remark printed at the top of the report.
    pub note: Option<String>,
    /// The fixed-commit profiling mode, if asked for: this many writes per client count.
    pub commits: Option<u64>,
    /// The framework the fixed-commit mode drives.
    pub framework: crate::run::Framework,
}

impl Plan {
    /// Whether `part` runs.
    pub fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

/// The most transfers the transfer part makes.
pub const MAX_TRANSFERS: usize = 1000;

/// The most clients a point may have (each is a task with a pending write).
pub const MAX_CLIENTS: usize = 100_000;
/// The largest payload accepted (a command is one log entry).
pub const MAX_PAYLOAD: usize = 16 << 20;

fn seconds(what: &str, value: Option<f64>, default: f64) -> Result<Duration> {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 24.0 * 3600.0 {
        bail!("--{what} must be a positive number of seconds (at most a day), got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a client count.
pub fn parse_count(what: &str, s: &str) -> Result<usize> {
    let n: usize = s
        .trim()
        .parse()
        .with_context(|| format!("--{what}: `{s}` is not a whole number of clients"))?;
    if n == 0 || n > MAX_CLIENTS {
        bail!("--{what}: {n} clients is out of range (1 to {MAX_CLIENTS})");
    }
    Ok(n)
}

/// Parses a size such as `16`, `256B`, `4KiB` or `1MiB` (bytesize's syntax), up to
/// [`MAX_PAYLOAD`].
pub fn parse_size(s: &str) -> Result<usize> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("--payloads: `{s}` is not a size such as 4KiB: {e}"))?;
    usize::try_from(size.as_u64()).ok().filter(|b| *b <= MAX_PAYLOAD).with_context(|| {
        format!("--payloads: `{s}` is larger than the {} MiB limit", MAX_PAYLOAD >> 20)
    })
}

fn list<T: Ord + Copy>(
    values: Option<&[String]>,
    default: &[T],
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = match values {
        None => default.to_vec(),
        Some(v) => {
            v.iter().filter(|s| !s.trim().is_empty()).map(|s| parse(s)).collect::<Result<_>>()?
        }
    };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Args {
    /// Checks every option and fills in the defaults of the chosen mode.
    pub fn plan(&self) -> Result<Plan> {
        let q = self.quick;
        let measure = seconds("secs", self.secs, if q { 1.0 } else { 5.0 })?;
        let warmup = seconds("warmup", self.warmup, if q { 0.25 } else { 1.0 })?;
        let memory = seconds("memory-secs", self.memory_secs, if q { 3.0 } else { 40.0 })?;
        let membership =
            seconds("membership-secs", self.membership_secs, if q { 1.5 } else { 5.0 })?;
        let reads = seconds("reads-secs", self.reads_secs, if q { 0.4 } else { 5.0 })?;
        let transfers = match self.transfers {
            None => {
                if q {
                    6
                } else {
                    20
                }
            }
            Some(n @ 1..=MAX_TRANSFERS) => n,
            Some(n) => bail!("--transfers: {n} is out of range (1 to {MAX_TRANSFERS})"),
        };
        let requested: Vec<Combo> = match &self.only {
            None => Combo::ALL.to_vec(),
            Some(combos) => {
                let mut v = combos.clone();
                if v.is_empty() {
                    bail!("--only: name at least one combination");
                }
                v.sort_unstable();
                v.dedup();
                if let Some(c) = v.iter().find(|c| !c.compiled()) {
                    bail!(
                        "--only: {c} needs RocksDB, which this build leaves out; rebuild with \
                         `--features rocksdb` (cargo run --release -p raftkit-bench --features \
                         rocksdb -- ...)"
                    );
                }
                v
            }
        };
        let (combos, skipped) = requested.into_iter().partition(|c| c.compiled());
        let clients = list(
            self.clients.as_deref(),
            if q { &[1, 256][..] } else { &[1, 16, 64, 256][..] },
            |s| parse_count("clients", s),
        )?;
        let payloads = list(
            self.payloads.as_deref(),
            if q { &[256][..] } else { &[16, 256, 4096][..] },
            parse_size,
        )?;
        let compare_clients = list(
            self.compare_clients.as_deref(),
            if q { &[1, 256][..] } else { &[1, 64, 256, 4096][..] },
            |s| parse_count("compare-clients", s),
        )?;
        let read_clients = list(
            self.read_clients.as_deref(),
            if q { &[1, 256][..] } else { &[1, 64, 256][..] },
            |s| parse_count("read-clients", s),
        )?;
        let parts = match &self.parts {
            None => Part::ALL.to_vec(),
            Some(parts) => {
                let mut v = parts.clone();
                if v.is_empty() {
                    bail!("--parts: name at least one part");
                }
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        if self.commits == Some(0) {
            bail!("--commits: give at least one commit");
        }
        if self.framework == crate::run::Framework::Openraft && crate::run::OPENRAFT.is_none() {
            bail!(
                "--framework openraft: the openraft baseline is not built (build with --features openraft)"
            );
        }
        if clients.is_empty()
            || payloads.is_empty()
            || compare_clients.is_empty()
            || read_clients.is_empty()
        {
            bail!(
                "--clients, --payloads, --compare-clients and --read-clients need at least one \
                 value each"
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match self.threads {
            None => cores,
            Some(n) if (1..=1024).contains(&n) => n,
            Some(n) => bail!("--threads: {n} is out of range (1 to 1024)"),
        };
        let data_parent = match &self.data_dir {
            Some(d) => {
                if !d.is_dir() {
                    bail!("--data-dir {}: not an existing directory", d.display());
                }
                d.clone()
            }
            None => std::env::temp_dir(),
        };
        if self.out.exists() && !self.out.is_dir() {
            bail!("--out {}: exists and is not a directory", self.out.display());
        }
        Ok(Plan {
            quick: q,
            measure,
            warmup,
            out: self.out.clone(),
            data_parent,
            combos,
            skipped,
            clients,
            payloads,
            compare_clients,
            memory,
            membership,
            read_clients,
            reads,
            transfers,
            core: if q { Duration::from_millis(300) } else { Duration::from_secs(3) },
            fsync_samples: if q { 50 } else { 200 },
            rtt_samples: if q { 200 } else { 1000 },
            parts,
            threads,
            seed: self.seed,
            note: self.note.clone(),
            commits: self.commits,
            framework: self.framework,
            repeat: match self.repeat {
                n @ 1..=MAX_REPEAT => n,
                n => bail!("--repeat: {n} is out of range (1 to {MAX_REPEAT})"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Plan> {
        let mut argv = vec!["raftkit-bench"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(anyhow::Error::from)?.plan()
    }

    #[test]
    fn defaults_and_quick() {
        let full = args(&[]).unwrap();
        assert_eq!(full.clients, vec![1, 16, 64, 256]);
        assert_eq!(full.payloads, vec![16, 256, 4096]);
        assert_eq!(full.combos.len() + full.skipped.len(), 6);
        let quick = args(&["--quick"]).unwrap();
        assert_eq!(quick.clients, vec![1, 256]);
        assert!(quick.measure < full.measure);
        assert!(quick.runs(Part::Membership) && full.runs(Part::Membership));
        assert!(quick.membership < full.membership);
        let only = args(&["--parts", "membership"]).unwrap();
        assert_eq!(only.parts, vec![Part::Membership]);
        // The reads and transfer parts run in both modes, shorter when quick.
        for p in [&full, &quick] {
            assert!(p.runs(Part::Reads) && p.runs(Part::Transfer));
        }
        assert_eq!(full.read_clients, vec![1, 64, 256]);
        assert_eq!(quick.read_clients, vec![1, 256]);
        assert!(quick.reads < full.reads);
        assert_eq!((full.transfers, quick.transfers), (20, 6));
        let both = args(&["--parts", "transfer,reads"]).unwrap();
        assert_eq!(both.parts, vec![Part::Reads, Part::Transfer]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16").unwrap(), 16);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("4 KiB").unwrap(), 4096);
        assert_eq!(parse_size("4KB").unwrap(), 4000);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("99999999999MiB").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(args(&["--repeat", "0"]).is_err());
        assert!(args(&["--repeat", "26"]).is_err());
        assert_eq!(args(&["--repeat", "3"]).unwrap().repeat, 3);
        assert_eq!(args(&[]).unwrap().repeat, 1);
        assert!(args(&["--clients", "0"]).is_err());
        assert!(args(&["--clients", "abc"]).is_err());
        assert!(args(&["--secs", "-1"]).is_err());
        assert!(args(&["--secs", "NaN"]).is_err());
        assert!(args(&["--only", "mem+sqlite"]).is_err());
        assert!(args(&["--only", ","]).is_err());
        assert!(args(&["--parts", "everything"]).is_err());
        assert!(args(&["--transfers", "0"]).is_err());
        assert!(args(&["--read-clients", "0"]).is_err());
        assert!(args(&["--reads-secs", "0"]).is_err());
        let e = args(&["--data-dir", "/definitely/not/here"]).unwrap_err();
        assert!(e.to_string().contains("not an existing directory"), "{e}");
    }

    #[test]
    fn only_selects_and_dedups() {
        let p = args(&["--only", "quic+redb,mem+mem,quic+redb"]).unwrap();
        let names: Vec<&str> = p.combos.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["mem+mem", "quic+redb"]);
        if !cfg!(feature = "rocksdb") {
            let e = args(&["--only", "quic+rocksdb"]).unwrap_err();
            assert!(format!("{e:#}").contains("--features rocksdb"), "{e:#}");
        }
    }
}
