//! Runs the example programs end to end: the demo with its default adapters (loopback QUIC,
//! redb) and in memory, its leader failover and node replacement included, and each small
//! wiring program. A program that fails, hangs or does not print what it promises fails the
//! test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `exe` with `args`, killing it after `limit`; returns its exit success and output.
fn run(exe: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("poll the program").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect the output");
    // Both streams, so a failure message shows what the program said.
    let output = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), output)
}

#[test]
fn the_demo_survives_its_leader_dying_over_quic_and_redb() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_demo"), &["--secs", "1"], Duration::from_secs(120));
    assert!(ok, "{out}");
    assert!(out.contains("(quic network, redb log)"), "{out}");
    assert!(out.contains("took over") && out.contains("election timeout"), "{out}");
    assert!(out.contains("Summary:"), "{out}");
    // The figures are true: each of the 16 clients has at most one call in flight, so at most
    // 16 can have been on the killed leader; every acknowledged operation went through the log.
    let number_before = |marker: &str| -> u64 {
        let line = out.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("{out}"));
        let before = &line[..line.find(marker).expect("marker")];
        let word = before.split_whitespace().last().unwrap_or_default();
        word.parse().unwrap_or_else(|_| panic!("no number before {marker:?} in {line:?}"))
    };
    let in_flight = number_before(" operations were in flight on");
    assert!(in_flight <= 16, "{in_flight} calls in flight from 16 clients:\n{out}");
    let acknowledged = number_before(" acknowledged, latency");
    let applied = number_before(" log entries");
    assert!(acknowledged > 0 && acknowledged <= applied, "{out}");
    // Three nodes each report no wrong key.
    assert_eq!(out.matches(" checked keys wrong").count(), 3, "{out}");
    assert!(
        !out.lines().any(|l| l.contains("checked keys wrong") && !l.contains("; 0 of ")),
        "{out}"
    );
    replacement_shown_and_checked(&out);
}

/// The dead leader was replaced by the fresh node n4 (added as a learner, promoted, the dead
/// node removed), and the final check covered n4 and left out the removed node.
fn replacement_shown_and_checked(out: &str) {
    for step in ["n4 added as a learner", "n4 promoted to voter", "removed in", "n4 replaced"] {
        assert!(out.contains(step), "no {step:?} in:\n{out}");
    }
    let checked = |l: &&str| l.contains(" checked keys wrong");
    let n4 = out.lines().filter(checked).find(|l| l.trim_start().starts_with("n4:"));
    assert!(n4.is_some_and(|l| l.contains("; 0 of ")), "n4 was not checked:\n{out}");
    assert!(out.contains("killed and removed from the cluster; not checked"), "{out}");
}

#[test]
fn the_demo_runs_in_memory() {
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_demo"),
        &["--network", "mem", "--log", "mem", "--secs", "1", "--clients", "4"],
        Duration::from_secs(120),
    );
    assert!(ok, "{out}");
    assert!(out.contains("(mem network, mem log)") && out.contains("Summary:"), "{out}");
    replacement_shown_and_checked(&out);
}

#[test]
fn the_demo_rejects_bad_options() {
    for args in [&["--network", "carrier-pigeon"][..], &["--clients", "0"], &["--secs", "x"]] {
        let (ok, _) = run(env!("CARGO_BIN_EXE_demo"), args, Duration::from_secs(30));
        assert!(!ok, "{args:?} was accepted");
    }
}

#[test]
fn mem_cluster_writes_and_reads() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_mem_cluster"), &[], Duration::from_secs(60));
    assert!(ok && out.contains("language = Value(Some(\"rust\"))"), "{out}");
}

#[test]
fn quic_redb_writes_and_reads() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_quic_redb"), &[], Duration::from_secs(60));
    assert!(ok && out.contains("durable = Value(Some(\"yes\"))"), "{out}");
}

#[cfg(feature = "rocksdb")]
#[test]
fn quic_rocksdb_writes_and_reads() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_quic_rocksdb"), &[], Duration::from_secs(60));
    assert!(ok && out.contains("durable = Value(Some(\"yes\"))"), "{out}");
}
