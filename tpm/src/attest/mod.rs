//! TPM key attestation: evidence that a key was born in a TPM and cannot leave it, checked
//! before a certificate is issued. The flow (docs/attestation.md):
//!
//! 1. site, `evidence.rs`: [`AttestationIdentity`] — the EK certificate and the AK's public
//!    area;
//! 2. verifier, `verify.rs`: [`make_challenge`] checks the EK chain (`ek_chain.rs`) and the
//!    allow-list and wraps a fresh nonce for that EK and AK (`credential.rs`,
//!    TPM2_MakeCredential in software);
//! 3. site: [`TpmStore::certify_key`](crate::TpmStore::certify_key) recovers the nonce
//!    (TPM2_ActivateCredential) and has the AK certify the key over it ([`KeyEvidence`]);
//! 4. verifier: [`verify_evidence`] checks the signature, nonce, certified name, the key's
//!    attributes and that it is the certificate request's key.
//!
//! The types carry raw TPM structures (marshalled as the TPM does); the JSON files the CLI
//! writes are the agent's business.

mod credential;
mod ek_chain;
mod error;
mod evidence;
mod verify;

pub use credential::{make_credential, Credential};
pub use error::AttestError;
pub use verify::{
    ek_fingerprint, make_challenge, verify_evidence, AttestedKey, PendingChallenge, VerifierPolicy, NONCE_BYTES,
};

/// The attestation key's template (a restricted ECDSA-P256-SHA256 signing key, fixedTPM,
/// fixedParent, sensitiveDataOrigin; a primary of the endorsement hierarchy).
///
/// # Errors
/// Only if tss-esapi refuses its own builder's values.
pub fn attestation_key_template() -> Result<tss_esapi::structures::Public, tss_esapi::Error> {
    evidence::ak_template()
}

/// The TPM's side of the credential exchange: TPM2_ActivateCredential of `credential` for the
/// attestation key `ak`, with the endorsement key's policy satisfied; returns the challenge's
/// secret. (`keyward attest answer` uses it; a test plays a dishonest site with it.)
///
/// # Errors
/// The TPM calls' errors (another TPM's credential: `TPM2_ActivateCredential failed`).
pub fn activate_credential(
    ctx: &mut tss_esapi::Context,
    ak: tss_esapi::handles::KeyHandle,
    credential: &Credential,
) -> Result<Vec<u8>, crate::TpmError> {
    evidence::activate(ctx, ak, credential)
}

/// A TPM's identity for attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationIdentity {
    /// The EK certificate (DER), as the TPM maker stored it in NV.
    pub ek_certificate: Vec<u8>,
    /// The attestation key's TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
}

/// The site's answer to a challenge: TPM2_Certify of one key by the AK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvidence {
    /// The nonce recovered with TPM2_ActivateCredential (the proof the AK is in the EK's TPM).
    pub nonce: Vec<u8>,
    /// TPMS_ATTEST, as signed.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE by the AK.
    pub signature: Vec<u8>,
    /// The certified key's TPMT_PUBLIC.
    pub key_public: Vec<u8>,
    /// Its parent's (the storage primary's) TPMT_PUBLIC: with it the verifier recomputes the
    /// key's qualified name, which only a key loaded under a storage key of the owner
    /// hierarchy has (a public area loaded with TPM2_LoadExternal may claim fixedTPM; its
    /// qualified name gives it away).
    pub parent_public: Vec<u8>,
}
