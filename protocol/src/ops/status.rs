//! `status`: backend health, counters, keys with their certificate expiry, and latency per
//! operation. No fields; the reply is [`crate::Reply::Status`], a [`StatusReport`].

use keyward_core::key::{KeyAlgorithm, KeyId};
use serde::{Deserialize, Serialize};

use super::OpSpec;

/// `status` on the wire.
pub const SPEC: OpSpec = OpSpec { name: "status", reply_kind: "status", fields: &[], keyed: false, text_limits: &[] };

/// Backend health and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `ok` or `down`.
    pub backend_health: String,
    /// Why the backend is down (absent while `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_error: Option<String>,
    /// Backend recovery attempts (PKCS#11 module re-initialisations) since start.
    #[serde(default)]
    pub backend_recovery_attempts: u64,
    /// Backend kind.
    pub backend: String,
    /// Device description.
    pub device: String,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Connections being served now.
    pub connections: u64,
    /// Requests answered successfully since start.
    pub requests_ok: u64,
    /// Requests answered with an error since start.
    pub requests_failed: u64,
    /// Signatures made since start.
    pub signatures: u64,
    /// Decryptions made since start.
    pub decryptions: u64,
    /// Worker threads holding a store.
    pub workers: u64,
    /// The keys in the store, with their certificate's expiry (empty when the backend is down).
    #[serde(default)]
    pub keys: Vec<KeyStatus>,
    /// Latency per operation since start (operations seen at least once).
    #[serde(default)]
    pub latency: Vec<OpLatency>,
}

/// One key in a `status` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Name.
    pub key: KeyId,
    /// Type.
    pub algorithm: KeyAlgorithm,
    /// When its installed certificate expires (Unix seconds); none without a certificate.
    pub certificate_not_after: Option<i64>,
    /// Seconds from now to that expiry (negative once expired); sent with a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_seconds_to_expiry: Option<i64>,
    /// The certificate against the key's renewal policy: `valid`, `renewal_due`, `expired`
    /// or `not_yet_valid`; sent with a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<String>,
    /// Seconds since the key was generated (keyward's record of its birth); sent when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_age_seconds: Option<i64>,
    /// The key is older than its policy's `max_key_age`: rotate it. Sent only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_age_exceeded: bool,
    /// Any client of the device can use it (a TPM key with the empty auth value); sent only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_auth: bool,
}

/// Latency of one operation, from a fixed-bucket histogram (interpolated in the bucket).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLatency {
    /// Operation name.
    pub op: String,
    /// Requests answered.
    pub count: u64,
    /// Median, in microseconds.
    pub p50_us: u64,
    /// 99th percentile, in microseconds.
    pub p99_us: u64,
}
