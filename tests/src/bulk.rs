//! The client side of bulk-throughput benchmarks: push `n` bytes over one connection to a
//! [`TlsSink`](crate::TlsSink), either as the TLS client itself (in-process rustls, Python's
//! `ssl` module, or `openssl s_client` fed from a pipe) or in the clear to a local TLS hop (`stunnel4`,
//! `keyward tunnel`), and end the sending side so the sink sees the end of the stream.
//! The sink times the transfer; these functions only move the bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;

/// Size of each write.
pub const CHUNK: usize = 64 * 1024;

/// A chunk of pseudo-random bytes (TLS 1.3 does not compress, but zeros look suspicious).
pub fn chunk() -> Vec<u8> {
    (0..CHUNK).map(|_| rand::random::<u8>()).collect()
}

fn push(w: &mut impl Write, n: u64, chunk: &[u8]) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let len = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        w.write_all(&chunk[..len])?;
        left -= len as u64;
    }
    Ok(())
}

/// This process is the TLS client (rustls): `n` bytes, then close_notify.
pub fn push_rustls(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    server_name: &str,
    n: u64,
    chunk: &[u8],
) -> Result<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).context("connect to the sink")?;
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(server_name.to_owned())?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    push(&mut tls, n, chunk).context("rustls push")?;
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(Shutdown::Write)?;
    drain(&mut tls);
    Ok(())
}

/// `openssl s_client` with the key in a file, its stdin a pipe this process fills with
/// `n` bytes; at the pipe's end s_client closes the session (`-nocommands`, so data
/// starting with `Q` or `R` is not taken for a command).
pub fn push_s_client(
    port: u16,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    n: u64,
    chunk: &[u8],
) -> Result<()> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", server_name])
        .args(["-tls1_3", "-nocommands", "-verify_return_error", "-verify_hostname", server_name])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run openssl s_client")?;
    let mut stdin = child.stdin.take().context("s_client stdin")?;
    let pushed = push(&mut stdin, n, chunk);
    drop(stdin);
    let out = child.wait_with_output()?;
    if let Err(e) = pushed {
        bail!("writing to s_client: {e}: {}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        bail!("s_client failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The Python client behind [`push_python`]: the standard `ssl` module (OpenSSL), 1 MiB
/// `sendall` calls, then TCP half-close; prints the sink's answer.
const PYTHON_CLIENT: &str = r#"
import os, socket, ssl, sys
port, ca, cert, key, name, n = sys.argv[1:7]
left = int(n)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
buf = memoryview(os.urandom(1 << 20))
with socket.create_connection(("127.0.0.1", int(port))) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as s:
        while left:
            k = min(left, len(buf))
            s.sendall(buf[:k])
            left -= k
        socket.socket.shutdown(s, socket.SHUT_WR)  # SSLSocket.shutdown would drop TLS
        print(s.recv(100).decode().strip())
"#;

/// Python's `ssl` module (OpenSSL, the key in a file) as the TLS client: a direct
/// OpenSSL client that writes from memory. Returns the sink's answer.
pub fn push_python(port: u16, server_name: &str, ca: &Path, cert: &Path, key: &Path, n: u64) -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &port.to_string()])
        .args([ca, cert, key])
        .args([server_name, &n.to_string()])
        .output()
        .context("run python3")?;
    if !out.status.success() {
        bail!("python3 ssl client failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Plain TCP to a local TLS hop on `port`: `n` bytes, then half-close; returns the
/// sink's answer as relayed back (`received N`, or empty if the hop drops it).
pub fn push_plain(port: u16, n: u64, chunk: &[u8]) -> Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).context("connect to the hop")?;
    push(&mut tcp, n, chunk).context("plain push")?;
    tcp.shutdown(Shutdown::Write)?;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).trim().to_owned())
}

/// Reads the answer to the end, ignoring how the peer closes.
fn drain(r: &mut impl Read) {
    let mut sink = [0u8; 256];
    while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
}
