//! Observability with a real agent on SoftHSM: the Prometheus endpoint (`[metrics] listen`)
//! scraped with a plain TCP `GET`, its counts checked against the signatures made, the
//! certificate expiry checked against openssl's reading of the installed certificate (with the
//! seconds left, the renewal policy's verdict and the key's age), the
//! refusals (other methods, other paths, oversized heads, too many connections), no TCP
//! socket at all without `[metrics]`; and `keyward status` showing keys, certificate expiry
//! and latency percentiles.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keyward_client::AgentClient;
use keyward_core::KeyId;
use keyward_protocol::{Operation, Reply};
use keyward_tests::tls::free_port;
use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, Site, TestCa};

/// Sends `request` raw and returns the whole reply (the server closes after one).
fn http(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn scrape(port: u16) -> String {
    let reply = http(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("Content-Type: text/plain; version=0.0.4"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample line `series` (name and labels exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// notAfter of a PEM certificate as Unix seconds, read by openssl and date(1).
fn not_after(cert: &std::path::Path) -> i64 {
    let out = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-enddate"]);
    assert_success(&out, "openssl x509 -enddate");
    let text = String::from_utf8(out.stdout).unwrap();
    let when = text.trim().strip_prefix("notAfter=").unwrap();
    let out = std::process::Command::new("date").args(["-u", "-d", when, "+%s"]).output().unwrap();
    assert_success(&out, "date -d");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn sign(client: &mut AgentClient, rt: &tokio::runtime::Runtime, key: &str, profile: &str) -> Result<(), String> {
    let op = Operation::Sign { key: KeyId::new(key).unwrap(), profile: profile.into(), data: b"metrics".to_vec() };
    match rt.block_on(client.call(op)) {
        Ok(Reply::Signature { .. }) => Ok(()),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

/// A site with an RSA key holding a certificate (valid 30 days, replacing one valid 10 days,
/// which `cert install` keeps as `site-1.previous.pem`) and a P-256 key without one.
fn site_with_certificate() -> (Site, std::path::PathBuf) {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.generate("edge", "p-256");
    let csr = site.path("site-1.csr");
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1", "--out", csr.to_str().unwrap()]);
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    let old = site.path("site-1-old.crt");
    ca.issue_days(&csr, &old, "extendedKeyUsage=clientAuth\n", 10);
    site.keyward_ok(&["cert", "install", "site-1", old.to_str().unwrap()]);
    let crt = site.path("site-1.crt");
    ca.issue_days(&csr, &crt, "extendedKeyUsage=clientAuth\n", 30);
    site.keyward_ok(&["cert", "install", "site-1", crt.to_str().unwrap()]);
    assert!(site.state_dir.join("certs/site-1.previous.pem").exists());
    (site, crt)
}

#[test]
fn metrics_endpoint_counts_signatures_and_reports_certificate_expiry() {
    let (site, crt) = site_with_certificate();
    let port = free_port();
    site.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let agent = AgentProcess::start(&site);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = rt.block_on(AgentClient::connect(&site.socket)).unwrap();
    for _ in 0..3 {
        sign(&mut client, &rt, "site-1", "nvflare").unwrap();
    }
    for _ in 0..2 {
        sign(&mut client, &rt, "edge", "tls").unwrap();
    }
    assert!(sign(&mut client, &rt, "missing", "nvflare").is_err());

    let body = scrape(port);
    let ok = |key: &str, profile: &str| {
        sample(
            &body,
            &format!("keyward_requests_total{{op=\"sign\",key=\"{key}\",profile=\"{profile}\",outcome=\"ok\"}}"),
        )
    };
    assert_eq!(ok("site-1", "nvflare"), Some(3.0), "{body}");
    assert_eq!(ok("edge", "tls-ecdsa-p256-sha256"), Some(2.0), "{body}");
    let unknown = "keyward_requests_total{op=\"sign\",key=\"missing\",profile=\"nvflare\",outcome=\"unknown_key\"}";
    assert_eq!(sample(&body, unknown), Some(1.0), "{body}");
    let hist = "op=\"sign\",key=\"site-1\",profile=\"nvflare\"";
    assert_eq!(sample(&body, &format!("keyward_request_duration_seconds_count{{{hist}}}")), Some(3.0), "{body}");
    assert_eq!(sample(&body, &format!("keyward_request_duration_seconds_bucket{{{hist},le=\"+Inf\"}}")), Some(3.0));
    let sum = sample(&body, &format!("keyward_request_duration_seconds_sum{{{hist}}}")).unwrap();
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    assert_eq!(sample(&body, "keyward_backend_up{backend=\"pkcs11\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "keyward_up"), Some(1.0));

    // Expiry: the installed certificate's notAfter as openssl reads it; none for `edge`.
    #[allow(clippy::cast_precision_loss)]
    let expected = not_after(&crt) as f64;
    assert_eq!(sample(&body, "keyward_certificate_expiry_seconds{key=\"site-1\"}"), Some(expected), "{body}");
    assert_eq!(body.matches("keyward_certificate_expiry_seconds{").count(), 1, "only site-1's current one:\n{body}");
    // Seconds to that expiry, the renewal policy's verdict (default: half-life), the key's age.
    let left = sample(&body, "keyward_certificate_seconds_to_expiry{key=\"site-1\"}").unwrap();
    assert!(left > 0.0 && (expected - left - keyward_now()).abs() < 30.0, "{body}");
    assert_eq!(sample(&body, "keyward_certificate_renewal_due{key=\"site-1\"}"), Some(0.0), "{body}");
    let age = sample(&body, "keyward_key_age_seconds{key=\"site-1\"}").unwrap();
    assert!((0.0..600.0).contains(&age), "{body}");
    let pin = std::fs::read_to_string(&site.hsm.pin_file).unwrap();
    assert!(!body.contains(pin.trim()), "the PIN must never appear in metrics");

    // `keyward status` shows the same expiry, and latency for the signatures.
    let out = site.keyward_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = status["keys"].as_array().unwrap();
    let site_1 = keys.iter().find(|k| k["key"] == "site-1").unwrap();
    assert_eq!(site_1["certificate_not_after"].as_i64(), Some(expected as i64), "{status}");
    assert!(keys.iter().find(|k| k["key"] == "edge").unwrap()["certificate_not_after"].is_null());
    assert_eq!(site_1["renewal"], "valid", "{status}");
    assert!(site_1["certificate_seconds_to_expiry"].as_i64().unwrap() > 0, "{status}");
    assert!(site_1["key_age_seconds"].as_i64().unwrap() >= 0, "{status}");
    let latency = status["latency"].as_array().unwrap();
    let sign_latency = latency.iter().find(|l| l["op"] == "sign").unwrap();
    assert_eq!(sign_latency["count"].as_u64(), Some(6), "{status}");
    let (p50, p99) = (sign_latency["p50_us"].as_u64().unwrap(), sign_latency["p99_us"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p99, "{status}");
    let text = String::from_utf8(site.keyward_ok(&["status"]).stdout).unwrap();
    assert!(text.contains("site-1") && text.contains("certificate expires") && text.contains("(in 29 days)"), "{text}");
    assert!(text.contains("edge") && text.contains("no certificate") && text.contains("p99"), "{text}");
    drop(agent);
}

#[test]
fn metrics_endpoint_serves_only_get_metrics_with_bounded_requests_and_connections() {
    let site = Site::new();
    let port = free_port();
    site.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let agent = AgentProcess::start(&site);

    let post = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET\r\n"), "{post}");
    assert!(http(port, b"GET /debug HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(http(port, b"GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(8192));
    assert!(http(port, huge.as_bytes()).starts_with("HTTP/1.1 431 "));

    // Four idle scrapers hold every slot: the fifth is turned away at once, not queued.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    // Under load the agent may take a moment to accept all four; until then a scrape is
    // still served (and gives its slot back), so ask until the slots are all held.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let reply = http(port, b"GET /metrics HTTP/1.1\r\n\r\n");
        if reply.starts_with("HTTP/1.1 503 ") {
            assert!(started.elapsed() < Duration::from_secs(2), "turned away only after {:?}", started.elapsed());
            break;
        }
        assert!(reply.starts_with("HTTP/1.1 200 ") && Instant::now() < deadline, "{reply}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent's own socket is unaffected, and closing the idle ones frees the slots.
    site.keyward_ok(&["status"]);
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http(port, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 ") {
        assert!(Instant::now() < deadline, "slots not freed after the idle scrapers closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A stalled half-request is cut off after the read timeout (5 s) with 408.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    let mut reply = String::new();
    stalled.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    drop(agent);
}

/// TCP sockets (IPv4 and IPv6) the process `pid` has open, by matching its socket fds'
/// inodes against `/proc/net/tcp*`.
fn tcp_sockets_of(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| Some(target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| {
            std::fs::read_to_string(table).unwrap().lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|line| line.split_whitespace().nth(9).is_some_and(|inode| inodes.iter().any(|i| i == inode)))
        .count()
}

#[test]
fn metrics_are_off_unless_configured() {
    let site = Site::new();
    let agent = AgentProcess::start(&site);
    assert_eq!(tcp_sockets_of(agent.pid()), 0, "an agent without [metrics] must open no TCP socket");
    drop(agent);
    // The same check sees the listener once the table is there (so it can fail).
    site.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{}\"\n", free_port()));
    let agent = AgentProcess::start(&site);
    assert_eq!(tcp_sockets_of(agent.pid()), 1);
}

#[test]
fn metrics_listen_address_must_be_loopback() {
    let site = Site::new();
    site.append_config("[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    let out = site.keyward(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.listen") && stderr.contains("not a loopback address"), "{stderr}");
}

#[allow(clippy::cast_precision_loss)]
fn keyward_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64
}

/// Many `status` requests at once fill the side thread's short queue with key listings. That
/// is load, not a broken device: a health check that finds the queue full behind a job that
/// moves learns nothing, and `status` and `keyward_backend_up` keep saying the backend is up.
/// Before, the check counted a full queue as "no worker answered a health check within 10000
/// ms" without waiting at all, and `status` said `down` (seen in the soak test).
#[test]
fn a_burst_of_status_requests_never_reports_a_healthy_backend_down() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let port = free_port();
    site.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let agent = AgentProcess::start(&site);
    let until = Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let socket = agent.socket().to_path_buf();
            std::thread::spawn(move || {
                let mut c = keyward_client::BlockingAgentClient::connect(&socket, Duration::from_secs(20)).unwrap();
                let (mut asked, mut down) = (0, Vec::new());
                while Instant::now() < until {
                    let Reply::Status(s) = c.call(Operation::Status).unwrap() else { panic!("status reply") };
                    asked += 1;
                    if s.backend_health != "ok" {
                        down.push(s.backend_error);
                    }
                }
                (asked, down)
            })
        })
        .collect();
    let mut scrapes_down = 0;
    while Instant::now() < until {
        scrapes_down += usize::from(sample(&scrape(port), "keyward_backend_up{backend=\"pkcs11\"}") != Some(1.0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut asked, mut down) = (0, Vec::new());
    for client in clients {
        let (a, d) = client.join().unwrap();
        asked += a;
        down.extend(d);
    }
    eprintln!("{asked} status requests from 16 clients in 4 s; {} said down; {scrapes_down} scrapes down", down.len());
    assert!(asked > 100, "the burst was too small to fill the queue: {asked}");
    assert!(down.is_empty(), "status said down under load: {:?}", &down[..down.len().min(3)]);
    assert_eq!(scrapes_down, 0);
}
