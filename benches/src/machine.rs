//! What the results were measured on: the machine, the data directory's fsync latency, and the
//! loopback QUIC round trip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use raftkit::{Heartbeat, Inbox, LogIndex, Message, MessageBody, Network, NodeId, Term};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};

/// A latency distribution summarised.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// The median.
    pub median: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The fastest sample.
    pub min: Duration,
    /// How many samples.
    pub samples: usize,
}

impl Latency {
    /// Summarises samples (any order). Empty input gives zeros.
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Latency { median: at(0.5), p99: at(0.99), min: samples[0], samples: samples.len() }
    }
}

/// The machine the harness ran on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// Physical memory, in bytes.
    pub memory: u64,
    /// Kernel name and release.
    pub kernel: String,
    /// The data directory (the nodes' files live in a temporary directory inside it).
    pub data_dir: PathBuf,
    /// Its file system type and device.
    pub file_system: String,
    /// 4 KiB append + `fdatasync` on the data directory's file system, one writer.
    pub fsync: Latency,
    /// The same with three writers at once, each on its own file (as the three nodes of a
    /// local cluster do): file systems that batch journal commits can answer these faster.
    pub fsync_concurrent: Latency,
    /// Round trip of a small message between two `QuicNetwork` endpoints on loopback.
    pub quic_rtt: Latency,
    /// `release` or `debug` (debug assertions on).
    pub profile: &'static str,
    /// The system's 1-, 5- and 15-minute load averages (`/proc/loadavg`) when the run started
    /// and when it ended: above the core count, something else competed for the CPU.
    pub load: (String, String),
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg` ("?" if unreadable).
pub fn load_average() -> String {
    let l = read("/proc/loadavg");
    let v: Vec<&str> = l.split_whitespace().take(3).collect();
    if v.len() == 3 { v.join(" ") } else { "?".into() }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The static facts: CPU, cores, memory, kernel, file system of `data_dir`.
pub fn describe(data_dir: &Path) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".to_string(), |s| s.trim().to_string());
    let memory = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    let kernel = format!(
        "{} {}",
        read("/proc/sys/kernel/ostype").trim(),
        read("/proc/sys/kernel/osrelease").trim()
    );
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory,
        kernel,
        data_dir: data_dir.to_path_buf(),
        file_system: file_system_of(data_dir),
        fsync: Latency::default(),
        fsync_concurrent: Latency::default(),
        quic_rtt: Latency::default(),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        load: (load_average(), String::new()),
    }
}

/// The mount (from `/proc/mounts`) with the longest mount point that contains `dir`.
fn file_system_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mnt).then(|| (mnt.len(), format!("{fs} on {dev} (mounted at {mnt})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_string(), |(_, s)| s)
}

/// Appends 4 KiB to a file in `dir` and `fdatasync`s it, `samples` times (after a few
/// unmeasured rounds): what one durable log append costs on that file system.
pub fn measure_fsync(dir: &Path, samples: usize) -> Result<Latency> {
    fsync_samples(dir, "fsync-probe", samples).map(Latency::of)
}

/// Like [`measure_fsync`] with `writers` threads at once, each appending to its own file.
pub fn measure_fsync_concurrent(dir: &Path, samples: usize, writers: usize) -> Result<Latency> {
    let all = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| s.spawn(move || fsync_samples(dir, &format!("fsync-probe-{w}"), samples)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("an fsync probe thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(Latency::of(all.into_iter().flatten().collect()))
}

fn fsync_samples(dir: &Path, name: &str, samples: usize) -> Result<Vec<Duration>> {
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0xa5u8; 4096];
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 5 {
        let t = Instant::now();
        file.write_all(&block).with_context(|| format!("writing {}", path.display()))?;
        file.sync_data().with_context(|| format!("fdatasync on {}", path.display()))?;
        if i >= 5 {
            out.push(t.elapsed());
        }
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(out)
}

/// Sends a heartbeat from one `QuicNetwork` endpoint to another on 127.0.0.1, which echoes it
/// back, `samples` times (after connecting and warming up): the round trip Raft messages see,
/// including the adapter's framing and the codec.
pub async fn measure_quic_rtt(samples: usize) -> Result<Latency> {
    let ca = CertAuthority::generate().context("generating a test CA")?;
    let book = AddressBook::new();
    let (a, b) = (NodeId(1), NodeId(2));
    let bind = |id: NodeId| -> Result<QuicNetwork> {
        let certs = ca.node_certs(id).with_context(|| format!("issuing a certificate for {id}"))?;
        let listen = "127.0.0.1:0".parse().context("loopback address")?;
        let net =
            QuicNetwork::bind(QuicConfig::new(id, listen, certs).with_addresses(book.clone()))
                .with_context(|| format!("binding a QUIC endpoint for {id}"))?;
        book.insert(id, net.local_addr());
        Ok(net)
    };
    let (net_a, net_b) = (bind(a)?, bind(b)?);
    let (inbox_a, mut rx_a) = Inbox::channel(64);
    let (inbox_b, mut rx_b) = Inbox::channel(64);
    net_a.start(inbox_a).await.context("starting endpoint 1")?;
    net_b.start(inbox_b).await.context("starting endpoint 2")?;
    let echo = {
        let net_b = net_b.clone();
        tokio::spawn(async move {
            while let Some(m) = rx_b.recv().await {
                if net_b.send(m.from, vec![m.message]).await.is_err() {
                    break;
                }
            }
        })
    };
    let ping = Message {
        term: Term(1),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), round: 0 }),
    };
    let mut out = Vec::with_capacity(samples);
    let warmup = 50;
    for i in 0..samples + warmup {
        let t = Instant::now();
        let round = async {
            net_a.send(b, vec![ping.clone()]).await.context("sending")?;
            rx_a.recv().await.context("the echo endpoint stopped")
        };
        match tokio::time::timeout(Duration::from_secs(5), round).await {
            Ok(r) => {
                r?;
            }
            Err(_) => bail!("no echo within 5 s on loopback QUIC"),
        }
        if i >= warmup {
            out.push(t.elapsed());
        }
    }
    echo.abort();
    net_a.shutdown().await;
    net_b.shutdown().await;
    Ok(Latency::of(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary() {
        let l = Latency::of((1..=100).map(Duration::from_micros).collect());
        assert_eq!(l.min, Duration::from_micros(1));
        assert_eq!(l.median, Duration::from_micros(51));
        assert_eq!(l.p99, Duration::from_micros(99));
        assert_eq!(Latency::of(Vec::new()).samples, 0);
    }

    #[test]
    fn fsync_probe_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let l = measure_fsync(dir.path(), 3).unwrap();
        assert_eq!(l.samples, 3);
        let l = measure_fsync_concurrent(dir.path(), 3, 3).unwrap();
        assert_eq!(l.samples, 9);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}

/// How this binary was built: both sides of the openraft comparison are in it, so they share
/// these settings. Recorded by the build script (`benches/build.rs`, which says where each
/// value comes from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildProfile {
    /// The cargo profile (`dev` or `release`).
    pub name: &'static str,
    /// `opt-level`.
    pub opt_level: &'static str,
    /// Debug info (`DEBUG` as cargo gives it to build scripts).
    pub debug: &'static str,
    /// `lto`, with where the value came from.
    pub lto: &'static str,
    /// `codegen-units`, with where the value came from.
    pub codegen_units: &'static str,
}

/// This binary's build profile.
pub const BUILD: BuildProfile = BuildProfile {
    name: env!("RAFTKIT_BENCH_PROFILE"),
    opt_level: env!("RAFTKIT_BENCH_OPT_LEVEL"),
    debug: env!("RAFTKIT_BENCH_DEBUG"),
    lto: env!("RAFTKIT_BENCH_LTO"),
    codegen_units: env!("RAFTKIT_BENCH_CODEGEN_UNITS"),
};

impl std::fmt::Display for BuildProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "profile `{}`: opt-level {}, debug info {}, LTO {}, codegen units {}",
            self.name, self.opt_level, self.debug, self.lto, self.codegen_units
        )
    }
}
