//! RSA-OAEP decoding (SHA-256, MGF1-SHA-256, empty label; RFC 8017 §7.1.2 step 3) of an
//! encoded message produced by a raw RSA private-key operation inside a token.
//!
//! Why this exists: SoftHSM 2.6.1 offers `CKM_RSA_PKCS_OAEP` only with SHA-1, but NVFlare's
//! cell cipher wraps keys with OAEP-SHA-256. The modular exponentiation still happens inside
//! the token (`CKM_RSA_X_509`); only the padding is removed here. RustCrypto's `rsa` crate
//! keeps its decoder private, so this is a port of its `decrypt_inner`: every check runs in
//! constant time with `subtle`, and every failure is the same [`OaepError`], so the caller
//! learns nothing about which check failed (Manger's attack).
//!
//! Also [`check_ciphertext`], the range check every backend gets before its device sees a
//! ciphertext (RFC 8017 §7.1.2 step 1 and §5.1.2 step 1: the ciphertext, as an integer, must
//! be less than the modulus), so PKCS#11 tokens and TPMs answer an out-of-range input alike.

use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::key::{KeyId, PublicKey};

const H_LEN: usize = 32;

/// The ciphertext did not decode. Deliberately carries no detail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("OAEP decoding failed")]
pub struct OaepError;

/// XORs `out` with MGF1-SHA-256(`seed`) (RFC 8017 B.2.1); PSS verification uses it too.
pub fn mgf1_sha256_xor(out: &mut [u8], seed: &[u8]) {
    for (counter, chunk) in out.chunks_mut(H_LEN).enumerate() {
        let mut h = Sha256::new();
        h.update(seed);
        h.update((counter as u32).to_be_bytes());
        for (o, m) in chunk.iter_mut().zip(h.finalize()) {
            *o ^= m;
        }
    }
}

/// Checks that `ciphertext` can be an RSA-OAEP ciphertext for `public`, the public key of
/// `id`: an RSA key, exactly the modulus's length, and less than the modulus as a big-endian
/// integer. Nothing here is secret (the ciphertext and the modulus are both public).
///
/// # Errors
/// [`StoreError::Unsupported`] for a key that is not RSA, [`StoreError::InvalidInput`] for a
/// wrong length, and [`StoreError::DecryptionFailed`] for a value not below the modulus.
pub fn check_ciphertext(id: &KeyId, public: &PublicKey, ciphertext: &[u8]) -> Result<(), StoreError> {
    if !public.algorithm.is_rsa() {
        return Err(StoreError::Unsupported {
            what: format!("decrypt with {} key `{id}` (RSA only)", public.algorithm),
        });
    }
    let key = rsa::RsaPublicKey::from_public_key_der(&public.spki_der)
        .map_err(|_| StoreError::InvalidInput { what: format!("public key of `{id}` is not a readable RSA key") })?;
    let k = key.size();
    if ciphertext.len() != k {
        return Err(StoreError::InvalidInput {
            what: format!("ciphertext is {} bytes; key `{id}` needs exactly {k}", ciphertext.len()),
        });
    }
    // Both are k bytes, big-endian: comparing the bytes in order compares the integers.
    let mut modulus = key.n().to_bytes_be();
    if modulus.len() < k {
        modulus.splice(0..0, std::iter::repeat_n(0, k - modulus.len()));
    }
    if ciphertext >= modulus.as_slice() {
        return Err(StoreError::DecryptionFailed);
    }
    Ok(())
}

