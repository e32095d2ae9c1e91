//! `keyward server-tunnel`: TLS for a server whose key the agent holds. Listens on the
//! network with the server certificate (`--cert` or the key's installed certificate) and
//! the agent-held key, requires client certificates from `--ca` unless `--no-client-auth`,
//! and forwards each connection in plain text to `--upstream`, which must be a loopback
//! address (plain text never leaves the host). TLS session resumption is off, so every
//! connection is a full handshake with its own audited signature and its own client
//! certificate check. Runs `tls::server_tunnel::run` until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use keyward_core::KeyId;

use super::tunnel::{certificate_chain, root_store};
use crate::tls::server_tunnel::{self, ServerTunnelSettings};
use crate::tls::signer::{AgentLink, AgentSigningKey};

/// Arguments of `keyward server-tunnel`.
#[derive(Debug, Args)]
pub struct ServerTunnelArgs {
    /// Key whose certificate and signatures authenticate the server.
    #[arg(long)]
    key: KeyId,
    /// Where TLS clients connect, `ADDR:PORT` (e.g. `0.0.0.0:8002`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The plain-text server, a loopback `ADDR:PORT` (e.g. `127.0.0.1:18002`).
    #[arg(long, value_name = "ADDR:PORT")]
    upstream: SocketAddr,
    /// The root CA client certificates must chain to (PEM, e.g. the kit's rootCA.pem).
    #[arg(long, value_name = "FILE", required_unless_present = "no_client_auth")]
    ca: Option<PathBuf>,
    /// Accept clients without a certificate (NVFlare's `tls` connection security; `mtls`
    /// needs client certificates).
    #[arg(long, conflicts_with = "ca")]
    no_client_auth: bool,
    /// Only client certificates with one of these subject CNs (repeatable).
    #[arg(long, value_name = "CN", requires = "ca")]
    allow_client_cn: Vec<String>,
    /// Server certificate chain, leaf first (PEM). Default: the key's installed certificate.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// ALPN protocols to accept, in order of preference (repeatable). Default: `h2`
    /// (gRPC), then `http/1.1` (NVFlare's HTTP/WebSocket driver).
    #[arg(long, value_name = "PROTOCOL")]
    alpn: Vec<String>,
    /// Close a connection after this long without a byte either way.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Limit for the TLS handshake and for the TCP connect to the upstream, each.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Agent socket (default: from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs the server tunnel until a termination signal.
///
/// # Errors
/// Bad arguments, unreadable certificates, the agent unreachable or without the key, a
/// certificate that is not the key's, or an address that cannot be bound.
pub fn run(socket: PathBuf, args: ServerTunnelArgs) -> Result<()> {
    super::serve::init_logging();
    if !args.upstream.ip().is_loopback() {
        bail!(
            "--upstream {} is not a loopback address: the tunnel forwards plain text, which must not leave this host",
            args.upstream
        );
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let link = Arc::new(AgentLink::new(socket.clone(), args.handshake_timeout));
    let key = AgentSigningKey::open(link, args.key.clone())
        .with_context(|| format!("asking the agent at `{}` for key `{}`", socket.display(), args.key))?;
    let chain = certificate_chain(&key, args.cert.as_deref(), &args.key)?;
    let algorithm = key.algorithm_kind();
    let certified = key
        .into_certified_key(chain)
        .with_context(|| format!("the server certificate does not belong to key `{}`", args.key))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &args.ca {
        Some(ca) => {
            let roots = Arc::new(root_store(ca)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    let alpn = if args.alpn.is_empty() { vec!["h2".to_owned(), "http/1.1".to_owned()] } else { args.alpn.clone() };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Every connection is a full handshake: signed (and audited) by the agent, and its client
    // certificate verified now, not at some earlier connection's time.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let settings = Arc::new(ServerTunnelSettings {
        upstream: args.upstream,
        handshake_timeout: args.handshake_timeout,
        connect_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        allowed_client_names: (!args.allow_client_cn.is_empty()).then(|| args.allow_client_cn.clone()),
    });

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("keyward-server-tunnel").build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        let shutdown = super::serve::cancel_on_signal()?;
        tracing::info!(
            listen = %listener.local_addr()?,
            upstream = %args.upstream,
            key = %args.key,
            algorithm = %algorithm,
            client_auth = if args.ca.is_some() { "required" } else { "none" },
            alpn = %alpn.join(","),
            "keyward server tunnel listening"
        );
        server_tunnel::run(listener, acceptor, settings, shutdown).await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
