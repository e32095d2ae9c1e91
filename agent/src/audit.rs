//! The audit log: one JSON line per operation (and per refused connection), written and
//! flushed before the reply is sent. It records who (peer uid/gid/pid), what (operation,
//! key, profile), on what (SHA-256 of the payload and its length), the outcome and the
//! latency — never a PIN, a plaintext or a signature.

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
    #[serde(flatten)]
    record: &'a AuditRecord<'a>,
}

/// The append-only audit file.
pub struct AuditLog {
    file: Mutex<(File, u64)>,
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
        Ok(Self { file: Mutex::new((file, 0)) })
    }

    /// Appends one record as a single `write` (O_APPEND keeps lines whole).
    pub fn record(&self, record: &AuditRecord<'_>) {
        let mut guard = match self.file.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.1 += 1;
        let line = Line { ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(), seq: guard.1, record };
        let mut text = serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"audit_error\":\"{e}\"}}"));
        text.push('\n');
        if let Err(e) = guard.0.write_all(text.as_bytes()) {
            tracing::error!(error = %e, "cannot write audit record");
        }
    }
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
