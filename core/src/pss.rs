//! EMSA-PSS encoding (RFC 8017 §9.1.1) with SHA-256 and MGF1-SHA-256, for devices whose
//! own PSS cannot produce the salt a profile needs: a TPM's TPM2_Sign always uses salt =
//! hash length (32), but NVFlare signs with the maximum salt (222 for RSA-2048). The TPM
//! backend encodes here and lets the TPM do only the private-key exponentiation
//! (TPM2_RSA_Decrypt with the NULL scheme). Verification lives in `verify.rs`.

use sha2::{Digest, Sha256};

const H_LEN: usize = 32;

/// The salt does not fit the encoded message, or the digest is not a SHA-256 digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("EMSA-PSS: a {salt_len}-byte salt and a {digest_len}-byte digest do not fit {em_bits} bits")]
pub struct PssEncodeError {
    /// Salt length asked for.
    pub salt_len: usize,
    /// Digest length given.
    pub digest_len: usize,
    /// Encoded message bits (modulus bits - 1).
    pub em_bits: usize,
}

/// Encodes the SHA-256 `digest` of a message into an EMSA-PSS encoded message of
/// `em_bits` bits (`modulus bits - 1`), `ceil(em_bits / 8)` bytes long, with `salt`.
///
/// # Errors
/// [`PssEncodeError`] when `digest` is not 32 bytes or the salt is too long.
pub fn encode_sha256(digest: &[u8], em_bits: usize, salt: &[u8]) -> Result<Vec<u8>, PssEncodeError> {
    let em_len = em_bits.div_ceil(8);
    let err = PssEncodeError { salt_len: salt.len(), digest_len: digest.len(), em_bits };
    if digest.len() != H_LEN || em_len < H_LEN + salt.len() + 2 {
        return Err(err);
    }
    let h = Sha256::new().chain_update([0u8; 8]).chain_update(digest).chain_update(salt).finalize();
    let db_len = em_len - H_LEN - 1;
    let mut em = vec![0u8; em_len];
    let (db, rest) = em.split_at_mut(db_len);
    let ps_len = db_len - salt.len() - 1;
    db[ps_len] = 0x01;
    db[ps_len + 1..].copy_from_slice(salt);
    crate::oaep::mgf1_sha256_xor(db, &h);
    db[0] &= 0xff >> (8 * em_len - em_bits);
    rest[..H_LEN].copy_from_slice(&h);
    rest[H_LEN] = 0xbc;
    Ok(em)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyAlgorithm, PublicKey};
    use crate::profile::{SignProfile, TlsScheme};
    use rsa::pkcs8::EncodePublicKey;
    use rsa::traits::PublicKeyParts;

    /// Signs like the TPM path does: encode here, then a raw private-key operation.
    fn sign_raw(key: &rsa::RsaPrivateKey, msg: &[u8], salt_len: usize) -> Vec<u8> {
        let salt: Vec<u8> = (0..salt_len).map(|_| rand::random::<u8>()).collect();
        let digest = Sha256::digest(msg);
        let em = encode_sha256(&digest, key.n().bits() - 1, &salt).unwrap();
        let m = rsa::BigUint::from_bytes_be(&em);
        let s = rsa::hazmat::rsa_decrypt_and_check(key, None::<&mut rand::rngs::ThreadRng>, &m).unwrap();
        let raw = s.to_bytes_be();
        let mut sig = vec![0u8; key.size() - raw.len()];
        sig.extend_from_slice(&raw);
        sig
    }

    #[test]
    fn salt_222_encoding_verifies_as_the_nvflare_profile_and_salt_32_as_tls() {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let public = PublicKey {
            algorithm: KeyAlgorithm::Rsa2048,
            spki_der: key.to_public_key().to_public_key_der().unwrap().into_vec(),
        };
        let msg = b"site-1 nonce 0123";
        let sig = sign_raw(&key, msg, 222);
        assert_eq!(crate::verify::verify(&public, SignProfile::Nvflare, msg, &sig), Ok(()));
        assert!(crate::verify::verify(&public, SignProfile::Nvflare, b"other", &sig).is_err());
        let tls = SignProfile::Tls(TlsScheme::RsaPssSha256);
        assert!(crate::verify::verify(&public, tls, msg, &sig).is_err(), "salt 222 must not pass as 32");
        assert_eq!(crate::verify::verify(&public, tls, msg, &sign_raw(&key, msg, 32)), Ok(()));
    }

    #[test]
    fn refuses_a_salt_that_does_not_fit() {
        let digest = [0u8; 32];
        assert_eq!(encode_sha256(&digest, 2047, &[0u8; 222]).map(|e| e.len()), Ok(256));
        assert!(encode_sha256(&digest, 2047, &[0u8; 223]).is_err());
        assert!(encode_sha256(&digest[..20], 2047, &[]).is_err());
    }
}
