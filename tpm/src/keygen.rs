//! Key templates and creation under the storage primary, and reading a key's algorithm and
//! SubjectPublicKeyInfo from its TPMT_PUBLIC (no TPM call needed).
//!
//! Every key is fixedTPM, fixedParent, sensitiveDataOrigin (born in this TPM, never
//! duplicable) and userWithAuth (the key's own random auth value, see `auth.rs`, or the
//! configured one, authorises use); keys with their own random auth value are also noDA.
//! RSA keys are unrestricted sign+decrypt with the NULL scheme, so one key can do TPM2_Sign
//! with the scheme a TLS profile needs, OAEP-SHA-256 in TPM2_RSA_Decrypt, and the raw
//! private operation the maximum-salt PSS path uses (see `sign.rs`). P-256 keys are
//! sign-only ECDSA-SHA-256.

use keyward_core::{KeyAlgorithm, KeyId, Pin, PublicKey, StoreError};
use rsa::pkcs8::EncodePublicKey;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{EccScheme, HashScheme, Public, RsaExponent};

use crate::blob::KeyBlob;
use crate::connection::Connection;
use crate::error::TpmError;

/// The name algorithm of every key keyward makes or imports (it bounds the auth value's
/// length: 32 bytes).
pub(crate) const NAME_ALG: HashingAlgorithm = HashingAlgorithm::Sha256;

pub(crate) fn template(algorithm: KeyAlgorithm) -> Result<Public, tss_esapi::Error> {
    match algorithm {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
            let bits = if algorithm == KeyAlgorithm::Rsa2048 { RsaKeyBits::Rsa2048 } else { RsaKeyBits::Rsa3072 };
            tss_esapi::utils::create_unrestricted_encryption_decryption_rsa_public(bits, RsaExponent::default())
        }
        KeyAlgorithm::EcP256 => tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        ),
    }
}

/// The auth value for a key, from the configured secret.
pub(crate) fn auth_value(auth: Option<&Pin>) -> Result<Option<tss_esapi::structures::Auth>, StoreError> {
    auth.map(|pin| {
        tss_esapi::structures::Auth::try_from(pin.expose().as_bytes().to_vec())
            .map_err(|_| StoreError::InvalidInput { what: "the TPM key auth value is longer than 64 bytes".into() })
    })
    .transpose()
}

/// Sets noDA: a key with its own random auth value cannot be guessed, so the TPM's
/// dictionary-attack counter need not guard it, and then another client's failed attempts
/// (on it or on anything else) cannot lock the agent out of it.
pub(crate) fn set_no_da(public: &mut Public, no_da: bool) {
    let (Public::Rsa { object_attributes, .. }
    | Public::Ecc { object_attributes, .. }
    | Public::KeyedHash { object_attributes, .. }
    | Public::SymCipher { object_attributes, .. }) = public;
    let bits = tss_esapi::tss2_esys::TPMA_OBJECT::from(*object_attributes);
    let noda = tss_esapi::constants::tss::TPMA_OBJECT_NODA;
    *object_attributes = (if no_da { bits | noda } else { bits & !noda }).into();
}

/// Creates a key of `algorithm` with the auth value `auth` under the primary; returns it
/// wrapped by the primary (the caller attaches the auth value it keeps).
pub(crate) fn create(
    conn: &mut Connection,
    algorithm: KeyAlgorithm,
    auth: Option<tss_esapi::structures::Auth>,
    no_da: bool,
) -> Result<KeyBlob, TpmError> {
    let mut public = template(algorithm).map_err(TpmError::call("building key template"))?;
    set_no_da(&mut public, no_da);
    let primary = conn.primary;
    // The new auth value travels in `inSensitive`: encrypted by the salted session.
    let created =
        crate::session::encrypting(&mut conn.ctx, conn.session, |c| c.create(primary, public, auth, None, None, None))?
            .map_err(TpmError::call("TPM2_Create"))?;
    Ok(KeyBlob { public: created.out_public, private: created.out_private, auth: None })
}

/// The key's algorithm, if it is one keyward uses.
pub(crate) fn algorithm_of(id: &KeyId, public: &Public) -> Result<KeyAlgorithm, StoreError> {
    let unsupported = |what: &str| StoreError::Unsupported { what: format!("TPM key `{id}`: {what}") };
    match public {
        Public::Rsa { parameters, .. } => match parameters.key_bits() {
            RsaKeyBits::Rsa2048 => Ok(KeyAlgorithm::Rsa2048),
            RsaKeyBits::Rsa3072 => Ok(KeyAlgorithm::Rsa3072),
            _ => Err(unsupported("RSA size other than 2048 or 3072")),
        },
        Public::Ecc { parameters, .. } if parameters.ecc_curve() == EccCurve::NistP256 => Ok(KeyAlgorithm::EcP256),
        Public::Ecc { .. } => Err(unsupported("EC curve other than P-256")),
        _ => Err(unsupported("not an RSA or EC key")),
    }
}

/// The SubjectPublicKeyInfo of a TPM public area.
pub(crate) fn public_key(id: &KeyId, public: &Public) -> Result<PublicKey, StoreError> {
    let algorithm = algorithm_of(id, public)?;
    let spki = match public {
        Public::Rsa { parameters, unique, .. } => {
            let e = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(unique.value()), rsa::BigUint::from(e))
                .map_err(|e| StoreError::backend("decoding TPM RSA public key", e))?;
            key.to_public_key_der().map_err(|e| StoreError::backend("encoding SPKI", e))?.into_vec()
        }
        Public::Ecc { unique, .. } => {
            let mut sec1 = vec![0x04];
            for coordinate in [unique.x().value(), unique.y().value()] {
                sec1.extend(std::iter::repeat_n(0u8, 32usize.saturating_sub(coordinate.len())));
                sec1.extend_from_slice(coordinate);
            }
            let key = p256::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|e| StoreError::backend("decoding TPM EC public key", e))?;
            key.to_public_key_der().map_err(|e| StoreError::backend("encoding SPKI", e))?.into_vec()
        }
        _ => return Err(StoreError::Unsupported { what: format!("TPM key `{id}`: not an RSA or EC key") }),
    };
    Ok(PublicKey { algorithm, spki_der: spki })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_names_with_name_alg() {
        for algorithm in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072, KeyAlgorithm::EcP256] {
            assert_eq!(template(algorithm).unwrap().name_hashing_algorithm(), NAME_ALG, "{algorithm}");
        }
    }

    #[test]
    fn sets_and_clears_no_da_only() {
        let mut public = template(KeyAlgorithm::EcP256).unwrap();
        let before = public.object_attributes();
        set_no_da(&mut public, true);
        assert!(public.object_attributes().no_da() && public.object_attributes().sign_encrypt());
        set_no_da(&mut public, false);
        assert_eq!(public.object_attributes(), before);
    }
}
