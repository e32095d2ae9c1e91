//! `keyward key generate | import | list | public`: key management straight on the token;
//! `keyward key retire`, the end of a rotation, asks the running agent (`retire_key`), which
//! proves the successor, writes the audit record, and only then destroys the key.
//! Import proves itself with a sign-and-verify round trip before `--destroy-source` may
//! overwrite and remove the source file, through the one no-follow handle it was read with
//! (`kit_file.rs`): a link or a FIFO as the source, or a source swapped meanwhile, is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, KeyStore, SignProfile, TlsScheme};

use crate::config::Config;
use crate::kit_file::{Access, KitDir};

/// `keyward key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair inside the token (refuses if the name is taken).
    Generate {
        /// Key name (the token object label).
        name: KeyId,
        /// rsa-2048 (NVFlare's default), rsa-3072 or p-256 (TLS only).
        #[arg(long, default_value = "rsa-2048", value_parser = super::parse_algorithm)]
        algorithm: KeyAlgorithm,
    },
    /// Import an existing PEM private key once, as sensitive and non-extractable.
    Import {
        /// Key name.
        name: KeyId,
        /// The PEM private key (for NVFlare: startup/client.key).
        #[arg(long, value_name = "KEY.pem")]
        from: PathBuf,
        /// After a successful sign/verify round trip, overwrite and delete the source file.
        #[arg(long)]
        destroy_source: bool,
    },
    /// List the keys in the token.
    List,
    /// Destroy a key in the token once its successor serves in its place (the end of a
    /// rotation). Through the running agent: it proves the successor (its installed
    /// certificate, a signature verified against it), writes the audit record, then destroys.
    Retire {
        /// The key to destroy.
        name: KeyId,
        /// The key that replaces it (enrolled, with its certificate installed).
        #[arg(long, value_name = "KEY")]
        replaced_by: KeyId,
    },
    /// Print a key's public key (SubjectPublicKeyInfo, PEM).
    Public {
        /// Key name.
        name: KeyId,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// DER instead of PEM.
        #[arg(long)]
        der: bool,
    },
}

/// Opens a store on the token or TPM for one CLI command.
pub(super) fn open_store(config: &Config) -> Result<Box<dyn KeyStore>> {
    crate::backends::open_store(config)
}

/// Runs a `key` subcommand.
///
/// How `key list` and `status` flag a key any client of the device can use.
pub(crate) const OPEN_KEY: &str =
    "auth: none (any TPM client can use this key; rotate it: docs/security.md, \"TPM keys\")";

