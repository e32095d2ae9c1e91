//! Stable snake_case error codes sent on the wire. Clients branch on these; messages are
//! for people. Adding a code is compatible; renaming one is a protocol version change.

use serde::{Deserialize, Serialize};

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame body is not a JSON object.
    MalformedRequest,
    /// The frame's length prefix exceeds the agent's limit; the connection is closed.
    FrameTooLarge,
    /// The connection ended in the middle of a frame.
    TruncatedFrame,
    /// No complete frame arrived within the read timeout; the connection is closed.
    ReadTimeout,
    /// `v` is missing or a version this agent does not speak.
    UnsupportedVersion,
    /// `op` names no operation.
    UnknownOperation,
    /// Fields are missing, of the wrong type, or invalid (a bad key name, bad base64).
    InvalidRequest,
    /// The caller's uid/gid is not allowed to use the agent; the connection is closed.
    PermissionDenied,
    /// No such key.
    UnknownKey,
    /// A key with that name exists.
    KeyExists,
    /// The key cannot do the requested profile or operation.
    Unsupported,
    /// The ciphertext did not decrypt.
    DecryptionFailed,
    /// The token rejected the PIN.
    PinIncorrect,
    /// The token's PIN is locked.
    PinLocked,
    /// The token or TPM is gone or unreachable.
    BackendUnavailable,
    /// The request queue is full; retry later.
    Busy,
    /// The backend did not answer in time.
    Timeout,
    /// The backend failed; details are in the agent log under the request id.
    BackendError,
    /// The agent is shutting down.
    ShuttingDown,
    /// NVFlare flow: the client nonce was not issued by this agent.
    NonceUnknown,
    /// NVFlare flow: the client nonce expired.
    NonceExpired,
    /// NVFlare flow: the client nonce was already used (a replayed reply).
    NonceReplayed,
    /// NVFlare flow: the client nonce belongs to another caller or key.
    NonceNotYours,
    /// NVFlare flow: the server's CN is not the configured server identity.
    ServerIdentityMismatch,
    /// NVFlare flow: the server certificate does not chain to the pinned root CA.
    ServerUntrusted,
    /// NVFlare flow: a server chain certificate is expired or not yet valid.
    ServerCertExpired,
    /// NVFlare flow: KeyUsage/ExtendedKeyUsage of the server certificate forbid this use.
    ServerCertUsage,
    /// NVFlare flow: the server's signature over its CN and the client nonce is wrong.
    ServerSignatureInvalid,
    /// NVFlare flow: the server's token signature is wrong.
    TokenSignatureInvalid,
    /// The key's policy does not allow this operation (or the NVFlare flow is not configured).
    PolicyDenied,
    /// The key's rate limit (`keys.<name>.rate_limit` or `profile_rate_limits`) is used up;
    /// the message says when a token is back.
    RateLimited,
    /// The audit record of a private-key result (signature, decryption, registration)
    /// could not be written (for example a full file system), so the result was withheld;
    /// the message says why. Retry once the log is writable again.
    AuditFailed,
    /// A bug in the agent; details are in its log.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::FrameTooLarge => "frame_too_large",
            Self::TruncatedFrame => "truncated_frame",
            Self::ReadTimeout => "read_timeout",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownOperation => "unknown_operation",
            Self::InvalidRequest => "invalid_request",
            Self::PermissionDenied => "permission_denied",
            Self::UnknownKey => "unknown_key",
            Self::KeyExists => "key_exists",
            Self::Unsupported => "unsupported",
            Self::DecryptionFailed => "decryption_failed",
            Self::PinIncorrect => "pin_incorrect",
            Self::PinLocked => "pin_locked",
            Self::BackendUnavailable => "backend_unavailable",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::BackendError => "backend_error",
            Self::ShuttingDown => "shutting_down",
            Self::NonceUnknown => "nonce_unknown",
            Self::NonceExpired => "nonce_expired",
            Self::NonceReplayed => "nonce_replayed",
            Self::NonceNotYours => "nonce_not_yours",
            Self::ServerIdentityMismatch => "server_identity_mismatch",
            Self::ServerUntrusted => "server_untrusted",
            Self::ServerCertExpired => "server_cert_expired",
            Self::ServerCertUsage => "server_cert_usage",
            Self::ServerSignatureInvalid => "server_signature_invalid",
            Self::TokenSignatureInvalid => "token_signature_invalid",
            Self::PolicyDenied => "policy_denied",
            Self::RateLimited => "rate_limited",
            Self::AuditFailed => "audit_failed",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
