//! What a process holds and spends, read from `/proc/<pid>`: open file descriptors and
//! resident memory (the leak checks of the abuse and soak tests), CPU time and context
//! switches (the request-path test and the benchmarks).

use std::time::{Duration, Instant};

/// A process's open fds and RSS at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Entries in `/proc/<pid>/fd`.
    pub fds: usize,
    /// `VmRSS` from `/proc/<pid>/status`, KiB.
    pub rss_kib: u64,
}

/// Reads `pid`'s usage now.
///
/// # Panics
/// When `/proc/<pid>` cannot be read (the process is gone).
pub fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/<pid>/fd").count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    Usage { fds, rss_kib }
}

/// Polls until `pid` holds at most `max_fds` fds; returns how long that took, or `None`
/// when it still holds more after `limit`.
pub fn wait_fds_at_most(pid: u32, max_fds: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if usage(pid).fds <= max_fds {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// utime + stime of a process (all its threads), from `/proc/<pid>/stat`.
///
/// # Errors
/// When `/proc/<pid>/stat` cannot be read or parsed.
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed /proc/{pid}/stat"));
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks_per_sec() as f64))
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| crate::report::command_output(&["getconf", "CLK_TCK"]).parse().unwrap_or(100))
}

/// Context switches per thread of a process, `tid → (voluntary, nonvoluntary)`, from
/// `/proc/<pid>/task/*/status` (the process's own `status` counts its main thread only).
///
/// # Errors
/// When `/proc/<pid>/task` cannot be read.
pub fn context_switches(pid: u32) -> std::io::Result<std::collections::HashMap<u32, (u64, u64)>> {
    let mut by_thread = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end while the folder is read.
        let Ok(task) = task else { continue };
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let mut counts = (0, 0);
        for line in status.lines() {
            let value = |prefix: &str| line.strip_prefix(prefix).and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(n) = value("voluntary_ctxt_switches:") {
                counts.0 = n;
            } else if let Some(n) = value("nonvoluntary_ctxt_switches:") {
                counts.1 = n;
            }
        }
        by_thread.insert(tid, counts);
    }
    Ok(by_thread)
}

/// The context switches between two readings of [`context_switches`]: threads that ended
/// in between are left out, threads that started count from zero.
pub fn switches_between(
    before: &std::collections::HashMap<u32, (u64, u64)>,
    after: &std::collections::HashMap<u32, (u64, u64)>,
) -> (u64, u64) {
    after.iter().fold((0, 0), |(v, n), (tid, (av, an))| {
        let (bv, bn) = before.get(tid).copied().unwrap_or_default();
        (v + av.saturating_sub(bv), n + an.saturating_sub(bn))
    })
}
