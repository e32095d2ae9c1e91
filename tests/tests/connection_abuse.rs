//! Clients that misbehave at the connection level, against the real agent on a real SoftHSM
//! token (the frame-level cases — garbage, oversized, truncated, one stalled half-frame —
//! are in `socket_protocol.rs`): a thousand connections opened at once, clients that send a
//! whole sign request and vanish before the reply, clients that cut a frame short, and many
//! half-frames stalled at once. Each test checks that a well-behaved client is served during
//! the abuse, and that the agent's open fds (`/proc/<pid>/fd`) return to their baseline and
//! its RSS stays within a bound afterwards. The figures are printed for `docs/reliability.md`
//! (run with `--nocapture`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use keyward_tests::procstat::{self, Usage};
use keyward_tests::raw::{error_code, RawConn};
use keyward_tests::{openssl, AgentProcess, AgentSite, Site};
use serde_json::Value;

const FLOOD: usize = 1000;
/// How much the agent's RSS may grow over a test: a bound on leaks, not on the allocator
/// keeping freed pages.
const RSS_GROWTH_LIMIT_KIB: u64 = 24 * 1024;
/// How long the agent may take to close every fd of the abusive connections.
const FD_RECOVERY_LIMIT: Duration = Duration::from_secs(5);

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sign_request(id: u64, msg: &[u8]) -> Vec<u8> {
    format!(r#"{{"v":1,"id":{id},"op":"sign","key":"site-1","profile":"nvflare","data":"{}"}}"#, b64(msg)).into_bytes()
}

/// The test process's fd limit raised to its hard limit (1,000 sockets need more than the
/// usual soft 1,024 with everything else open). The agent keeps its own limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard >= 2 * FLOOD as u64, "hard fd limit {hard} too low for a {FLOOD}-connection flood");
}

/// Signs through the agent from another process (`keyward sign`, so another peer pid) and
/// checks the signature with openssl; returns how long the signing took.
fn sign_from_another_process(site: &Site, public_pem: &Path, tag: &str) -> Duration {
    let started = Instant::now();
    let (msg, sig) = site.sign_file("site-1", "nvflare", format!("site-1-{tag}").as_bytes());
    let took = started.elapsed();
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:-2",
        "-verify",
        public_pem.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    keyward_tests::tools::assert_success(&out, "openssl verifies the signature");
    took
}

