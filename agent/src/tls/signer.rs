//! A rustls client key whose private half stays in the agent: [`AgentSigningKey`] implements
//! `rustls::sign::SigningKey` and its [`AgentSigner`] forwards each handshake signature to
//! the agent's `sign` operation (`docs/protocol.md` §5).
//!
//! Negotiate, then sign: `choose_scheme` picks the first scheme the key can produce (from
//! `TlsScheme::for_algorithm`: RSA → PSS-SHA256, PSS-SHA384, PKCS#1-SHA256, PKCS#1-SHA384;
//! P-256 → ECDSA-SHA256) that the peer offered, and the signer sends exactly that scheme as
//! the profile (`tls-rsa-pss-sha256`, ...), never plain `tls`. `public_key()` returns the
//! key's SubjectPublicKeyInfo, so `CertifiedKey::keys_match` can check the certificate.
//!
//! Blocking: rustls calls `Signer::sign` synchronously, from inside the task that drives the
//! handshake. [`AgentLink`] therefore speaks the protocol over blocking std sockets, and on a
//! multi-thread tokio runtime the call runs under `tokio::task::block_in_place`, which hands
//! the worker's other tasks to another thread for the duration, so a slow token stalls only
//! its own handshake. On a current-thread runtime (where `block_in_place` panics) or outside
//! tokio the call simply blocks the caller. `AgentLink` keeps a small pool of idle
//! connections instead of one shared stream, so concurrent handshakes sign in parallel (the
//! agent handles one request per connection at a time); the pool lock is never held during
//! I/O. A pooled connection the agent has closed for idleness is replaced once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_core::{KeyAlgorithm, KeyId, SignProfile, TlsScheme};
use keyward_protocol::{ErrorCode, Operation, Reply};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use keyward_client::BlockingAgentClient;
use keyward_client::ClientError;

/// Idle connections older than this are dropped rather than reused: below the agent's
/// default `read_timeout_ms` (30 s), after which it closes them.
const POOL_MAX_IDLE_AGE: Duration = Duration::from_secs(20);

/// At most this many idle connections are kept.
const POOL_MAX_IDLE: usize = 16;

/// Blocking access to the agent socket, shared by every signer of a tunnel or program.
#[derive(Debug)]
pub struct AgentLink {
    socket: PathBuf,
    io_timeout: Duration,
    idle: Mutex<Vec<(BlockingAgentClient, Instant)>>,
}

impl AgentLink {
    /// A link to the agent at `socket`; each read or write gives up after `io_timeout`.
    pub fn new(socket: PathBuf, io_timeout: Duration) -> Self {
        Self { socket, io_timeout, idle: Mutex::new(Vec::new()) }
    }

    /// Sends one request on an idle or new connection and waits for the reply (blocking).
    ///
    /// # Errors
    /// [`ClientError`]: the agent is unreachable, or it refused.
    pub fn call(&self, op: &Operation) -> Result<Reply, ClientError> {
        if let Some(mut client) = self.take_idle() {
            match client.call(op.clone()) {
                Err(e) if is_stale(&e) => {
                    tracing::debug!(error = %e, "pooled agent connection was closed; reconnecting")
                }
                result => return self.keep(client, result),
            }
        }
        let mut client = BlockingAgentClient::connect(&self.socket, self.io_timeout)?;
        let result = client.call(op.clone());
        self.keep(client, result)
    }

    fn take_idle(&self) -> Option<BlockingAgentClient> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((client, since)) = idle.pop() {
            if since.elapsed() < POOL_MAX_IDLE_AGE {
                return Some(client);
            }
        }
        None
    }

    /// Returns the connection to the pool if it is still in step with the agent.
    fn keep(&self, client: BlockingAgentClient, result: Result<Reply, ClientError>) -> Result<Reply, ClientError> {
        let reusable = match &result {
            Ok(_) => true,
            Err(ClientError::Agent { code, .. }) => !closes_connection(*code),
            Err(_) => false,
        };
        if reusable {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < POOL_MAX_IDLE {
                    idle.push((client, Instant::now()));
                }
            }
        }
        result
    }
}

/// Whether a failure on a reused connection means the agent had already closed it.
fn is_stale(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Closed => true,
        ClientError::Agent { code, .. } => closes_connection(*code),
        _ => false,
    }
}

/// Error codes after which the agent closes the connection (`docs/protocol.md` §4); `busy`
/// closes it only at the connection limit, but a connection that saw it is not reused.
fn closes_connection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::FrameTooLarge
            | ErrorCode::TruncatedFrame
            | ErrorCode::ReadTimeout
            | ErrorCode::PermissionDenied
            | ErrorCode::Busy
    )
}

