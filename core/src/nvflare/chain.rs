//! Certificate checks that NVFlare's `IdentityVerifier.verify_common_name` makes on both
//! sides of its authenticator flow (nvflare 2.9.0 `private/fed/utils/identity_utils.py`):
//! the chain leads to the pinned `rootCA.pem` and every certificate, the root included, is
//! within its validity period; the leaf's ExtendedKeyUsage, if present, holds the purpose
//! (serverAuth for the server, clientAuth for a client); its KeyUsage, if present, holds
//! digitalSignature. Path validation is rustls-webpki's; there is no host-name check
//! (NVFlare has none), the caller compares the CN. Used by `server.rs` (a site verifying
//! its server) and `client.rs` (the server's agent verifying a registering client).

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ChallengeError;

/// Which end of the flow a certificate belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The server's certificate (ExtendedKeyUsage serverAuth).
    Server,
    /// A client's certificate (ExtendedKeyUsage clientAuth).
    Client,
}

/// Why a chain was refused, before the caller names the side.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChainFailure {
    /// Not PEM, or not a certificate.
    Malformed(&'static str),
    /// A certificate is outside its validity period.
    Expired,
    /// KeyUsage or ExtendedKeyUsage forbid this use.
    Usage(&'static str),
    /// No path to the pinned root (webpki's reason).
    Untrusted(String),
}

/// The leaf of a verified chain: its CN and SubjectPublicKeyInfo (DER).
pub(crate) struct VerifiedLeaf {
    pub(crate) cn: String,
    pub(crate) spki_der: Vec<u8>,
}

/// The CERTIFICATE blocks of a PEM text, in order (leaf first).
pub(crate) fn certificates(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, ChallengeError> {
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

/// The first certificate of `root_ca_pem`, checked to be usable as a trust anchor (DER).
pub(crate) fn pinned_root(root_ca_pem: &[u8]) -> Result<Vec<u8>, ChallengeError> {
    let root = certificates(root_ca_pem)?.remove(0);
    webpki::anchor_from_trusted_cert(&root).map_err(|_| ChallengeError::Malformed("root CA certificate"))?;
    Ok(root.to_vec())
}

/// Verifies `chain_pem` (leaf first) against the root `root_der` for `purpose` at `now`.
pub(crate) fn verify_chain(
    root_der: &[u8],
    chain_pem: &[u8],
    purpose: Purpose,
    now: SystemTime,
) -> Result<VerifiedLeaf, ChainFailure> {
    let chain = certificates(chain_pem).map_err(|_| ChainFailure::Malformed("certificate PEM"))?;
    // webpki takes the root as a bare trust anchor; NVFlare's verifier also refuses an
    // expired root, so check its validity here.
    let (_, root_cert) =
        X509Certificate::from_der(root_der).map_err(|_| ChainFailure::Malformed("root CA certificate"))?;
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| ChainFailure::Expired)?;
    let secs = i64::try_from(since_epoch.as_secs()).map_err(|_| ChainFailure::Expired)?;
    let now_asn1 = x509_parser::time::ASN1Time::from_timestamp(secs).map_err(|_| ChainFailure::Expired)?;
    if !root_cert.validity().is_valid_at(now_asn1) {
        return Err(ChainFailure::Expired);
    }
    let root = CertificateDer::from(root_der);
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|_| ChainFailure::Malformed("root CA certificate"))?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|_| ChainFailure::Malformed("leaf certificate"))?;
    let usage = match purpose {
        Purpose::Server => webpki::KeyUsage::server_auth(),
        Purpose::Client => webpki::KeyUsage::client_auth(),
    };
    let eku_missing = match purpose {
        Purpose::Server => "ExtendedKeyUsage lacks serverAuth",
        Purpose::Client => "ExtendedKeyUsage lacks clientAuth",
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &chain[1..],
        UnixTime::since_unix_epoch(since_epoch),
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => ChainFailure::Expired,
        webpki::Error::RequiredEkuNotFoundContext(_) => ChainFailure::Usage(eku_missing),
        other => ChainFailure::Untrusted(format!("{other:?}")),
    })?;

    let (_, cert) = X509Certificate::from_der(&chain[0]).map_err(|_| ChainFailure::Malformed("leaf certificate"))?;
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.digital_signature() {
            return Err(ChainFailure::Usage("KeyUsage lacks digitalSignature"));
        }
    }
    let cn =
        cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned).unwrap_or_default();
    Ok(VerifiedLeaf { cn, spki_der: cert.public_key().raw.to_vec() })
}
