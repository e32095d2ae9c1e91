//! Verifying the server's challenge reply the way NVFlare's client does
//! (`Authenticator._challenge_server` → `IdentityVerifier.verify_common_name`), and the
//! token signature it returns at registration. Path validation is rustls-webpki's: the chain
//! must lead to the pinned `rootCA.pem` and every certificate must be within its validity
//! period; ExtendedKeyUsage must include serverAuth if present; KeyUsage must include
//! digitalSignature if present (NVFlare's `_validate_identity_cert_usage`); there is no
//! host-name check (NVFlare has none), the CN is compared instead.

use std::time::SystemTime;

use base64::Engine;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

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

fn certificates(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, ChallengeError> {
    let blocks = pem::parse_many(pem_bytes).map_err(|_| ChallengeError::Malformed("certificate PEM"))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(ChallengeError::Malformed("certificate PEM (no CERTIFICATE block)"));
    }
    Ok(certs)
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned)
}

impl ServerTrust {
    /// Pins `root_ca_pem` (the kit's `rootCA.pem`) and the expected server identity
    /// (`servers[0].identity` in `fed_client.json`).
    ///
    /// # Errors
    /// [`ChallengeError::Malformed`] when the root is not a PEM certificate.
    pub fn new(root_ca_pem: &[u8], expected_cn: &str) -> Result<Self, ChallengeError> {
        let root = certificates(root_ca_pem)?.remove(0);
        webpki::anchor_from_trusted_cert(&root).map_err(|_| ChallengeError::Malformed("root CA certificate"))?;
        Ok(Self { root_der: root.to_vec(), expected_cn: expected_cn.to_owned() })
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
        let chain = certificates(reply.cert_pem)?;
        // webpki takes the root as a bare trust anchor; NVFlare's verifier also refuses an
        // expired root, so check its validity here.
        let (_, root_cert) =
            X509Certificate::from_der(&self.root_der).map_err(|_| ChallengeError::Malformed("root CA certificate"))?;
        let now_asn1 =
            x509_parser::time::ASN1Time::from_timestamp(since_epoch_secs(now)?).map_err(|_| ChallengeError::Expired)?;
        if !root_cert.validity().is_valid_at(now_asn1) {
            return Err(ChallengeError::Expired);
        }
        let root = CertificateDer::from(self.root_der.as_slice());
        let anchor =
            webpki::anchor_from_trusted_cert(&root).map_err(|_| ChallengeError::Malformed("root CA certificate"))?;
        let leaf =
            webpki::EndEntityCert::try_from(&chain[0]).map_err(|_| ChallengeError::Malformed("server certificate"))?;
        let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| ChallengeError::Expired)?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &chain[1..],
            UnixTime::since_unix_epoch(since_epoch),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => ChallengeError::Expired,
            webpki::Error::RequiredEkuNotFoundContext(_) => ChallengeError::Usage("ExtendedKeyUsage lacks serverAuth"),
            other => ChallengeError::Untrusted(format!("{other:?}")),
        })?;

        let (_, cert) =
            X509Certificate::from_der(&chain[0]).map_err(|_| ChallengeError::Malformed("server certificate"))?;
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.digital_signature() {
                return Err(ChallengeError::Usage("KeyUsage lacks digitalSignature"));
            }
        }
        let cert_cn = common_name(&cert).unwrap_or_default();
        if cert_cn != reply.cn {
            return Err(ChallengeError::CertificateNameMismatch {
                expected: self.expected_cn.clone(),
                presented: cert_cn,
            });
        }
        let spki_der = cert.public_key().raw.to_vec();
        let signed = format!("{}{client_nonce}", reply.cn);
        verify_pss_sha256_any_salt(&spki_der, signed.as_bytes(), reply.signature)
            .map_err(|_| ChallengeError::BadServerSignature)?;
        Ok(VerifiedServer { cn: reply.cn.to_owned(), spki_der })
    }
}

fn since_epoch_secs(now: SystemTime) -> Result<i64, ChallengeError> {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| ChallengeError::Expired)?.as_secs();
    i64::try_from(secs).map_err(|_| ChallengeError::Expired)
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
