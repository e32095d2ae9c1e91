//! Creating keys on the token: generation (`C_GenerateKeyPair`) and one-time import
//! (`C_CreateObject`). Private keys are always private, sensitive, non-extractable token
//! objects; keyward never overwrites an existing object (the caller checked), and deletes
//! one only when a key is retired (`Pkcs11Store::destroy`, after its audit record).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, StoreError};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::store::{FoundKey, Pkcs11Store, P256_OID_DER};

/// keyward's `CKA_ID` for a key: the first 16 bytes of SHA-256("keyward:" + name), so the
/// id is stable and a collision with an object made by another tool is detectable.
pub(crate) fn object_id(id: &KeyId) -> Vec<u8> {
    Sha256::digest(format!("keyward:{id}").as_bytes())[..16].to_vec()
}

fn common(id: &KeyId) -> Vec<Attribute> {
    vec![Attribute::Token(true), Attribute::Label(id.as_str().as_bytes().to_vec()), Attribute::Id(object_id(id))]
}

fn private_template(id: &KeyId, rsa: bool) -> Vec<Attribute> {
    let mut t = common(id);
    t.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        // RSA keys decrypt (NVFlare's cell cipher); EC keys only sign.
        Attribute::Decrypt(rsa),
    ]);
    t
}

fn public_template(id: &KeyId, rsa: bool) -> Vec<Attribute> {
    let mut t = common(id);
    t.extend([Attribute::Private(false), Attribute::Verify(true), Attribute::Wrap(false), Attribute::Encrypt(rsa)]);
    t
}

/// Generates a key pair labelled `id`.
pub(crate) fn generate(store: &mut Pkcs11Store, id: &KeyId, algorithm: KeyAlgorithm) -> Result<FoundKey, StoreError> {
    let rsa = algorithm.is_rsa();
    let mut public = public_template(id, rsa);
    let mechanism = match algorithm.rsa_bits() {
        Some(bits) => {
            public.push(Attribute::ModulusBits((bits as u64).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        None => {
            public.push(Attribute::EcParams(P256_OID_DER.to_vec()));
            Mechanism::EccKeyPairGen
        }
    };
    let private = private_template(id, rsa);
    let result = store.session.generate_key_pair(&mechanism, &public, &private);
    let (_, handle) = result.map_err(store.fail("C_GenerateKeyPair"))?;
    tracing::info!(key = %id, %algorithm, token = %store.shared.token, "generated key pair on token");
    Ok(FoundKey { handle, algorithm })
}

/// Imports `key` as a private key object (plus its public key object) labelled `id`.
pub(crate) fn import(store: &mut Pkcs11Store, id: &KeyId, key: &PrivateKeyMaterial) -> Result<FoundKey, StoreError> {
    let algorithm = key.public_key().algorithm;
    let (mut private, mut public) = match key {
        PrivateKeyMaterial::Rsa { parts, .. } => {
            let mut private = private_template(id, true);
            private.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(parts.modulus.clone()),
                Attribute::PublicExponent(parts.public_exponent.clone()),
                Attribute::PrivateExponent(parts.private_exponent.to_vec()),
                Attribute::Prime1(parts.prime_1.to_vec()),
                Attribute::Prime2(parts.prime_2.to_vec()),
                Attribute::Exponent1(parts.exponent_1.to_vec()),
                Attribute::Exponent2(parts.exponent_2.to_vec()),
                Attribute::Coefficient(parts.coefficient.to_vec()),
            ]);
            let mut public = public_template(id, true);
            public.extend([
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(parts.modulus.clone()),
                Attribute::PublicExponent(parts.public_exponent.clone()),
            ]);
            (private, public)
        }
        PrivateKeyMaterial::EcP256 { scalar, point, .. } => {
            let mut private = private_template(id, false);
            private.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(P256_OID_DER.to_vec()),
                Attribute::Value(scalar.to_vec()),
            ]);
            let mut wrapped_point = vec![0x04, point.len() as u8];
            wrapped_point.extend_from_slice(point);
            let mut public = public_template(id, false);
            public.extend([
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(P256_OID_DER.to_vec()),
                Attribute::EcPoint(wrapped_point),
            ]);
            (private, public)
        }
    };
    let created = store.session.create_object(&private);
    wipe_secrets(&mut private);
    let handle = created.map_err(store.fail("C_CreateObject (private key)"))?;
    let public_created = store.session.create_object(&public);
    if let Err(e) = public_created {
        // Leave nothing half-made: the private object we just created goes again.
        let _ = store.session.destroy_object(handle);
        return Err(store.fail("C_CreateObject (public key)")(e));
    }
    public.clear();
    tracing::info!(key = %id, %algorithm, token = %store.shared.token, "imported private key into token");
    Ok(FoundKey { handle, algorithm })
}

/// Overwrites the secret components a template carried (cryptoki copies them into plain
/// `Vec`s that would otherwise be freed without wiping).
fn wipe_secrets(template: &mut [Attribute]) {
    for attribute in template {
        match attribute {
            Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v)
            | Attribute::Value(v) => v.zeroize(),
            _ => {}
        }
    }
}
