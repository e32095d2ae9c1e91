//! `keyward nvflare migrate`: moves an NVFlare site's startup-kit key into the token. The
//! key is imported (non-extractable), proven against `client.crt` with a sign/verify round
//! trip, the certificate installed, the kit's root CA copied into the agent's state and
//! pinned with the server identity in `[keys.<name>.nvflare]`, and `client.key` overwritten
//! and replaced by a key reference (format: docs/nvflare-plugin.md). `enroll` wires a key
//! made in the token into a kit the same way.
//!
//! Root runs these on a kit its owner (the NVFlare user) can change at any moment: every
//! check (`nvflare_kit.rs`) comes before the import, so a refused migration changes nothing;
//! kit files are reached only through no-follow handles (`kit_file.rs`), `client.key` through
//! one handle for the read, the overwrite and the same-file check; and the plug-in installer
//! runs as the venv's owner (`nvflare_plugin.rs`). A kit with a `signature.json` is refused:
//! changing `client.key` would make NVFlare reject the kit.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyward_core::nvflare::{key_reference, KEY_REFERENCE_LABEL};
use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyId, SignProfile};

use super::nvflare_kit::{read_kit, Kit, KEY_FILE, MAX_KEY_BYTES, STAGED_REFERENCE};
use super::nvflare_plugin;
use crate::certs::CertStore;
use crate::config::Config;
use crate::kit_file::Access;

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
    /// NVFlare's `nvflare cert request` with the key generated in the token: the request
    /// folder and zip for `nvflare cert approve`, `<name>.key` a key reference.
    Request(super::nvflare_request::RequestArgs),
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
        NvflareCommand::Request(args) => super::nvflare_request::run(config, args),
    }
}

fn migrate(
    config_path: &Path,
    config: &Config,
    startup: &Path,
    key: Option<KeyId>,
    python: Option<&Path>,
) -> Result<()> {
    // Everything is checked before the key is imported, so a refused migration changes nothing.
    let kit = read_kit(startup)?;
    let key_path = kit.dir.join(KEY_FILE);
    // The one handle to client.key: read now, zeroed and checked before it is replaced.
    let mut key_file = kit.dir.open_file(KEY_FILE, Access::ReadWrite).with_context(|| {
        format!("opening `{}` (for a key made in the token, use `keyward nvflare enroll`)", key_path.display())
    })?;
    let key_text = key_file.read_all(MAX_KEY_BYTES)?;
    if String::from_utf8_lossy(&key_text).contains(KEY_REFERENCE_LABEL) {
        bail!("`{}` is already a keyward key reference: this kit was migrated", key_path.display());
    }
    let cn = &kit.cert_cn;
    let name = match key {
        Some(k) => k,
        None => KeyId::new(cn).with_context(|| format!("the CN `{cn}` is not a valid key name; pass --key"))?,
    };
    let material =
        PrivateKeyMaterial::from_pem(&key_text).with_context(|| format!("parsing `{}`", key_path.display()))?;
    let cert_path = kit.dir.join("client.crt");
    if material.public_key().spki_der != kit.cert_spki {
        bail!("`{}` is not the key of `{}`; nothing was changed", key_path.display(), cert_path.display());
    }
    CertStore::check(&name, material.public_key(), &kit.cert_pem, &cert_path)
        .with_context(|| format!("`{}`", cert_path.display()))?;
    let plugin = python.map(nvflare_plugin::check).transpose()?;
    let trust = trust_anchor_path(config, &name);
    let new_config = config_with_trust(config_path, &name, &trust, &kit.server_identity)?;
    let reference = key_reference(&config.socket.display().to_string(), &name);
    // Writing the reference next to client.key is also the check that the kit is writable.
    let staged = kit.dir.stage(STAGED_REFERENCE, reference.as_bytes(), 0o644, owner_if_root(key_file.owner()))?;

    let mut store = super::keys::open_store(config)?;
    store.import(&name, &material).with_context(|| format!("importing `{}` as `{name}`", key_path.display()))?;
    drop(material);
    let public = store.public_key(&name)?;
    let probe = format!("{cn}keyward-migration-check");
    let signature = store.sign(&name, SignProfile::Nvflare, probe.as_bytes())?;
    keyward_core::verify::verify_pss_sha256_any_salt(&kit.cert_spki, probe.as_bytes(), &signature)
        .context("the token's signature does not verify against client.crt; client.key was left in place")?;
    eprintln!(
        "imported `{}` into {} as `{name}`; signature verified against client.crt",
        key_path.display(),
        store.info().device
    );

    let certs = CertStore::new(config.cert_dir());
    certs.install(&name, &public, &kit.cert_pem, &cert_path)?;
    write_trust(config_path, &name, &kit, &trust, &new_config)?;
    kit.dir.replace(key_file, staged).with_context(|| {
        format!("the key is in the token as `{name}`, but `{}` was not replaced by its reference", key_path.display())
    })?;
    eprintln!("overwrote and removed the private key; `{}` is now a key reference (no secret)", key_path.display());

    if let Some(plugin) = plugin {
        plugin.run()?;
    } else {
        eprintln!(
            "next: in the NVFlare venv, as its owner, `pip install <keyward>/python` and `keyward-nvflare install`"
        );
    }
    finish(config, &name, &kit, &certs, config_path);
    Ok(())
}

