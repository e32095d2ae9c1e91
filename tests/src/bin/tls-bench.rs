//! `tls-bench`: mutual-TLS handshakes per second and connection latency through
//! `keyward tunnel` (client key in SoftHSM2, signed by the agent), against the same
//! handshake with the client key in a file, for RSA-2048 and P-256 client keys:
//!
//! - `rustls, key file`: this process is the TLS client (rustls with ring, as in the
//!   tunnel), no tunnel hop: the floor;
//! - `stunnel, key file`: `stunnel4` in client mode (OpenSSL), the same shape as the tunnel:
//!   a plain loopback client → stunnel → TLS;
//! - `keyward tunnel`: the real `keyward tunnel` (release build) and `keyward serve`: plain
//!   loopback client → tunnel → TLS, the `CertificateVerify` signed on the token.
//!
//! One connection = TCP connect, full handshake (session resumption is off on the server:
//! `-no_cache -no_ticket`, so every connection signs), `GET /`, the reply read to the end.
//! The upstream is one `openssl s_server -www -Verify 1 -verify_return_error` (RSA-2048
//! server certificate, TLS 1.3) serving one connection at a time, so there is one client.
//! The paths of a case run in interleaved rounds and a row shows the median round.
//!
//! Then bulk throughput of one long connection (TLS 1.3, P-256 client key): each path
//! pushes `--bulk-mib` MiB to an in-process rustls sink ([`TlsSink`]), which times first
//! byte to end of stream — `rustls` (this process as the client: the sink's ceiling),
//! Python's `ssl` module with the key in a file (the direct OpenSSL path, the reference;
//! needs `python3`), `openssl s_client` fed from a pipe (slower than stunnel4, so shown but
//! not the reference), `stunnel4` and `keyward tunnel` — interleaved rounds, median shown.
//!
//! Then the server side (issue 13): handshakes/s a TLS server takes with its key in a file
//! (`openssl s_server -no_cache -no_ticket`, the server's own TLS) against the same server
//! key in SoftHSM behind `keyward server-tunnel` (client certificates required, plain text to
//! a loopback HTTP responder), RSA-2048 and P-256 server keys, one rustls client with a file
//! client key, interleaved rounds.
//!
//! Usage: `cargo run --release -p keyward-tests --bin tls-bench -- [--quick] [--seconds N] [--bulk-mib N]`
//! (stunnel4 from `scripts/install-packages.sh`; without it that path is skipped and
//! the report says so). Prints Markdown for `docs/benchmarks.md`; never asserts a speed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyward_tests::report::{command_output, cpu_model, percentile};
use keyward_tests::tls::{free_port, wait_until};
use keyward_tests::tools::{assert_success, openssl, stop_child};
use keyward_tests::{bulk, AgentProcess, OpensslServer, Site, TestCa, TlsSink, TunnelProcess};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
struct Case {
    key: &'static str,
    algorithm: &'static str,
    title: &'static str,
}

const CASES: [Case; 2] = [
    Case { key: "rsa", algorithm: "rsa-2048", title: "RSA-2048" },
    Case { key: "ec", algorithm: "p-256", title: "P-256" },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Rustls,
    Stunnel,
    Tunnel,
}

impl Path3 {
    fn title(self) -> &'static str {
        match self {
            Self::Rustls => "rustls, key file (no hop)",
            Self::Stunnel => "stunnel4, key file",
            Self::Tunnel => "keyward tunnel, key in SoftHSM",
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    conns: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.conns as f64 / self.wall.as_secs_f64()
    }
}

