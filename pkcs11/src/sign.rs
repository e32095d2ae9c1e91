//! Signing with a token key: maps a [`SignProfile`] to one PKCS#11 mechanism and calls
//! `C_Sign`. PSS salt lengths come from the profile (NVFlare: maximum, 222 bytes for
//! RSA-2048; TLS: hash length). ECDSA (`CKM_ECDSA` over a SHA-256 digest) returns raw
//! `r || s`, converted to DER here.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use keyward_core::profile::{HashAlgorithm, RsaPadding, SignMechanism};
use keyward_core::signature::ecdsa_p256_raw_to_der;
use keyward_core::{SignProfile, StoreError};

use crate::store::{FoundKey, Pkcs11Store};

fn pss(hash: HashAlgorithm, salt_len: usize) -> Mechanism<'static> {
    let (hash_alg, mgf) = match hash {
        HashAlgorithm::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlgorithm::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
    };
    let params = PkcsPssParams { hash_alg, mgf, s_len: (salt_len as u64).into() };
    match hash {
        HashAlgorithm::Sha256 => Mechanism::Sha256RsaPkcsPss(params),
        HashAlgorithm::Sha384 => Mechanism::Sha384RsaPkcsPss(params),
    }
}

pub(crate) fn sign(
    store: &mut Pkcs11Store,
    key: FoundKey,
    profile: SignProfile,
    msg: &[u8],
) -> Result<Vec<u8>, StoreError> {
    match profile.mechanism(key.algorithm)? {
        SignMechanism::Rsa { hash, padding } => {
            let mechanism = match (padding, hash) {
                (RsaPadding::Pss { salt_len }, hash) => pss(hash, salt_len),
                (RsaPadding::Pkcs1v15, HashAlgorithm::Sha256) => Mechanism::Sha256RsaPkcs,
                (RsaPadding::Pkcs1v15, HashAlgorithm::Sha384) => Mechanism::Sha384RsaPkcs,
            };
            let result = store.session.sign(&mechanism, key.handle, msg);
            result.map_err(store.fail("C_Sign"))
        }
        SignMechanism::EcdsaP256Sha256 => {
            let digest = HashAlgorithm::Sha256.digest(msg);
            let result = store.session.sign(&Mechanism::Ecdsa, key.handle, &digest);
            let raw = result.map_err(store.fail("C_Sign"))?;
            ecdsa_p256_raw_to_der(&raw)
        }
    }
}
