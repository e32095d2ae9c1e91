//! `keyward attest begin | challenge | answer | verify`: TPM key attestation before a
//! certificate is issued (docs/attestation.md). `begin` and `answer` run at the site and
//! talk to the TPM directly, like `key` and `csr` (the agent need not run; the TPM's
//! resource manager shares it); `challenge` and `verify` run at the project admin's, need no
//! TPM, and read the verifier config.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::KeyId;
use keyward_tpm::attest::{self, AttestError, AttestationIdentity, Credential, KeyEvidence};
use x509_parser::prelude::FromDer;

use crate::attestation::documents::{
    self, decode, encode, AttestChallenge, AttestEvidence, AttestRequest, CHALLENGE_FORMAT, EVIDENCE_FORMAT,
    REQUEST_FORMAT,
};
use crate::attestation::pending;
use crate::attestation::verifier_config::VerifierConfig;
use crate::config::Config;

/// The largest CSR read from a request zip.
const MAX_CSR_BYTES: u64 = 64 * 1024;

/// `keyward attest ...`
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// (site) Write the TPM's EK certificate and attestation key for the admin's challenge.
    Begin {
        /// The TPM key to attest.
        name: KeyId,
        /// Write the request here (JSON).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// (admin) Check a site's EK certificate and make a challenge only its TPM can answer.
    Challenge {
        /// The verifier config (TOML).
        #[arg(long, value_name = "FILE")]
        verifier_config: PathBuf,
        /// The site's `attest begin` output.
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// Write the challenge here (JSON).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// (site) Answer a challenge: the TPM certifies the key over the challenge's nonce.
    Answer {
        /// The admin's challenge.
        #[arg(long, value_name = "FILE")]
        challenge: PathBuf,
        /// Write the evidence here (JSON).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// (admin) Check the evidence against the certificate request, before `nvflare cert
    /// approve`. Exit 0: accepted; exit 4: refused, with the reason.
    Verify {
        /// The verifier config (TOML).
        #[arg(long, value_name = "FILE")]
        verifier_config: PathBuf,
        /// The certificate request (PEM), e.g. from `keyward csr`.
        #[arg(long, value_name = "FILE", required_unless_present = "request_zip", conflicts_with = "request_zip")]
        csr: Option<PathBuf>,
        /// NVFlare's request zip from `keyward nvflare request` (its `<name>.csr`).
        #[arg(long, value_name = "ZIP")]
        request_zip: Option<PathBuf>,
        /// The site's `attest answer` output (none: an unattested key, see
        /// `accept_unattested_keys`).
        #[arg(long, value_name = "FILE")]
        evidence: Option<PathBuf>,
    },
}

/// Runs an `attest` subcommand; `load` reads the site config (only `begin` and `answer`).
///
/// # Errors
/// A refusal ([`AttestError`] in the chain), or any failure reading, writing or in the TPM.
pub fn run(load: impl Fn() -> Result<Config>, cmd: AttestCommand) -> Result<()> {
    match cmd {
        AttestCommand::Begin { name, out } => begin(&load()?, &name, &out),
        AttestCommand::Challenge { verifier_config, request, out } => {
            challenge(&VerifierConfig::load(&verifier_config)?, &request, &out)
        }
        AttestCommand::Answer { challenge, out } => answer(&load()?, &challenge, &out),
        AttestCommand::Verify { verifier_config, csr, request_zip, evidence } => {
            let config = VerifierConfig::load(&verifier_config)?;
            let csr_der = match (csr, request_zip) {
                (Some(path), _) => read_csr_pem(&path)?,
                (None, Some(zip)) => csr_from_request_zip(&zip)?,
                (None, None) => bail!("give `--csr` or `--request-zip`"),
            };
            verify(&config, &csr_der, evidence.as_deref())
        }
    }
}

fn write(out: &Path, bytes: &[u8]) -> Result<()> {
    crate::output::write_output(out, bytes, crate::output::Contents::Public)
        .with_context(|| format!("writing `{}`", out.display()))
}

fn begin(config: &Config, name: &KeyId, out: &Path) -> Result<()> {
    let mut store = crate::backends::open_tpm_store(config)?;
    keyward_core::KeyStore::public_key(&mut store, name)?;
    let identity = store.attestation_identity()?;
    let doc = AttestRequest {
        format: REQUEST_FORMAT.into(),
        key: name.to_string(),
        ek_fingerprint: attest::ek_fingerprint(&identity.ek_certificate)?,
        ek_certificate: encode(&identity.ek_certificate),
        ak_public: encode(&identity.ak_public),
    };
    write(out, &documents::to_json(&doc)?)?;
    eprintln!("wrote attestation request for `{name}` (EK {}) to `{}`", doc.ek_fingerprint, out.display());
    Ok(())
}

fn challenge(config: &VerifierConfig, request: &Path, out: &Path) -> Result<()> {
    let doc: AttestRequest = documents::read(request, REQUEST_FORMAT)?;
    let identity = AttestationIdentity {
        ek_certificate: decode("ek_certificate", &doc.ek_certificate)?,
        ak_public: decode("ak_public", &doc.ak_public)?,
    };
    let (credential, pending) = attest::make_challenge(&config.policy, &identity, x509_parser::time::ASN1Time::now())?;
    pending::keep(&config.state_dir, &pending)?;
    let challenge = AttestChallenge {
        format: CHALLENGE_FORMAT.into(),
        key: doc.key.clone(),
        credential_blob: encode(&credential.credential_blob),
        encrypted_secret: encode(&credential.encrypted_secret),
    };
    write(out, &documents::to_json(&challenge)?)?;
    eprintln!("EK `{}` accepted; wrote challenge for key `{}` to `{}`", pending.ek_fingerprint, doc.key, out.display());
    Ok(())
}

fn answer(config: &Config, challenge: &Path, out: &Path) -> Result<()> {
    let doc: AttestChallenge = documents::read(challenge, CHALLENGE_FORMAT)?;
    let name = KeyId::new(&doc.key).with_context(|| format!("key name `{}` in the challenge", doc.key))?;
    let credential = Credential {
        credential_blob: decode("credential_blob", &doc.credential_blob)?,
        encrypted_secret: decode("encrypted_secret", &doc.encrypted_secret)?,
    };
    let mut store = crate::backends::open_tpm_store(config)?;
    let evidence = store.certify_key(&name, &credential)?;
    let doc = AttestEvidence {
        format: EVIDENCE_FORMAT.into(),
        key: name.to_string(),
        nonce: encode(&evidence.nonce),
        attest: encode(&evidence.attest),
        signature: encode(&evidence.signature),
        key_public: encode(&evidence.key_public),
        parent_public: encode(&evidence.parent_public),
    };
    write(out, &documents::to_json(&doc)?)?;
    eprintln!("wrote evidence for key `{name}` to `{}`", out.display());
    Ok(())
}

/// The CSR's SubjectPublicKeyInfo, after checking its self-signature.
fn request_spki(csr_der: &[u8]) -> Result<Vec<u8>> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| anyhow::anyhow!("the certificate request does not parse: {e}"))?;
    csr.verify_signature().map_err(|e| anyhow::anyhow!("the certificate request's signature does not verify: {e}"))?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

fn verify(config: &VerifierConfig, csr_der: &[u8], evidence: Option<&Path>) -> Result<()> {
    let spki = request_spki(csr_der)?;
    let Some(evidence) = evidence else {
        if config.accept_unattested_keys {
            println!("accepted WITHOUT attestation: no TPM evidence, and `accept_unattested_keys` is true");
            return Ok(());
        }
        return Err(AttestError::NoEvidence.into());
    };
    let doc: AttestEvidence = documents::read(evidence, EVIDENCE_FORMAT)?;
    let evidence = KeyEvidence {
        nonce: decode("nonce", &doc.nonce)?,
        attest: decode("attest", &doc.attest)?,
        signature: decode("signature", &doc.signature)?,
        key_public: decode("key_public", &doc.key_public)?,
        parent_public: decode("parent_public", &doc.parent_public)?,
    };
    let pending = pending::take(&config.state_dir, &evidence.nonce, config.challenge_ttl)?;
    let attested = attest::verify_evidence(&pending, &evidence, &spki)?;
    println!(
        "accepted: key `{}` was born in the TPM with EK `{}` (fixedTPM, fixedParent, sensitiveDataOrigin) and is the request's key",
        doc.key, attested.ek_fingerprint
    );
    Ok(())
}

fn read_csr_pem(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    let block = pem::parse(&text).with_context(|| format!("`{}` is not PEM", path.display()))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        bail!("`{}` holds a {}, not a CERTIFICATE REQUEST", path.display(), block.tag());
    }
    Ok(block.into_contents())
}

/// The one `*.csr` in NVFlare's request zip, as DER.
fn csr_from_request_zip(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("`{}` is not a zip", path.display()))?;
    let names: Vec<String> = archive.file_names().filter(|n| n.ends_with(".csr")).map(str::to_owned).collect();
    let [name] = names.as_slice() else {
        bail!("`{}` holds {} `.csr` files; expected one", path.display(), names.len());
    };
    let mut text = Vec::new();
    archive
        .by_name(name)
        .with_context(|| format!("reading `{name}` in `{}`", path.display()))?
        .take(MAX_CSR_BYTES)
        .read_to_end(&mut text)
        .with_context(|| format!("reading `{name}` in `{}`", path.display()))?;
    let block = pem::parse(&text).with_context(|| format!("`{name}` in `{}` is not PEM", path.display()))?;
    Ok(block.into_contents())
}
