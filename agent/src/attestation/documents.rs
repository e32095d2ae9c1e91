//! The three JSON documents of the attestation flow (binary fields in standard base64):
//!
//! - `keyward-attest-request/1` (site → admin, `attest begin`): the key name, the EK
//!   certificate (DER), the AK's TPMT_PUBLIC, and the EK fingerprint for the allow-list;
//! - `keyward-attest-challenge/1` (admin → site, `attest challenge`): the credential blob and
//!   encrypted seed (TPM2_MakeCredential output); the nonce is only inside it;
//! - `keyward-attest-evidence/1` (site → admin, `attest answer`): the recovered nonce,
//!   TPMS_ATTEST, TPMT_SIGNATURE, the key's TPMT_PUBLIC and its parent's.
//!
//! None of them holds a secret worth keeping: the nonce is single-use and the rest public.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Format tag of the request.
pub const REQUEST_FORMAT: &str = "keyward-attest-request/1";
/// Format tag of the challenge.
pub const CHALLENGE_FORMAT: &str = "keyward-attest-challenge/1";
/// Format tag of the evidence.
pub const EVIDENCE_FORMAT: &str = "keyward-attest-evidence/1";

/// The largest document read (an EK certificate is ~1.5 KiB).
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024;

/// `attest begin`'s output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestRequest {
    /// [`REQUEST_FORMAT`].
    pub format: String,
    /// The site key to attest.
    pub key: String,
    /// EK certificate, DER, base64.
    pub ek_certificate: String,
    /// AK TPMT_PUBLIC, base64.
    pub ak_public: String,
    /// SHA-256 of the EK's SubjectPublicKeyInfo (informative: the verifier recomputes it).
    pub ek_fingerprint: String,
}

/// `attest challenge`'s output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestChallenge {
    /// [`CHALLENGE_FORMAT`].
    pub format: String,
    /// The site key to attest (from the request).
    pub key: String,
    /// TPM2B_ID_OBJECT's buffer, base64.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET's buffer, base64.
    pub encrypted_secret: String,
}

/// `attest answer`'s output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestEvidence {
    /// [`EVIDENCE_FORMAT`].
    pub format: String,
    /// The key certified.
    pub key: String,
    /// The nonce recovered by TPM2_ActivateCredential, base64.
    pub nonce: String,
    /// TPMS_ATTEST, base64.
    pub attest: String,
    /// TPMT_SIGNATURE, base64.
    pub signature: String,
    /// The key's TPMT_PUBLIC, base64.
    pub key_public: String,
    /// Its parent's (the storage primary's) TPMT_PUBLIC, base64.
    pub parent_public: String,
}

/// Base64 of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes field `field` of a document.
///
/// # Errors
/// When it is not base64.
pub fn decode(field: &str, value: &str) -> Result<Vec<u8>> {
    B64.decode(value).with_context(|| format!("field `{field}` is not base64"))
}

/// Reads a document of format `format` from `path` (at most 64 KiB).
///
/// # Errors
/// Unreadable, too large, not JSON of that shape, or another format.
pub fn read<T: for<'de> Deserialize<'de>>(path: &std::path::Path, format: &str) -> Result<T> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut text = String::new();
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading `{}`", path.display()))?;
    if text.len() as u64 > MAX_DOCUMENT_BYTES {
        bail!("`{}` is larger than {MAX_DOCUMENT_BYTES} bytes", path.display());
    }
    let tag: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("`{}` is not JSON", path.display()))?;
    let found = tag.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if found != format {
        bail!("`{}` is not a {format} document (format `{found}`)", path.display());
    }
    serde_json::from_value(tag).with_context(|| format!("reading `{}` as {format}", path.display()))
}

/// The pretty JSON of a document, with a final newline.
///
/// # Errors
/// Never in practice (plain structs).
pub fn to_json<T: Serialize>(doc: &T) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(doc).context("encoding JSON")?;
    out.push(b'\n');
    Ok(out)
}
