//! Reading an NVFlare startup kit and checking everything a migration or enrolment needs
//! before anything changes: the folder (opened without following links, see `kit_file.rs`),
//! `signature.json` absent, `fed_client.json` / `fed_admin.json` with a parseable server
//! identity and target (IPv6 `[::1]:8002` included), `client.crt` parseable with a CN, and
//! `rootCA.pem` a CA certificate (basicConstraints CA:TRUE) usable as a trust anchor.
//! Kit formats: nvflare/lighter (`fed_client.json` `servers[0]`, `fed_admin.json` `admin`,
//! and a server's `fed_server.json`, whose key and certificate are `server.key`/`server.crt`).

use std::net::Ipv6Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use keyward_core::nvflare::ServerTrust;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::kit_file::KitDir;

/// Where the key reference is written before it is renamed over the key file.
pub(super) const STAGED_REFERENCE: &str = ".client.key.keyward";
/// Largest `client.key` read (a PEM RSA-3072 key is about 2.5 kB).
pub(super) const MAX_KEY_BYTES: u64 = 64 << 10;
/// Largest other kit file read.
const MAX_KIT_FILE_BYTES: u64 = 1 << 20;

/// Whose kit it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A site: `fed_client.json`, `client.key`, `client.crt`.
    Site,
    /// An admin (FLARE console / API user): `fed_admin.json`, `client.key`, `client.crt`.
    Admin,
    /// The server: `fed_server.json`, `server.key`, `server.crt`.
    Server,
}

impl Role {
    /// The kit's private key file.
    pub(super) fn key_file(self) -> &'static str {
        if self == Self::Server {
            "server.key"
        } else {
            "client.key"
        }
    }

    /// The kit's certificate.
    pub(super) fn cert_file(self) -> &'static str {
        if self == Self::Server {
            "server.crt"
        } else {
            "client.crt"
        }
    }
}

/// A startup kit, read and checked.
pub(super) struct Kit {
    /// The folder, opened without following links.
    pub dir: KitDir,
    /// Whose kit.
    pub role: Role,
    /// `client.crt` as read.
    pub cert_pem: Vec<u8>,
    /// Its subject CN.
    pub cert_cn: String,
    /// Its SubjectPublicKeyInfo (DER).
    pub cert_spki: Vec<u8>,
    /// The root CA certificate of `rootCA.pem`, re-encoded (one PEM block, LF).
    pub root_ca_pem: String,
    /// The server's identity (its certificate's CN; a server kit's own CN).
    pub server_identity: String,
    /// `connection_security` (default `mtls`).
    pub connection_security: String,
}

/// Opens and checks the kit at `startup`.
///
/// # Errors
/// Names the file and what is wrong with it.
pub(super) fn read_kit(startup: &Path) -> Result<Kit> {
    let dir = KitDir::open(startup).with_context(|| format!("opening the kit folder `{}`", startup.display()))?;
    if dir.exists("signature.json")? {
        bail!(
            "`{}` exists: NVFlare checks client.key and fed_client.json against it at start, so replacing client.key would stop the site. Re-provision the kit without SignatureBuilder, or enroll a new key instead",
            dir.join("signature.json").display()
        );
    }
    // A site kit has fed_client.json; an admin (FLARE console / API user) kit fed_admin.json;
    // the server's fed_server.json.
    let role = if dir.exists("fed_client.json")? {
        Role::Site
    } else if dir.exists("fed_admin.json")? {
        Role::Admin
    } else if dir.exists("fed_server.json")? {
        Role::Server
    } else {
        bail!(
            "`{}` has none of fed_client.json, fed_admin.json, fed_server.json: is it a startup folder?",
            dir.path().display()
        );
    };
    let cert_file = role.cert_file();
    let cert_pem = read_required(&dir, cert_file)?;
    let (cert_cn, cert_spki) =
        cert_cn_and_spki(&cert_pem).with_context(|| format!("`{}`", dir.join(cert_file).display()))?;
    let (server_identity, connection_security) = match role {
        Role::Server => {
            let fed_path = dir.join("fed_server.json");
            let fed_json: serde_json::Value = serde_json::from_slice(&read_required(&dir, "fed_server.json")?)
                .with_context(|| format!("parsing `{}`", fed_path.display()))?;
            let security = fed_json["servers"][0]["connection_security"].as_str().unwrap_or("mtls").to_owned();
            (cert_cn.clone(), security)
        }
        Role::Site | Role::Admin => {
            let fed_name = if role == Role::Admin { "fed_admin.json" } else { "fed_client.json" };
            let fed_path = dir.join(fed_name);
            let fed_json: serde_json::Value = serde_json::from_slice(&read_required(&dir, fed_name)?)
                .with_context(|| format!("parsing `{}`", fed_path.display()))?;
            server_of(&fed_json, role == Role::Admin).with_context(|| format!("`{}`", fed_path.display()))?
        }
    };
    let root_ca_pem = root_ca(&read_required(&dir, "rootCA.pem")?)
        .with_context(|| format!("`{}`", dir.join("rootCA.pem").display()))?;
    Ok(Kit { dir, role, cert_pem, cert_cn, cert_spki, root_ca_pem, server_identity, connection_security })
}

