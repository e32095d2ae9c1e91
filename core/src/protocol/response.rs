//! Responses: a [`Response`] echoes the request's `v` and `id` and holds either a [`Reply`]
//! (`"status": "ok"`) or a [`WireError`] (`"status": "error"`), never both.

use serde::{Deserialize, Serialize};

use super::error_code::ErrorCode;
use crate::key::{KeyAlgorithm, KeyId};

/// One response frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u16,
    /// The request's id (0 when the request's id could not be read).
    pub id: u64,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Success or failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "body", rename_all = "snake_case")]
pub enum Outcome {
    /// The operation succeeded.
    Ok(Reply),
    /// It failed.
    Error(WireError),
}

/// An error on the wire: a stable code and the top-level message only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

/// One key in a `list_keys` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Name.
    pub key: KeyId,
    /// Type.
    pub algorithm: KeyAlgorithm,
    /// Created inside the device (not imported).
    pub generated_on_device: bool,
    /// A certificate is installed for it.
    pub has_certificate: bool,
    /// Any client of the device can use it (a TPM key with the empty auth value); sent only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_auth: bool,
}

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

/// The successful result of each operation, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// For `hello`.
    Hello {
        /// Agent name and version.
        agent: String,
        /// Protocol version.
        protocol: u16,
        /// Backend kind.
        backend: String,
    },
    /// For `list_keys`.
    Keys {
        /// The keys.
        keys: Vec<KeyEntry>,
    },
    /// For `public_key`.
    PublicKey {
        /// The key.
        key: KeyId,
        /// Its type.
        algorithm: KeyAlgorithm,
        /// DER SubjectPublicKeyInfo.
        #[serde(with = "super::base64_field")]
        spki_der: Vec<u8>,
        /// The installed certificate (chain) as PEM, if any.
        certificate_pem: Option<String>,
    },
    /// For `sign`.
    Signature {
        /// The profile actually used (`tls` resolved to its scheme).
        profile: String,
        /// The signature (DER for ECDSA).
        #[serde(with = "super::base64_field")]
        signature: Vec<u8>,
    },
    /// For `decrypt`.
    Plaintext {
        /// The plaintext.
        #[serde(with = "super::base64_field")]
        plaintext: Vec<u8>,
    },
    /// For `status`.
    Status(StatusReport),
    /// For `nvflare_challenge`.
    NvflareChallenge {
        /// The client nonce to send to the server (a uuid4 string).
        nonce: String,
    },
    /// For `nvflare_register`: what the client sends in its register message.
    NvflareRegistration {
        /// `cn`: the site CN from the installed certificate.
        cn: String,
        /// `cert`: the installed certificate PEM bytes.
        #[serde(with = "super::base64_field")]
        cert: Vec<u8>,
        /// `signature`: raw PSS signature over `cn + server_nonce`.
        #[serde(with = "super::base64_field")]
        signature: Vec<u8>,
        /// Handle for `nvflare_verify_token` (valid a few minutes, for this caller only).
        session: String,
    },
    /// For `nvflare_verify_token`.
    TokenVerified {
        /// The server CN that signed it.
        server_cn: String,
    },
}

impl Response {
    /// A success reply.
    pub fn ok(id: u64, reply: Reply) -> Self {
        Self { v: super::PROTOCOL_VERSION, id, outcome: Outcome::Ok(reply) }
    }

    /// An error reply.
    pub fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { v: super::PROTOCOL_VERSION, id, outcome: Outcome::Error(WireError { code, message: message.into() }) }
    }
}
