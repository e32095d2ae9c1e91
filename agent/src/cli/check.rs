//! `keyward check`: a doctor for a site, after `aziotctl check`. One line per check
//! (`[ OK ]`, `[WARN]`, `[FAIL]`, `[SKIP]`), a verdict, and an exit code scripts can use:
//! 0 when nothing failed (warnings allowed), 1 when a check failed.
//!
//! The PIN is offered at most once, and only after the token's own PIN flags (read without a
//! login, `keyward_pkcs11::read_pin_state`) show neither a lock, a final try, nor a wrong PIN
//! since the last good one: a check must not be what locks the token. Then: each configured or
//! certified key in the token, its certificate (the key's, valid now, NVFlare's usages, signed
//! by the kit's root CA pinned in `[keys.<name>.nvflare]`), expiry and key age against the
//! key's renewal policy (`renewal.rs`), the agent's socket, the audit log, and, with
//! `--python`, the plug-in's `.pth` in the NVFlare venv; the systemd unit's sandbox against
//! what the config needs and the service user's write access to the socket's folder and the
//! audit log (`check_unit.rs`). A TPM that a running agent holds is not opened (swtpm serves
//! one client; the agent's answer stands for it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use keyward_core::{KeyAlgorithm, KeyId, KeyStore, PublicKey, SignProfile, StoreError, TlsScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::check_unit::{audit_log_gap, sandbox_gaps, socket_gap, ServiceUser, Unit};
use crate::certs::CertStore;
use crate::config::{BackendConfig, Config};
use crate::renewal::{self, CertState, RenewalPolicy};

/// `keyward check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Python of the NVFlare venv: check that the keyward plug-in is installed there.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// The agent's systemd unit (default: keyward.service in /etc/systemd/system, /lib or
    /// /usr/lib), read with its drop-ins (`<unit>.d/`, /etc/systemd/system/keyward.service.d/).
    #[arg(long, value_name = "FILE")]
    unit: Option<PathBuf>,
    /// The user the agent runs as (default: the unit's `User=`, else the caller).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Default)]
struct Report {
    failed: usize,
    warned: usize,
}

impl Report {
    fn line(&mut self, verdict: Verdict, what: &str, detail: impl AsRef<str>) {
        let tag = match verdict {
            Verdict::Ok => "[ OK ]",
            Verdict::Warn => {
                self.warned += 1;
                "[WARN]"
            }
            Verdict::Fail => {
                self.failed += 1;
                "[FAIL]"
            }
            Verdict::Skip => "[SKIP]",
        };
        println!("{tag} {what}: {}", detail.as_ref());
    }
}

/// Runs the checks and prints the report.
///
/// # Errors
/// When a check failed (exit 1), after the whole report is printed.
pub fn run(config_path: &Path, args: CheckArgs) -> Result<()> {
    let mut report = Report::default();
    let Some(config) = check_config(&mut report, config_path) else { return finish(&report) };
    let agent_up = std::os::unix::net::UnixStream::connect(&config.socket).is_ok();
    let mut store = check_device(&mut report, &config, agent_up);
    check_keys(&mut report, &config, store.as_deref_mut());
    if agent_up {
        report.line(Verdict::Ok, "agent", format!("answering on `{}`", config.socket.display()));
    } else {
        report.line(
            Verdict::Fail,
            "agent",
            format!("nothing answers on `{}` (is `keyward serve` running?)", config.socket.display()),
        );
    }
    check_audit(&mut report, &config);
    match &args.python {
        Some(python) => check_plugin(&mut report, python),
        None => report.line(Verdict::Skip, "plug-in", "not checked (pass --python <NVFlare venv>/bin/python)"),
    }
    let unit = Unit::find(args.unit.as_deref());
    check_service_user(&mut report, &config, unit.as_ref(), args.user.as_deref());
    match &unit {
        Some(unit) => match sandbox_gaps(unit, &config).as_slice() {
            [] => report.line(
                Verdict::Ok,
                "unit sandbox",
                format!("`{}` and its drop-ins give what the config needs", unit.path.display()),
            ),
            gaps => gaps.iter().for_each(|gap| report.line(Verdict::Fail, "unit sandbox", gap)),
        },
        None => report.line(Verdict::Skip, "unit sandbox", "no keyward.service installed (not run by systemd)"),
    }
    finish(&report)
}

