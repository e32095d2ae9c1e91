//! [`AttestError`]: why the verifier refuses a TPM key's evidence. Each variant is one check
//! of docs/security.md ("TPM key attestation"); its message is the reason the admin sees.

/// A refusal of the verifier, or evidence it could not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The EK certificate does not chain to an accepted TPM CA.
    #[error("EK certificate from `{issuer}` is not issued by an accepted TPM CA: {reason}")]
    EkUntrusted {
        /// The EK certificate's issuer (EK certificates often have an empty subject).
        issuer: String,
        /// What failed: no CA with that name, a bad signature, expiry, not a CA.
        reason: String,
    },
    /// The EK is not in the admin's allow-list.
    #[error("key from another TPM: EK `{fingerprint}` is not in the EK allow-list")]
    EkNotAllowed {
        /// SHA-256 of the EK's SubjectPublicKeyInfo, hex.
        fingerprint: String,
    },
    /// The attestation key is not a restricted signing key bound to its TPM.
    #[error("attestation key is not a restricted signing key fixed to its TPM: {reason}")]
    BadAttestationKey {
        /// What is wrong with its public area.
        reason: String,
    },
    /// The evidence answers no challenge the verifier has open: never issued, or already
    /// used once (replayed evidence).
    #[error("replayed evidence: no open challenge for its nonce (never issued, or already used)")]
    UnknownChallenge,
    /// The challenge was answered too late.
    #[error("the challenge expired {seconds} s ago; make a new one")]
    ChallengeExpired {
        /// How long ago.
        seconds: u64,
    },
    /// A certificate request came without TPM evidence and the verifier does not accept
    /// unattested keys.
    #[error("no TPM evidence for this certificate request, and `accept_unattested_keys` is false")]
    NoEvidence,
    /// The Certify structure is not over the nonce the verifier chose.
    #[error("evidence is not over this challenge's nonce (replayed or for another challenge)")]
    WrongNonce,
    /// The Certify signature does not verify with the attestation key.
    #[error("the Certify signature does not verify with the attestation key the credential was made for")]
    BadSignature,
    /// The signed structure is not a TPM2_Certify.
    #[error("the signed evidence is not a TPM2_Certify structure")]
    NotCertify,
    /// The key's public area is not the one certified.
    #[error("the key public area in the evidence is not the key the TPM certified")]
    KeyNameMismatch,
    /// The key is not under a storage primary of the owner hierarchy (its qualified name
    /// does not match): e.g. a public area loaded from outside with TPM2_LoadExternal.
    #[error("the certified key is not a child of the TPM's storage primary key (a public key loaded from outside?): {reason}")]
    NotInKeyHierarchy {
        /// What did not match.
        reason: &'static str,
    },
    /// The key was not generated in the TPM or can leave it.
    #[error("key was not born in the TPM (an imported key?): not {missing}")]
    NotBornInTpm {
        /// The missing attributes, e.g. `fixedTPM, fixedParent, sensitiveDataOrigin`.
        missing: String,
    },
    /// The certified key is not the key the certificate request is for.
    #[error("the certified TPM key is not the certificate request's key")]
    NotTheRequestKey,
    /// Evidence that cannot be decoded.
    #[error("malformed evidence: {what}")]
    Malformed {
        /// What could not be read.
        what: String,
    },
    /// A cryptographic operation of the verifier failed.
    #[error("{what} failed: {reason}")]
    Crypto {
        /// The step.
        what: &'static str,
        /// Cause, as text (rsa's error holds no further chain).
        reason: String,
    },
}