/// Why a handshake signature failed.
#[derive(Debug, thiserror::Error)]
#[error("the agent did not sign the handshake with `{key}` as `{profile}`")]
pub struct AgentSignError {
    /// The key.
    pub key: KeyId,
    /// The profile asked for.
    pub profile: &'static str,
    /// Cause.
    #[source]
    pub source: ClientError,
}

/// A key held by the agent, usable as a rustls client (or server) key.
#[derive(Debug)]
pub struct AgentSigningKey {
    key: KeyId,
    algorithm: KeyAlgorithm,
    spki: Vec<u8>,
    certificate_pem: Option<String>,
    link: Arc<AgentLink>,
}

impl AgentSigningKey {
    /// Asks the agent for `key`'s algorithm, public key and installed certificate.
    ///
    /// # Errors
    /// [`ClientError`]: agent unreachable, unknown key, refused.
    pub fn open(link: Arc<AgentLink>, key: KeyId) -> Result<Self, ClientError> {
        let reply = link.call(&Operation::PublicKey { key: key.clone() })?;
        let Reply::PublicKey { algorithm, spki_der, certificate_pem, .. } = reply else {
            return Err(ClientError::Agent {
                code: ErrorCode::Internal,
                message: "unexpected reply to public_key".into(),
            });
        };
        Ok(Self { key, algorithm, spki: spki_der, certificate_pem, link })
    }

    /// The key's algorithm.
    pub fn algorithm_kind(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The certificate chain the agent has installed for the key (PEM), if any.
    pub fn installed_certificate(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    /// Pairs the key with its certificate chain (leaf first), checking that the leaf
    /// certifies this key.
    ///
    /// # Errors
    /// `rustls::Error::InconsistentKeys` when the leaf is for another key, or a parse error.
    pub fn into_certified_key(self, chain: Vec<CertificateDer<'static>>) -> Result<CertifiedKey, rustls::Error> {
        let certified = CertifiedKey::new(chain, Arc::new(self));
        certified.keys_match()?;
        Ok(certified)
    }
}

/// The rustls code point of a keyward TLS scheme.
pub fn rustls_scheme(scheme: TlsScheme) -> SignatureScheme {
    match scheme {
        TlsScheme::RsaPssSha256 => SignatureScheme::RSA_PSS_SHA256,
        TlsScheme::RsaPssSha384 => SignatureScheme::RSA_PSS_SHA384,
        TlsScheme::RsaPkcs1Sha256 => SignatureScheme::RSA_PKCS1_SHA256,
        TlsScheme::RsaPkcs1Sha384 => SignatureScheme::RSA_PKCS1_SHA384,
        TlsScheme::EcdsaP256Sha256 => SignatureScheme::ECDSA_NISTP256_SHA256,
    }
}

impl SigningKey for AgentSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme =
            TlsScheme::for_algorithm(self.algorithm).into_iter().find(|s| offered.contains(&rustls_scheme(*s)))?;
        Some(Box::new(AgentSigner { key: self.key.clone(), scheme, link: Arc::clone(&self.link) }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        if self.algorithm.is_rsa() {
            SignatureAlgorithm::RSA
        } else {
            SignatureAlgorithm::ECDSA
        }
    }
}

/// Signs with one negotiated scheme through the agent.
#[derive(Debug)]
pub struct AgentSigner {
    key: KeyId,
    scheme: TlsScheme,
    link: Arc<AgentLink>,
}

impl Signer for AgentSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let profile = SignProfile::Tls(self.scheme).name();
        let op = Operation::Sign { key: self.key.clone(), profile: profile.to_owned(), data: message.to_vec() };
        let fail = |source| {
            let e = AgentSignError { key: self.key.clone(), profile, source };
            rustls::Error::Other(rustls::OtherError(Arc::new(e)))
        };
        match off_executor(|| self.link.call(&op)).map_err(fail)? {
            Reply::Signature { profile: used, signature } if used == profile => Ok(signature),
            _ => Err(fail(ClientError::Agent {
                code: ErrorCode::Internal,
                message: format!("the agent did not answer with a `{profile}` signature"),
            })),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        rustls_scheme(self.scheme)
    }
}

/// Runs blocking `f` without stalling a multi-thread runtime's other tasks (see the module
/// doc); elsewhere it just runs `f`.
fn off_executor<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
