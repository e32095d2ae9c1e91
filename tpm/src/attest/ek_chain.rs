//! Checks an EK certificate against the admin's accepted TPM CAs with x509-parser (which
//! reads TCG EK certificates: empty subject, critical SubjectAltName with a directoryName of
//! TPM maker, model and version; webpki refuses those).
//!
//! The chain is built from the EK certificate upwards through the accepted certificates
//! only: at each step a certificate of the bundle whose subject is the issuer's name, that
//! is a CA (basicConstraints cA), is within its validity, and whose key verifies the
//! signature; it ends at a self-signed certificate of the bundle (the TPM maker's root).
//! The EK certificate itself must be within its validity. Nothing is fetched (no AIA, no
//! CRL): revocation is the admin's bundle and the optional EK allow-list.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use super::AttestError;

/// The longest chain followed (EK, intermediates, root).
const MAX_DEPTH: usize = 6;

/// Checks that `ek_der` chains to a self-signed certificate in `accepted` (DER).
///
/// # Errors
/// [`AttestError::EkUntrusted`] with the step that failed; [`AttestError::Malformed`] when
/// the EK certificate does not parse.
pub fn check(ek_der: &[u8], accepted: &[Vec<u8>], now: ASN1Time) -> Result<(), AttestError> {
    let (_, ek) = X509Certificate::from_der(ek_der)
        .map_err(|e| AttestError::Malformed { what: format!("EK certificate: {e}") })?;
    let issuer_name = ek.issuer().to_string();
    let untrusted = |reason: String| AttestError::EkUntrusted { issuer: issuer_name.clone(), reason };
    if !ek.validity().is_valid_at(now) {
        return Err(untrusted(format!(
            "the EK certificate is valid from {} to {}",
            ek.validity().not_before,
            ek.validity().not_after
        )));
    }
    let cas: Vec<X509Certificate<'_>> =
        accepted.iter().filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, cert)| cert)).collect();
    let mut current = ek;
    for _ in 0..MAX_DEPTH {
        let mut tried = Vec::new();
        let issuer = cas.iter().find(|ca| {
            if ca.subject() != current.issuer() {
                return false;
            }
            let problem = if !ca.is_ca() {
                Some("is not a CA")
            } else if !ca.validity().is_valid_at(now) {
                Some("is expired or not yet valid")
            } else if current.verify_signature(Some(ca.public_key())).is_err() {
                Some("did not sign it (signature does not verify)")
            } else {
                None
            };
            if let Some(problem) = problem {
                tried.push(format!("accepted CA `{}` {problem}", ca.subject()));
            }
            problem.is_none()
        });
        let Some(issuer) = issuer else {
            let reason = if tried.is_empty() {
                format!("no accepted CA is named `{}`", current.issuer())
            } else {
                tried.join("; ")
            };
            return Err(untrusted(reason));
        };
        if issuer.subject() == issuer.issuer() && issuer.verify_signature(None).is_ok() {
            return Ok(());
        }
        current = issuer.clone();
    }
    Err(untrusted(format!("no self-signed accepted CA within {MAX_DEPTH} certificates")))
}
