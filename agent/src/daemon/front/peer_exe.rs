//! The executable of the process at the other end of a connection, for
//! `keys.<name>.allowed_executables`. Read only when a key has such a rule; every other
//! request never looks at `/proc`.
//!
//! The running image is named by its file, not its path: `stat` through the magic link
//! `/proc/<pid>/exe` gives the device and inode the kernel actually mapped, which a bind
//! mount over an allowed path in the caller's own mount namespace (`unshare -Urm` +
//! `mount --bind`) cannot change, while `readlink` would show the allowed path. The read is
//! bracketed by two reads of the process start time (`/proc/<pid>/stat`, field 22), so a
//! pid reused by another process during the read is noticed, and a start time later than
//! the connection itself (the connecting process exited and its pid was reused before we
//! looked) is refused. The connection time comes from CLOCK_BOOTTIME, the clock process
//! start times count in, so the agent needs no `/proc/uptime` (hidden by systemd's
//! `ProcSubset=pid`).
//!
//! A caller of another uid: `/proc/<pid>/exe` needs ptrace read access (same uid, or
//! CAP_SYS_PTRACE), and `ProtectProc=invisible` / `hidepid` hide the whole `/proc/<pid>`.
//! Both are reported as such, not as an exited caller (deploy/systemd/drop-ins/
//! allowed-executables.conf grants what is needed).
//!
//! What this cannot see (docs/security.md, "Caller executables"): `SO_PEERCRED` names the
//! process that called `connect`, not every process holding the socket. A process that
//! connects, forks, and then execs an allowed binary passes the check while its child sends
//! the requests. Separate callers by uid for a real boundary; this check is defence in depth.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::time::{clock_gettime, ClockId};

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
    /// `/proc/<pid>` is hidden from the agent while the process exists.
    #[error(
        "`/proc/{pid}` is hidden from the agent (ProtectProc=invisible or hidepid); \
         see deploy/systemd/drop-ins/allowed-executables.conf"
    )]
    Hidden {
        /// The pid.
        pid: i32,
    },
    /// `/proc/<pid>/exe` is refused: another uid, and the agent lacks CAP_SYS_PTRACE.
    #[error(
        "no access to `{path}` (a caller of another uid needs CAP_SYS_PTRACE; \
         see deploy/systemd/drop-ins/allowed-executables.conf)"
    )]
    NoAccess {
        /// The file.
        path: String,
    },
    /// `/proc` could not be read for another reason.
    #[error("cannot read `{path}`: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The boot-time clock is unavailable.
    #[error("cannot read CLOCK_BOOTTIME: {0}")]
    Clock(Errno),
}

/// A file, by the identity the kernel gives it: what `stat` reports as device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file at `path` (symlinks followed), as the agent's own mount namespace sees it.
    ///
    /// # Errors
    /// When `path` cannot be stat'ed.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self { dev: meta.dev(), ino: meta.ino() })
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {}:{} inode {}", nix::sys::stat::major(self.dev), nix::sys::stat::minor(self.dev), self.ino)
    }
}

/// The image a process runs: the path `/proc` shows (for messages) and the file's identity
/// (for the decision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningImage {
    /// `readlink /proc/<pid>/exe`, as the caller's mount namespace names it.
    pub path: PathBuf,
    /// `stat /proc/<pid>/exe`: the file actually mapped.
    pub file: FileId,
}

/// One `allowed_executables` entry: the path (symlinks resolved) and the file it named when
/// the config was loaded or reloaded.
#[derive(Clone, Debug)]
pub struct AllowedExe {
    path: PathBuf,
    file: Option<FileId>,
}

impl AllowedExe {
    /// Resolves `path` and records its file identity now. A missing file is kept (and
    /// matches nothing until it exists and the config is reloaded).
    ///
    /// # Errors
    /// When the path cannot be resolved or stat'ed; the entry is returned anyway, matching
    /// nothing, so the caller can warn and go on.
    pub fn record(path: &Path) -> Result<Self, (Self, std::io::Error)> {
        match path.canonicalize().and_then(|p| FileId::of(&p).map(|f| (p, f))) {
            Ok((path, file)) => Ok(Self { path, file: Some(file) }),
            Err(e) => Err((Self { path: path.to_owned(), file: None }, e)),
        }
    }

    /// Whether `image` is this file: the identity recorded at load, or (after an upgrade
    /// replaced the file) what the path names now in the agent's own mount namespace, which a
    /// caller's bind mounts do not reach. Path strings are never compared.
    pub fn matches(&self, image: &RunningImage) -> bool {
        self.file == Some(image.file) || FileId::of(&self.path).is_ok_and(|now| now == image.file)
    }
}