fn finish(report: &Report) -> Result<()> {
    match (report.failed, report.warned) {
        (0, 0) => println!("verdict: healthy"),
        (0, w) => println!("verdict: healthy, {w} warning(s)"),
        (f, w) => {
            println!("verdict: {f} check(s) failed, {w} warning(s)");
            bail!("{f} check(s) failed");
        }
    }
    Ok(())
}

fn check_config(report: &mut Report, path: &Path) -> Option<Config> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            report.line(Verdict::Fail, "config", format!("cannot read `{}`: {e}", path.display()));
            return None;
        }
    };
    match Config::load(path) {
        Ok(config) => {
            let detail = format!("`{}` (owner uid {}, mode {:04o})", path.display(), meta.uid(), meta.mode() & 0o7777);
            if meta.mode() & 0o022 != 0 {
                report.line(Verdict::Fail, "config", format!("{detail} is writable by others than its owner"));
            } else {
                report.line(Verdict::Ok, "config", detail);
            }
            Some(config)
        }
        Err(e) => {
            report.line(Verdict::Fail, "config", format!("{e:#}"));
            None
        }
    }
}

/// The token's PIN flags, then one login; or the TPM. Returns the open store.
fn check_device(report: &mut Report, config: &Config, agent_up: bool) -> Option<Box<dyn KeyStore>> {
    if let BackendConfig::Tpm { .. } = config.backend {
        if agent_up {
            report.line(
                Verdict::Skip,
                "tpm",
                "held by the running agent; not opened (keys checked through certificates only)",
            );
            return None;
        }
    } else {
        match crate::backends::pin_flags(config) {
            Ok(Some(flags)) => {
                let refuse = if flags.locked {
                    Some("the user PIN is locked; unlock it with the SO PIN")
                } else if flags.final_try {
                    Some("one try is left before the PIN locks; not tried")
                } else if flags.count_low {
                    Some("a wrong PIN was entered since the last good one; not tried (check the PIN file, then `keyward key list` once)")
                } else if !flags.initialized {
                    Some("the token has no user PIN")
                } else {
                    None
                };
                if let Some(why) = refuse {
                    report.line(Verdict::Fail, "pin", why);
                    return None;
                }
                report.line(
                    Verdict::Ok,
                    "token",
                    "reachable; PIN flags clean (not locked, no final try, no failed try)",
                );
            }
            Ok(None) => {}
            Err(e) => {
                report.line(Verdict::Fail, "token", format!("{e:#}"));
                return None;
            }
        }
    }
    match crate::backends::open_store(config) {
        Ok(store) => {
            let what = if matches!(config.backend, BackendConfig::Tpm { .. }) { "tpm" } else { "pin" };
            report.line(Verdict::Ok, what, format!("accepted by {}", store.info().device));
            Some(store)
        }
        Err(e) => {
            let what = if e.chain().any(|c| matches!(c.downcast_ref(), Some(StoreError::PinIncorrect { .. }))) {
                "pin"
            } else {
                "token"
            };
            report.line(Verdict::Fail, what, format!("{e:#}"));
            None
        }
    }
}

