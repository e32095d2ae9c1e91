//! `keyward nvflare migrate`: moves an NVFlare site's startup-kit key into the token. The
//! key is imported (non-extractable), proven against `client.crt` with a sign/verify round
//! trip, the certificate installed, the agent's `[keys.<name>.nvflare]` trust written from the
//! kit (`rootCA.pem`, the server identity in `fed_client.json`), and `client.key` overwritten,
//! removed and replaced by a key reference (format: docs/nvflare-plugin.md). A kit with a
//! `signature.json` is refused: changing `client.key` would make NVFlare reject the kit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::nvflare::{key_reference, KEY_REFERENCE_LABEL};
use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyId, SignProfile};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::certs::CertStore;
use crate::config::Config;

/// `keyward nvflare ...`
#[derive(Debug, Subcommand)]
pub enum NvflareCommand {
    /// Move a site's client.key into the token and leave a key reference in its place.
    Migrate {
        /// The kit's `startup` folder (client.key, client.crt, rootCA.pem, fed_client.json).
        startup: PathBuf,
        /// Key name in the token (default: the CN of client.crt).
        #[arg(long)]
        key: Option<KeyId>,
        /// Python of the NVFlare venv: install the plug-in there (`python -m keyward.nvflare install`).
        #[arg(long, value_name = "PATH")]
        python: Option<PathBuf>,
    },
    /// Wire a key made in the token (keyward key generate + csr + a certificate the project
    /// admin issued) into a startup kit: install client.crt, trust the kit's root CA and
    /// server, and write client.key as a key reference.
    Enroll {
        /// The kit's `startup` folder (client.crt, rootCA.pem, fed_client.json; no client.key).
        startup: PathBuf,
        /// Key name in the token.
        #[arg(long)]
        key: KeyId,
    },
}

/// Runs a `nvflare` subcommand.
///
/// # Errors
/// Any refusal, naming the file and the reason; nothing is destroyed before the token
/// holds a proven copy of the key.
pub fn run(config_path: &Path, config: &Config, cmd: NvflareCommand) -> Result<()> {
    match cmd {
        NvflareCommand::Migrate { startup, key, python } => {
            migrate(config_path, config, &startup, key, python.as_deref())
        }
        NvflareCommand::Enroll { startup, key } => enroll(config_path, config, &startup, &key),
    }
}

struct Kit {
    key: PathBuf,
    cert: PathBuf,
    root_ca: PathBuf,
    server_identity: String,
    connection_security: String,
}

fn read_kit(startup: &Path) -> Result<Kit> {
    let signature = startup.join("signature.json");
    if signature.exists() {
        bail!(
            "`{}` exists: NVFlare checks client.key and fed_client.json against it at start, so replacing client.key would stop the site. Re-provision the kit without SignatureBuilder, or enroll a new key instead",
            signature.display()
        );
    }
    let kit = |name: &str| -> Result<PathBuf> {
        let p = startup.join(name);
        if !p.exists() {
            bail!("`{}` not found: is `{}` a site's or admin's startup folder?", p.display(), startup.display());
        }
        Ok(p)
    };
    // A site kit has fed_client.json; an admin (FLARE console / API user) kit fed_admin.json.
    let admin = !startup.join("fed_client.json").exists() && startup.join("fed_admin.json").exists();
    let fed = kit(if admin { "fed_admin.json" } else { "fed_client.json" })?;
    let fed_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fed)?).with_context(|| format!("parsing `{}`", fed.display()))?;
    let (server_identity, connection_security) = if admin {
        let a = &fed_json["admin"];
        (a["server_identity"].as_str().or_else(|| a["host"].as_str()), a["connection_security"].as_str())
    } else {
        let server = &fed_json["servers"][0];
        let identity = server["identity"]
            .as_str()
            .or_else(|| server["service"]["target"].as_str().and_then(|t| t.split(':').next()));
        (identity, fed_json["client"]["connection_security"].as_str())
    };
    let server_identity =
        server_identity.map(str::to_owned).with_context(|| format!("`{}` names no server identity", fed.display()))?;
    let connection_security = connection_security.unwrap_or("mtls").to_owned();
    Ok(Kit {
        key: startup.join("client.key"),
        cert: kit("client.crt")?,
        root_ca: kit("rootCA.pem")?,
        server_identity,
        connection_security,
    })
}

