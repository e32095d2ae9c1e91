//! What one audit line says: the caller ([`Peer`]), the operation and its outcome
//! ([`AuditRecord`]), and for the agent's own records about the log itself an
//! [`AuditNote`] (a repaired tail, a head that did not match, removed rotated files,
//! suppressed refusals). The line framing (`ts`, `seq`, `prev`) is added in `log.rs`.

use std::time::Duration;

use serde::Serialize;

/// `prev` of the first line of a new log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// started later is not the peer (`daemon/front/peer_exe.rs`). Not recorded.
    #[serde(skip)]
    pub connected: Duration,
}

impl Peer {
    /// The agent itself, for the records it writes about its own log.
    pub fn agent() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: i32::try_from(std::process::id()).ok(),
            connected: Duration::ZERO,
        }
    }
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
    /// What a record about the log itself adds.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub note: Option<AuditNote>,
}

impl<'a> AuditRecord<'a> {
    /// A record of `op` by `peer` with `outcome` and nothing else (request id 0, no key,
    /// no payload); fill in the rest with struct update syntax.
    pub fn new(peer: Peer, op: &'a str, outcome: &'a str) -> Self {
        Self {
            peer,
            request_id: 0,
            op,
            key: None,
            profile: None,
            payload_sha256: None,
            payload_len: None,
            outcome,
            latency_us: 0,
            note: None,
        }
    }

    /// Whether this record is a refusal or failure, which flood control may fold into a
    /// summary; successes are always written.
    pub fn is_refusal(&self) -> bool {
        self.outcome != "ok"
    }
}

/// The agent's records about the log itself (docs/security.md, "Audit log").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AuditNote {
    /// `audit_repair`: at start the last line was cut short (a write interrupted by a full
    /// disk or a crash); those bytes were removed and the chain continues from the last
    /// complete record.
    Repaired {
        /// Bytes removed from the end of the file.
        dropped_bytes: u64,
        /// Their SHA-256, hex.
        dropped_sha256: String,
    },
    /// `audit_head_mismatch`: at start the log did not end (or start) where the head file
    /// said; the records in between are gone. `None` fields: the head was missing or
    /// unreadable.
    HeadMismatch {
        /// `seq` of the last record per the head.
        head_seq: Option<u64>,
        /// `seq` of the first kept record per the head.
        head_first_seq: Option<u64>,
        /// `seq` of the last record found in the log.
        found_last_seq: u64,
        /// `seq` of the first record found in the log.
        found_first_seq: u64,
    },
    /// `audit_retention`: rotated files beyond `audit_max_files` were removed.
    Retention {
        /// How many files were removed.
        removed_files: u64,
        /// The kept log now starts at this `seq`.
        kept_from_seq: u64,
    },
    /// `retire_key` with outcome `destroying`: written (and synced) before a key is
    /// destroyed, after its successor was proven; the `retire_key` record with the outcome
    /// follows.
    Retiring {
        /// The successor key.
        replaced_by: String,
        /// SHA-256 of the retired key's SubjectPublicKeyInfo, hex.
        retired_spki_sha256: String,
        /// SHA-256 of the successor's installed certificate file, hex.
        successor_certificate_sha256: String,
    },
    /// `refusals_suppressed`: refusals of one uid past `audit_refusals_per_second`,
    /// counted instead of written one by one.
    Suppressed {
        /// The refused operation (`connect`, `sign`, ...).
        refused_op: String,
        /// How many refusals with this op and outcome were not written.
        suppressed: u64,
        /// The window they fell in, in milliseconds.
        window_ms: u64,
    },
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
