//! The audit log: one JSON line per operation (and per refused connection), written and
//! flushed before the reply is sent. It records who (peer uid/gid/pid), what (operation,
//! key, profile), on what (SHA-256 of the payload and its length), the outcome and the
//! latency — never a PIN, a plaintext or a signature.
//!
//! The lines form a hash chain: each carries `seq` (one more than the line before, across
//! agent restarts) and `prev`, the SHA-256 of the previous line's bytes, so an edited,
//! removed or reordered line is detected by `keyward audit verify` (`audit_chain.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
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
}

/// The append-only audit file.
pub struct AuditLog {
    tail: Mutex<Tail>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the audit log for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let (seq, prev) = last_link(path)?;
        Ok(Self { tail: Mutex::new(Tail { file, seq, prev }) })
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
        if let Err(e) = tail.file.write_all(format!("{text}\n").as_bytes()) {
            tracing::error!(error = %e, "cannot write audit record");
            return;
        }
        tail.seq = seq;
        tail.prev = sha256_hex(text.as_bytes());
    }
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
