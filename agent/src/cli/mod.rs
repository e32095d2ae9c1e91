//! The command line: argument definitions, dispatch, and exit codes.
//!
//! Key management (`init`, `key`, `csr`, `cert`) talks to the token directly with the PIN
//! from the config's PIN file — it works with or without a running agent, since a PKCS#11
//! token serves several applications at once. `serve` is the agent; `status`, `sign` and
//! `decrypt` are clients of a running agent, and so is `tunnel`, which signs TLS handshakes
//! through it.

mod agent_ops;
mod attest;
mod audit;
mod cert;
mod check;
mod check_unit;
mod init;
mod keys;
mod nvflare;
mod nvflare_kit;
mod nvflare_plugin;
mod nvflare_request;
mod ready;
mod serve;
mod server_tunnel;
mod tunnel;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyward_core::{KeyAlgorithm, KeyId, StoreError};

use crate::config::Config;
use keyward_client::ClientError;

/// Exit codes.
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap).
    pub const USAGE: u8 = 2;
    /// The agent could not be reached.
    pub const AGENT_UNREACHABLE: u8 = 3;
    /// The agent or the token refused the operation.
    pub const REFUSED: u8 = 4;
    /// A key with that name exists; nothing was changed.
    pub const KEY_EXISTS: u8 = 5;
    /// The PIN was rejected or is locked.
    pub const PIN: u8 = 6;
}

/// keyward: keeps an NVFlare site's private key inside a PKCS#11 token and serves it over a
/// local socket.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, propagate_version = true)]
#[command(about = "Keeps an NVFlare site's private key inside a PKCS#11 token and serves it over a local socket")]
#[command(
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 agent unreachable, 4 refused, 5 key exists, 6 PIN rejected.\nConfig: --config, else $KEYWARD_CONFIG, else /etc/keyward/keyward.toml."
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new config for a backend (never overwrites one).
    Init(init::InitArgs),
    /// Manage keys in the token.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Make a PKCS#10 certificate request signed inside the token.
    Csr {
        /// Key name.
        name: KeyId,
        /// Subject, e.g. "CN=site-1,O=hospital-a" (CN, O, OU, L, ST, C).
        #[arg(long)]
        subject: String,
        /// Write the CSR here (PEM) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Manage the certificates of keys.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// NVFlare startup kits: move a site's key into the token.
    #[command(subcommand)]
    Nvflare(nvflare::NvflareCommand),
    /// TPM key attestation: evidence at the site, checked by the admin before a certificate
    /// is issued.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check the site: config, token and PIN (without burning a try), keys, certificates,
    /// expiry and key age, agent, audit log, plug-in. Exit 0 unless a check failed.
    Check(check::CheckArgs),
    /// Run the agent.
    Serve,
    /// Ask the running agent for its health and counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Agent socket (default: from the config).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Sign a message through the agent.
    Sign(agent_ops::SignArgs),
    /// Decrypt an RSA-OAEP-SHA-256 ciphertext through the agent.
    Decrypt(agent_ops::DecryptArgs),
    /// Forward local plain TCP connections to a TLS server, authenticated with a key the
    /// agent holds (mutual TLS).
    Tunnel(tunnel::TunnelArgs),
    /// Terminate TLS for a server whose key the agent holds: clients' TLS (client
    /// certificates verified) in, plain text to the server on loopback out.
    ServerTunnel(server_tunnel::ServerTunnelArgs),
}

/// Parses arguments, runs the command, prints errors with their causes.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = Config::locate(cli.config.as_deref());
    let load = || Config::load(&config_path);
    match cli.command {
        Command::Init(args) => init::run(&config_path, args),
        Command::Key(cmd) => keys::run(&load()?, cmd),
        Command::Csr { name, subject, out } => cert::csr(&load()?, &name, &subject, out.as_deref()),
        Command::Cert(cmd) => cert::run(&load()?, cmd),
        Command::Nvflare(cmd) => nvflare::run(&config_path, &load()?, cmd),
        Command::Attest(cmd) => attest::run(load, cmd),
        Command::Audit(cmd) => audit::run(&config_path, cmd),
        Command::Check(args) => check::run(&config_path, args),
        Command::Serve => serve::run(load()?, &config_path),
        Command::Status { json, socket } => agent_ops::status(socket_or_config(socket, &config_path)?, json),
        Command::Sign(args) => {
            let socket = socket_or_config(args.io.socket.clone(), &config_path)?;
            agent_ops::sign(socket, args)
        }
        Command::Decrypt(args) => {
            let socket = socket_or_config(args.io.socket.clone(), &config_path)?;
            agent_ops::decrypt(socket, args)
        }
        Command::Tunnel(args) => {
            let socket = socket_or_config(args.socket.clone(), &config_path)?;
            tunnel::run(socket, args)
        }
        Command::ServerTunnel(args) => {
            let socket = socket_or_config(args.socket.clone(), &config_path)?;
            server_tunnel::run(socket, args)
        }
    }
}

fn socket_or_config(flag: Option<PathBuf>, config_path: &std::path::Path) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) => Ok(p),
        None => Ok(Config::load(config_path)?.socket),
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return match s {
                StoreError::KeyExists { .. } => exit::KEY_EXISTS,
                StoreError::PinIncorrect { .. } | StoreError::PinLocked { .. } => exit::PIN,
                _ => exit::REFUSED,
            };
        }
        if cause.downcast_ref::<keyward_tpm::attest::AttestError>().is_some() {
            return exit::REFUSED;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Connect { .. } => exit::AGENT_UNREACHABLE,
                ClientError::Agent { code, .. } => match code.as_str() {
                    "pin_incorrect" | "pin_locked" => exit::PIN,
                    "key_exists" => exit::KEY_EXISTS,
                    _ => exit::REFUSED,
                },
                _ => exit::FAILURE,
            };
        }
    }
    exit::FAILURE
}

/// Parses an algorithm name for clap.
fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse()
}