fn check_keys(report: &mut Report, config: &Config, mut store: Option<&mut dyn KeyStore>) {
    let certs = CertStore::new(config.cert_dir());
    let mut names: Vec<KeyId> = config.keys.keys().filter_map(|k| KeyId::new(k).ok()).collect();
    names.extend(certs.installed());
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    let now = renewal::now();
    for key in names {
        let key_config = config.keys.get(key.as_str());
        let public = match store.as_deref_mut().map(|s| s.public_key(&key)) {
            Some(Ok(public)) => {
                report.line(Verdict::Ok, &format!("key {key}"), format!("present ({})", public.algorithm));
                Some(public)
            }
            Some(Err(e)) => {
                report.line(Verdict::Fail, &format!("key {key}"), keyward_core::error::chain(&e));
                None
            }
            None => None,
        };
        let policy = match key_config.and_then(|k| k.renewal.as_ref()).map(|r| r.policy()) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                report.line(Verdict::Fail, &format!("renewal {key}"), e);
                continue;
            }
            None => RenewalPolicy::default(),
        };
        let root = key_config.and_then(|k| k.nvflare.as_ref()).map(|n| n.root_ca.clone());
        check_certificate(report, &certs, &key, public.as_ref(), root.as_deref(), &policy, now);
        match (renewal::read_birth(&config.state_dir, &key), policy.max_key_age) {
            (Some(born), _) if policy.key_too_old(born, now) => report.line(
                Verdict::Fail,
                &format!("key age {key}"),
                format!(
                    "{} days, past max_key_age: rotate it (a new key in the token, then retire this one)",
                    (now - born) / 86_400
                ),
            ),
            (Some(born), _) => {
                report.line(Verdict::Ok, &format!("key age {key}"), format!("{} days", (now - born) / 86_400))
            }
            (None, Some(_)) => {
                report.line(Verdict::Warn, &format!("key age {key}"), "unknown (no record of when it was made)")
            }
            (None, None) => {}
        }
    }
}

fn check_certificate(
    report: &mut Report,
    certs: &CertStore,
    key: &KeyId,
    public: Option<&PublicKey>,
    root: Option<&Path>,
    policy: &RenewalPolicy,
    now: i64,
) {
    let what = format!("certificate {key}");
    let Some(pem_text) = certs.get(key) else {
        report.line(Verdict::Warn, &what, format!("none installed at `{}`", certs.path(key).display()));
        return;
    };
    if let Some(public) = public {
        if let Err(e) = CertStore::check(key, public, pem_text.as_bytes(), &certs.path(key)) {
            if !matches!(e, crate::certs::CertError::NotValidNow { .. }) {
                report.line(Verdict::Fail, &what, e.to_string());
                return;
            }
        }
    }
    let Some(leaf) = ::pem::parse_many(pem_text.as_bytes()).ok().and_then(|b| b.into_iter().next()) else {
        report.line(Verdict::Fail, &what, "does not parse");
        return;
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.contents()) else {
        report.line(Verdict::Fail, &what, "does not parse");
        return;
    };
    let chain = match root {
        Some(root) => match signed_by_root(&cert, root) {
            Ok(()) => format!("; signed by the root CA `{}`", root.display()),
            Err(why) => {
                report.line(Verdict::Fail, &what, why);
                return;
            }
        },
        None => String::new(),
    };
    let v = cert.validity();
    let a = policy.assess(v.not_before.timestamp(), v.not_after.timestamp(), now);
    let days = a.seconds_to_expiry / 86_400;
    let due = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.renew_at.max(0) as u64),
    );
    let matched = if public.is_some() { "the key's" } else { "key not checked" };
    match a.state {
        CertState::Valid => {
            report.line(Verdict::Ok, &what, format!("{matched}{chain}; expires in {days} days, renewal due {due}"))
        }
        CertState::RenewalDue => report.line(
            Verdict::Warn,
            &what,
            format!(
                "{matched}{chain}; expires in {days} days, renewal was due {due}: `keyward nvflare request --renew`"
            ),
        ),
        CertState::Expired => report.line(Verdict::Fail, &what, format!("expired {} days ago", -days)),
        CertState::NotYetValid => report.line(Verdict::Fail, &what, "not valid yet"),
    }
}

