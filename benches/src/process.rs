//! This process's CPU time and resident memory (Linux).

use std::time::Duration;

/// The kernel's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`. It is part of the
/// Linux ABI and 100 on every architecture raftkit targets.
const USER_HZ: u64 = 100;

/// User plus system CPU time of the whole process (every thread) so far: the same totals
/// `getrusage(RUSAGE_SELF)` returns, read from `/proc/self/stat` (fields 14 and 15) so this
/// crate needs neither `unsafe` nor a libc binding. Resolution 10 ms. Zero if unreadable.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / USER_HZ)
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`, …), if readable.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line =
        status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The resident set size now.
pub fn rss() -> Option<u64> {
    status_bytes("VmRSS")
}

/// The peak resident set size since the process started or the last [`reset_peak_rss`].
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Resets the peak RSS to the current RSS (writes `5` to `/proc/self/clear_refs`, Linux ≥ 4.0),
/// so a later [`peak_rss`] is the peak of what ran in between. Returns false if not permitted;
/// the peak then covers everything since the process started.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Formats bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time advances while this thread spins (a reading stuck at zero never gets there),
    /// and by no more than the wall time on every core allows (a unit slip overshoots). Neither
    /// check depends on how loaded the machine is.
    #[test]
    fn cpu_time_follows_spinning() {
        const TARGET: Duration = Duration::from_millis(50);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let before = cpu_time();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time().saturating_sub(before) < TARGET {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "CPU time did not advance by {TARGET:?} in two minutes of spinning"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        let used = cpu_time().saturating_sub(before);
        let wall = start.elapsed();
        // The readings have 10 ms resolution.
        assert!(
            used <= wall * cores + Duration::from_millis(20),
            "{used:?} of CPU in {wall:?} on {cores} cores"
        );
    }

    /// Touching 64 MiB shows in the resident set and its peak (in bytes: a unit slip is off by
    /// 1024); the peak stays after the memory is freed, and a reset brings it back down.
    #[cfg(target_os = "linux")]
    #[test]
    fn memory_readings_follow_an_allocation() {
        const SIZE: u64 = 64 << 20;
        // Other tests of this binary may allocate and free concurrently: allow them 16 MiB.
        const SLACK: u64 = 16 << 20;
        let base = rss().expect("VmRSS on Linux");
        let mut block = vec![0u8; SIZE as usize];
        // Write every page, so all of it is resident.
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&block);
        let holding = rss().expect("VmRSS");
        let peak_holding = peak_rss().expect("VmHWM on Linux");
        assert!(
            holding >= base + SIZE - SLACK,
            "RSS {} with 64 MiB touched, {} before",
            mib(holding),
            mib(base)
        );
        assert!(
            peak_holding >= holding - SLACK,
            "peak {} below RSS {}",
            mib(peak_holding),
            mib(holding)
        );
        drop(block);
        let peak_after = peak_rss().expect("VmHWM");
        assert!(
            peak_after >= base + SIZE - SLACK,
            "peak {} forgot the 64 MiB block (RSS was {} before it)",
            mib(peak_after),
            mib(base)
        );
        // A block this size is its own mapping, returned to the system when freed: once the
        // peak is reset, it no longer covers the block.
        if reset_peak_rss() {
            let peak_reset = peak_rss().expect("VmHWM");
            assert!(
                peak_reset + SIZE - SLACK <= peak_after,
                "peak {} after the reset, {} before it",
                mib(peak_reset),
                mib(peak_after)
            );
        }
    }
}