fn enroll(config_path: &Path, config: &Config, startup: &Path, name: &KeyId) -> Result<()> {
    let kit = read_kit(startup)?;
    let key_path = kit.dir.join(KEY_FILE);
    if kit.dir.exists(KEY_FILE)? {
        let existing = kit.dir.open_file(KEY_FILE, Access::Read)?.read_all(MAX_KEY_BYTES)?;
        if !String::from_utf8_lossy(&existing).contains(KEY_REFERENCE_LABEL) {
            bail!(
                "`{}` exists and is not a key reference; to move that key into the token use `keyward nvflare migrate`",
                key_path.display()
            );
        }
    }
    let cert_path = kit.dir.join("client.crt");
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(name)?;
    if public.spki_der != kit.cert_spki {
        bail!("`{}` was not issued for token key `{name}`", cert_path.display());
    }
    CertStore::check(name, &public, &kit.cert_pem, &cert_path).with_context(|| format!("`{}`", cert_path.display()))?;
    let trust = trust_anchor_path(config, name);
    let new_config = config_with_trust(config_path, name, &trust, &kit.server_identity)?;
    let reference = key_reference(&config.socket.display().to_string(), name);
    let staged = kit.dir.stage(STAGED_REFERENCE, reference.as_bytes(), 0o644, owner_if_root(kit.dir.owner()?))?;

    let certs = CertStore::new(config.cert_dir());
    certs.install(name, &public, &kit.cert_pem, &cert_path)?;
    write_trust(config_path, name, &kit, &trust, &new_config)?;
    kit.dir.commit(staged, KEY_FILE)?;
    eprintln!("wrote the key reference `{}`", key_path.display());
    finish(config, name, &kit, &certs, config_path);
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
        kit.dir.join(KEY_FILE).display()
    );
    eprintln!("undo: the key cannot leave the token; to go back, re-provision the site and remove [keys.{name}] from the config");
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        eprintln!(
            "note: an agent is running on `{}`; restart it so it loads [keys.{name}.nvflare]",
            config.socket.display()
        );
    }
}

/// The owner the reference takes: the kit's, when root writes it (anyone else writes its own).
fn owner_if_root(owner: (u32, u32)) -> Option<(u32, u32)> {
    nix::unistd::geteuid().is_root().then_some(owner)
}

fn describe(existing: &crate::files::Existing) -> &'static str {
    match existing {
        crate::files::Existing::Missing => "missing",
        crate::files::Existing::Regular(_) => "a regular file",
        crate::files::Existing::Symlink => "a symbolic link",
        crate::files::Existing::Other(kind) => kind,
    }
}

/// Where the agent keeps its copy of a key's NVFlare root CA.
fn trust_anchor_path(config: &Config, name: &KeyId) -> PathBuf {
    config.state_dir.join("trust").join(format!("{name}.rootCA.pem"))
}

/// The config with `[keys.<name>.nvflare]` (the agent's root CA copy, the server identity)
/// added, its layout kept; checked to parse, and the config to be a regular file that can be
/// replaced (not a link, which the atomic rewrite refuses), before anything changes.
fn config_with_trust(config_path: &Path, name: &KeyId, root_ca: &Path, server_identity: &str) -> Result<String> {
    match crate::files::inspect(config_path).with_context(|| format!("`{}`", config_path.display()))? {
        crate::files::Existing::Regular(_) => {}
        other => bail!(
            "`{}` is {}, not a regular file; keyward rewrites only a regular config file",
            config_path.display(),
            describe(&other)
        ),
    }
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
    let root = std::path::absolute(root_ca)?;
    nvflare["root_ca"] = toml_edit::value(root.display().to_string());
    nvflare["server_identity"] = toml_edit::value(server_identity);
    entry.insert("nvflare", toml_edit::Item::Table(nvflare));
    let text = doc.to_string();
    toml::from_str::<Config>(&text)
        .with_context(|| format!("`{}` with [keys.{name}.nvflare] added", config_path.display()))?;
    Ok(text)
}

/// Copies the kit's root CA into the agent's state (the NVFlare user can change the kit, not
/// that copy) and writes the config that pins it.
fn write_trust(config_path: &Path, name: &KeyId, kit: &Kit, root_ca: &Path, new_config: &str) -> Result<()> {
    if let Some(dir) = root_ca.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating `{}`", dir.display()))?;
    }
    crate::files::write_atomic(root_ca, kit.root_ca_pem.as_bytes(), 0o644, true)
        .with_context(|| format!("writing `{}`", root_ca.display()))?;
    crate::files::write_atomic(config_path, new_config.as_bytes(), 0o600, true)
        .with_context(|| format!("writing `{}`", config_path.display()))?;
    Config::load(config_path).context("the updated config does not load")?;
    eprintln!(
        "added [keys.{name}.nvflare] (root CA `{}`, copied from `{}`; server `{}`) to `{}`",
        root_ca.display(),
        kit.dir.join("rootCA.pem").display(),
        kit.server_identity,
        config_path.display()
    );
    Ok(())
}
