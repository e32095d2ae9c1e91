//! The audit log: one JSON line per operation (and per refused connection), written and
//! flushed before the reply is sent. It records who (peer uid/gid/pid), what (operation,
//! key, profile), on what (SHA-256 of the payload and its length), the outcome and the
//! latency — never a PIN, a plaintext or a signature.
//!
//! The lines form a hash chain: each carries `seq` (one more than the line before, across
//! agent restarts) and `prev`, the SHA-256 of the previous line's bytes, so an edited,
//! removed or reordered line is detected by `keyward audit verify` (`audit_chain.rs`).
//!
//! Rotation: when the next line would take the file past `audit_max_bytes`, the file is
//! renamed to `<path>.<N>` (N = 1, 2, … in order) and a new one started, whose first line
//! continues `seq` and names the last line of the renamed file in `prev`. The chain head
//! (`seq` and hash) also goes to the agent's log at each rotation and at shutdown, so a copy
//! of it leaves the file (journald) and a rewritten log can be compared against it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Who is on the other end of a connection (from SO_PEERCRED).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Peer {
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer pid, when the kernel reports one.
    pub pid: Option<i32>,
    /// When the connection was accepted, as time since boot: a process with that pid that
    /// started later is not the peer (`daemon/peer_exe.rs`). Not recorded.
    #[serde(skip)]
    pub connected: Duration,
}

/// One audit line.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// The caller.
    pub peer: Peer,
    /// The request id the caller chose (0 when unreadable).
    pub request_id: u64,
    /// Operation name (`sign`, `decrypt`, `connect`, ...).
    pub op: &'a str,
    /// Key name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// Profile, for signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<&'a str>,
    /// SHA-256 of the payload (message or ciphertext), hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// Payload length in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<usize>,
    /// `ok` or the error code.
    pub outcome: &'a str,
    /// Time spent, in microseconds.
    pub latency_us: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord<'a>,
}

/// `prev` of the first line of a new log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The open file and the end of its chain.
struct Tail {
    file: File,
    seq: u64,
    prev: String,
    /// Bytes in the open file.
    size: u64,
    /// N of the next `<path>.<N>`.
    next_index: u64,
}

/// The append-only audit file.
pub struct AuditLog {
    tail: Mutex<Tail>,
    path: PathBuf,
    max_bytes: u64,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the audit log for appending, rotating at the default
    /// size.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_rotating(path, crate::config::DEFAULT_AUDIT_MAX_BYTES)
    }

    /// Opens (or creates, mode 0600) the audit log for appending, rotating it at
    /// `max_bytes`. The chain continues from the last line of the file or, when it is
    /// empty, of the newest rotated file.
    ///
    /// # Errors
    /// When the file or its folder cannot be read or opened.
    pub fn open_rotating(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let size = file.metadata()?.len();
        let rotated = rotated_files(path)?;
        let next_index = rotated.last().map_or(1, |(n, _)| n + 1);
        let (seq, prev) = match (size, rotated.last()) {
            (0, Some((_, newest))) => last_link(newest)?,
            _ => last_link(path)?,
        };
        let tail = Tail { file, seq, prev, size, next_index };
        Ok(Self { tail: Mutex::new(tail), path: path.to_path_buf(), max_bytes })
    }

    /// Appends one record as a single `write` (O_APPEND keeps lines whole).
    pub fn record(&self, record: &AuditRecord<'_>) {
        let mut tail = match self.tail.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let seq = tail.seq + 1;
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let text = match serde_json::to_string(&Line { ts, seq, prev: &tail.prev, record }) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode audit record");
                return;
            }
        };
        let line = format!("{text}\n");
        if tail.size > 0 && tail.size + line.len() as u64 > self.max_bytes {
            self.rotate(&mut tail);
        }
        if let Err(e) = tail.file.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "cannot write audit record");
            return;
        }
        tail.size += line.len() as u64;
        tail.seq = seq;
        tail.prev = sha256_hex(text.as_bytes());
    }

    /// Renames the full file to `<path>.<N>` and opens a new one. On failure the old file
    /// keeps receiving records: nothing is lost, the file just grows.
    fn rotate(&self, tail: &mut Tail) {
        let target = rotated_name(&self.path, tail.next_index);
        let renamed = if target.exists() {
            Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "rotated file already exists"))
        } else {
            std::fs::rename(&self.path, &target)
        };
        let opened =
            renamed.and_then(|()| OpenOptions::new().create_new(true).append(true).mode(0o600).open(&self.path));
        match opened {
            Ok(file) => {
                tail.file = file;
                tail.size = 0;
                tail.next_index += 1;
                tracing::info!(rotated_to = %target.display(), seq = tail.seq, head = %tail.prev, "audit log rotated; chain head");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), to = %target.display(), error = %e, "cannot rotate the audit log; still appending to the current file");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let tail = match self.tail.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        tracing::info!(path = %self.path.display(), seq = tail.seq, head = %tail.prev, "audit log closed; chain head");
    }
}

fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The rotated files of the log at `path` (`<path>.<N>`), oldest first.
///
/// # Errors
/// When the folder cannot be read.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let index = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(index) = index {
            found.push((index, rotated_name(path, index)));
        }
    }
    found.sort();
    Ok(found)
}

/// The whole log in chain order: the rotated files, oldest first, then `path` itself.
///
/// # Errors
/// When the folder cannot be read.
pub fn log_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, p)| p).collect();
    files.push(path.to_path_buf());
    Ok(files)
}

/// The `seq` and hash of the last line of an existing log (read from its last 64 KiB), or
/// the start of a new chain.
fn last_link(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let Some(last) = tail.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
        return Ok((0, GENESIS.to_owned()));
    };
    let seq = serde_json::from_slice::<serde_json::Value>(last).ok().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
    Ok((seq, sha256_hex(last)))
}

/// Hex SHA-256 of a payload.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Microseconds in a duration, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
