//! A PKCS#10 certificate request built by rcgen and signed inside the token (RSA
//! PKCS#1 v1.5 SHA-256 or ECDSA P-256 SHA-256, as `cryptography`'s CSR builder signs for
//! NVFlare), and the subject NVFlare 2.9's `nvflare cert approve` checks: `CN=<name>,
//! O=<org>, unstructuredName=<cert type>` (UTF8String each), no extensions, no attributes —
//! the same DER shape as `nvflare cert request` (nvflare/lighter/utils.py `x509_name`).
//! `keyward csr` (cli/cert.rs) uses the same signer.

use std::cell::RefCell;

use keyward_core::{KeyAlgorithm, KeyId, KeyStore, PublicKey, SignProfile, StoreError, TlsScheme};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::prelude::FromDer;

use super::ProvisionError;

/// PKCS#9 unstructuredName (1.2.840.113549.1.9.2): where NVFlare puts the requested role.
pub const UNSTRUCTURED_NAME: [u64; 7] = [1, 2, 840, 113549, 1, 9, 2];

/// The subject NVFlare's distributed provisioning expects.
pub fn nvflare_subject(name: &str, org: &str, cert_type: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DnValue::Utf8String(name.to_owned()));
    dn.push(DnType::OrganizationName, DnValue::Utf8String(org.to_owned()));
    dn.push(DnType::CustomDnType(UNSTRUCTURED_NAME.to_vec()), DnValue::Utf8String(cert_type.to_owned()));
    dn
}

/// A token key as rcgen's signer: rcgen builds the request, the token signs it. The store's
/// error is kept, since rcgen's own error cannot carry it.
struct TokenSigner<'a> {
    store: RefCell<&'a mut dyn KeyStore>,
    key: &'a KeyId,
    profile: SignProfile,
    algorithm: &'static SignatureAlgorithm,
    subject_public_key: Vec<u8>,
    failure: RefCell<Option<StoreError>>,
}

impl PublicKeyData for TokenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.subject_public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for TokenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.store.borrow_mut().sign(self.key, self.profile, msg).map_err(|e| {
            *self.failure.borrow_mut() = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// Builds the request `params` describes for token key `key` (whose public key is
/// `public`), signed in the token; returns it as PEM.
///
/// # Errors
/// [`ProvisionError::Store`] when the token does not sign, [`ProvisionError::Csr`] when rcgen
/// cannot build the request.
pub fn sign_request(
    store: &mut dyn KeyStore,
    key: &KeyId,
    public: &PublicKey,
    params: &CertificateParams,
) -> Result<String, ProvisionError> {
    let (algorithm, profile) = match public.algorithm {
        KeyAlgorithm::EcP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, SignProfile::Tls(TlsScheme::EcdsaP256Sha256)),
        _ => (&rcgen::PKCS_RSA_SHA256, SignProfile::Tls(TlsScheme::RsaPkcs1Sha256)),
    };
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&public.spki_der)
        .map_err(|_| ProvisionError::PublicKey(key.clone()))?;
    let signer = TokenSigner {
        store: RefCell::new(store),
        key,
        profile,
        algorithm,
        subject_public_key: spki.subject_public_key.data.to_vec(),
        failure: RefCell::new(None),
    };
    let request = params.serialize_request(&signer).map_err(|e| match signer.failure.take() {
        Some(source) => ProvisionError::Store { op: "signing the certificate request", source },
        None => ProvisionError::Csr(e),
    })?;
    request.pem().map_err(ProvisionError::Csr)
}
