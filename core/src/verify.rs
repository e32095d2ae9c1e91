//! Verifying signatures made by a keyward key, in software, with the public key only:
//! used to prove an import (sign, then verify) and by tests and benches. Exact parameters:
//! a PSS signature must carry exactly the salt its profile prescribes.

use rsa::pkcs8::DecodePublicKey;
use sha2::{Sha256, Sha384};

use crate::key::PublicKey;
use crate::profile::{HashAlgorithm, RsaPadding, SignMechanism, SignProfile};

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The SubjectPublicKeyInfo did not parse.
    #[error("malformed public key")]
    BadPublicKey,
    /// The profile does not fit the key.
    #[error("profile `{0}` does not fit this key")]
    ProfileMismatch(SignProfile),
    /// The signature is wrong.
    #[error("signature does not verify")]
    BadSignature,
}

/// Verifies `sig` over `msg` as `profile` prescribes for `public`.
///
/// # Errors
/// [`VerifyError`] when the key, profile or signature do not match.
pub fn verify(public: &PublicKey, profile: SignProfile, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    let mechanism = profile.mechanism(public.algorithm).map_err(|_| VerifyError::ProfileMismatch(profile))?;
    match mechanism {
        SignMechanism::Rsa { hash, padding } => {
            let key =
                rsa::RsaPublicKey::from_public_key_der(&public.spki_der).map_err(|_| VerifyError::BadPublicKey)?;
            let digest = hash.digest(msg);
            let result = match (padding, hash) {
                (RsaPadding::Pss { salt_len }, HashAlgorithm::Sha256) => {
                    key.verify(rsa::Pss::new_with_salt::<Sha256>(salt_len), &digest, sig)
                }
                (RsaPadding::Pss { salt_len }, HashAlgorithm::Sha384) => {
                    key.verify(rsa::Pss::new_with_salt::<Sha384>(salt_len), &digest, sig)
                }
                (RsaPadding::Pkcs1v15, HashAlgorithm::Sha256) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                }
                (RsaPadding::Pkcs1v15, HashAlgorithm::Sha384) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha384>(), &digest, sig)
                }
            };
            result.map_err(|_| VerifyError::BadSignature)
        }
        SignMechanism::EcdsaP256Sha256 => {
            use p256::ecdsa::signature::Verifier;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&public.spki_der)
                .map_err(|_| VerifyError::BadPublicKey)?;
            let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| VerifyError::BadSignature)?;
            key.verify(msg, &sig).map_err(|_| VerifyError::BadSignature)
        }
    }
}