fn main() -> Result<()> {
    let mut seconds = 6.0;
    let mut bulk_mib: u64 = 512;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => (seconds, bulk_mib) = (0.6, 64),
            "--bulk-mib" => {
                let v = iter.next().context("--bulk-mib needs a number")?;
                bulk_mib = v.parse().with_context(|| format!("--bulk-mib: `{v}` is not a whole number"))?;
                if !(1..=65536).contains(&bulk_mib) {
                    bail!("--bulk-mib must be in 1..=65536");
                }
            }
            "--seconds" => {
                let v = iter.next().context("--seconds needs a number")?;
                seconds = v.parse().with_context(|| format!("--seconds: `{v}` is not a number"))?;
                if !(seconds > 0.0 && seconds <= 600.0) {
                    bail!("--seconds must be in (0, 600]");
                }
            }
            "-h" | "--help" => {
                println!(
                    "tls-bench [--quick] [--seconds N] [--bulk-mib N]\n\n\
                     Mutual-TLS handshakes/s and latency: rustls and stunnel4 with the client key in a\n\
                     file, keyward tunnel with the key in SoftHSM2; RSA-2048 and P-256 client keys.\n\
                     Then MB/s of one long connection along rustls, s_client, stunnel4 and the tunnel.\n\n\
                     --quick       about 0.6 s per case and path, 64 MiB per bulk connection\n\
                     --seconds N   seconds per case and path, split into 3 rounds (default 6)\n\
                     --bulk-mib N  MiB pushed per bulk connection and round (default 512)"
                );
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    run(Duration::from_secs_f64(seconds), bulk_mib << 20, &args)
}

/// The client-side material of one case.
struct Client {
    case: Case,
    rustls: Arc<rustls::ClientConfig>,
    key_file: PathBuf,
    cert_file: PathBuf,
    tunnel: TunnelProcess,
    stunnel: Option<Stunnel>,
}

fn run(duration: Duration, bulk_bytes: u64, args: &[String]) -> Result<()> {
    let date = command_output(&["date", "-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    eprintln!("tls-bench: creating a SoftHSM2 token, keys and a test PKI");
    let site = Site::new();
    let dir = site.path("");
    let ca = TestCa::new(&dir, "root");
    let (server_key, server_cert) =
        ca.leaf("/CN=server1", "server1", "subjectAltName=DNS:server1\nextendedKeyUsage=serverAuth\n");
    let client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n";
    for case in CASES {
        site.generate(case.key, case.algorithm);
        let csr = dir.join(format!("{}.csr", case.key));
        let crt = dir.join(format!("{}-token.crt", case.key));
        let subject = format!("CN=site-{},O=bench", case.key);
        site.keyward_ok(&["csr", case.key, "--subject", &subject, "--out", s(&csr)]);
        ca.issue(&csr, &crt, client_ext);
        site.keyward_ok(&["cert", "install", case.key, s(&crt)]);
    }
    let agent = AgentProcess::start(&site);
    let port = free_port();
    let extra = ["-no_cache", "-no_ticket", "-quiet"];
    let _server = OpensslServer::start(&dir, port, &server_cert, &server_key, &ca.cert, &extra);
    let upstream = format!("127.0.0.1:{port}");
    let have_stunnel = Command::new("stunnel4").arg("-version").output().is_ok();

    let mut clients = Vec::new();
    for case in CASES {
        let (key_file, cert_file) = file_key_client(&ca, &dir, case)?;
        let rustls = rustls_config(&ca.cert, &cert_file, &key_file)?;
        #[rustfmt::skip]
        let tunnel = TunnelProcess::start(&site, &[
            "--key", case.key, "--upstream", &upstream, "--server-name", "server1", "--ca", s(&ca.cert),
            "--socket", s(agent.socket()),
        ]);
        let stunnel = if have_stunnel {
            Some(Stunnel::start(&dir, case.key, &upstream, &cert_file, &key_file, &ca.cert)?)
        } else {
            None
        };
        clients.push(Client { case, rustls, key_file, cert_file, tunnel, stunnel });
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut paths = vec![Path3::Rustls];
    if have_stunnel {
        paths.push(Path3::Stunnel);
    }
    paths.push(Path3::Tunnel);
    let round = duration / ROUNDS as u32;
    let mut rows = Vec::new();
    for client in &clients {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
        for r in 1..=ROUNDS {
            eprintln!("tls-bench: {} · round {r}/{ROUNDS}", client.case.title);
            for (path, samples) in paths.iter().zip(&mut samples) {
                samples.push(measure(round, || connect_once(*path, client, port))?);
            }
        }
        let direct: Vec<f64> = samples[0].iter().map(Sample::rate).collect();
        for (path, mut samples) in paths.iter().zip(samples) {
            let mut ratios: Vec<f64> = samples.iter().zip(&direct).map(|(s, d)| s.rate() / d).collect();
            ratios.sort_by(f64::total_cmp);
            samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            rows.push((
                client.case,
                *path,
                samples[ROUNDS / 2],
                (samples[0].rate(), samples[ROUNDS - 1].rate()),
                ratios[ROUNDS / 2],
            ));
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let server_rows = server_side(&site, &agent, &ca, &clients[0].rustls, round)?;

    let bulk_client = clients.iter().find(|c| c.case.key == "ec").context("no P-256 case")?;
    let bulk = BulkRun::start(&site, &agent, &ca.cert, (&server_cert, &server_key), bulk_client, have_stunnel)?;
    let (bulk_rows, bulk_session) = bulk.measure(bulk_bytes)?;
    let load_bulk = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    drop(bulk);
    let signs = site.audit_records().iter().filter(|r| r["op"] == "sign").count();
    drop(clients);
    drop(agent);

    println!("- date (start): {date}");
    println!(
        "- command: `cargo run --release -p keyward-tests --bin tls-bench --{}`",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    println!(
        "- machine: {} × {}, kernel {}",
        command_output(&["nproc"]),
        cpu_model(),
        command_output(&["uname", "-r"])
    );
    println!(
        "- {}; {}",
        command_output(&["openssl", "version"]),
        if have_stunnel { stunnel_version() } else { "stunnel4 not installed: path skipped".into() }
    );
    println!("- load average before / after: `{}` / `{}`", load_before.trim(), load_after.trim());
    println!("- agent `sign` records during the run: {signs}");
    println!();
    println!("| client key | path | handshakes/s | rounds min–max | p50 ms | p99 ms | vs rustls |");
    println!("|---|---|--:|--:|--:|--:|--:|");
    for (case, path, median, range, ratio) in rows {
        println!(
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.1}% |",
            case.title,
            path.title(),
            median.rate(),
            range.0,
            range.1,
            ms(median.p50),
            ms(median.p99),
            ratio * 100.0
        );
    }
    println!();
    println!(
        "Server side: handshakes/s a server takes (rustls client with a file client key, client certificate required)"
    );
    println!();
    println!("| server key | path | handshakes/s | rounds min–max | p50 ms | p99 ms | vs key file |");
    println!("|---|---|--:|--:|--:|--:|--:|");
    for (case, path, median, range, ratio) in server_rows {
        println!(
            "| {} | {path} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.1}% |",
            case.title,
            median.rate(),
            range.0,
            range.1,
            ms(median.p50),
            ms(median.p99),
            ratio * 100.0
        );
    }
    println!();
    println!(
        "Bulk, one connection, {} MiB per path and round, {ROUNDS} rounds (load average after: `{}`); \
         sink session: {bulk_session}",
        bulk_bytes >> 20,
        load_bulk.trim()
    );
    println!();
    println!("| path | MB/s | rounds min–max | vs Python ssl (direct) |");
    println!("|---|--:|--:|--:|");
    for (path, median, range, ratio) in bulk_rows {
        println!("| {} | {median:.0} | {:.0}–{:.0} | {:.1}% |", path.title(), range.0, range.1, ratio * 100.0);
    }
    Ok(())
}

/// One row of the server-side table: case, path title, median round, range, ratio.
type ServerRow = (Case, &'static str, Sample, (f64, f64), f64);

/// The server side: for each case, `openssl s_server` with the server key in a file against
/// `keyward server-tunnel` with it in SoftHSM (in front of [`plain_responder`]).
fn server_side(
    site: &Site,
    agent: &AgentProcess,
    ca: &TestCa,
    client: &Arc<rustls::ClientConfig>,
    round: Duration,
) -> Result<Vec<ServerRow>> {
    let dir = site.path("");
    let responder = plain_responder()?;
    let mut rows = Vec::new();
    for case in CASES {
        let token_key = format!("srv-{}", case.key);
        site.generate(&token_key, case.algorithm);
        let (csr, crt) = (dir.join(format!("{token_key}.csr")), dir.join(format!("{token_key}.crt")));
        site.keyward_ok(&["csr", &token_key, "--subject", "CN=server1", "--out", s(&csr)]);
        ca.issue(&csr, &crt, "subjectAltName=DNS:server1\nextendedKeyUsage=serverAuth\n");
        site.keyward_ok(&["cert", "install", "--server", &token_key, s(&crt)]);
        let (file_key, file_cert) = server_file_key(ca, &dir, case)?;
        let file_port = free_port();
        let _server = OpensslServer::start(
            &dir,
            file_port,
            &file_cert,
            &file_key,
            &ca.cert,
            &["-no_cache", "-no_ticket", "-quiet"],
        );
        #[rustfmt::skip]
        let tunnel = TunnelProcess::start_server(site, &[
            "--key", &token_key, "--upstream", &format!("127.0.0.1:{responder}"), "--ca", s(&ca.cert),
            "--socket", s(agent.socket()),
        ]);
        let ports = [("openssl s_server, key file", file_port), ("keyward server-tunnel, key in SoftHSM", tunnel.port)];
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); ports.len()];
        for r in 1..=ROUNDS {
            eprintln!("tls-bench: server side, {} · round {r}/{ROUNDS}", case.title);
            for ((_, port), samples) in ports.iter().zip(&mut samples) {
                samples.push(measure(round, || tls_get(client, *port))?);
            }
        }
        let direct: Vec<f64> = samples[0].iter().map(Sample::rate).collect();
        for ((title, _), mut samples) in ports.into_iter().zip(samples) {
            let mut ratios: Vec<f64> = samples.iter().zip(&direct).map(|(s, d)| s.rate() / d).collect();
            ratios.sort_by(f64::total_cmp);
            samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let range = (samples[0].rate(), samples[ROUNDS - 1].rate());
            rows.push((case, title, samples[ROUNDS / 2], range, ratios[ROUNDS / 2]));
        }
    }
    Ok(rows)
}

/// A server key of the case's algorithm in a file, with a `CN=server1` certificate from `ca`.
fn server_file_key(ca: &TestCa, dir: &Path, case: Case) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join(format!("server-{}-file.key", case.key));
    let csr = dir.join(format!("server-{}-file.csr", case.key));
    let crt = dir.join(format!("server-{}-file.crt", case.key));
    let keygen = if case.key == "rsa" { "rsa_keygen_bits:2048" } else { "ec_paramgen_curve:P-256" };
    let algorithm = if case.key == "rsa" { "RSA" } else { "EC" };
    assert_success(&openssl(&["genpkey", "-algorithm", algorithm, "-pkeyopt", keygen, "-out", s(&key)]), "server key");
    assert_success(&openssl(&["req", "-new", "-key", s(&key), "-subj", "/CN=server1", "-out", s(&csr)]), "server csr");
    ca.issue(&csr, &crt, "subjectAltName=DNS:server1\nextendedKeyUsage=serverAuth\n");
    Ok((key, crt))
}

/// A plain-text responder on a free loopback port (a thread of this process): reads a
/// request up to its blank line, answers `HTTP/1.0 200 ok`, closes. Returns the port.
fn plain_responder() -> Result<u16> {
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.0 200 ok\r\n\r\nhello\n");
        }
    });
    Ok(port)
}

/// One TLS connection from this process to `port` as `server1`: handshake, `GET /`, the
/// reply to the end.
fn tls_get(client: &Arc<rustls::ClientConfig>, port: u16) -> Result<Vec<u8>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(Arc::clone(client), ServerName::try_from("server1")?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(REQUEST)?;
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    if !reply.starts_with(b"HTTP/1.0 200 ok") {
        bail!("port {port}: unexpected reply {:?}", String::from_utf8_lossy(&reply[..reply.len().min(200)]));
    }
    Ok(reply)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A key file of the case's algorithm and a client certificate for it from `ca`.
fn file_key_client(ca: &TestCa, dir: &Path, case: Case) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join(format!("{}-file.key", case.key));
    let csr = dir.join(format!("{}-file.csr", case.key));
    let crt = dir.join(format!("{}-file.crt", case.key));
    let keygen: &[&str] = if case.key == "rsa" {
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]
    } else {
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
    };
    let mut argv = keygen.to_vec();
    argv.push(s(&key));
    assert_success(&openssl(&argv), "client key");
    let subject = format!("/CN=file-{}/O=bench", case.key);
    assert_success(&openssl(&["req", "-new", "-key", s(&key), "-subj", &subject, "-out", s(&csr)]), "client csr");
    ca.issue(&csr, &crt, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
    Ok((key, crt))
}

fn rustls_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).context("CA file")? {
        roots.add(c.context("CA certificate")?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).context("cert file")?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("key file")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One connection along `path`; returns the reply.
fn connect_once(path: Path3, client: &Client, upstream_port: u16) -> Result<Vec<u8>> {
    let mut reply = Vec::new();
    match path {
        Path3::Rustls => {
            let tcp = TcpStream::connect(("127.0.0.1", upstream_port))?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("server1")?;
            let conn = rustls::ClientConnection::new(Arc::clone(&client.rustls), name)?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(REQUEST)?;
            match tls.read_to_end(&mut reply) {
                Ok(_) => {}
                // s_server may close without close_notify after the page.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Path3::Stunnel | Path3::Tunnel => {
            let port = match path {
                Path3::Stunnel => client.stunnel.as_ref().context("no stunnel")?.port,
                _ => client.tunnel.port,
            };
            let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
            tcp.set_nodelay(true)?;
            tcp.write_all(REQUEST)?;
            tcp.read_to_end(&mut reply)?;
        }
    }
    if !reply.starts_with(b"HTTP/1.0 200 ok") {
        bail!("{}: unexpected reply {:?}", path.title(), String::from_utf8_lossy(&reply[..reply.len().min(200)]));
    }
    Ok(reply)
}

/// Runs `once` in a loop for `duration` (after 3 warm-up connections).
fn measure(duration: Duration, mut once: impl FnMut() -> Result<Vec<u8>>) -> Result<Sample> {
    for _ in 0..3 {
        once()?;
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        once()?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let wall = start.elapsed();
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    Ok(Sample { conns: latencies.len() as u64, wall, p50, p99 })
}

/// `stunnel4` in client mode on a free loopback port, with the key in a file.
struct Stunnel {
    child: Child,
    port: u16,
}

impl Stunnel {
    fn start(dir: &Path, tag: &str, upstream: &str, cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        let port = free_port();
        let conf = dir.join(format!("stunnel-{tag}.conf"));
        let text = format!(
            "foreground = yes\npid =\ndebug = warning\n\n[bench]\nclient = yes\naccept = 127.0.0.1:{port}\n\
             connect = {upstream}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = server1\n\
             sni = server1\n",
            s(cert),
            s(key),
            s(ca)
        );
        std::fs::write(&conf, text)?;
        let log = std::fs::File::create(dir.join(format!("stunnel-{tag}.log")))?;
        let child =
            Command::new("stunnel4").arg(&conf).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        wait_until(
            Duration::from_secs(10),
            || format!("stunnel not listening on {port}"),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Ok(Self { child, port })
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn stunnel_version() -> String {
    let out = Command::new("stunnel4").arg("-version").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr).lines().find(|l| l.starts_with("stunnel ")).map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "stunnel4 ?".into())
}

/// The bulk paths; `Python` (index [`DIRECT`]) is the reference, "the direct OpenSSL path".
#[derive(Clone, Copy, PartialEq, Eq)]
enum BulkPath {
    Rustls,
    Python,
    SClient,
    Stunnel,
    Tunnel,
}

impl BulkPath {
    fn title(self) -> &'static str {
        match self {
            Self::Rustls => "rustls in this process, key file (sink ceiling)",
            Self::Python => "Python ssl (OpenSSL), key file (direct)",
            Self::SClient => "openssl s_client, key file, stdin a pipe",
            Self::Stunnel => "stunnel4, key file",
            Self::Tunnel => "keyward tunnel, key in SoftHSM",
        }
    }
}

/// The index of the reference path in [`BulkRun::measure`]'s rows.
const DIRECT: usize = 1;

/// The sink and the hops pointed at it: one of each, for one P-256 client identity.
struct BulkRun<'a> {
    sink: TlsSink,
    client: &'a Client,
    ca: PathBuf,
    tunnel: TunnelProcess,
    stunnel: Option<Stunnel>,
}

/// One bulk row: path, median MB/s, (min, max), median ratio to s_client.
type BulkRow = (BulkPath, f64, (f64, f64), f64);

impl<'a> BulkRun<'a> {
    fn start(
        site: &Site,
        agent: &AgentProcess,
        ca: &Path,
        (server_cert, server_key): (&Path, &Path),
        client: &'a Client,
        have_stunnel: bool,
    ) -> Result<Self> {
        let sink = TlsSink::start(server_cert, server_key, ca)?;
        let upstream = format!("127.0.0.1:{}", sink.port);
        #[rustfmt::skip]
        let tunnel = TunnelProcess::start(site, &[
            "--key", client.case.key, "--upstream", &upstream, "--server-name", "server1", "--ca", s(ca),
            "--socket", s(agent.socket()),
        ]);
        let stunnel = if have_stunnel {
            Some(Stunnel::start(&site.path(""), "bulk", &upstream, &client.cert_file, &client.key_file, ca)?)
        } else {
            None
        };
        Ok(Self { sink, client, ca: ca.to_owned(), tunnel, stunnel })
    }

    /// Interleaved rounds of `bytes` per path (after a 4 MiB warm-up each); returns the
    /// rows and the sink's view of the session.
    fn measure(&self, bytes: u64) -> Result<(Vec<BulkRow>, String)> {
        let mut paths = vec![BulkPath::Rustls, BulkPath::Python, BulkPath::SClient];
        if self.stunnel.is_some() {
            paths.push(BulkPath::Stunnel);
        }
        paths.push(BulkPath::Tunnel);
        let chunk = bulk::chunk();
        let mut session = String::new();
        for path in &paths {
            self.once(*path, 4 << 20, &chunk)?;
        }
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for r in 1..=ROUNDS {
            eprintln!("tls-bench: bulk · round {r}/{ROUNDS}");
            for (path, rates) in paths.iter().zip(&mut rates) {
                let (rate, seen) = self.once(*path, bytes, &chunk)?;
                rates.push(rate);
                session = seen;
            }
        }
        let direct = rates[DIRECT].clone();
        let mut rows = Vec::new();
        for (path, mut rates) in paths.into_iter().zip(rates) {
            let mut ratios: Vec<f64> = rates.iter().zip(&direct).map(|(r, d)| r / d).collect();
            ratios.sort_by(f64::total_cmp);
            rates.sort_by(f64::total_cmp);
            rows.push((path, rates[ROUNDS / 2], (rates[0], rates[ROUNDS - 1]), ratios[ROUNDS / 2]));
        }
        Ok((rows, session))
    }

    /// Pushes `bytes` along `path`; returns MB/s (10^6 bytes) as the sink timed it.
    fn once(&self, path: BulkPath, bytes: u64, chunk: &[u8]) -> Result<(f64, String)> {
        let c = self.client;
        match path {
            BulkPath::Rustls => bulk::push_rustls(Arc::clone(&c.rustls), self.sink.port, "server1", bytes, chunk)?,
            BulkPath::Python => {
                let answer = bulk::push_python(self.sink.port, "server1", &self.ca, &c.cert_file, &c.key_file, bytes)?;
                check_answer(path, &answer, bytes)?;
            }
            BulkPath::SClient => {
                bulk::push_s_client(self.sink.port, "server1", &self.ca, &c.cert_file, &c.key_file, bytes, chunk)?
            }
            BulkPath::Stunnel | BulkPath::Tunnel => {
                let port = match path {
                    BulkPath::Stunnel => self.stunnel.as_ref().context("no stunnel")?.port,
                    _ => self.tunnel.port,
                };
                check_answer(path, &bulk::push_plain(port, bytes, chunk)?, bytes)?;
            }
        }
        let report = self.sink.next_report(Duration::from_secs(60))?;
        if report.bytes != bytes {
            let why = report.error.unwrap_or_default();
            bail!("{}: the sink got {} bytes of {bytes} {why}", path.title(), report.bytes);
        }
        Ok((bytes as f64 / report.elapsed.as_secs_f64() / 1e6, report.session))
    }
}

/// The sink's `received N` as relayed back to the client.
fn check_answer(path: BulkPath, answer: &str, bytes: u64) -> Result<()> {
    if answer != format!("received {bytes}") {
        bail!("{}: the sink's answer came back as {answer:?}", path.title());
    }
    Ok(())
}
