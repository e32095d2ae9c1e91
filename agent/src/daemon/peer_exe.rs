//! The executable of the process at the other end of a connection, for
//! `keys.<name>.allowed_executables`: `readlink /proc/<pid>/exe`, bracketed by two reads of
//! the process start time (`/proc/<pid>/stat`, field 22) so that a pid reused by another
//! process during the read is noticed, and a start time later than the connection itself
//! (the connecting process exited and its pid was reused before we looked) is refused.
//!
//! What this cannot see (docs/security.md, "Caller executables"): `SO_PEERCRED` names the
//! process that called `connect`, not every process holding the socket. A process that
//! connects, forks, and then execs an allowed binary passes the check while its child sends
//! the requests. Separate callers by uid for a real boundary; this check is defence in depth.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Linux reports `/proc` times in USER_HZ ticks, which is 100 on every architecture keyward
/// targets (x86-64, aarch64).
const TICKS_PER_SECOND: u64 = 100;

/// Why the caller's executable is unknown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerExeError {
    /// The kernel gave no pid for the peer.
    #[error("the kernel reported no pid for the caller")]
    NoPid,
    /// The process is gone (it exited after connecting).
    #[error("caller process {pid} has exited")]
    Exited {
        /// Its pid.
        pid: i32,
    },
    /// The pid now belongs to a process started after the connection.
    #[error("pid {pid} was reused by another process after the caller connected")]
    Reused {
        /// The pid.
        pid: i32,
    },
    /// `/proc` could not be read (another uid without ptrace access, hidepid, ...).
    #[error("cannot read `{path}`: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
}

/// Time since boot (CLOCK_BOOTTIME, which `/proc/uptime` and process start times use).
///
/// # Errors
/// When `/proc/uptime` cannot be read.
pub fn since_boot() -> Result<Duration, PeerExeError> {
    let text = read("/proc/uptime")?;
    let seconds = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| PeerExeError::Unreadable { path: "/proc/uptime".into(), reason: "unexpected format".into() })?;
    Ok(Duration::from_secs_f64(seconds))
}

/// The executable of `pid`, a process that connected at `connected` (time since boot).
///
/// # Errors
/// The process exited, its pid was reused, or `/proc` is unreadable.
pub fn executable(pid: Option<i32>, connected: Duration) -> Result<PathBuf, PeerExeError> {
    let pid = pid.filter(|p| *p > 0).ok_or(PeerExeError::NoPid)?;
    let before = start_ticks(pid)?;
    // `/proc/uptime` has 10 ms resolution, as do start times: allow one tick of slack.
    if Duration::from_millis(before.saturating_mul(1000 / TICKS_PER_SECOND)) > connected + Duration::from_millis(10) {
        return Err(PeerExeError::Reused { pid });
    }
    let link = format!("/proc/{pid}/exe");
    let exe = std::fs::read_link(&link).map_err(|e| gone_or(pid, &link, &e))?;
    if start_ticks(pid)? != before {
        return Err(PeerExeError::Reused { pid });
    }
    Ok(exe)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn start_ticks(pid: i32) -> Result<u64, PeerExeError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| gone_or(pid, &path, &e))?;
    parse_start_ticks(&text).ok_or_else(|| PeerExeError::Unreadable { path, reason: "unexpected format".into() })
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn gone_or(pid: i32, path: &str, e: &std::io::Error) -> PeerExeError {
    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) {
        PeerExeError::Exited { pid }
    } else {
        PeerExeError::Unreadable { path: path.to_owned(), reason: e.to_string() }
    }
}

fn read(path: &str) -> Result<String, PeerExeError> {
    std::fs::read_to_string(path).map_err(|e| PeerExeError::Unreadable { path: path.to_owned(), reason: e.to_string() })
}

/// Whether `exe` (from `/proc`, symlinks resolved) is one of `allowed` (canonicalised at
/// config load). A binary replaced on disk reads as `<path> (deleted)` and matches nothing.
pub fn is_allowed(exe: &Path, allowed: &[PathBuf]) -> bool {
    allowed.iter().any(|a| a == exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (evil) 1 2 3) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("12 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_found_and_a_later_connection_time_is_required() {
        let me = i32::try_from(std::process::id()).unwrap();
        let exe = executable(Some(me), since_boot().unwrap()).unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap().canonicalize().unwrap());
        // A "connection" before this process started: its pid must have been reused.
        assert_eq!(executable(Some(me), Duration::ZERO), Err(PeerExeError::Reused { pid: me }));
        assert_eq!(executable(None, since_boot().unwrap()), Err(PeerExeError::NoPid));
    }

    #[test]
    fn an_exited_process_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert_eq!(executable(Some(pid), since_boot().unwrap()), Err(PeerExeError::Exited { pid }));
    }
}
