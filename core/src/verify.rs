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

/// Verifies an RSA-PSS / SHA-256 / MGF1-SHA-256 signature **whatever its salt length**, the
/// way NVFlare's `verify_content` does (Python `cryptography` with `PSS.MAX_LENGTH` detects
/// the salt on verify; see `shared/notes/backends-spike.md` §0). The salt length is read
/// from the encoded message with the public key, then the standard check runs with it.
///
/// # Errors
/// [`VerifyError`] when the key is not RSA or the signature does not verify.
pub fn verify_pss_sha256_any_salt(spki_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPublicKey::from_public_key_der(spki_der).map_err(|_| VerifyError::BadPublicKey)?;
    if sig.len() != key.size() {
        return Err(VerifyError::BadSignature);
    }
    let m = rsa::hazmat::rsa_encrypt(&key, &rsa::BigUint::from_bytes_be(sig)).map_err(|_| VerifyError::BadSignature)?;
    let em_bits = key.n().bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let raw = m.to_bytes_be();
    if raw.len() > em_len {
        return Err(VerifyError::BadSignature);
    }
    let mut em = vec![0u8; em_len - raw.len()];
    em.extend_from_slice(&raw);
    let h_len = 32;
    if em_len < h_len + 2 || em[em_len - 1] != 0xbc {
        return Err(VerifyError::BadSignature);
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let h = &rest[..h_len];
    let mut db = masked_db.to_vec();
    crate::oaep::mgf1_sha256_xor(&mut db, h);
    db[0] &= 0xff >> (8 * em_len - em_bits);
    let one = db.iter().position(|b| *b != 0).ok_or(VerifyError::BadSignature)?;
    if db[one] != 0x01 {
        return Err(VerifyError::BadSignature);
    }
    let salt_len = db.len() - one - 1;
    let digest = HashAlgorithm::Sha256.digest(msg);
    key.verify(rsa::Pss::new_with_salt::<Sha256>(salt_len), &digest, sig).map_err(|_| VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::signature::RandomizedSigner;

    #[test]
    fn any_salt_verification_accepts_222_32_and_0_and_rejects_tampering() {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        let msg = b"server1c0ffee-nonce";
        for salt in [222usize, 32, 0] {
            let signer = rsa::pss::SigningKey::<Sha256>::new_with_salt_len(key.clone(), salt);
            let sig: Box<[u8]> = signer.sign_with_rng(&mut rand::thread_rng(), msg).into();
            assert_eq!(verify_pss_sha256_any_salt(spki.as_bytes(), msg, &sig), Ok(()), "salt {salt}");
            assert_eq!(verify_pss_sha256_any_salt(spki.as_bytes(), b"other", &sig), Err(VerifyError::BadSignature));
            let mut bad = sig.to_vec();
            bad[10] ^= 1;
            assert_eq!(verify_pss_sha256_any_salt(spki.as_bytes(), msg, &bad), Err(VerifyError::BadSignature));
        }
        assert_eq!(verify_pss_sha256_any_salt(spki.as_bytes(), msg, &[0u8; 10]), Err(VerifyError::BadSignature));
    }
}
