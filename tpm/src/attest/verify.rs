//! The verifier (the project admin's side; no TPM needed): makes a challenge for a site's
//! EK and AK ([`make_challenge`]) and checks the site's answer against it and the
//! certificate request's key ([`verify_evidence`]). The checks and their tests are listed in
//! docs/security.md ("TPM key attestation"); their order puts the cheapest refusal first.

use p256::ecdsa::signature::Verifier as _;
use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{Attest, AttestInfo, Public, Signature};
use tss_esapi::traits::UnMarshall;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{AttestError, AttestationIdentity, Credential, KeyEvidence};

/// Bytes of the verifier's nonce.
pub const NONCE_BYTES: usize = 32;

/// What the admin accepts.
#[derive(Clone, Debug, Default)]
pub struct VerifierPolicy {
    /// Accepted TPM CA certificates (DER): the makers' roots and their intermediates.
    pub accepted_cas: Vec<Vec<u8>>,
    /// When set, only these EKs (SHA-256 of the EK's SubjectPublicKeyInfo, lower-case hex).
    pub ek_allow_list: Option<Vec<String>>,
}

/// What the verifier keeps of a challenge it made, until the answer comes (never sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingChallenge {
    /// The nonce, which only the TPM can recover from the credential.
    pub nonce: Vec<u8>,
    /// The EK's fingerprint (SHA-256 of its SubjectPublicKeyInfo, hex).
    pub ek_fingerprint: String,
    /// The AK's TPMT_PUBLIC the credential was made for.
    pub ak_public: Vec<u8>,
}

/// A key that passed every check.
#[derive(Clone, Debug)]
pub struct AttestedKey {
    /// Its SubjectPublicKeyInfo (DER).
    pub spki_der: Vec<u8>,
    /// The EK's fingerprint.
    pub ek_fingerprint: String,
}

/// SHA-256 of an EK certificate's SubjectPublicKeyInfo, hex: the EK allow-list's entries.
///
/// # Errors
/// [`AttestError::Malformed`] when the certificate does not parse.
pub fn ek_fingerprint(ek_certificate: &[u8]) -> Result<String, AttestError> {
    let (_, cert) = X509Certificate::from_der(ek_certificate)
        .map_err(|e| AttestError::Malformed { what: format!("EK certificate: {e}") })?;
    Ok(hex_sha256(cert.public_key().raw))
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A TPM object's name: name algorithm (SHA-256, 0x000b) ‖ SHA-256(TPMT_PUBLIC).
fn name_of(public: &[u8]) -> Vec<u8> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(public));
    name
}

/// Checks the site's EK certificate and AK and makes a challenge for them: the credential
/// to send, and what to keep.
///
/// # Errors
/// [`AttestError::EkUntrusted`], [`AttestError::EkNotAllowed`],
/// [`AttestError::BadAttestationKey`], [`AttestError::Malformed`].
pub fn make_challenge(
    policy: &VerifierPolicy,
    identity: &AttestationIdentity,
    now: ASN1Time,
) -> Result<(Credential, PendingChallenge), AttestError> {
    super::ek_chain::check(&identity.ek_certificate, &policy.accepted_cas, now)?;
    let (_, ek_cert) = X509Certificate::from_der(&identity.ek_certificate)
        .map_err(|e| AttestError::Malformed { what: format!("EK certificate: {e}") })?;
    let ek_fingerprint = hex_sha256(ek_cert.public_key().raw);
    if let Some(allowed) = &policy.ek_allow_list {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&ek_fingerprint)) {
            return Err(AttestError::EkNotAllowed { fingerprint: ek_fingerprint });
        }
    }
    let ek = rsa::RsaPublicKey::from_public_key_der(ek_cert.public_key().raw)
        .map_err(|e| AttestError::Malformed { what: format!("EK certificate key is not RSA: {e}") })?;
    check_attestation_key(&identity.ak_public)?;
    let mut nonce = vec![0u8; NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let credential = super::credential::make_credential(&ek, &name_of(&identity.ak_public), &nonce)?;
    Ok((credential, PendingChallenge { nonce, ek_fingerprint, ak_public: identity.ak_public.clone() }))
}

/// The AK must be what `evidence.rs` makes: a restricted ECDSA P-256 signing key, fixedTPM,
/// fixedParent, sensitiveDataOrigin, named with SHA-256.
fn check_attestation_key(ak_public: &[u8]) -> Result<p256::ecdsa::VerifyingKey, AttestError> {
    let bad = |reason: &str| AttestError::BadAttestationKey { reason: reason.into() };
    let public = Public::unmarshall(ak_public).map_err(|_| bad("its public area does not parse"))?;
    let a = public.object_attributes();
    if !(a.restricted() && a.sign_encrypt() && !a.decrypt()) {
        return Err(bad("not a restricted signing-only key"));
    }
    if !(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin()) {
        return Err(bad("not fixedTPM, fixedParent and sensitiveDataOrigin"));
    }
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(bad("name algorithm is not SHA-256"));
    }
    let Public::Ecc { parameters, unique, .. } = &public else { return Err(bad("not an ECC P-256 key")) };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(bad("not an ECC P-256 key"));
    }
    let mut sec1 = vec![0x04];
    for coordinate in [unique.x().value(), unique.y().value()] {
        if coordinate.len() > 32 {
            return Err(bad("point coordinate longer than 32 bytes"));
        }
        sec1.extend(std::iter::repeat_n(0u8, 32 - coordinate.len()));
        sec1.extend_from_slice(coordinate);
    }
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| bad("its point is not on P-256"))
}