/// Whether the leaf `cert` is issued by the root in `root` and its signature verifies
/// (sha256WithRSAEncryption, as NVFlare's CA signs).
fn signed_by_root(cert: &X509Certificate<'_>, root: &Path) -> Result<(), String> {
    let text = std::fs::read(root).map_err(|e| format!("cannot read the root CA `{}`: {e}", root.display()))?;
    let block = ::pem::parse_many(&text).ok().and_then(|b| b.into_iter().next()).ok_or("the root CA is not PEM")?;
    let (_, ca) = X509Certificate::from_der(block.contents()).map_err(|_| "the root CA does not parse")?;
    if cert.issuer() != ca.subject() {
        return Err(format!("issued by `{}`, not by the pinned root CA `{}`", cert.issuer(), ca.subject()));
    }
    if cert.signature_algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.11" {
        return Err("signed with an algorithm this check does not verify (not sha256WithRSAEncryption)".into());
    }
    let bits = match ca.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
        _ => return Err("the root CA's key is not RSA".into()),
    };
    let algorithm = KeyAlgorithm::from_rsa_bits(bits).ok_or("the root CA's RSA key size is not supported")?;
    let public = PublicKey { algorithm, spki_der: ca.public_key().raw.to_vec() };
    keyward_core::verify::verify(
        &public,
        SignProfile::Tls(TlsScheme::RsaPkcs1Sha256),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
    .map_err(|_| format!("its signature does not verify with the pinned root CA `{}`", root.display()))
}

fn check_audit(report: &mut Report, config: &Config) {
    let path = config.audit_log();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_file() => {
            report.line(Verdict::Fail, "audit log", format!("`{}` is not a regular file", path.display()))
        }
        Ok(m) if m.mode() & 0o022 != 0 => report.line(
            Verdict::Fail,
            "audit log",
            format!("`{}` is writable by others (mode {:04o})", path.display(), m.mode() & 0o7777),
        ),
        Ok(m) if m.mode() & 0o200 == 0 => report.line(
            Verdict::Fail,
            "audit log",
            format!("`{}` is not writable by its owner (uid {})", path.display(), m.uid()),
        ),
        Ok(m) => report.line(
            Verdict::Ok,
            "audit log",
            format!("`{}` (owner uid {}, mode {:04o}, {} bytes)", path.display(), m.uid(), m.mode() & 0o7777, m.len()),
        ),
        Err(_) => match path.parent().map(std::fs::metadata) {
            Some(Ok(d)) if d.is_dir() => report.line(
                Verdict::Warn,
                "audit log",
                format!("`{}` does not exist yet (made at the agent's start)", path.display()),
            ),
            _ => report.line(Verdict::Fail, "audit log", format!("the folder of `{}` does not exist", path.display())),
        },
    }
}

fn check_plugin(report: &mut Report, python: &Path) {
    let Some(venv) = python.parent().and_then(Path::parent) else {
        report.line(Verdict::Fail, "plug-in", "--python takes `<venv>/bin/python`");
        return;
    };
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib).into_iter().flatten().flatten().any(|entry| {
        entry.file_name().to_string_lossy().starts_with("python")
            && entry.path().join("site-packages").join("keyward_nvflare.pth").is_file()
    });
    if found {
        report.line(Verdict::Ok, "plug-in", format!("keyward_nvflare.pth installed in `{}`", venv.display()));
    } else {
        report.line(
            Verdict::Fail,
            "plug-in",
            format!(
                "no keyward_nvflare.pth in `{}`: run `keyward-nvflare install` with that venv's python",
                venv.display()
            ),
        );
    }
}

/// The socket's folder and the audit log, as the user the agent runs as sees them.
fn check_service_user(report: &mut Report, config: &Config, unit: Option<&Unit>, user: Option<&str>) {
    let name = match user.or_else(|| unit.and_then(|u| u.last("User"))) {
        Some(name) => name.to_owned(),
        None => match nix::unistd::User::from_uid(nix::unistd::geteuid()) {
            Ok(Some(me)) => me.name,
            _ => {
                report.line(Verdict::Skip, "service user", "unknown (pass --user)");
                return;
            }
        },
    };
    let user = match ServiceUser::lookup(&name) {
        Ok(user) => user,
        Err(why) => {
            report.line(Verdict::Fail, "service user", why);
            return;
        }
    };
    let gaps: Vec<String> =
        [socket_gap(&user, &config.socket), audit_log_gap(&user, &config.audit_log())].into_iter().flatten().collect();
    if gaps.is_empty() {
        report.line(Verdict::Ok, "service user", format!("`{name}` can write the socket's folder and the audit log"));
    }
    for gap in gaps {
        report.line(Verdict::Fail, "service user", gap);
    }
}
