//! Which wire [`ErrorCode`] each error of `keyward-core` becomes: the agent's edge decides
//! this, so the store and the NVFlare checks know nothing of the wire. Call `e.code()` with
//! [`WireCode`] in scope; the message sent with it is the error's top-level `Display`.

use keyward_core::nvflare::ChallengeError;
use keyward_core::StoreError;
use keyward_protocol::ErrorCode;

/// An error that has a stable wire code.
pub trait WireCode {
    /// The code a client receives for it.
    fn code(&self) -> ErrorCode;
}

impl WireCode for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::KeyNotFound { .. } => ErrorCode::UnknownKey,
            Self::KeyExists { .. } => ErrorCode::KeyExists,
            Self::Unsupported { .. } => ErrorCode::Unsupported,
            Self::InvalidInput { .. } => ErrorCode::InvalidRequest,
            Self::DecryptionFailed => ErrorCode::DecryptionFailed,
            Self::PinIncorrect { .. } => ErrorCode::PinIncorrect,
            Self::PinLocked { .. } => ErrorCode::PinLocked,
            Self::Unavailable { .. } => ErrorCode::BackendUnavailable,
            Self::Busy => ErrorCode::Busy,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::Backend { .. } => ErrorCode::BackendError,
            // `StoreError` is non-exhaustive; a variant added later is a backend failure
            // until it is given its own code here.
            _ => ErrorCode::BackendError,
        }
    }
}

impl WireCode for ChallengeError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownNonce(_) => ErrorCode::NonceUnknown,
            Self::ExpiredNonce(_) => ErrorCode::NonceExpired,
            Self::ReplayedNonce => ErrorCode::NonceReplayed,
            Self::NonceNotYours => ErrorCode::NonceNotYours,
            Self::IdentityMismatch { .. } | Self::CertificateNameMismatch { .. } => ErrorCode::ServerIdentityMismatch,
            Self::Untrusted(_) => ErrorCode::ServerUntrusted,
            Self::Expired => ErrorCode::ServerCertExpired,
            Self::Usage(_) => ErrorCode::ServerCertUsage,
            Self::BadServerSignature => ErrorCode::ServerSignatureInvalid,
            Self::BadTokenSignature => ErrorCode::TokenSignatureInvalid,
            Self::ClientUntrusted(_) => ErrorCode::ClientUntrusted,
            Self::ClientNameMismatch { .. } => ErrorCode::ClientIdentityMismatch,
            Self::BadClientSignature => ErrorCode::ClientSignatureInvalid,
            Self::Malformed(_) => ErrorCode::InvalidRequest,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::KeyId;

    use super::*;

    #[test]
    fn store_errors_get_the_codes_clients_branch_on() {
        let id = KeyId::new("site-1").unwrap();
        assert_eq!(StoreError::KeyNotFound { id: id.clone() }.code(), ErrorCode::UnknownKey);
        assert_eq!(StoreError::KeyExists { id, detail: "label".into() }.code(), ErrorCode::KeyExists);
        assert_eq!(StoreError::InvalidInput { what: "length".into() }.code(), ErrorCode::InvalidRequest);
        assert_eq!(StoreError::DecryptionFailed.code(), ErrorCode::DecryptionFailed);
        assert_eq!(StoreError::PinLocked { token: "t".into() }.code(), ErrorCode::PinLocked);
        assert_eq!(StoreError::Unavailable { what: "t".into(), source: None }.code(), ErrorCode::BackendUnavailable);
        assert_eq!(StoreError::Busy.code(), ErrorCode::Busy);
        assert_eq!(StoreError::Timeout { millis: 5 }.code(), ErrorCode::Timeout);
        assert_eq!(StoreError::backend("sign", std::io::Error::other("x")).code(), ErrorCode::BackendError);
    }

    #[test]
    fn each_refusal_of_the_nvflare_flow_has_its_own_code() {
        let mismatch = ChallengeError::IdentityMismatch { expected: "a".into(), claimed: "b".into() };
        assert_eq!(mismatch.code(), ErrorCode::ServerIdentityMismatch);
        let presented = ChallengeError::CertificateNameMismatch { expected: "a".into(), presented: "b".into() };
        assert_eq!(presented.code(), ErrorCode::ServerIdentityMismatch);
        assert_eq!(ChallengeError::ReplayedNonce.code(), ErrorCode::NonceReplayed);
        assert_eq!(ChallengeError::Expired.code(), ErrorCode::ServerCertExpired);
        assert_eq!(ChallengeError::BadTokenSignature.code(), ErrorCode::TokenSignatureInvalid);
        assert_eq!(ChallengeError::Malformed("pem").code(), ErrorCode::InvalidRequest);
    }
}
