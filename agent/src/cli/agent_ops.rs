//! `keyward status | sign | decrypt`: clients of the running agent, for scripts and
//! debugging. Inputs are bounded; binary outputs go to stdout or `--out` (`output.rs`: written
//! through devices and FIFOs, files replaced atomically, plaintext 0600), optionally base64.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use keyward_core::KeyId;
use keyward_protocol::{Operation, Reply};

use crate::output::Contents;
use keyward_client::AgentClient;

/// Largest input `sign` and `decrypt` read (the agent's default frame limit is 1 MiB).
const MAX_INPUT_BYTES: u64 = 512 * 1024;

/// Input, output and socket options shared by `sign` and `decrypt`.
#[derive(Debug, Args)]
pub struct IoArgs {
    /// Input file (default: stdin).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Output (default: stdout; `-` is stdout too). A device or FIFO is written through, an
    /// existing file replaced atomically, a symbolic link refused; plaintext files are 0600.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write base64 instead of raw bytes.
    #[arg(long)]
    base64: bool,
    /// Agent socket (default: from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Arguments of `keyward sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Key name.
    name: KeyId,
    /// nvflare, tls (the key's TLS 1.3 scheme), or tls-<scheme> (see docs/protocol.md).
    #[arg(long)]
    profile: String,
    #[command(flatten)]
    pub io: IoArgs,
}

/// Arguments of `keyward decrypt`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Key name.
    name: KeyId,
    #[command(flatten)]
    pub io: IoArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn call(socket: &Path, op: Operation) -> Result<Reply> {
    runtime()?.block_on(async {
        let mut client = AgentClient::connect(socket).await?;
        Ok(client.call(op).await?)
    })
}

fn read_input(path: Option<&Path>) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    match path {
        Some(p) => std::fs::File::open(p)
            .with_context(|| format!("opening `{}`", p.display()))?
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut data)?,
        None => std::io::stdin().take(MAX_INPUT_BYTES + 1).read_to_end(&mut data)?,
    };
    if data.len() as u64 > MAX_INPUT_BYTES {
        bail!("input is larger than {MAX_INPUT_BYTES} bytes");
    }
    Ok(data)
}

fn write_output(path: Option<&Path>, bytes: &[u8], base64: bool, contents: Contents) -> Result<()> {
    let encoded;
    let bytes = if base64 {
        encoded = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(bytes));
        encoded.as_bytes()
    } else {
        bytes
    };
    match path {
        Some(p) => {
            crate::output::write_output(p, bytes, contents).with_context(|| format!("writing `{}`", p.display()))
        }
        None => Ok(std::io::stdout().write_all(bytes)?),
    }
}

fn print_keys(keys: &[keyward_protocol::KeyStatus]) {
    println!("keys:        {}", keys.len());
    let now = std::time::SystemTime::now();
    for k in keys {
        let certificate = match k.certificate_not_after.and_then(|t| u64::try_from(t).ok()) {
            None => "no certificate".to_owned(),
            Some(t) => {
                let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
                let when = humantime::format_rfc3339_seconds(expiry);
                match expiry.duration_since(now) {
                    Ok(left) => format!("certificate expires {when} (in {} days)", left.as_secs() / 86_400),
                    Err(_) => format!("certificate EXPIRED {when}"),
                }
            }
        };
        let open = if k.empty_auth { format!("; {}", crate::cli::keys::OPEN_KEY) } else { String::new() };
        let renewal = match k.renewal.as_deref() {
            Some("renewal_due") => "; RENEWAL DUE (keyward nvflare request --renew, or rotate)",
            Some("expired") => "; EXPIRED: renew now",
            Some("not_yet_valid") => "; not valid yet",
            _ => "",
        };
        let age = match (k.key_age_seconds, k.key_age_exceeded) {
            (Some(age), true) => format!("; key {} days old, past max_key_age: rotate it", age / 86_400),
            (Some(age), false) => format!("; key {} days old", age / 86_400),
            (None, _) => String::new(),
        };
        println!("  {:<20} {:<12} {certificate}{renewal}{age}{open}", k.key.as_str(), k.algorithm.to_string());
    }
}

fn print_latency(latency: &[keyward_protocol::OpLatency]) {
    if latency.is_empty() {
        return;
    }
    println!("latency:     operation           count      p50       p99");
    for l in latency {
        println!("  {:<28} {:>7} {:>8} {:>9}", l.op, l.count, micros(l.p50_us), micros(l.p99_us));
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{} ms", us / 1_000)
    } else {
        format!("{:.2} ms", us as f64 / 1_000.0)
    }
}

/// `keyward status`.
///
/// # Errors
/// When the agent is unreachable or refuses.
pub fn status(socket: PathBuf, json: bool) -> Result<()> {
    let Reply::Status(s) = call(&socket, Operation::Status)? else { bail!("unexpected reply to status") };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("agent:       running (socket {})", socket.display());
        println!("backend:     {} — {}", s.backend, s.device);
        match &s.backend_error {
            Some(error) => println!("health:      {} ({error})", s.backend_health),
            None => println!("health:      {}", s.backend_health),
        }
        if s.backend_recovery_attempts > 0 {
            println!("recoveries:  {} attempts", s.backend_recovery_attempts);
        }
        println!("uptime:      {} s", s.uptime_seconds);
        println!("workers:     {}", s.workers);
        println!("connections: {}", s.connections);
        println!("requests:    {} ok, {} failed", s.requests_ok, s.requests_failed);
        println!("operations:  {} signatures, {} decryptions", s.signatures, s.decryptions);
        print_keys(&s.keys);
        print_latency(&s.latency);
    }
    if s.backend_health != "ok" {
        bail!("backend is {}", s.backend_health);
    }
    Ok(())
}

/// `keyward sign`.
///
/// # Errors
/// When the agent is unreachable or refuses.
pub fn sign(socket: PathBuf, args: SignArgs) -> Result<()> {
    let data = read_input(args.io.input.as_deref())?;
    let reply = call(&socket, Operation::Sign { key: args.name, profile: args.profile, data })?;
    let Reply::Signature { signature, .. } = reply else { bail!("unexpected reply to sign") };
    write_output(args.io.out.as_deref(), &signature, args.io.base64, Contents::Public)
}

/// `keyward key retire`.
///
/// # Errors
/// When the agent is unreachable or refuses (the successor is not proven, the caller is not
/// root or the agent's user, the audit record could not be written).
pub fn retire(socket: &Path, key: KeyId, replaced_by: KeyId) -> Result<()> {
    let reply = call(socket, Operation::RetireKey { key: key.clone(), replaced_by })
        .with_context(|| format!("retiring `{key}`"))?;
    let Reply::KeyRetired { key, replaced_by, audit_seq } = reply else { bail!("unexpected reply to retire_key") };
    println!(
        "retired `{key}` (destroyed in the token; audit record seq {audit_seq}); `{replaced_by}` serves in its place"
    );
    Ok(())
}

/// `keyward decrypt`.
///
/// # Errors
/// When the agent is unreachable or refuses.
pub fn decrypt(socket: PathBuf, args: DecryptArgs) -> Result<()> {
    let data = read_input(args.io.input.as_deref())?;
    let reply = call(&socket, Operation::Decrypt { key: args.name, data })?;
    let Reply::Plaintext { plaintext } = reply else { bail!("unexpected reply to decrypt") };
    let plaintext = zeroize::Zeroizing::new(plaintext);
    write_output(args.io.out.as_deref(), &plaintext, args.io.base64, Contents::Secret)
}