/// Decodes `em`, the raw RSA decryption of a ciphertext for a modulus of `k` bytes.
/// `em` may be shorter than `k` (leading zero bytes dropped by the token); it is left-padded.
///
/// # Errors
/// [`OaepError`] for any malformed encoding.
pub fn decode_sha256(em: &[u8], k: usize) -> Result<Zeroizing<Vec<u8>>, OaepError> {
    if k < 2 * H_LEN + 2 || em.len() > k {
        return Err(OaepError);
    }
    let mut buf = Zeroizing::new(vec![0u8; k]);
    buf[k - em.len()..].copy_from_slice(em);

    let first_byte_is_zero = buf[0].ct_eq(&0u8);
    let (seed, db) = buf[1..].split_at_mut(H_LEN);
    mgf1_sha256_xor(seed, db);
    mgf1_sha256_xor(db, seed);

    let label_hash = Sha256::digest(b"");
    let hash_ok = db[..H_LEN].ct_eq(&label_hash);

    // After lHash: zero or more 0x00, then 0x01, then the message.
    let mut looking = subtle::Choice::from(1u8);
    let mut index = 0u32;
    let mut bad_byte_before_one = subtle::Choice::from(0u8);
    for (i, &b) in db.iter().enumerate().skip(H_LEN) {
        let is_zero = b.ct_eq(&0u8);
        let is_one = b.ct_eq(&1u8);
        index.conditional_assign(&(i as u32), looking & is_one);
        looking &= !is_one;
        bad_byte_before_one |= looking & !is_zero;
    }
    let valid = first_byte_is_zero & hash_ok & !bad_byte_before_one & !looking;
    if bool::from(valid) {
        Ok(Zeroizing::new(db[index as usize + 1..].to_vec()))
    } else {
        Err(OaepError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    fn key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap()
    }

    #[test]
    fn decodes_what_rsa_crate_encrypts() {
        let key = key();
        let k = key.size();
        for msg in [&b""[..], b"k", &[7u8; 190]] {
            let ct = key.to_public_key().encrypt(&mut rand::thread_rng(), rsa::Oaep::new::<Sha256>(), msg).unwrap();
            let em = rsa::hazmat::rsa_decrypt_and_check(
                &key,
                None::<&mut rand::rngs::ThreadRng>,
                &rsa::BigUint::from_bytes_be(&ct),
            )
            .unwrap()
            .to_bytes_be();
            assert_eq!(decode_sha256(&em, k).unwrap().as_slice(), msg);
        }
    }

    #[test]
    fn rejects_tampered_or_sha1_encodings() {
        let key = key();
        let k = key.size();
        let ct =
            key.to_public_key().encrypt(&mut rand::thread_rng(), rsa::Oaep::new::<sha1_stub::Sha1>(), b"x").unwrap();
        let em = rsa::hazmat::rsa_decrypt_and_check(
            &key,
            None::<&mut rand::rngs::ThreadRng>,
            &rsa::BigUint::from_bytes_be(&ct),
        )
        .unwrap()
        .to_bytes_be();
        assert_eq!(decode_sha256(&em, k), Err(OaepError));
        assert_eq!(decode_sha256(&[0u8; 256], k), Err(OaepError));
        assert_eq!(decode_sha256(&[1u8; 257], k), Err(OaepError));
    }

    fn public(key: &rsa::RsaPrivateKey) -> PublicKey {
        use rsa::pkcs8::EncodePublicKey;
        let spki_der = key.to_public_key().to_public_key_der().unwrap().into_vec();
        PublicKey { algorithm: crate::key::KeyAlgorithm::from_rsa_bits(key.size() * 8).unwrap(), spki_der }
    }

    #[test]
    fn ciphertexts_not_below_the_modulus_fail_as_decryption_failures() {
        let key = key();
        let (id, public) = (KeyId::new("site-1").unwrap(), public(&key));
        let k = key.size();
        assert!(matches!(check_ciphertext(&id, &public, &vec![0xff; k]), Err(StoreError::DecryptionFailed)));
        let n = key.n().to_bytes_be();
        assert!(matches!(check_ciphertext(&id, &public, &n), Err(StoreError::DecryptionFailed)));
        let mut below = n.clone();
        *below.last_mut().unwrap() -= 1;
        assert!(check_ciphertext(&id, &public, &below).is_ok());
        let ct = key.to_public_key().encrypt(&mut rand::thread_rng(), rsa::Oaep::new::<Sha256>(), b"k").unwrap();
        assert!(check_ciphertext(&id, &public, &ct).is_ok());
        assert!(matches!(check_ciphertext(&id, &public, &[1, 2]), Err(StoreError::InvalidInput { .. })));
    }

    /// SHA-384 stands in for "another hash" so no SHA-1 crate is needed.
    mod sha1_stub {
        pub type Sha1 = sha2::Sha384;
    }
}
