//! `keyward nvflare request -p <name>.yaml`: NVFlare 2.9's `nvflare cert request` with the key
//! generated in the token (or, with `--renew`, the token key the site already has). Writes the
//! request folder `nvflare package` later reads (`provision/request.rs`); `<name>.key` there
//! is a keyward key reference. The project admin approves the zip with the unmodified
//! `nvflare cert approve`; the site then runs the unmodified `nvflare package` in its NVFlare
//! venv (keyward plug-in installed, agent running) and `keyward nvflare enroll` on the kit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use keyward_core::nvflare::key_reference;
use keyward_core::{KeyAlgorithm, KeyId, StoreError};

use crate::config::Config;
use crate::provision::csr::{nvflare_subject, sign_request};
use crate::provision::participant::{Participant, MAX_DEFINITION_BYTES};
use crate::provision::request::{sha256_hex, RequestFiles, RequestMeta};
use crate::provision::yaml_out::to_pyyaml_block;

/// `keyward nvflare request`
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The participant definition, as for `nvflare cert request -p`: the project `name` and
    /// one participant (`name`, `org`, `type` client|server|admin, an admin's `role`).
    #[arg(short = 'p', long, value_name = "YAML")]
    participant: PathBuf,
    /// The request folder (default: `./<participant name>`); never overwritten.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Key name in the token (default: the participant name; admins' names hold an `@`, so
    /// they need one).
    #[arg(long)]
    key: Option<KeyId>,
    /// Ask again for the key the token already holds (a renewal) instead of generating one.
    #[arg(long)]
    renew: bool,
    /// Algorithm of a generated key: rsa-2048 (NVFlare's) or rsa-3072.
    #[arg(long, default_value = "rsa-2048", value_parser = super::parse_algorithm)]
    algorithm: KeyAlgorithm,
}

/// Runs `keyward nvflare request`.
///
/// # Errors
/// A definition NVFlare would refuse, an existing request folder, a key that exists (without
/// `--renew`) or is missing (with it), token and file errors.
pub fn run(config: &Config, args: RequestArgs) -> Result<()> {
    let text = read_definition(&args.participant)?;
    let participant = Participant::parse(&text).with_context(|| format!("`{}`", args.participant.display()))?;
    let identity = &participant.identity;
    let key = match args.key {
        Some(k) => k,
        None => KeyId::new(&identity.name)
            .with_context(|| format!("`{}` is not a valid key name; pass --key", identity.name))?,
    };
    if !args.algorithm.is_rsa() {
        bail!("NVFlare signs with RSA-PSS: the key must be rsa-2048 or rsa-3072");
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from(&identity.name));
    RequestFiles::check_absent(&out, &identity.name)?;

    let mut store = super::keys::open_store(config)?;
    if !args.renew {
        store.generate(&key, args.algorithm).map_err(|e| match e {
            StoreError::KeyExists { .. } => anyhow::Error::new(e).context(
                "to ask for a new certificate for the existing key, pass --renew; for a new key, another --key",
            ),
            e => anyhow::Error::new(e).context(format!("generating key `{key}`")),
        })?;
        if let Err(e) = crate::renewal::record_birth(&config.state_dir, &key) {
            eprintln!("warning: `{key}` was generated, but when is not recorded (its key age stays unknown): {e}");
        }
        eprintln!(
            "generated {} key `{key}` inside {} (sensitive, not extractable)",
            args.algorithm,
            store.info().device
        );
    }
    let public = store.public_key(&key).with_context(|| format!("reading the public key of `{key}`"))?;
    if !public.algorithm.is_rsa() {
        bail!("key `{key}` is {}; NVFlare needs an RSA key", public.algorithm);
    }
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = nvflare_subject(&identity.name, &identity.org, identity.cert_type);
    let csr_pem = sign_request(store.as_mut(), &key, &public, &params)?;
    drop(store);

    let local_yaml = to_pyyaml_block(&participant.local);
    let approval_yaml = to_pyyaml_block(&participant.for_approval());
    let meta = RequestMeta::new(identity, &csr_pem, &public.spki_der, &approval_yaml);
    let reference = key_reference(&config.socket.display().to_string(), &key);
    let files = RequestFiles {
        name: &identity.name,
        key_reference: &reference,
        csr_pem: &csr_pem,
        meta: &meta,
        local_yaml: &local_yaml,
        approval_yaml: &approval_yaml,
    };
    files.write(&out).with_context(|| {
        format!("key `{key}` is in the token; writing the request failed (retry with --renew and another --out)")
    })?;
    let zip = files.zip_path(&out);
    println!("{}", zip.display());
    eprintln!(
        "wrote the request `{}` (request_id {}, public key sha256 {}); `{}` is a key reference, not a key",
        zip.display(),
        meta.request_id,
        sha256_hex(&public.spki_der),
        out.join(format!("{}.key", identity.name)).display()
    );
    eprintln!("next: send `{}` to the project admin (`nvflare cert approve`); with the signed zip back, in the NVFlare venv with the keyward plug-in and the agent running: `nvflare package <signed zip> --request-dir {}`, then `keyward nvflare enroll <kit>/startup --key {key}`", zip.display(), out.display());
    Ok(())
}

fn read_definition(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    if bytes.len() > MAX_DEFINITION_BYTES {
        bail!("`{}` is larger than {MAX_DEFINITION_BYTES} bytes", path.display());
    }
    String::from_utf8(bytes).with_context(|| format!("`{}` is not UTF-8", path.display()))
}
