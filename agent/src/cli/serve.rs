//! `keyward serve`: log in to the token once, open the key store sessions, bind the socket,
//! serve until SIGTERM or SIGINT (SIGHUP reloads key policies and access rules, see
//! `daemon/policy/reload.rs`), then drain: stop accepting, let in-flight requests finish
//! (bounded by `limits.shutdown_grace_ms`), close the sessions, remove the socket. Under
//! systemd it reports `READY=1` once a `list_keys` through its own socket and key store has
//! been answered (`ready.rs`), and `STOPPING=1` at the first termination signal
//! (`notify.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::ready::self_check;
use crate::audit::{AuditLog, AuditSettings};
use crate::certs::CertStore;
use crate::config::Config;
use crate::daemon::{
    bind_metrics, bind_socket, serve, serve_metrics, Agent, Back, Connections, Live, NvflareState, Reloader, Rules,
    Stats,
};
use crate::notify::notify;

/// Logs to stderr, filtered by `KEYWARD_LOG` (default `info`).
pub(super) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// A token cancelled at the first SIGTERM or SIGINT. Call it inside the runtime.
///
/// # Errors
/// When a signal handler cannot be installed.
pub(super) fn cancel_on_signal() -> Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stopper.cancel();
    });
    Ok(shutdown)
}

/// Writes the summaries of refusal floods whose one-second window has closed, so a flood
/// that stops is summarised without waiting for the next record.
async fn flush_suppressed_refusals(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => agent.audit.flush_suppressed(),
        }
    }
}

/// Runs the agent until a termination signal.
///
/// # Errors
/// Start-up failures: PIN, token, socket, audit log.
pub fn run(config: Config, config_path: &Path) -> Result<()> {
    init_logging();
    crate::hygiene::check_not_root(config.agent.allow_root)?;
    crate::hygiene::harden_process();
    let rules = Rules::from_config(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("keyward-io").build()?;
    // The socket first: refusing to replace a live agent must not cost a PIN attempt.
    let (bound, metrics) = runtime.block_on(async {
        let bound = bind_socket(&config.socket, config.access.socket_gid)?;
        let metrics = match &config.metrics {
            Some(m) => Some(bind_metrics(m.listen).await?),
            None => None,
        };
        anyhow::Ok((bound, metrics))
    })?;
    let backend = crate::backends::open(&config)?;
    let (back, back_threads) =
        Back::start(Arc::clone(&backend), config.limits.queue_depth, config.limits.request_timeout())
            .context("opening key store sessions")?;
    let audit_path = config.audit_log();
    let audit = AuditLog::open(AuditSettings::from_config(&config)).context("opening the audit log")?;
    let agent = Arc::new(Agent {
        back,
        certs: CertStore::new(config.cert_dir()),
        audit,
        limits: config.limits.clone(),
        rules: Live::new(rules),
        stats: Stats::default(),
        nvflare: NvflareState::default(),
        connections: Connections::default(),
        started: Instant::now(),
    });

    let result = runtime.block_on(async {
        let shutdown = cancel_on_signal()?;
        let reloader = Reloader::install(config_path, config.clone())?;
        tokio::spawn(reloader.run(Arc::clone(&agent), shutdown.clone()));
        if let Some(listener) = metrics {
            tracing::info!(listen = %listener.local_addr()?, "metrics endpoint on");
            tokio::spawn(serve_metrics(listener, Arc::clone(&agent), shutdown.clone()));
        }
        tokio::spawn(flush_suppressed_refusals(Arc::clone(&agent), shutdown.clone()));
        let stopping = shutdown.clone();
        let stop_notice = tokio::spawn(async move {
            stopping.cancelled().await;
            notify("STOPPING=1");
        });
        // READY=1 only after a request went through the socket and the store (`ready.rs`);
        // a failed self-check stops the agent and fails the start instead.
        let ready = async {
            match self_check(&config.socket, &agent.back).await {
                Ok(keys) => {
                    notify("READY=1");
                    tracing::info!(
                        socket = %config.socket.display(),
                        audit = %audit_path.display(),
                        device = %agent.back.info().device,
                        sessions = agent.back.sessions(),
                        keys,
                        "keyward agent ready"
                    );
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "self-check failed; stopping");
                    shutdown.cancel();
                    Err(e.context("self-check before READY=1 failed"))
                }
            }
        };
        let (checked, ()) = tokio::join!(ready, serve(&bound.listener, Arc::clone(&agent), shutdown.clone()));
        // Sent while draining; awaited so that it is not lost with the runtime.
        let _ = stop_notice.await;
        checked
    });
    drop(bound);
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(agent);
    back_threads.stop();
    drop(backend);
    tracing::info!("keyward agent stopped");
    result
}