/// Checks the site's answer to `pending` against the certificate request's key
/// (`request_spki_der`, the CSR's SubjectPublicKeyInfo).
///
/// # Errors
/// One [`AttestError`] per failed check (module doc).
pub fn verify_evidence(
    pending: &PendingChallenge,
    evidence: &KeyEvidence,
    request_spki_der: &[u8],
) -> Result<AttestedKey, AttestError> {
    let ak = check_attestation_key(&pending.ak_public)?;
    let signature = Signature::unmarshall(&evidence.signature)
        .map_err(|_| AttestError::Malformed { what: "TPMT_SIGNATURE does not parse".into() })?;
    let Signature::EcDsa(ecc) = signature else { return Err(AttestError::BadSignature) };
    if ecc.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(AttestError::BadSignature);
    }
    let scalar = |v: &[u8]| {
        let mut out = [0u8; 32];
        let len = v.len().min(32);
        out[32 - len..].copy_from_slice(&v[v.len() - len..]);
        out
    };
    let sig =
        p256::ecdsa::Signature::from_scalars(scalar(ecc.signature_r().value()), scalar(ecc.signature_s().value()))
            .map_err(|_| AttestError::BadSignature)?;
    ak.verify(&evidence.attest, &sig).map_err(|_| AttestError::BadSignature)?;
    let attest = Attest::unmarshall(&evidence.attest).map_err(|_| AttestError::Malformed {
        what: "TPMS_ATTEST does not parse (or lacks TPM_GENERATED_VALUE)".into(),
    })?;
    let AttestInfo::Certify { info } = attest.attested() else { return Err(AttestError::NotCertify) };
    if attest.extra_data().value() != pending.nonce.as_slice() {
        return Err(AttestError::WrongNonce);
    }
    let public = Public::unmarshall(&evidence.key_public)
        .map_err(|_| AttestError::Malformed { what: "key TPMT_PUBLIC does not parse".into() })?;
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256
        || info.name().value() != name_of(&evidence.key_public).as_slice()
    {
        return Err(AttestError::KeyNameMismatch);
    }
    check_qualified_name(info.qualified_name().value(), &evidence.parent_public, &evidence.key_public)?;
    let a = public.object_attributes();
    let missing: Vec<&str> = [
        (a.fixed_tpm(), "fixedTPM"),
        (a.fixed_parent(), "fixedParent"),
        (a.sensitive_data_origin(), "sensitiveDataOrigin"),
    ]
    .into_iter()
    .filter_map(|(set, name)| (!set).then_some(name))
    .collect();
    if !missing.is_empty() {
        return Err(AttestError::NotBornInTpm { missing: missing.join(", ") });
    }
    let id = keyward_core::KeyId::new("certified").map_err(|e| AttestError::Malformed { what: e.to_string() })?;
    let key = crate::keygen::public_key(&id, &public)
        .map_err(|e| AttestError::Malformed { what: format!("certified key: {e}") })?;
    if !same_key(&key.spki_der, request_spki_der)? {
        return Err(AttestError::NotTheRequestKey);
    }
    Ok(AttestedKey { spki_der: key.spki_der, ek_fingerprint: pending.ek_fingerprint.clone() })
}

/// TPM_RH_OWNER: the hierarchy keyward's storage primary is in.
const OWNER_HIERARCHY: u32 = 0x4000_0001;

/// The key's qualified name must be that of a child of `parent_public`, a storage primary
/// of the owner hierarchy born in this TPM (TPM 2.0 Part 1 §16.6: QN(primary) =
/// H(hierarchy handle ‖ name), QN(child) = H(QN(parent) ‖ name)). TPM2_LoadExternal gives
/// an object the qualified name H(hierarchy ‖ name), which cannot match.
fn check_qualified_name(certified: &[u8], parent_public: &[u8], key_public: &[u8]) -> Result<(), AttestError> {
    let refuse = |reason| AttestError::NotInKeyHierarchy { reason };
    let parent = Public::unmarshall(parent_public).map_err(|_| refuse("the parent's public area does not parse"))?;
    let a = parent.object_attributes();
    if !(a.restricted()
        && a.decrypt()
        && !a.sign_encrypt()
        && a.fixed_tpm()
        && a.fixed_parent()
        && a.sensitive_data_origin())
        || parent.name_hashing_algorithm() != HashingAlgorithm::Sha256
    {
        return Err(refuse("the parent is not a restricted storage key born in the TPM"));
    }
    let mut parent_qn = vec![0x00, 0x0b];
    parent_qn
        .extend_from_slice(&Sha256::digest([&OWNER_HIERARCHY.to_be_bytes()[..], &name_of(parent_public)].concat()));
    let mut key_qn = vec![0x00, 0x0b];
    key_qn.extend_from_slice(&Sha256::digest([parent_qn, name_of(key_public)].concat()));
    if certified != key_qn.as_slice() {
        return Err(refuse("its qualified name is not that of a child of the storage primary"));
    }
    Ok(())
}

/// Whether two SubjectPublicKeyInfos hold the same key (algorithm, parameters, key bits),
/// whatever encoder wrote them.
fn same_key(a: &[u8], b: &[u8]) -> Result<bool, AttestError> {
    let parse = |der| {
        SubjectPublicKeyInfo::from_der(der)
            .map(|(_, spki)| spki)
            .map_err(|e| AttestError::Malformed { what: format!("SubjectPublicKeyInfo: {e}") })
    };
    let (a, b) = (parse(a)?, parse(b)?);
    let params = |s: &SubjectPublicKeyInfo<'_>| s.algorithm.parameters.as_ref().map(|p| p.data.to_vec());
    Ok(a.algorithm.algorithm == b.algorithm.algorithm
        && params(&a) == params(&b)
        && a.subject_public_key.data == b.subject_public_key.data)
}

#[cfg(test)]
mod tests;