/// An agent warmed up by a few signatures, and its usage once that client has left.
fn warm_agent(site: &Site) -> (AgentProcess, Usage) {
    let agent = AgentProcess::start(site);
    let mut c = RawConn::connect(agent.socket());
    for n in 0..8 {
        assert_eq!(error_code(&c.request(&sign_request(n, b"warm-up"))), None);
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let baseline = procstat::usage(agent.pid());
    (agent, baseline)
}

/// After the abuse: fds back to `baseline` within [`FD_RECOVERY_LIMIT`], RSS within bound.
fn assert_recovered(agent: &AgentProcess, baseline: Usage, what: &str) {
    let recovery = procstat::wait_fds_at_most(agent.pid(), baseline.fds, FD_RECOVERY_LIMIT);
    let after = procstat::usage(agent.pid());
    eprintln!(
        "{what}: fds {} before, {} after (back in {recovery:?}); RSS {} KiB before, {} KiB after",
        baseline.fds, after.fds, baseline.rss_kib, after.rss_kib
    );
    assert!(recovery.is_some(), "{what}: agent holds {} fds, {} before", after.fds, baseline.fds);
    assert!(
        after.rss_kib <= baseline.rss_kib + RSS_GROWTH_LIMIT_KIB,
        "{what}: RSS grew from {} to {} KiB",
        baseline.rss_kib,
        after.rss_kib
    );
}

/// Opens `n` connections at once, then sends `hello` on each; returns the served
/// connections (still open) and the messages of the `busy` refusals.
fn flood(socket: &Path, n: usize) -> (Vec<RawConn>, Vec<String>) {
    let conns: Vec<RawConn> = (0..n).map(|_| RawConn::connect(socket)).collect();
    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for (i, mut c) in conns.into_iter().enumerate() {
        let id = i as u64 + 1;
        // A refused connection is already closed: the write may fail, its busy reply is
        // still there to read.
        let _ =
            c.stream.write_all(&keyward_tests::raw::frame(format!(r#"{{"v":1,"id":{id},"op":"hello"}}"#).as_bytes()));
        let reply = c.read_reply();
        match error_code(&reply) {
            None => {
                assert_eq!(reply["id"], id, "{reply}");
                served.push(c);
            }
            Some("busy") => {
                assert_eq!(reply["id"], 0, "{reply}");
                assert!(c.is_closed(), "a refused connection is closed");
                refused.push(reply["body"]["message"].as_str().unwrap().to_owned());
            }
            Some(other) => panic!("unexpected `{other}` during the flood: {reply}"),
        }
    }
    (served, refused)
}

#[test]
fn a_thousand_connections_from_one_process_are_capped_per_process_and_others_are_served() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.set_config("limits", "max_connections", 64.into());
    site.set_config("limits", "max_connections_per_peer", 32.into());
    let public_pem = site.public_pem("site-1");
    let (agent, baseline) = warm_agent(&site);
    raise_fd_limit();

    let started = Instant::now();
    let (mut served, refused) = flood(agent.socket(), FLOOD);
    let flood_time = started.elapsed();
    assert_eq!(served.len(), 32, "exactly max_connections_per_peer connections of one process are served");
    assert_eq!(refused.len(), FLOOD - 32);
    assert!(refused.iter().all(|m| m.contains("from this process")), "{:?}", refused.first());

    // During the flood (32 of 64 slots held), another process is served at once.
    let latency = sign_from_another_process(&site, &public_pem, "during-flood");
    let during = procstat::usage(agent.pid());
    eprintln!(
        "flood of {FLOOD} from one process: {} served, {} busy in {flood_time:?}; a sign from another process \
         took {latency:?}; agent fds {} RSS {} KiB during",
        served.len(),
        refused.len(),
        during.fds,
        during.rss_kib
    );
    // The flood's served connections still work.
    for (n, c) in served.iter_mut().enumerate() {
        assert_eq!(error_code(&c.request(&sign_request(n as u64, b"still-served"))), None);
    }
    drop(served);

    assert_recovered(&agent, baseline, "after the per-process flood");
    sign_from_another_process(&site, &public_pem, "after-flood");
}

#[test]
fn a_thousand_connections_beyond_the_global_limit_get_busy_and_the_agent_recovers() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.set_config("limits", "max_connections", 64.into());
    site.set_config("limits", "max_connections_per_peer", 1000.into());
    let public_pem = site.public_pem("site-1");
    let (agent, baseline) = warm_agent(&site);
    raise_fd_limit();

    let (served, refused) = flood(agent.socket(), FLOOD);
    assert_eq!(served.len(), 64, "exactly max_connections are served");
    assert_eq!(refused.len(), FLOOD - 64);
    assert!(refused.iter().all(|m| m == "too many connections; try again later"), "{:?}", refused.first());
    // With every slot taken, another process is refused with `busy` too (the reason for the
    // per-process limit), and served again once the flood ends.
    let status = site.keyward(&["status"]);
    assert!(!status.status.success(), "status during a full flood should be refused");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("too many connections") || stderr.contains("busy"), "{stderr}");
    drop(served);

    let started = Instant::now();
    assert_recovered(&agent, baseline, "after the global flood");
    let latency = sign_from_another_process(&site, &public_pem, "after-global-flood");
    eprintln!("global flood: served again {:?} after the flood closed (sign took {latency:?})", started.elapsed());
}

#[test]
fn clients_that_vanish_mid_request_or_stall_on_half_a_frame_leak_nothing() {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    site.set_config("limits", "read_timeout_ms", 1000.into());
    let public_pem = site.public_pem("site-1");
    let (agent, baseline) = warm_agent(&site);
    let socket = agent.socket();

    // 200 whole sign requests whose clients close before the reply, in two bursts of 100
    // (a connection holds its slot until its request is done, so a burst over the
    // per-process limit would be partly refused): each is still executed and audited once.
    const VANISHED: usize = 200;
    let vanished: Vec<Vec<u8>> = (0..VANISHED).map(|n| format!("vanished-{n}").into_bytes()).collect();
    let digests: std::collections::HashSet<String> =
        vanished.iter().map(|m| keyward_agent::audit::sha256_hex(m)).collect();
    let audited = || {
        site.audit_records()
            .into_iter()
            .filter(|r| r["op"] == "sign" && digests.contains(r["payload_sha256"].as_str().unwrap_or_default()))
            .collect::<Vec<Value>>()
    };
    for burst in vanished.chunks(VANISHED / 2) {
        let started = Instant::now();
        let done = audited().len() + burst.len();
        for (n, msg) in burst.iter().enumerate() {
            let mut c = RawConn::connect(socket);
            c.send(&sign_request(n as u64 + 100, msg));
            c.stream.shutdown(std::net::Shutdown::Both).unwrap();
        }
        while audited().len() < done {
            assert!(started.elapsed() < Duration::from_secs(30), "vanished requests not all executed");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} vanished sign requests executed and audited in {:?}", burst.len(), started.elapsed());
    }

    // 50 clients that send half a sign frame and close.
    const CUT: usize = 50;
    for n in 0..CUT {
        let mut c = RawConn::connect(socket);
        let full = keyward_tests::raw::frame(&sign_request(n as u64, b"cut short"));
        c.stream.write_all(&full[..full.len() / 2]).unwrap();
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(error_code(&c.read_reply()), Some("truncated_frame"));
    }

    // 30 half frames stalled at once; a client is served meanwhile; each stalled one gets
    // `read_timeout` and is closed.
    const STALLED: usize = 30;
    let mut stalled: Vec<RawConn> = (0..STALLED)
        .map(|n| {
            let mut c = RawConn::connect(socket);
            let full = keyward_tests::raw::frame(&sign_request(n as u64, b"stalled"));
            c.stream.write_all(&full[..10]).unwrap();
            c
        })
        .collect();
    let latency = sign_from_another_process(&site, &public_pem, "during-stall");
    let mut meanwhile = RawConn::connect(socket);
    assert_eq!(error_code(&meanwhile.request(&sign_request(1, b"meanwhile"))), None);
    // Closed now: left open while the stalled ones time out, it could reach its own read
    // timeout too on a loaded machine (one `read_timeout` record more).
    drop(meanwhile);
    for c in &mut stalled {
        assert_eq!(error_code(&c.read_reply()), Some("read_timeout"));
        assert!(c.is_closed());
    }
    drop(stalled);
    eprintln!("{STALLED} stalled half-frames: a sign from another process took {latency:?} meanwhile");

    assert_recovered(&agent, baseline, "after vanished, cut and stalled clients");
    let mut c = RawConn::connect(socket);
    let status = c.request(br#"{"v":1,"id":1,"op":"status"}"#);
    assert_eq!(status["body"]["connections"], 1, "only this connection counted: {status}");

    let vanished_records = audited();
    assert_eq!(vanished_records.len(), VANISHED, "each vanished client's request audited exactly once");
    assert!(vanished_records.iter().all(|r| r["outcome"] == "ok"));
    // Refusals past the flood control's budget are counted in summary records.
    drop(agent);
    let records = site.audit_records();
    let count = |outcome: &str| keyward_tests::audited_events(&records, Some(outcome)) as usize;
    assert_eq!(count("truncated_frame"), CUT);
    assert_eq!(count("read_timeout"), STALLED);
}
