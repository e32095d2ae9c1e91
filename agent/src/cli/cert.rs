//! `keyward csr` (a PKCS#10 request built by rcgen and signed inside the token:
//! `provision/csr.rs`) and
//! `keyward cert install` (checked against the key, written atomically).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::KeyId;
use rcgen::{CertificateParams, DistinguishedName, DnType};

use crate::certs::{CertStore, Installed, Usage};
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
        /// The key authenticates a TLS server (`keyward server-tunnel`): an ExtendedKeyUsage
        /// must allow serverAuth instead of clientAuth.
        #[arg(long)]
        server: bool,
    },
}

/// Runs a `cert` subcommand.
///
/// # Errors
/// When the certificate does not belong to the key, is not valid now, or cannot be written.
pub fn run(config: &Config, cmd: CertCommand) -> Result<()> {
    let CertCommand::Install { name, cert, server } = cmd;
    let usage = if server { Usage::Server } else { Usage::Client };
    let pem_text = std::fs::read(&cert).with_context(|| format!("reading `{}`", cert.display()))?;
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(&name)?;
    let certs = CertStore::new(config.cert_dir());
    let outcome = certs
        .install_for(usage, &name, &public, &pem_text, &cert)
        .with_context(|| format!("installing `{}`", cert.display()))?;
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
            // NVFlare's distributed provisioning carries the role here.
            "UNSTRUCTUREDNAME" => DnType::CustomDnType(crate::provision::csr::UNSTRUCTURED_NAME.to_vec()),
            other => bail!("subject attribute `{other}` is not supported (use CN, O, OU, L, ST, C, unstructuredName)"),
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
    // NVFlare's provisioned site certificates carry the site name as a DNS SAN too.
    let mut params = CertificateParams::new(vec![cn]).context("building the request")?;
    params.distinguished_name = dn;
    let pem_text = crate::provision::csr::sign_request(store.as_mut(), name, &public, &params)?;
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
