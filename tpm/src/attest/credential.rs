//! TPM2_MakeCredential in software, so the verifier needs no TPM: TPM 2.0 Part 1 §24
//! ("Credential Protection") and Part 3 §12.6, for an RSA endorsement key with the default
//! template (name algorithm SHA-256, AES-128-CFB): the EK certificate's key is all it takes.
//!
//! - seed: 32 random bytes, RSA-OAEP(SHA-256, label `IDENTITY\0`) to the EK → `secret`;
//! - symKey = KDFa(SHA-256, seed, `STORAGE`, AK name, ∅, 128);
//!   encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(credential));
//! - HMACkey = KDFa(SHA-256, seed, `INTEGRITY`, ∅, ∅, 256);
//!   outerHMAC = HMAC-SHA-256(HMACkey, encIdentity ‖ AK name);
//! - credentialBlob (TPM2B_ID_OBJECT's buffer) = TPM2B_DIGEST(outerHMAC) ‖ encIdentity.
//!
//! Only the TPM holding the EK's private key, with an object of exactly that name loaded,
//! gets `credential` back from TPM2_ActivateCredential.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;

use super::AttestError;

/// TPM2_MakeCredential's output, as TPM2_ActivateCredential takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT's buffer: the integrity HMAC and the encrypted credential.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET's buffer: the seed, encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Bytes of a SHA-256 digest (the EK's name algorithm).
const DIGEST_BYTES: usize = 32;

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-SHA-256, `bits` a multiple of 8.
pub(crate) fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = (bits / 8) as usize;
    let mut out = Vec::with_capacity(bytes + DIGEST_BYTES);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// Wraps `credential` (at most 32 bytes) for the object named `object_name` in the TPM
/// whose endorsement key is `ek`.
///
/// # Errors
/// [`AttestError::Malformed`] for a credential longer than a SHA-256 digest;
/// [`AttestError::Crypto`] if RSA-OAEP fails (a key too small for the seed).
pub fn make_credential(ek: &RsaPublicKey, object_name: &[u8], credential: &[u8]) -> Result<Credential, AttestError> {
    if credential.len() > DIGEST_BYTES {
        return Err(AttestError::Malformed { what: "credential longer than 32 bytes".into() });
    }
    let mut rng = rand::rngs::OsRng;
    let mut seed = zeroize::Zeroizing::new([0u8; DIGEST_BYTES]);
    rand::RngCore::fill_bytes(&mut rng, seed.as_mut());
    let encrypted_secret =
        ek.encrypt(&mut rng, Oaep::new_with_label::<Sha256, _>("IDENTITY\0"), seed.as_ref()).map_err(|source| {
            AttestError::Crypto { what: "RSA-OAEP of the credential seed", reason: source.to_string() }
        })?;
    let credential_blob = wrap(seed.as_ref(), object_name, credential);
    Ok(Credential { credential_blob, encrypted_secret })
}

/// The credential blob for a given seed (deterministic part of [`make_credential`]).
fn wrap(seed: &[u8], object_name: &[u8], credential: &[u8]) -> Vec<u8> {
    let sym_key = kdfa(seed, "STORAGE", object_name, &[], 128);
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    cfb_mode::Encryptor::<Aes128>::new(sym_key.as_slice().into(), &[0u8; 16].into()).encrypt(&mut enc_identity);
    let hmac_key = kdfa(seed, "INTEGRITY", &[], &[], 8 * DIGEST_BYTES as u32);
    let mut mac = Hmac::<Sha256>::new_from_slice(&hmac_key).expect("HMAC takes a key of any length");
    mac.update(&enc_identity);
    mac.update(object_name);
    let outer_hmac = mac.finalize().into_bytes();
    let mut blob = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    blob.extend_from_slice(&(outer_hmac.len() as u16).to_be_bytes());
    blob.extend_from_slice(&outer_hmac);
    blob.extend_from_slice(&enc_identity);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_counts_blocks_and_truncates() {
        let long = kdfa(b"key", "STORAGE", b"u", b"", 512);
        assert_eq!(long.len(), 64);
        // The first block depends on the requested length (it is hashed in), so the 256-bit
        // output is not a prefix of the 512-bit one.
        assert_ne!(kdfa(b"key", "STORAGE", b"u", b"", 256), long[..32]);
        assert_eq!(kdfa(b"key", "STORAGE", b"u", b"", 128).len(), 16);
    }

    #[test]
    fn the_blob_is_bound_to_the_object_name() {
        let seed = [7u8; 32];
        let a = wrap(&seed, b"\x00\x0bname-a", b"nonce");
        let b = wrap(&seed, b"\x00\x0bname-b", b"nonce");
        assert_eq!(a.len(), 2 + 32 + 2 + 5);
        assert_ne!(a, b);
    }
}
