//! `keyward nvflare migrate`: moves an NVFlare startup kit's key into the token. The key is
//! imported (non-extractable), proven against the kit's certificate with a sign/verify round
//! trip, the certificate installed, the kit's root CA copied into the agent's state and
//! pinned — with the server identity in `[keys.<name>.nvflare]` for a site or admin kit
//! (`client.key`), alone in `[keys.<name>.nvflare_server]` for the server's (`server.key`,
//! whose registrations the agent then verifies) — and the key file overwritten and replaced
//! by a key reference (format: docs/nvflare-plugin.md). `enroll` wires a key made in the
//! token into a kit the same way.
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

use super::nvflare_kit::{read_kit, Kit, Role, MAX_KEY_BYTES, STAGED_REFERENCE};
use super::nvflare_plugin;
use crate::certs::{CertStore, Usage};
use crate::config::Config;
use crate::kit_file::Access;

/// `keyward nvflare ...`
#[derive(Debug, Subcommand)]
pub enum NvflareCommand {
    /// Move a kit's key into the token and leave a key reference in its place: a site's or
    /// admin's client.key, or the server's server.key.
    Migrate {
        /// The kit's `startup` folder (client.key, client.crt, rootCA.pem, fed_client.json or
        /// fed_admin.json; or server.key, server.crt, rootCA.pem, fed_server.json).
        startup: PathBuf,
        /// Key name in the token (default: the CN of the kit's certificate).
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
    let key_name = kit.role.key_file();
    let key_path = kit.dir.join(key_name);
    // The one handle to the key file: read now, zeroed and checked before it is replaced.
    let mut key_file = kit.dir.open_file(key_name, Access::ReadWrite).with_context(|| {
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
    let cert_path = kit.dir.join(kit.role.cert_file());
    if material.public_key().spki_der != kit.cert_spki {
        bail!("`{}` is not the key of `{}`; nothing was changed", key_path.display(), cert_path.display());
    }
    CertStore::check_for(usage(&kit), &name, material.public_key(), &kit.cert_pem, &cert_path)
        .with_context(|| format!("`{}`", cert_path.display()))?;
    let plugin = python.map(nvflare_plugin::check).transpose()?;
    if let Some(plugin) = &plugin {
        plugin.preflight().context("the NVFlare plug-in cannot be installed in that venv; nothing was changed")?;
    }
    let trust = trust_anchor_path(config, &name);
    let new_config = config_with_trust(config_path, &name, &trust, &kit)?;
    let reference = key_reference(&config.socket.display().to_string(), &name);
    // Writing the reference next to client.key is also the check that the kit is writable.
    let staged = kit.dir.stage(STAGED_REFERENCE, reference.as_bytes(), 0o644, owner_if_root(key_file.owner()))?;

    let mut store = super::keys::open_store(config)?;
    store.import(&name, &material).with_context(|| format!("importing `{}` as `{name}`", key_path.display()))?;
    drop(material);
    let public = store.public_key(&name)?;
    let probe = format!("{cn}keyward-migration-check");
    let signature = store.sign(&name, SignProfile::Nvflare, probe.as_bytes())?;
    keyward_core::verify::verify_pss_sha256_any_salt(&kit.cert_spki, probe.as_bytes(), &signature).with_context(
        || {
            format!(
                "the token's signature does not verify against {}; {key_name} was left in place",
                kit.role.cert_file()
            )
        },
    )?;
    super::keys::note_import(&config.state_dir, &name, crate::certs::pem_validity(&kit.cert_pem).map(|v| v.0));
    eprintln!(
        "imported `{}` into {} as `{name}`; signature verified against {}",
        key_path.display(),
        store.info().device,
        kit.role.cert_file()
    );

    let certs = CertStore::new(config.cert_dir());
    certs.install_for(usage(&kit), &name, &public, &kit.cert_pem, &cert_path)?;
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
    let key_name = kit.role.key_file();
    let key_path = kit.dir.join(key_name);
    if kit.dir.exists(key_name)? {
        let existing = kit.dir.open_file(key_name, Access::Read)?.read_all(MAX_KEY_BYTES)?;
        if !String::from_utf8_lossy(&existing).contains(KEY_REFERENCE_LABEL) {
            bail!(
                "`{}` exists and is not a key reference; to move that key into the token use `keyward nvflare migrate`",
                key_path.display()
            );
        }
    }
    let cert_path = kit.dir.join(kit.role.cert_file());
    let mut store = super::keys::open_store(config)?;
    let public = store.public_key(name)?;
    if public.spki_der != kit.cert_spki {
        bail!("`{}` was not issued for token key `{name}`", cert_path.display());
    }
    CertStore::check_for(usage(&kit), name, &public, &kit.cert_pem, &cert_path)
        .with_context(|| format!("`{}`", cert_path.display()))?;
    let trust = trust_anchor_path(config, name);
    let new_config = config_with_trust(config_path, name, &trust, &kit)?;
    let reference = key_reference(&config.socket.display().to_string(), name);
    let staged = kit.dir.stage(STAGED_REFERENCE, reference.as_bytes(), 0o644, owner_if_root(kit.dir.owner()?))?;

    let certs = CertStore::new(config.cert_dir());
    certs.install_for(usage(&kit), name, &public, &kit.cert_pem, &cert_path)?;
    write_trust(config_path, name, &kit, &trust, &new_config)?;
    kit.dir.commit(staged, key_name)?;
    eprintln!("wrote the key reference `{}`", key_path.display());
    finish(config, name, &kit, &certs, config_path);
    Ok(())
}

/// Says what changed, how to undo it, and what still needs doing.
fn finish(config: &Config, name: &KeyId, kit: &Kit, certs: &CertStore, config_path: &Path) {
    match (kit.role, kit.connection_security.as_str()) {
        (Role::Server, "clear") => {}
        (Role::Server, _) => eprintln!(
            "note: NVFlare's server loads its TLS key as a file: set its fed_server.json to `clear` on a loopback target and put `keyward server-tunnel --key {name}` on the kit's port (docs/nvflare-plugin.md)"
        ),
        (_, "mtls") => eprintln!(
            "note: the kit uses `mtls`: with scheme `grpc` the plug-in signs the TLS handshake through gRPC's custom signer; with `http` or `tcp` use `keyward tunnel`"
        ),
        _ => {}
    }
    eprintln!(
        "changed: token key `{name}`, {}, [keys.{name}.{}] in `{}`, `{}`",
        certs.path(name).display(),
        trust_table(kit),
        config_path.display(),
        kit.dir.join(kit.role.key_file()).display()
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

/// The certificate check of the kit's role.
fn usage(kit: &Kit) -> Usage {
    if kit.role == Role::Server {
        Usage::Server
    } else {
        Usage::Client
    }
}

/// The `[keys.<name>.*]` table a kit's trust goes into: `nvflare` (a client's: the root and
/// the server it expects) or `nvflare_server` (the server's: the root its clients chain to).
fn trust_table(kit: &Kit) -> &'static str {
    if kit.role == Role::Server {
        "nvflare_server"
    } else {
        "nvflare"
    }
}

/// Where the agent keeps its copy of a key's NVFlare root CA.
fn trust_anchor_path(config: &Config, name: &KeyId) -> PathBuf {
    config.state_dir.join("trust").join(format!("{name}.rootCA.pem"))
}

/// The config with `[keys.<name>.nvflare]` (the agent's root CA copy, the server identity)
/// added, its layout kept; checked to parse, and the config to be a regular file that can be
/// replaced (not a link, which the atomic rewrite refuses), before anything changes.
fn config_with_trust(config_path: &Path, name: &KeyId, root_ca: &Path, kit: &Kit) -> Result<String> {
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
    let mut trust = toml_edit::Table::new();
    let root = std::path::absolute(root_ca)?;
    trust["root_ca"] = toml_edit::value(root.display().to_string());
    if kit.role != Role::Server {
        trust["server_identity"] = toml_edit::value(&kit.server_identity);
    }
    let table = trust_table(kit);
    entry.insert(table, toml_edit::Item::Table(trust));
    let text = doc.to_string();
    toml::from_str::<Config>(&text)
        .with_context(|| format!("`{}` with [keys.{name}.{table}] added", config_path.display()))?;
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
        "added [keys.{name}.{}] (root CA `{}`, copied from `{}`; server `{}`) to `{}`",
        trust_table(kit),
        root_ca.display(),
        kit.dir.join("rootCA.pem").display(),
        kit.server_identity,
        config_path.display()
    );
    Ok(())
}
