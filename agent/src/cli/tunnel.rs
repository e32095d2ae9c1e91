//! `keyward tunnel`: a local plain-text listener (loopback TCP or a Unix socket) whose connections leave as mutual TLS signed
//! by a key the agent holds. Builds the rustls client config (root store = only `--ca`,
//! client chain = `--cert` or the key's installed certificate, key = `tls::signer`), checks
//! that the listen address is loopback unless `--allow-remote` (and that each loopback
//! client's socket belongs to an allowed local user: `--allow-uid`), turns TLS session
//! resumption off (each connection signs its own handshake), and runs `tls::tunnel::run`
//! until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use keyward_core::KeyId;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::tls::listen::{ListenAddr, LocalListener};
use crate::tls::signer::{AgentLink, AgentSigningKey};
use crate::tls::tunnel::{self, TunnelSettings};

/// Arguments of `keyward tunnel`.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Key whose certificate and signatures authenticate the tunnel.
    #[arg(long)]
    key: KeyId,
    /// Where local clients connect in plain text: a loopback `ADDR:PORT`, or
    /// `unix:/path/to/socket` (0600; 0666 with --allow-uid, the peer's uid is checked).
    #[arg(long, value_name = "ADDR:PORT|unix:PATH")]
    listen: ListenAddr,
    /// TLS server, `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// Name the server certificate must carry (DNS name or IP address).
    #[arg(long, value_name = "NAME")]
    server_name: String,
    /// The only root CA the server certificate may chain to (PEM, e.g. a kit's rootCA.pem).
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// Client certificate chain, leaf first (PEM). Default: the key's installed certificate.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// ALPN protocol to offer (repeatable), e.g. `h2` for gRPC.
    #[arg(long, value_name = "PROTOCOL")]
    alpn: Vec<String>,
    /// Allow a non-loopback --listen address (anyone who can connect then uses the key).
    #[arg(long)]
    allow_remote: bool,
    /// A local uid that may connect (repeatable). Default: only the uid running the tunnel.
    /// The owner of each client socket is asked of the kernel (netlink sock_diag).
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Close a connection after this long without a byte either way.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Limit for the TCP connect and for the TLS handshake, each.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Agent socket (default: from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs the tunnel until a termination signal.
///
/// # Errors
/// Bad arguments, unreadable certificates, the agent unreachable or without the key, a
/// certificate that is not the key's, or a listen address that cannot be bound.
pub fn run(socket: PathBuf, args: TunnelArgs) -> Result<()> {
    super::serve::init_logging();
    let remote = matches!(args.listen, ListenAddr::Tcp(addr) if !addr.ip().is_loopback());
    if remote && !args.allow_remote {
        bail!(
            "--listen {} is not a loopback address: anyone who can connect would use key `{}`; add --allow-remote to mean it",
            args.listen,
            args.key
        );
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let server_name = ServerName::try_from(args.server_name.clone())
        .with_context(|| format!("--server-name `{}` is neither a DNS name nor an IP address", args.server_name))?;
    let roots = root_store(&args.ca)?;

    // A signature must fit in the handshake's time limit anyway.
    let link = Arc::new(AgentLink::new(socket.clone(), args.connect_timeout));
    let key = AgentSigningKey::open(link, args.key.clone())
        .with_context(|| format!("asking the agent at `{}` for key `{}`", socket.display(), args.key))?;
    let chain = certificate_chain(&key, args.cert.as_deref(), &args.key)?;
    let algorithm = key.algorithm_kind();
    let certified = key
        .into_certified_key(chain)
        .with_context(|| format!("the client certificate does not belong to key `{}`", args.key))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = args.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Every connection is a full handshake signed by the key: with a stopped agent or a
    // removed token, new connections fail at once instead of resuming for hours, and each
    // connection has its audit record.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let settings = Arc::new(TunnelSettings {
        upstream: args.upstream.clone(),
        server_name,
        connect_timeout: args.connect_timeout,
        handshake_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        allowed_uids: allowed_uids(&args),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("keyward-tunnel").build()?;
    runtime.block_on(async {
        let listener = LocalListener::bind(&args.listen, !args.allow_uid.is_empty())
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        let shutdown = super::serve::cancel_on_signal()?;
        tracing::info!(
            listen = %listener.local_addr()?,
            upstream = %args.upstream,
            server_name = %args.server_name,
            key = %args.key,
            algorithm = %algorithm,
            "keyward tunnel listening"
        );
        tunnel::run(listener, connector, settings, shutdown).await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Who may connect: with `--allow-remote` anyone who reaches the address; otherwise the
/// uid running the tunnel and each `--allow-uid`.
fn allowed_uids(args: &TunnelArgs) -> Option<Vec<u32>> {
    if args.allow_remote {
        return None;
    }
    let mut uids = args.allow_uid.clone();
    uids.push(nix::unistd::geteuid().as_raw());
    Some(uids)
}

pub(crate) fn root_store(path: &Path) -> Result<rustls::RootCertStore> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --ca `{}`", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&text).with_context(|| format!("certificates in --ca `{}`", path.display()))? {
        roots.add(cert).with_context(|| format!("a root certificate in `{}` is not usable", path.display()))?;
    }
    Ok(roots)
}

/// The chain a tunnel presents for `key`: the PEM file `cert`, or else the key's installed
/// certificate.
pub(crate) fn certificate_chain(
    key: &AgentSigningKey,
    cert: Option<&Path>,
    name: &KeyId,
) -> Result<Vec<CertificateDer<'static>>> {
    match cert {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
            certificates(&text).with_context(|| format!("certificates in `{}`", path.display()))
        }
        None => {
            let text = key.installed_certificate().with_context(|| {
                format!("key `{name}` has no installed certificate: run `keyward cert install` or pass --cert")
            })?;
            certificates(text).with_context(|| format!("the installed certificate of `{name}`"))
        }
    }
}

/// The `CERTIFICATE` blocks of a PEM text, in order.
pub(crate) fn certificates(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = ::pem::parse_many(text)
        .context("not PEM")?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        bail!("no PEM certificate found");
    }
    Ok(certs)
}
