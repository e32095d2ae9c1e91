//! What a process holds, read from `/proc/<pid>`: open file descriptors and resident memory,
//! for the leak checks of the abuse and soak tests.

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
