//! [`StoreError`]: the error every key store returns and the agent relies on.
//! Backends keep their own error enums and classify into this one (`CKR_PIN_INCORRECT`
//! becomes [`StoreError::PinIncorrect`]); the cause stays attached as `#[source]`.
//! Which wire code each variant becomes is decided at the agent's edge
//! (`agent/src/wire_error.rs`), not here.

use crate::key::KeyId;

/// A boxed cause kept for logs.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a key store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No key with this name.
    #[error("no key named `{id}`")]
    KeyNotFound {
        /// The key asked for.
        id: KeyId,
    },
    /// A key with this name (or id, or handle) already exists; nothing was changed.
    #[error("a key named `{id}` already exists ({detail}); refusing to overwrite it")]
    KeyExists {
        /// The key name.
        id: KeyId,
        /// What collided (label, object id, persistent handle).
        detail: String,
    },
    /// The key or device cannot do this.
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// The request is not valid for this key (for example a ciphertext of the wrong length).
    #[error("invalid input: {what}")]
    InvalidInput {
        /// What is wrong.
        what: String,
    },
    /// The ciphertext did not decrypt (bad padding or wrong key). Deliberately vague.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The PIN or auth value was rejected. It was tried once and will not be retried.
    #[error("PIN rejected by `{token}` (tried once, not retried; the token may lock after more failures)")]
    PinIncorrect {
        /// The token or TPM that rejected it.
        token: String,
    },
    /// The PIN is locked on the device.
    #[error("PIN of `{token}` is locked; unlock it with the security officer PIN")]
    PinLocked {
        /// The token.
        token: String,
    },
    /// The device is gone, not initialised, or unreachable.
    #[error("backend unavailable: {what}")]
    Unavailable {
        /// What is unavailable.
        what: String,
        /// Why.
        #[source]
        source: Option<Cause>,
    },
    /// All workers are busy and the queue is full; try again.
    #[error("backend busy: request queue full")]
    Busy,
    /// The backend did not answer in time.
    #[error("backend timed out after {millis} ms")]
    Timeout {
        /// The limit that was exceeded.
        millis: u64,
    },
    /// A backend call failed in a way callers cannot act on, with its cause.
    #[error("backend error during {op}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The cause.
        #[source]
        source: Cause,
    },
}

impl StoreError {
    /// Shorthand for [`StoreError::Backend`].
    pub fn backend(op: &'static str, source: impl Into<Cause>) -> Self {
        Self::Backend { op, source: source.into() }
    }
}

/// The whole `source()` chain of an error, joined with `: `, for logs (never for the wire).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