/// # Errors
/// Token, PIN and file errors, with context.
pub fn run(config: &Config, cmd: KeyCommand) -> Result<()> {
    if let KeyCommand::Retire { name, replaced_by } = cmd {
        return super::agent_ops::retire(&config.socket, name, replaced_by);
    }
    let mut store = open_store(config)?;
    match cmd {
        KeyCommand::Retire { .. } => unreachable!("answered by the agent above"),
        KeyCommand::Generate { name, algorithm } => {
            let info = store.generate(&name, algorithm).with_context(|| format!("generating key `{name}`"))?;
            if let Err(e) = crate::renewal::record_birth(&config.state_dir, &name) {
                eprintln!("warning: `{name}` was generated, but when is not recorded (its key age stays unknown): {e}");
            }
            eprintln!(
                "generated {} key `{}` inside {} (sensitive, not extractable)",
                info.algorithm,
                info.id,
                store.info().device
            );
            eprintln!("next: keyward csr {name} --subject \"CN=<site name>,O=<org>\" --out {name}.csr");
        }
        KeyCommand::Import { name, from, destroy_source } => {
            import(store.as_mut(), &name, &from, destroy_source)?;
            note_import(&config.state_dir, &name, None);
        }
        KeyCommand::List => {
            let certs = crate::certs::CertStore::new(config.cert_dir());
            let keys = store.list()?;
            if keys.is_empty() {
                eprintln!("no keys in {}", store.info().device);
            }
            println!("{:<24} {:<9} {:<10} certificate", "NAME", "ALGORITHM", "ORIGIN");
            for k in keys {
                let origin = if k.generated_on_device { "generated" } else { "imported" };
                let cert = if certs.get(&k.id).is_some() { "yes" } else { "no" };
                let open = if k.empty_auth { format!("   {OPEN_KEY}") } else { String::new() };
                println!("{:<24} {:<9} {:<10} {cert}{open}", k.id.as_str(), k.algorithm.name(), origin);
            }
        }
        KeyCommand::Public { name, out, der } => {
            let public = store.public_key(&name)?;
            let bytes = if der { public.spki_der.clone() } else { public.to_pem().into_bytes() };
            match out {
                Some(path) => crate::output::write_output(&path, &bytes, crate::output::Contents::Public)
                    .with_context(|| format!("writing `{}`", path.display()))?,
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
    }
    Ok(())
}

/// Largest key file read (a PEM RSA-3072 key is about 2.5 kB).
const MAX_KEY_BYTES: u64 = 64 << 10;

/// Records an imported key's birth (renewal.rs): no later than `not_before`, its certificate's.
/// A failure is a warning: the key is in the store, only its age stays unknown.
pub(super) fn note_import(state_dir: &Path, name: &KeyId, not_before: Option<i64>) {
    if let Err(e) = crate::renewal::record_import(state_dir, name, not_before) {
        eprintln!("warning: `{name}` was imported, but its age is not recorded (its key age stays unknown): {e}");
    }
}

fn import(store: &mut dyn KeyStore, name: &KeyId, from: &Path, destroy_source: bool) -> Result<()> {
    // With --destroy-source the file is opened once, without following links in its path,
    // and that handle serves the read, the overwrite and the same-file check before unlink.
    let file_name =
        from.file_name().and_then(|n| n.to_str()).with_context(|| format!("`{}` names no file", from.display()))?;
    let dir = KitDir::open(from.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        .with_context(|| format!("opening the folder of `{}`", from.display()))?;
    let access = if destroy_source { Access::ReadWrite } else { Access::Read };
    let mut source = dir.open_file(file_name, access).with_context(|| format!("opening `{}`", from.display()))?;
    let text = source.read_all(MAX_KEY_BYTES)?;
    let material = PrivateKeyMaterial::from_pem(&text).with_context(|| format!("parsing `{}`", from.display()))?;
    let expected = material.public_key().clone();
    store.import(name, &material).with_context(|| format!("importing `{}` as `{name}`", from.display()))?;
    drop(material);

    // Prove the token holds the same key: its public key matches and it signs verifiably.
    let public = store.public_key(name)?;
    if public != expected {
        bail!("the token's public key for `{name}` differs from the imported file; not touching the source file");
    }
    let profile =
        if public.algorithm.is_rsa() { SignProfile::Nvflare } else { SignProfile::Tls(TlsScheme::EcdsaP256Sha256) };
    let probe = b"keyward import round trip";
    let signature = store.sign(name, profile, probe)?;
    keyward_core::verify::verify(&public, profile, probe, &signature)
        .context("the imported key's signature does not verify; not touching the source file")?;
    eprintln!(
        "imported `{}` as {} key `{name}` (sensitive, not extractable); sign/verify round trip OK",
        from.display(),
        public.algorithm
    );

    if destroy_source {
        dir.destroy(source).with_context(|| {
            format!("the key is in the token as `{name}`, but `{}` was not removed", from.display())
        })?;
        eprintln!("overwrote and removed `{}`", from.display());
    } else {
        eprintln!(
            "WARNING: `{}` still exists and is a full copy of this key. Anyone who reads it can act as this site.\n         Remove it (keyward key import ... --destroy-source, or shred -u) once you no longer need it.",
            from.display()
        );
    }
    Ok(())
}
