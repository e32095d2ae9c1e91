//! `keyward csr` (a PKCS#10 request built by rcgen and signed inside the token) and
//! `keyward cert install` (checked against the key, written atomically).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::{KeyAlgorithm, KeyId, KeyStore, SignProfile, TlsScheme};
use rcgen::{CertificateParams, DistinguishedName, DnType, PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::prelude::FromDer;

use crate::certs::{CertStore, Installed};
use crate::config::Config;

/// `keyward cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Install the certificate (chain) issued for a key.
    Install {
        /// Key name.
        name: KeyId,
        /// PEM certificate, leaf first, optionally followed by intermediates.
        cert: PathBuf,
    },
}

/// Runs a `cert` subcommand.
///
/// # Errors
/// When the certificate does not belong to the key, is not valid now, or cannot be written.
pub fn run(config: &Config, cmd: CertCommand) -> Result<()> {
    let CertCommand::Install { name, cert } = cmd;
    let pem_text = std::fs::read(&cert).with_context(|| format!("reading `{}`", cert.display()))?;
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(&name)?;
    let certs = CertStore::new(config.cert_dir());
    let outcome =
        certs.install(&name, &public, &pem_text, &cert).with_context(|| format!("installing `{}`", cert.display()))?;
    let path = certs.path(&name);
    match outcome {
        Installed::Unchanged => eprintln!("certificate for `{name}` already installed at `{}`", path.display()),
        Installed::New => eprintln!("installed certificate for `{name}` at `{}`", path.display()),
        Installed::Replaced(old) => {
            eprintln!(
                "installed certificate for `{name}` at `{}`; the previous one is kept at `{}`",
                path.display(),
                old.display()
            )
        }
    }
    Ok(())
}

/// A token key as rcgen's signer: rcgen builds the request, the token signs it.
struct TokenSigner<'a> {
    store: RefCell<&'a mut dyn KeyStore>,
    key: KeyId,
    profile: SignProfile,
    algorithm: &'static SignatureAlgorithm,
    subject_public_key: Vec<u8>,
}

impl PublicKeyData for TokenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.subject_public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for TokenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut store = self.store.borrow_mut();
        store.sign(&self.key, self.profile, msg).map_err(|e| {
            eprintln!("keyward: signing the request in the token failed: {}", keyward_core::error::chain(&e));
            rcgen::Error::RemoteKeyError
        })
    }
}

fn parse_subject(subject: &str) -> Result<(DistinguishedName, Option<String>)> {
    let mut dn = DistinguishedName::new();
    let mut cn = None;
    for part in subject.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').with_context(|| format!("subject part `{part}` has no `=`"))?;
        let kind = match name.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "L" => DnType::LocalityName,
            "ST" => DnType::StateOrProvinceName,
            "C" => DnType::CountryName,
            other => bail!("subject attribute `{other}` is not supported (use CN, O, OU, L, ST, C)"),
        };
        if kind == DnType::CommonName {
            cn = Some(value.trim().to_owned());
        }
        dn.push(kind, value.trim());
    }
    Ok((dn, cn))
}

/// Runs `keyward csr`.
///
/// # Errors
/// Bad subject, unknown key, or a signing failure in the token.
pub fn csr(config: &Config, name: &KeyId, subject: &str, out: Option<&Path>) -> Result<()> {
    let (dn, cn) = parse_subject(subject)?;
    let Some(cn) = cn else { bail!("the subject needs a CN (NVFlare takes the site name from it)") };
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(name)?;
    let (algorithm, profile) = match public.algorithm {
        KeyAlgorithm::EcP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, SignProfile::Tls(TlsScheme::EcdsaP256Sha256)),
        _ => (&rcgen::PKCS_RSA_SHA256, SignProfile::Tls(TlsScheme::RsaPkcs1Sha256)),
    };
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&public.spki_der)
        .map_err(|_| anyhow::anyhow!("the token returned a malformed public key"))?;
    let signer = TokenSigner {
        store: RefCell::new(store.as_mut()),
        key: name.clone(),
        profile,
        algorithm,
        subject_public_key: spki.subject_public_key.data.to_vec(),
    };
    // NVFlare's provisioned site certificates carry the site name as a DNS SAN too.
    let mut params = CertificateParams::new(vec![cn]).context("building the request")?;
    params.distinguished_name = dn;
    let request = params.serialize_request(&signer).context("building the request")?;
    let pem_text = request.pem().context("encoding the request")?;
    match out {
        Some(path) => {
            crate::output::write_output(path, pem_text.as_bytes(), crate::output::Contents::Public)
                .with_context(|| format!("writing `{}`", path.display()))?;
            eprintln!("wrote certificate request for `{name}` to `{}`", path.display());
        }
        None => print!("{pem_text}"),
    }
    Ok(())
}
