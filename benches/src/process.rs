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

    #[test]
    fn readings_are_plausible() {
        let before = cpu_time();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = cpu_time().saturating_sub(before);
        assert!(used >= Duration::from_millis(50), "{used:?} of CPU for 100 ms of spinning");
        if let (Some(now), Some(peak)) = (rss(), peak_rss()) {
            assert!(now > 0 && peak >= now / 2);
        }
    }
}
