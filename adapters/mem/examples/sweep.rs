//! A long sweep of the cluster suite over many seeds, on the in-memory network and log store,
//! with a progress bar. Failures are printed with their seed (replay one with
//! `RAFTKIT_SEED=<seed> cargo test -p raftkit-mem --test conformance cluster_3_nodes`, or
//! `--first <seed> --seeds 1` here) and their full reports are written to a directory.
//!
//! ```sh
//! cargo run --release -p raftkit-mem --example sweep -- --seeds 2000
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use raftkit_mem::harness::{MemNetHarness, MemStoreHarness};
use raftkit_testkit::cluster::ClusterSuite;

/// Runs the cluster suite over a range of seeds.
#[derive(Parser, Debug)]
#[command(about = "Sweep the raftkit cluster suite over many seeds")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 500)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Cluster sizes to cycle through, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![3, 5])]
    nodes: Vec<usize>,
    /// Parallel runs (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Where failure reports are written.
    #[arg(long, default_value = "sweep-failures")]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    if args.seeds == 0 || args.nodes.is_empty() || args.nodes.contains(&0) {
        eprintln!("error: --seeds must be positive and --nodes must list positive sizes");
        std::process::exit(2);
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} seeds, {per_sec}, eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    let next = Arc::new(AtomicU64::new(args.first));
    let end = args.first + args.seeds;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (next, failures, bar, args) = (next.clone(), failures.clone(), bar.clone(), &args);
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let nodes = args.nodes[(seed % args.nodes.len() as u64) as usize];
                    let suite =
                        ClusterSuite::new(MemNetHarness, MemStoreHarness::default()).nodes(nodes);
                    let report = suite.run(seed);
                    if !report.passed() {
                        bar.println(format!("FAIL {}", report.summary()));
                        let _ = std::fs::create_dir_all(&args.out);
                        let path = args.out.join(format!("seed-{seed}-{nodes}nodes.txt"));
                        if let Err(e) = std::fs::write(&path, report.failure_report()) {
                            bar.println(format!("cannot write {}: {e}", path.display()));
                        }
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push((seed, nodes));
                        bar.set_message(format!(
                            "{} failed",
                            failures.lock().map_or(0, |f| f.len())
                        ));
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish();
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "{} seeds in {:.1}s: {} failed",
        args.seeds,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    for (seed, nodes) in &failures {
        println!(
            "  seed {seed} ({nodes} nodes): report in {}",
            args.out.join(format!("seed-{seed}-{nodes}nodes.txt")).display()
        );
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
