//! Verifying the server's challenge reply the way NVFlare's client does
//! (`Authenticator._challenge_server` → `IdentityVerifier.verify_common_name`), and the
//! token signature it returns at registration. The certificate checks (chain to the pinned
//! `rootCA.pem`, validity, serverAuth, digitalSignature) are `chain.rs`; the CN is compared
//! here, as there is no host-name check (NVFlare has none).

use std::time::SystemTime;

use base64::Engine;

use super::chain::{pinned_root, verify_chain, ChainFailure, Purpose};
use super::ChallengeError;
use crate::verify::verify_pss_sha256_any_salt;

/// The bytes the site key signs at registration: `(client_cn + server_nonce).encode("utf-8")`.
pub fn registration_message(client_cn: &str, server_nonce: &str) -> Vec<u8> {
    format!("{client_cn}{server_nonce}").into_bytes()
}

/// The server's reply to a challenge, as NVFlare's server sends it.
#[derive(Clone, Debug)]
pub struct ServerReply<'a> {
    /// `cert`: the exact PEM bytes of `server.crt` (leaf first, possibly a chain).
    pub cert_pem: &'a [u8],
    /// `cn`: the server's CN.
    pub cn: &'a str,
    /// `signature`: raw PSS signature over `cn + client_nonce`.
    pub signature: &'a [u8],
}

/// A server that passed verification: its CN and leaf public key, for the token check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedServer {
    /// The server's CN.
    pub cn: String,
    /// The leaf's SubjectPublicKeyInfo (DER).
    pub spki_der: Vec<u8>,
}

/// The site's pinned trust: the project root CA and the expected server identity.
#[derive(Clone, Debug)]
pub struct ServerTrust {
    root_der: Vec<u8>,
    expected_cn: String,
}

impl ServerTrust {
    /// Pins `root_ca_pem` (the kit's `rootCA.pem`) and the expected server identity
    /// (`servers[0].identity` in `fed_client.json`).
    ///
    /// # Errors
    /// [`ChallengeError::Malformed`] when the root is not a PEM certificate.
    pub fn new(root_ca_pem: &[u8], expected_cn: &str) -> Result<Self, ChallengeError> {
        Ok(Self { root_der: pinned_root(root_ca_pem)?, expected_cn: expected_cn.to_owned() })
    }

    /// The expected server identity.
    pub fn expected_cn(&self) -> &str {
        &self.expected_cn
    }

    /// Verifies a challenge reply for `client_nonce` (which the caller has already checked
    /// was issued by this agent and not used) at time `now`.
    ///
    /// # Errors
    /// The first check that fails, in NVFlare's order: identity, chain, usage, CN, signature.
    pub fn verify_reply(
        &self,
        reply: &ServerReply<'_>,
        client_nonce: &str,
        now: SystemTime,
    ) -> Result<VerifiedServer, ChallengeError> {
        if reply.cn != self.expected_cn {
            return Err(ChallengeError::IdentityMismatch {
                expected: self.expected_cn.clone(),
                claimed: reply.cn.into(),
            });
        }
        let leaf = verify_chain(&self.root_der, reply.cert_pem, Purpose::Server, now).map_err(|e| match e {
            ChainFailure::Malformed(what) => ChallengeError::Malformed(what),
            ChainFailure::Expired => ChallengeError::Expired,
            ChainFailure::Usage(what) => ChallengeError::Usage(what),
            ChainFailure::Untrusted(why) => ChallengeError::Untrusted(why),
        })?;
        if leaf.cn != reply.cn {
            return Err(ChallengeError::CertificateNameMismatch {
                expected: self.expected_cn.clone(),
                presented: leaf.cn,
            });
        }
        let spki_der = leaf.spki_der;
        let signed = format!("{}{client_nonce}", reply.cn);
        verify_pss_sha256_any_salt(&spki_der, signed.as_bytes(), reply.signature)
            .map_err(|_| ChallengeError::BadServerSignature)?;
        Ok(VerifiedServer { cn: reply.cn.to_owned(), spki_der })
    }
}

impl VerifiedServer {
    /// Checks the server's `__token_signature__` (base64 text) over `client_name + token`.
    ///
    /// # Errors
    /// [`ChallengeError::BadTokenSignature`], or `Malformed` for bad base64.
    pub fn verify_token(&self, client_name: &str, token: &str, signature_b64: &str) -> Result<(), ChallengeError> {
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| ChallengeError::Malformed("token signature (not base64)"))?;
        let signed = format!("{client_name}{token}");
        verify_pss_sha256_any_salt(&self.spki_der, signed.as_bytes(), &signature)
            .map_err(|_| ChallengeError::BadTokenSignature)
    }
}

#[cfg(test)]
mod tests;