/// Time since boot, from CLOCK_BOOTTIME (the clock `/proc/<pid>/stat` start times use).
///
/// # Errors
/// When the clock cannot be read (kernels before 2.6.39, or a system-call filter).
pub fn since_boot() -> Result<Duration, PeerExeError> {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(PeerExeError::Clock)?;
    Ok(Duration::from(now))
}

/// The running image of `pid`, a process that connected at `connected` (time since boot).
///
/// # Errors
/// The process exited, its pid was reused, or its `/proc` entry is hidden or refused.
pub fn executable(pid: Option<i32>, connected: Duration) -> Result<RunningImage, PeerExeError> {
    let pid = pid.filter(|p| *p > 0).ok_or(PeerExeError::NoPid)?;
    let before = start_ticks(pid)?;
    // Start times have 10 ms resolution: allow one tick of slack.
    if Duration::from_millis(before.saturating_mul(1000 / TICKS_PER_SECOND)) > connected + Duration::from_millis(10) {
        return Err(PeerExeError::Reused { pid });
    }
    let link = format!("/proc/{pid}/exe");
    let path = std::fs::read_link(&link).map_err(|e| classify(pid, &link, &e))?;
    let file = FileId::of(Path::new(&link)).map_err(|e| classify(pid, &link, &e))?;
    if start_ticks(pid)? != before {
        return Err(PeerExeError::Reused { pid });
    }
    Ok(RunningImage { path, file })
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn start_ticks(pid: i32) -> Result<u64, PeerExeError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| classify(pid, &path, &e))?;
    parse_start_ticks(&text).ok_or_else(|| PeerExeError::Unreadable { path, reason: "unexpected format".into() })
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// A missing file is an exited process when `/proc/<pid>` is there (a zombie has no `exe`)
/// or the pid is really gone; under `ProtectProc=invisible` the whole `/proc/<pid>` of
/// another uid is missing while the process runs. `kill(pid, 0)` tells them apart (ESRCH:
/// gone; success or EPERM: exists).
fn classify(pid: i32, path: &str, e: &std::io::Error) -> PeerExeError {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ESRCH) => {
            let visible = Path::new(&format!("/proc/{pid}")).exists();
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
                Err(Errno::ESRCH) => PeerExeError::Exited { pid },
                _ if visible => PeerExeError::Exited { pid },
                _ => PeerExeError::Hidden { pid },
            }
        }
        Some(Errno::EACCES | Errno::EPERM) => PeerExeError::NoAccess { path: path.to_owned() },
        _ => PeerExeError::Unreadable { path: path.to_owned(), reason: e.to_string() },
    }
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
    fn the_boot_clock_agrees_with_this_process_start_time() {
        // Without `/proc/uptime`: this process started before now on the same clock.
        let me = i32::try_from(std::process::id()).unwrap();
        let started = Duration::from_millis(start_ticks(me).unwrap() * (1000 / TICKS_PER_SECOND));
        let now = since_boot().unwrap();
        assert!(started <= now + Duration::from_millis(10), "{started:?} > {now:?}");
    }

    #[test]
    fn this_process_is_found_by_file_identity_and_a_later_connection_time_is_required() {
        let me = i32::try_from(std::process::id()).unwrap();
        let image = executable(Some(me), since_boot().unwrap()).unwrap();
        let current = std::env::current_exe().unwrap();
        assert_eq!(image.path, current.canonicalize().unwrap());
        assert_eq!(image.file, FileId::of(&current).unwrap());
        assert!(AllowedExe::record(&current).unwrap().matches(&image));
        assert!(!AllowedExe::record(Path::new("/bin/sh")).unwrap().matches(&image));
        // A "connection" before this process started: its pid must have been reused.
        assert_eq!(executable(Some(me), Duration::ZERO), Err(PeerExeError::Reused { pid: me }));
        assert_eq!(executable(None, since_boot().unwrap()), Err(PeerExeError::NoPid));
    }

    #[test]
    fn a_missing_allowed_path_is_kept_and_matches_nothing() {
        let me = i32::try_from(std::process::id()).unwrap();
        let image = executable(Some(me), since_boot().unwrap()).unwrap();
        let (kept, _) = AllowedExe::record(Path::new("/nonexistent/keyward-test")).unwrap_err();
        assert!(!kept.matches(&image));
    }

    #[test]
    fn an_exited_process_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert_eq!(executable(Some(pid), since_boot().unwrap()), Err(PeerExeError::Exited { pid }));
    }
}
