//! Signing with a TPM key: maps a [`SignMechanism`] to the TPM operation that produces it
//! exactly.
//!
//! - PSS with salt = hash length (the TLS profiles) and PKCS#1 v1.5: TPM2_Sign with the
//!   RSAPSS / RSASSA scheme. libtpms always uses salt = hash length for RSAPSS.
//! - PSS with any other salt (the `nvflare` profile: maximum salt, 222 bytes for RSA-2048):
//!   the TPM has no salt parameter, so the message representative is EMSA-PSS-encoded in
//!   software (`keyward_core::pss`) and the TPM does only the private exponentiation with
//!   TPM2_RSA_Decrypt and the NULL scheme. Chosen deliberately over TPM-native salt 32: NVFlare's
//!   verifier (`PSS.MAX_LENGTH`) would accept salt 32, but a verifier that pins salt 222
//!   (openssl `rsa_pss_saltlen:222`, Rust `rsa` with a fixed salt) would not; this way a TPM
//!   key signs exactly like NVFlare's own file key. The same speed was measured both ways.
//! - ECDSA P-256: TPM2_Sign ECDSA-SHA-256; `r`, `s` become DER.

use keyward_core::profile::{HashAlgorithm, RsaPadding, SignMechanism};
use keyward_core::signature::ecdsa_p256_raw_to_der;
use keyward_core::StoreError;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    Data, Digest, HashScheme, HashcheckTicket, PublicKeyRsa, RsaDecryptionScheme, Signature, SignatureScheme,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use crate::error::{Failure, TpmError};

/// What a sign request needs from the store besides the TPM.
pub(crate) struct SignRequest<'a> {
    pub(crate) mechanism: SignMechanism,
    pub(crate) msg: &'a [u8],
    /// RSA modulus bits (0 for EC keys).
    pub(crate) rsa_bits: usize,
}

fn tpm_hash(hash: HashAlgorithm) -> HashingAlgorithm {
    match hash {
        HashAlgorithm::Sha256 => HashingAlgorithm::Sha256,
        HashAlgorithm::Sha384 => HashingAlgorithm::Sha384,
    }
}

fn null_ticket() -> Result<HashcheckTicket, TpmError> {
    let ticket = TPMT_TK_HASHCHECK { tag: TPM2_ST_HASHCHECK, hierarchy: TPM2_RH_NULL, digest: Default::default() };
    HashcheckTicket::try_from(ticket).map_err(TpmError::call("building NULL hashcheck ticket"))
}

fn tpm2_sign(
    ctx: &mut Context,
    key: KeyHandle,
    digest: Vec<u8>,
    scheme: SignatureScheme,
) -> Result<Signature, TpmError> {
    let digest = Digest::try_from(digest).map_err(TpmError::call("building digest"))?;
    ctx.sign(key, digest, scheme, null_ticket()?).map_err(TpmError::call("TPM2_Sign"))
}

fn unexpected() -> Failure {
    Failure::Store(StoreError::backend("TPM2_Sign", "the TPM returned another signature type"))
}

/// Left-pads a big-endian value to `len` bytes (TPMs drop leading zeros).
fn left_pad(value: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.saturating_sub(value.len())];
    out.extend_from_slice(value);
    out
}

/// Signs with the loaded `key`.
pub(crate) fn sign(ctx: &mut Context, key: KeyHandle, req: &SignRequest<'_>) -> Result<Vec<u8>, Failure> {
    match req.mechanism {
        SignMechanism::Rsa { hash, padding: RsaPadding::Pss { salt_len } } if salt_len == hash.output_len() => {
            let scheme = SignatureScheme::RsaPss { hash_scheme: HashScheme::new(tpm_hash(hash)) };
            match tpm2_sign(ctx, key, hash.digest(req.msg), scheme)? {
                Signature::RsaPss(sig) => Ok(left_pad(sig.signature().value(), req.rsa_bits / 8)),
                _ => Err(unexpected()),
            }
        }
        SignMechanism::Rsa { hash: HashAlgorithm::Sha256, padding: RsaPadding::Pss { salt_len } } => {
            let mut salt = vec![0u8; salt_len];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
            let digest = HashAlgorithm::Sha256.digest(req.msg);
            let em = keyward_core::pss::encode_sha256(&digest, req.rsa_bits - 1, &salt)
                .map_err(|e| Failure::Store(StoreError::backend("EMSA-PSS encoding", e)))?;
            let k = req.rsa_bits / 8;
            let input = PublicKeyRsa::try_from(left_pad(&em, k)).map_err(TpmError::call("building RSA input"))?;
            let out = ctx
                .rsa_decrypt(key, input, RsaDecryptionScheme::Null, Data::default())
                .map_err(TpmError::call("TPM2_RSA_Decrypt (raw PSS signature)"))?;
            Ok(left_pad(out.value(), k))
        }
        SignMechanism::Rsa { padding: RsaPadding::Pss { .. }, .. } => {
            Err(Failure::Store(StoreError::Unsupported { what: "PSS with a non-standard salt over SHA-384".into() }))
        }
        SignMechanism::Rsa { hash, padding: RsaPadding::Pkcs1v15 } => {
            let scheme = SignatureScheme::RsaSsa { hash_scheme: HashScheme::new(tpm_hash(hash)) };
            match tpm2_sign(ctx, key, hash.digest(req.msg), scheme)? {
                Signature::RsaSsa(sig) => Ok(left_pad(sig.signature().value(), req.rsa_bits / 8)),
                _ => Err(unexpected()),
            }
        }
        SignMechanism::EcdsaP256Sha256 => {
            let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
            match tpm2_sign(ctx, key, HashAlgorithm::Sha256.digest(req.msg), scheme)? {
                Signature::EcDsa(sig) => {
                    let mut raw = left_pad(sig.signature_r().value(), 32);
                    raw.extend(left_pad(sig.signature_s().value(), 32));
                    ecdsa_p256_raw_to_der(&raw).map_err(Failure::Store)
                }
                _ => Err(unexpected()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_values_the_tpm_shortened() {
        assert_eq!(left_pad(&[1, 2], 4), vec![0, 0, 1, 2]);
        assert_eq!(left_pad(&[1, 2, 3], 3), vec![1, 2, 3]);
    }
}