fn read_required(dir: &KitDir, name: &str) -> Result<Vec<u8>> {
    if !dir.exists(name)? {
        bail!(
            "`{}` not found: is `{}` a startup folder (site, admin or server)?",
            dir.join(name).display(),
            dir.path().display()
        );
    }
    Ok(dir.read(name, MAX_KIT_FILE_BYTES)?)
}

/// The server identity and connection security of a parsed `fed_client.json` / `fed_admin.json`.
fn server_of(fed: &serde_json::Value, admin: bool) -> Result<(String, String)> {
    let (identity, security) = if admin {
        let a = &fed["admin"];
        if let Some(port) = a.get("port") {
            port.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .context("`admin.port` is not a port")?;
        }
        (
            a["server_identity"].as_str().or_else(|| a["host"].as_str()).map(str::to_owned),
            a["connection_security"].as_str(),
        )
    } else {
        let server = &fed["servers"][0];
        let host = match server["service"]["target"].as_str() {
            Some(t) => Some(
                parse_target(t)
                    .with_context(|| format!("`servers[0].service.target` `{t}` is not `host:port` or `[ipv6]:port`"))?
                    .0,
            ),
            None => None,
        };
        let identity = server["identity"].as_str().map(str::to_owned).or(host);
        (identity, fed["client"]["connection_security"].as_str())
    };
    let identity = identity.context("names no server identity (`servers[0].identity` or a target)")?;
    if identity.is_empty() || identity.len() > 253 || identity.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the server identity `{}` is not a host name", identity.escape_debug());
    }
    Ok((identity, security.unwrap_or("mtls").to_owned()))
}

/// Splits an NVFlare target, `host:port` or `[ipv6]:port`, into host and port.
fn parse_target(target: &str) -> Option<(String, u16)> {
    let (host, port) = match target.strip_prefix('[') {
        Some(rest) => {
            let (host, port) = rest.split_once(']')?;
            host.parse::<Ipv6Addr>().ok()?;
            (host, port.strip_prefix(':')?)
        }
        None => {
            let (host, port) = target.rsplit_once(':')?;
            // An IPv6 address without brackets cannot be told from its port.
            if host.contains(':') {
                return None;
            }
            (host, port)
        }
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The CN and SubjectPublicKeyInfo of the first certificate in `cert_pem`.
pub(super) fn cert_cn_and_spki(cert_pem: &[u8]) -> Result<(String, Vec<u8>)> {
    let block = ::pem::parse_many(cert_pem)
        .context("not PEM")?
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .context("holds no certificate")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).map_err(|_| anyhow::anyhow!("does not parse"))?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).context("has no CN")?.to_owned();
    Ok((cn, cert.public_key().raw.to_vec()))
}

/// The first certificate of `pem_text`, checked to be a CA certificate and a usable trust
/// anchor, re-encoded as one PEM block.
fn root_ca(pem_text: &[u8]) -> Result<String> {
    let block = ::pem::parse_many(pem_text)
        .context("not PEM")?
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .context("holds no certificate")?;
    let (_, cert) = X509Certificate::from_der(block.contents()).map_err(|_| anyhow::anyhow!("does not parse"))?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        bail!("is not a CA certificate (no basicConstraints CA:TRUE): the kit's root CA is needed here");
    }
    let lf = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    let pem = ::pem::encode_config(&block, lf);
    ServerTrust::new(pem.as_bytes(), "server").context("is not usable as a trust anchor")?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_ipv4_names_and_bracketed_ipv6() {
        assert_eq!(parse_target("server1:8002"), Some(("server1".into(), 8002)));
        assert_eq!(parse_target("10.0.0.1:8002"), Some(("10.0.0.1".into(), 8002)));
        assert_eq!(parse_target("[::1]:8002"), Some(("::1".into(), 8002)));
        assert_eq!(parse_target("[fe80::1]:1"), Some(("fe80::1".into(), 1)));
        for bad in
            ["server1", "server1:", ":8002", "server1:0", "server1:70000", "::1:8002", "[::1", "[::1]8002", "[x]:1"]
        {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_server_identity_comes_from_the_identity_or_the_target_host() {
        let fed = |v: serde_json::Value| server_of(&v, false);
        let site = serde_json::json!({"servers": [{"identity": "server1", "service": {"target": "[::1]:8002"}}],
            "client": {"connection_security": "tls"}});
        assert_eq!(fed(site).unwrap(), ("server1".into(), "tls".into()));
        let no_identity = serde_json::json!({"servers": [{"service": {"target": "[::1]:8002"}}]});
        assert_eq!(fed(no_identity).unwrap(), ("::1".into(), "mtls".into()));
        assert!(fed(serde_json::json!({"servers": [{"identity": "s", "service": {"target": "[::1"}}]})).is_err());
        assert!(fed(serde_json::json!({"servers": [{"identity": "two words"}]})).is_err());
        assert!(fed(serde_json::json!({"servers": []})).is_err());
        let admin = serde_json::json!({"admin": {"host": "localhost", "port": 8003}});
        assert_eq!(server_of(&admin, true).unwrap().0, "localhost");
        assert!(server_of(&serde_json::json!({"admin": {"host": "h", "port": "x"}}), true).is_err());
    }
}
