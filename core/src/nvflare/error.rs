//! [`ChallengeError`]: every way the NVFlare authenticator flow can be refused, one variant
//! per cause, so a site admin can tell a forged reply from an expired certificate. The agent
//! gives each its own wire code (`agent/src/wire_error.rs`).

/// Why the agent refused a step of the NVFlare flow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The nonce was never issued by this agent (or has been forgotten after expiry).
    #[error("client nonce `{0}` was not issued by this agent")]
    UnknownNonce(String),
    /// The nonce is older than its lifetime.
    #[error("client nonce expired (older than {0} s); start with a new challenge")]
    ExpiredNonce(u64),
    /// The nonce was already used for a registration.
    #[error("client nonce was already used; a replayed server reply is refused")]
    ReplayedNonce,
    /// The nonce was issued to another caller or for another key.
    #[error("client nonce was issued to another caller or key")]
    NonceNotYours,
    /// The CN in the server's reply is not the configured server identity.
    #[error(
        "server identity mismatch: expected `{expected}` (servers[0].identity), the server's reply claims `{claimed}`"
    )]
    IdentityMismatch {
        /// The configured identity (`keys.<name>.nvflare.server_identity`).
        expected: String,
        /// The reply's `cn`.
        claimed: String,
    },
    /// The server's certificate is issued to another CN than the one the reply claims (and
    /// that matched the configured identity).
    #[error("server identity mismatch: expected `{expected}`, the server's certificate is issued to `{presented}`")]
    CertificateNameMismatch {
        /// The configured identity, which the reply's `cn` matched.
        expected: String,
        /// The CN of the certificate the server presented (empty when it has none).
        presented: String,
    },
    /// The certificate does not chain to the pinned root CA.
    #[error("server certificate not trusted: {0}")]
    Untrusted(String),
    /// A certificate in the chain is outside its validity period.
    #[error("server certificate is expired or not yet valid")]
    Expired,
    /// KeyUsage / ExtendedKeyUsage forbid this use.
    #[error("server certificate usage: {0}")]
    Usage(&'static str),
    /// The server's signature over `server_cn + client_nonce` is wrong.
    #[error("server signature over its CN and our nonce does not verify")]
    BadServerSignature,
    /// The server's signature over `client_name + token` is wrong.
    #[error("token signature does not verify against the server verified at registration")]
    BadTokenSignature,
    /// A registering client's certificate does not chain to the server's pinned root CA, is
    /// outside its validity period, or its KeyUsage/ExtendedKeyUsage forbid client use.
    #[error("client certificate not trusted: {0}")]
    ClientUntrusted(String),
    /// A registering client's certificate is issued to another CN than the name it registers under.
    #[error(
        "client identity mismatch: registering as `{claimed}`, the client's certificate is issued to `{presented}`"
    )]
    ClientNameMismatch {
        /// The `client_name` the registration claims.
        claimed: String,
        /// The CN of the certificate it presented (empty when it has none).
        presented: String,
    },
    /// A registering client's signature over `client_cn + server_nonce` is wrong.
    #[error("client signature over its CN and the server nonce does not verify")]
    BadClientSignature,
    /// Malformed input (not PEM, not base64, empty).
    #[error("malformed {0}")]
    Malformed(&'static str),
}