fn cert_cn_and_spki(cert_pem: &[u8]) -> Result<(String, Vec<u8>)> {
    let block = ::pem::parse_many(cert_pem)?
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .context("client.crt holds no certificate")?;
    let (_, cert) =
        X509Certificate::from_der(block.contents()).map_err(|_| anyhow::anyhow!("client.crt does not parse"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .context("client.crt has no CN")?
        .to_owned();
    Ok((cn, cert.public_key().raw.to_vec()))
}

fn migrate(
    config_path: &Path,
    config: &Config,
    startup: &Path,
    key: Option<KeyId>,
    python: Option<&Path>,
) -> Result<()> {
    let kit = read_kit(startup)?;
    let key_text = Zeroizing::new(std::fs::read(&kit.key).with_context(|| {
        format!("reading `{}` (for a key made in the token, use `keyward nvflare enroll`)", kit.key.display())
    })?);
    if String::from_utf8_lossy(&key_text).contains(KEY_REFERENCE_LABEL) {
        bail!("`{}` is already a keyward key reference: this kit was migrated", kit.key.display());
    }
    let cert_pem = std::fs::read(&kit.cert)?;
    let (cn, cert_spki) = cert_cn_and_spki(&cert_pem)?;
    let name = match key {
        Some(k) => k,
        None => KeyId::new(&cn).with_context(|| format!("the CN `{cn}` is not a valid key name; pass --key"))?,
    };
    let material =
        PrivateKeyMaterial::from_pem(&key_text).with_context(|| format!("parsing `{}`", kit.key.display()))?;
    if material.public_key().spki_der != cert_spki {
        bail!("`{}` is not the key of `{}`; nothing was changed", kit.key.display(), kit.cert.display());
    }

    let mut store = super::keys::open_store(config)?;
    store.import(&name, &material).with_context(|| format!("importing `{}` as `{name}`", kit.key.display()))?;
    drop(material);
    let public = store.public_key(&name)?;
    let probe = format!("{cn}keyward-migration-check");
    let signature = store.sign(&name, SignProfile::Nvflare, probe.as_bytes())?;
    keyward_core::verify::verify_pss_sha256_any_salt(&cert_spki, probe.as_bytes(), &signature)
        .context("the token's signature does not verify against client.crt; client.key was left in place")?;
    eprintln!(
        "imported `{}` into {} as `{name}`; signature verified against client.crt",
        kit.key.display(),
        store.info().device
    );

    let certs = CertStore::new(config.cert_dir());
    certs.install(&name, &public, &cert_pem, &kit.cert)?;
    add_nvflare_trust(config_path, &name, &kit)?;

    let reference = key_reference(&config.socket.display().to_string(), &name);
    let staged = startup.join(".client.key.keyward");
    crate::files::write_atomic(&staged, reference.as_bytes(), 0o644, true)?;
    super::keys::destroy(&kit.key, key_text.len())?;
    std::fs::rename(&staged, &kit.key).with_context(|| format!("putting the reference at `{}`", kit.key.display()))?;
    eprintln!("overwrote and removed the private key; `{}` is now a key reference (no secret)", kit.key.display());

    install_plugin(python)?;
    finish(config, &name, &kit, &certs, config_path);
    Ok(())
}

fn enroll(config_path: &Path, config: &Config, startup: &Path, name: &KeyId) -> Result<()> {
    let kit = read_kit(startup)?;
    if let Ok(existing) = std::fs::read(&kit.key) {
        if !String::from_utf8_lossy(&existing).contains(KEY_REFERENCE_LABEL) {
            bail!(
                "`{}` exists and is not a key reference; to move that key into the token use `keyward nvflare migrate`",
                kit.key.display()
            );
        }
    }
    let cert_pem = std::fs::read(&kit.cert)?;
    let (_, cert_spki) = cert_cn_and_spki(&cert_pem)?;
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(name)?;
    if public.spki_der != cert_spki {
        bail!("`{}` was not issued for token key `{name}`", kit.cert.display());
    }
    let certs = CertStore::new(config.cert_dir());
    certs.install(name, &public, &cert_pem, &kit.cert)?;
    add_nvflare_trust(config_path, name, &kit)?;
    let reference = key_reference(&config.socket.display().to_string(), name);
    crate::files::write_atomic(&kit.key, reference.as_bytes(), 0o644, true)?;
    eprintln!("wrote the key reference `{}`", kit.key.display());
    finish(config, name, &kit, &certs, config_path);
    Ok(())
}

fn install_plugin(python: Option<&Path>) -> Result<()> {
    if let Some(python) = python {
        let status = std::process::Command::new(python)
            .args(["-m", "keyward.nvflare", "install"])
            .status()
            .with_context(|| format!("running `{}`", python.display()))?;
        if !status.success() {
            bail!("installing the plug-in with `{} -m keyward.nvflare install` failed ({status})", python.display());
        }
    } else {
        eprintln!("next: in the NVFlare venv, `pip install <keyward>/python` and `keyward-nvflare install`");
    }
    Ok(())
}

/// Says what changed, how to undo it, and what still needs doing.
fn finish(config: &Config, name: &KeyId, kit: &Kit, certs: &CertStore, config_path: &Path) {
    if kit.connection_security == "mtls" {
        eprintln!(
            "note: the kit uses connection_security `mtls`, which needs the key file for TLS. Use `tls` (server too), or the keyward TLS tunnel"
        );
    }
    eprintln!(
        "changed: token key `{name}`, {}, [keys.{name}.nvflare] in `{}`, `{}`",
        certs.path(name).display(),
        config_path.display(),
        kit.key.display()
    );
    eprintln!("undo: the key cannot leave the token; to go back, re-provision the site and remove [keys.{name}] from the config");
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        eprintln!(
            "note: an agent is running on `{}`; restart it so it loads [keys.{name}.nvflare]",
            config.socket.display()
        );
    }
}

/// Adds `[keys.<name>.nvflare]` (root CA, server identity) to the config, keeping its layout.
fn add_nvflare_trust(config_path: &Path, name: &KeyId, kit: &Kit) -> Result<()> {
    let text = std::fs::read_to_string(config_path)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().with_context(|| format!("parsing `{}`", config_path.display()))?;
    let keys = doc.entry("keys").or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let keys = keys.as_table_mut().context("`keys` in the config is not a table")?;
    keys.set_implicit(true);
    let entry = keys.entry(name.as_str()).or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let entry = entry.as_table_mut().context("`keys.<name>` is not a table")?;
    entry.set_implicit(true);
    let mut nvflare = toml_edit::Table::new();
    let root = std::path::absolute(&kit.root_ca)?;
    nvflare["root_ca"] = toml_edit::value(root.display().to_string());
    nvflare["server_identity"] = toml_edit::value(kit.server_identity.clone());
    entry.insert("nvflare", toml_edit::Item::Table(nvflare));
    crate::files::write_atomic(config_path, doc.to_string().as_bytes(), 0o600, true)
        .with_context(|| format!("writing `{}`", config_path.display()))?;
    Config::load(config_path).context("the updated config does not load")?;
    eprintln!(
        "added [keys.{name}.nvflare] (root CA `{}`, server `{}`) to `{}`",
        root.display(),
        kit.server_identity,
        config_path.display()
    );
    Ok(())
}
