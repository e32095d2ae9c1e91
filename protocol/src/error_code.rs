//! Stable snake_case error codes sent on the wire, each written once (the macro below makes
//! the enum, its string table and [`ErrorCode::ALL`] from one list). Clients branch on these;
//! messages are for people. Adding a code is compatible; renaming one is a protocol version
//! change. The code list is checked against `vectors/error_codes.json`, the Python client and
//! `docs/protocol.md` (`tests/vectors.rs`, `tests/docs_tables.rs`).

use serde::{Deserialize, Serialize};

/// Declares [`ErrorCode`] from `Variant = "wire_name"` lines, so that the serde name, the
/// string table and the list of all codes cannot disagree.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Why a request failed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    /// The frame body is not a JSON object.
    MalformedRequest = "malformed_request",
    /// The frame's length prefix exceeds the agent's limit; the connection is closed.
    FrameTooLarge = "frame_too_large",
    /// The connection ended in the middle of a frame.
    TruncatedFrame = "truncated_frame",
    /// No complete frame arrived within the read timeout; the connection is closed.
    ReadTimeout = "read_timeout",
    /// `v` is missing or a version this agent does not speak.
    UnsupportedVersion = "unsupported_version",
    /// `op` names no operation.
    UnknownOperation = "unknown_operation",
    /// Fields are missing, of the wrong type, or invalid (a bad key name, bad base64).
    InvalidRequest = "invalid_request",
    /// The caller's uid/gid is not allowed to use the agent; the connection is closed.
    PermissionDenied = "permission_denied",
    /// No such key.
    UnknownKey = "unknown_key",
    /// A key with that name exists.
    KeyExists = "key_exists",
    /// The key cannot do the requested profile or operation.
    Unsupported = "unsupported",
    /// The ciphertext did not decrypt.
    DecryptionFailed = "decryption_failed",
    /// The token rejected the PIN.
    PinIncorrect = "pin_incorrect",
    /// The token's PIN is locked.
    PinLocked = "pin_locked",
    /// The token or TPM is gone or unreachable.
    BackendUnavailable = "backend_unavailable",
    /// The request queue is full; retry later.
    Busy = "busy",
    /// The backend did not answer in time.
    Timeout = "timeout",
    /// The backend failed; details are in the agent log under the request id.
    BackendError = "backend_error",
    /// The agent is shutting down.
    ShuttingDown = "shutting_down",
    /// NVFlare flow: the client nonce was not issued by this agent.
    NonceUnknown = "nonce_unknown",
    /// NVFlare flow: the client nonce expired.
    NonceExpired = "nonce_expired",
    /// NVFlare flow: the client nonce was already used (a replayed reply).
    NonceReplayed = "nonce_replayed",
    /// NVFlare flow: the client nonce belongs to another caller or key.
    NonceNotYours = "nonce_not_yours",
    /// NVFlare flow: the server's CN is not the configured server identity.
    ServerIdentityMismatch = "server_identity_mismatch",
    /// NVFlare flow: the server certificate does not chain to the pinned root CA.
    ServerUntrusted = "server_untrusted",
    /// NVFlare flow: a server chain certificate is expired or not yet valid.
    ServerCertExpired = "server_cert_expired",
    /// NVFlare flow: KeyUsage/ExtendedKeyUsage of the server certificate forbid this use.
    ServerCertUsage = "server_cert_usage",
    /// NVFlare flow: the server's signature over its CN and the client nonce is wrong.
    ServerSignatureInvalid = "server_signature_invalid",
    /// NVFlare flow: the server's token signature is wrong.
    TokenSignatureInvalid = "token_signature_invalid",
    /// NVFlare server side: a client's certificate does not chain to the pinned root CA, is
    /// expired, or its KeyUsage/ExtendedKeyUsage forbid client use.
    ClientUntrusted = "client_untrusted",
    /// NVFlare server side: the client's certificate CN is not the name it registers under.
    ClientIdentityMismatch = "client_identity_mismatch",
    /// NVFlare server side: the client's signature over its CN and the server nonce is wrong.
    ClientSignatureInvalid = "client_signature_invalid",
    /// The key's policy does not allow this operation (or the NVFlare flow is not configured).
    PolicyDenied = "policy_denied",
    /// The key's rate limit (`keys.<name>.rate_limit` or `profile_rate_limits`) is used up;
    /// the message says when a token is back.
    RateLimited = "rate_limited",
    /// The audit record of a private-key result (signature, decryption, registration)
    /// could not be written (for example a full file system), so the result was withheld;
    /// the message says why. Retry once the log is writable again.
    AuditFailed = "audit_failed",
    /// A bug in the agent; details are in its log.
    Internal = "internal",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn serde_names_are_the_string_table_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert_eq!(serde_json::from_value::<ErrorCode>(code.as_str().into()).unwrap(), *code);
            assert!(seen.insert(code.as_str()), "`{code}` twice");
        }
    }
}
