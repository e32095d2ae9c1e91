//! The server side of NVFlare's registration, as the server's agent checks it before its key
//! signs a client's token (nvflare 2.9.0 `private/fed/server/client_manager.py`,
//! `authenticated_client` → `IdentityVerifier.verify_common_name` with clientAuth): the
//! client's certificate chains to the pinned project root, its CN is the name the client
//! registers under, and its PSS signature covers `client_cn + server_nonce`, where the server
//! nonce is one the agent issued itself (the caller checks that, `nonce.rs`). Certificate
//! checks: `chain.rs`. The messages the server key signs are built here, never taken whole
//! from the caller.

use std::time::SystemTime;

use super::chain::{pinned_root, verify_chain, ChainFailure, Purpose};
use super::ChallengeError;
use crate::verify::verify_pss_sha256_any_salt;

/// What NVFlare's server signs in its challenge reply: `server_cn + client_nonce`.
pub fn challenge_reply_message(server_cn: &str, client_nonce: &str) -> Vec<u8> {
    format!("{server_cn}{client_nonce}").into_bytes()
}

/// What NVFlare's server signs for a registered client (`sign_auth_token`): `client_name + token`.
pub fn token_message(client_name: &str, token: &str) -> Vec<u8> {
    format!("{client_name}{token}").into_bytes()
}

/// A client's register message, as NVFlare's server receives it.
#[derive(Clone, Debug)]
pub struct ClientRegistration<'a> {
    /// The `client_name` header: the name the client registers under.
    pub client_name: &'a str,
    /// `cert`: the client's certificate PEM bytes (leaf first, possibly a chain).
    pub cert_pem: &'a [u8],
    /// `signature`: raw PSS signature over `cn + server_nonce`.
    pub signature: &'a [u8],
}

/// A client whose registration passed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedClient {
    /// The client's CN (equal to the name it registered under).
    pub cn: String,
}

/// The server's pinned trust: the project root CA its clients' certificates chain to.
#[derive(Clone, Debug)]
pub struct ClientTrust {
    root_der: Vec<u8>,
}

impl ClientTrust {
    /// Pins `root_ca_pem` (the server kit's `rootCA.pem`; its first certificate).
    ///
    /// # Errors
    /// [`ChallengeError::Malformed`] when the root is not a PEM certificate.
    pub fn new(root_ca_pem: &[u8]) -> Result<Self, ChallengeError> {
        Ok(Self { root_der: pinned_root(root_ca_pem)? })
    }

    /// Verifies a registration answering `server_nonce` (which the caller has already checked
    /// was issued by this agent and not used) at time `now`.
    ///
    /// # Errors
    /// The first check that fails, in NVFlare's order: chain, usage, CN, signature.
    pub fn verify_registration(
        &self,
        reg: &ClientRegistration<'_>,
        server_nonce: &str,
        now: SystemTime,
    ) -> Result<VerifiedClient, ChallengeError> {
        let leaf = verify_chain(&self.root_der, reg.cert_pem, Purpose::Client, now).map_err(|e| match e {
            ChainFailure::Malformed(what) => ChallengeError::Malformed(what),
            ChainFailure::Expired => {
                ChallengeError::ClientUntrusted("a certificate is expired or not yet valid".into())
            }
            ChainFailure::Usage(what) => ChallengeError::ClientUntrusted(what.into()),
            ChainFailure::Untrusted(why) => ChallengeError::ClientUntrusted(why),
        })?;
        if leaf.cn != reg.client_name {
            return Err(ChallengeError::ClientNameMismatch { claimed: reg.client_name.into(), presented: leaf.cn });
        }
        let signed = format!("{}{server_nonce}", leaf.cn);
        verify_pss_sha256_any_salt(&leaf.spki_der, signed.as_bytes(), reg.signature)
            .map_err(|_| ChallengeError::BadClientSignature)?;
        Ok(VerifiedClient { cn: leaf.cn })
    }
}

#[cfg(test)]
mod tests;
