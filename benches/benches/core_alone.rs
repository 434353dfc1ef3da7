//! The protocol core alone: propose → commit in a simulated 3-node cluster with no IO (messages
//! delivered at once, writes acknowledged at once), per batch of 256 B entries. The harness's
//! core-alone figure measures the same thing over a longer run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use raftkit_bench::core_sim::CoreCluster;

fn propose_to_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_alone/propose_to_commit");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for batch in [1usize, 64, 256, 1024] {
        let mut cluster = CoreCluster::new(256).expect("a 3-node core cluster elects a leader");
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| black_box(cluster.propose_and_commit(batch).expect("the leader accepts")));
        });
    }
    g.finish();
}

// `criterion_group!` makes an undocumented `pub fn`; a private module keeps it internal.
mod group {
    criterion::criterion_group!(benches, super::propose_to_commit);
}
criterion_main!(group::benches);
