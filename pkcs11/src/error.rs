//! [`Pkcs11Error`]: what can go wrong talking to a PKCS#11 module, and its classification
//! into [`StoreError`] (`CKR_PIN_INCORRECT` → `PinIncorrect`, a removed device →
//! `Unavailable`, a bad ciphertext → `DecryptionFailed`).

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};
use keyward_core::StoreError;

/// A PKCS#11 failure, with the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module could not be loaded.
    #[error("cannot load PKCS#11 module `{path}`")]
    LoadModule {
        /// The module path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: CkError,
    },
    /// No token matched.
    #[error("no {selector} found; tokens present: {available}")]
    TokenNotFound {
        /// What was looked for.
        selector: String,
        /// Labels of the tokens that are there.
        available: String,
    },
    /// More than one token matched.
    #[error("{selector} matches {count} tokens; select by serial (pkcs11:token=...;serial=...)")]
    TokenAmbiguous {
        /// What was looked for.
        selector: String,
        /// How many matched.
        count: usize,
    },
    /// After the token went away, another token answers to the selector.
    #[error("{selector} is now a different token ({found}); keyward logs in again only to the token it started with ({expected}); restart the agent to use the new one")]
    TokenReplaced {
        /// What was looked for.
        selector: String,
        /// The token the agent started with.
        expected: String,
        /// The token found now.
        found: String,
    },
    /// A malformed PKCS#11 URI.
    #[error("bad PKCS#11 URI: {0}")]
    BadUri(String),
    /// A call into the module failed.
    #[error("{call} failed")]
    Call {
        /// The PKCS#11 function or keyward step.
        call: &'static str,
        /// Cause (with the CKR_ code).
        #[source]
        source: CkError,
    },
}

impl Pkcs11Error {
    /// Wraps a cryptoki error with the step that failed.
    pub(crate) fn call(call: &'static str) -> impl FnOnce(CkError) -> Self {
        move |source| Self::Call { call, source }
    }

    /// The PKCS#11 return value, if this is a module error.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            Self::LoadModule { source, .. } | Self::Call { source, .. } => match source {
                CkError::Pkcs11(rv, _) => Some(*rv),
                _ => None,
            },
            _ => None,
        }
    }

    /// A one-line description for `status` and for `unavailable` messages: the call and
    /// the PKCS#11 return value (`C_GetTokenInfo returned GeneralError`), or the message.
    pub fn brief(&self) -> String {
        match self {
            Self::Call { call, source: CkError::Pkcs11(rv, _) } => format!("{call} returned {rv:?}"),
            Self::Call { call, source } => format!("{call} failed: {source}"),
            other => other.to_string(),
        }
    }

    /// Whether this return value means the token or its session went away (rather than
    /// a problem with the request).
    pub fn token_gone(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::DeviceRemoved
                    | RvError::DeviceError
                    | RvError::DeviceMemory
                    | RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::CryptokiNotInitialized
                    | RvError::UserNotLoggedIn
            )
        )
    }

    /// Classifies into the error callers and the wire rely on. `token` names the token.
    pub fn into_store_error(self, token: &str) -> StoreError {
        match self.rv() {
            Some(RvError::PinIncorrect) => StoreError::PinIncorrect { token: token.to_owned() },
            Some(RvError::PinLocked) => StoreError::PinLocked { token: token.to_owned() },
            Some(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange) => StoreError::DecryptionFailed,
            _ if self.token_gone() => {
                StoreError::Unavailable { what: format!("token `{token}`"), source: Some(Box::new(self)) }
            }
            _ => match self {
                Self::TokenNotFound { .. }
                | Self::TokenAmbiguous { .. }
                | Self::TokenReplaced { .. }
                | Self::LoadModule { .. } => {
                    StoreError::Unavailable { what: format!("token `{token}`"), source: Some(Box::new(self)) }
                }
                Self::Call { call, .. } => StoreError::Backend { op: call, source: Box::new(self) },
                Self::BadUri(_) => StoreError::InvalidInput { what: self.to_string() },
            },
        }
    }
}
