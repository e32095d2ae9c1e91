//! [`TpmError`]: what can go wrong talking to a TPM, and its classification into
//! [`StoreError`]. The TPM response code (`TPM_RC_*`, or a TSS layer code) stays in the
//! source chain; callers see: a lost connection → `Unavailable`, a rejected auth value →
//! `PinIncorrect` (never retried), DA lockout → `PinLocked`, a bad OAEP ciphertext →
//! `DecryptionFailed`.

use std::path::PathBuf;

use keyward_core::StoreError;
use tss_esapi::constants::response_code::Tss2ResponseCode;

/// TSS2 layer of TCTI errors (`TSS2_TCTI_RC_LAYER`): the connection, not the TPM, failed.
const TCTI_LAYER: u32 = 0x0A;
/// `TPM_RC_AUTH_FAIL` and `TPM_RC_BAD_AUTH` (format 1, error number only).
const RC_AUTH_FAIL: u32 = 0x08E;
const RC_BAD_AUTH: u32 = 0x0A2;
/// `TPM_RC_LOCKOUT` (format 0 warning).
const RC_LOCKOUT: u32 = 0x921;
/// TPM_RC_REFERENCE_H0 (warning): the first handle refers to an object that is not loaded.
const RC_REFERENCE_H0: u32 = 0x910;
/// TPM_RC_INITIALIZE: the TPM needs TPM2_Startup (it was reset).
const RC_INITIALIZE: u32 = 0x100;
/// TPM_RC_HANDLE (format 1, handle number masked off).
const RC_HANDLE: u32 = 0x08B;

/// A TPM failure, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string is not one keyward accepts.
    #[error("invalid TCTI `{tcti}`: {reason}")]
    BadTcti {
        /// The string given.
        tcti: String,
        /// What is wrong, and the accepted forms.
        reason: String,
    },
    /// The TPM could not be reached.
    #[error("cannot connect to the TPM at `{tcti}`")]
    Connect {
        /// The TCTI.
        tcti: String,
        /// Cause.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM or ESAPI call failed.
    #[error("{call} failed")]
    Call {
        /// The TPM command or keyward step.
        call: &'static str,
        /// Cause (with the response code).
        #[source]
        source: tss_esapi::Error,
    },
    /// A key blob or the key folder could not be read or written.
    #[error("key file `{path}`")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A key blob is not one keyward wrote.
    #[error("key blob `{path}` is malformed: {reason}")]
    BadBlob {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

impl TpmError {
    /// Wraps a tss-esapi error with the step that failed.
    pub(crate) fn call(call: &'static str) -> impl FnOnce(tss_esapi::Error) -> Self {
        move |source| Self::Call { call, source }
    }

    /// The raw TSS2 response code, if the TPM or the TSS stack returned one.
    pub fn response_code(&self) -> Option<u32> {
        match self {
            Self::Connect { source, .. } | Self::Call { source, .. } => match source {
                tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => Some(rc.0),
                tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => Some(rc.0),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the connection to the TPM is lost (the next call should reconnect).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Connect { .. }) || self.response_code().is_some_and(|rc| (rc >> 16) & 0xff == TCTI_LAYER)
    }

    /// Whether the TPM no longer holds an object this connection loaded (the storage
    /// primary or a key): TPM_RC_REFERENCE_H0..H6 (another client flushed it: on swtpm,
    /// which has no resource manager, every new connection flushes leaked transients),
    /// TPM_RC_HANDLE, or TPM_RC_INITIALIZE (the TPM was reset under us). Reconnecting
    /// re-derives the primary, so the call can be repeated once.
    pub fn is_stale_handle(&self) -> bool {
        let Some(rc) = self.response_code().filter(|rc| rc >> 16 == 0) else { return false };
        (RC_REFERENCE_H0..=RC_REFERENCE_H0 + 6).contains(&rc)
            || rc == RC_INITIALIZE
            || (rc & 0x80 != 0 && rc & 0xbf == RC_HANDLE)
    }

    /// Classifies into the error callers and the wire rely on; `tpm` names the TPM.
    pub fn into_store_error(self, tpm: &str) -> StoreError {
        if self.is_connection_lost() {
            return StoreError::Unavailable { what: format!("TPM `{tpm}`"), source: Some(Box::new(self)) };
        }
        // TPM-layer codes (layer 0): format 1 codes carry handle/session/parameter numbers in
        // bits 8-11 and 6; mask them off to compare the error itself.
        let tpm_rc = self.response_code().filter(|rc| rc >> 16 == 0);
        let format_one_error = tpm_rc.filter(|rc| rc & 0x80 != 0).map(|rc| rc & 0xbf);
        if matches!(format_one_error, Some(RC_AUTH_FAIL | RC_BAD_AUTH)) {
            return StoreError::PinIncorrect { token: format!("TPM `{tpm}` (key auth value)") };
        }
        if tpm_rc == Some(RC_LOCKOUT) {
            return StoreError::PinLocked { token: format!("TPM `{tpm}` (dictionary-attack lockout)") };
        }
        match self {
            Self::BadTcti { .. } => StoreError::InvalidInput { what: self.to_string() },
            Self::Call { call, .. } => StoreError::Backend { op: call, source: Box::new(self) },
            Self::Io { .. } | Self::BadBlob { .. } | Self::Connect { .. } => {
                StoreError::Backend { op: "TPM key file", source: Box::new(self) }
            }
        }
    }
}

/// An operation's failure inside the store: a TPM error (classified by the store, which
/// also notices a lost connection) or one already expressed as a [`StoreError`].
#[derive(Debug)]
pub(crate) enum Failure {
    Tpm(TpmError),
    Store(StoreError),
}

impl From<TpmError> for Failure {
    fn from(e: TpmError) -> Self {
        Self::Tpm(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_error(rc: u32) -> TpmError {
        TpmError::Call { call: "TPM2_Sign", source: tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)) }
    }

    #[test]
    fn classifies_response_codes() {
        // TSS2_TCTI_RC_IO_ERROR: swtpm went away.
        assert!(matches!(call_error(0x000a_000a).into_store_error("t"), StoreError::Unavailable { .. }));
        // TPM_RC_AUTH_FAIL on session 1 (0x98e) and TPM_RC_BAD_AUTH (0x9a2).
        assert!(matches!(call_error(0x98e).into_store_error("t"), StoreError::PinIncorrect { .. }));
        assert!(matches!(call_error(0x9a2).into_store_error("t"), StoreError::PinIncorrect { .. }));
        assert!(matches!(call_error(0x921).into_store_error("t"), StoreError::PinLocked { .. }));
        // Objects flushed by another client or a TPM reset: reconnect and repeat.
        for stale in [0x910, 0x916, 0x100, 0x18b] {
            assert!(call_error(stale).is_stale_handle(), "{stale:#x}");
        }
        for other in [0x98e, 0x921, 0x902, 0x000a_000a] {
            assert!(!call_error(other).is_stale_handle(), "{other:#x}");
        }
        // TPM_RC_OBJECT_MEMORY stays a backend error with the code in the chain.
        let err = call_error(0x902).into_store_error("t");
        assert!(matches!(err, StoreError::Backend { op: "TPM2_Sign", .. }));
        assert!(keyward_core::error::chain(&err).contains("0x902"), "{}", keyward_core::error::chain(&err));
    }
}
