//! The soak: N clients on their own connections for D seconds against the real agent on a
//! fresh SoftHSM token, each mixing signatures (every one verified with the public key),
//! decryptions (of OAEP ciphertexts made here with the public key; the plaintext checked),
//! `status`, and bad requests that must get their exact error code. At the end, every
//! frame a client sent must have exactly one audit record and the hash chain must verify;
//! the agent's open fds and RSS, sampled every few seconds, are reported. Used by the
//! `soak` binary (full run) and `tests/soak.rs` (the short CI run).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use keyward_core::{KeyAlgorithm, PublicKey, SignProfile};
use keyward_protocol::{Outcome, Reply, Response};
use rand::{Rng, RngCore};
use rsa::pkcs8::DecodePublicKey;

use crate::procstat::{self, Usage};
use crate::raw::RawConn;
use crate::{AgentProcess, Site};

/// How long and how hard.
#[derive(Clone, Copy, Debug)]
pub struct SoakConfig {
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// How long the clients run.
    pub duration: Duration,
    /// How often the agent's fds and RSS are sampled.
    pub sample_every: Duration,
}

/// Operations answered, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Signatures, each verified.
    pub sign: u64,
    /// Decryptions, each plaintext compared.
    pub decrypt: u64,
    /// Status requests.
    pub status: u64,
    /// Bad requests, each answered with its expected code.
    pub bad: u64,
}

impl Counts {
    /// Every frame sent.
    pub fn total(&self) -> u64 {
        self.sign + self.decrypt + self.status + self.bad
    }

    fn add(&mut self, other: &Self) {
        self.sign += other.sign;
        self.decrypt += other.decrypt;
        self.status += other.status;
        self.bad += other.bad;
    }
}

/// What a soak measured.
#[derive(Debug)]
pub struct SoakReport {
    /// The configuration.
    pub config: SoakConfig,
    /// Operations answered.
    pub counts: Counts,
    /// How long the clients actually ran.
    pub elapsed: Duration,
    /// Answers that were wrong (first few described; the count is `wrong_count`).
    pub wrong: Vec<String>,
    /// Number of wrong answers.
    pub wrong_count: u64,
    /// Audit records the run should have added (one per frame sent).
    pub audit_expected: u64,
    /// Audited frames it added: one per record, a `refusals_suppressed` summary counting
    /// for the refusals it stands for.
    pub audit_found: u64,
    /// Successful `sign` records among them.
    pub audit_signs_ok: u64,
    /// `keyward audit verify` said the chain is intact.
    pub audit_chain_intact: bool,
    /// Agent usage before the clients connected.
    pub baseline: Usage,
    /// Samples during the run: time since start, usage.
    pub samples: Vec<(Duration, Usage)>,
    /// Usage once the clients had disconnected (after fds settled, up to 5 s).
    pub after: Usage,
}

impl SoakReport {
    /// Largest fd count and RSS seen during the run.
    pub fn max(&self) -> Usage {
        let fds = self.samples.iter().map(|(_, u)| u.fds).max().unwrap_or_default();
        let rss_kib = self.samples.iter().map(|(_, u)| u.rss_kib).max().unwrap_or_default();
        Usage { fds, rss_kib }
    }

    /// The samples about every `step`: `t=30s fds=77 rss=15416KiB`, one per line, to show
    /// whether fds and RSS stay flat.
    pub fn series(&self, step: Duration) -> String {
        let mut out = String::new();
        let mut next = Duration::ZERO;
        for (t, u) in &self.samples {
            if *t >= next {
                out.push_str(&format!("t={:>4}s fds={} rss={}KiB\n", t.as_secs(), u.fds, u.rss_kib));
                next = *t + step;
            }
        }
        out
    }

    /// The figures as Markdown, for `docs/reliability.md`.
    pub fn markdown(&self) -> String {
        let c = &self.counts;
        let first = self.samples.first().map(|(_, u)| *u).unwrap_or(self.baseline);
        let last = self.samples.last().map(|(_, u)| *u).unwrap_or(self.baseline);
        let max = self.max();
        let secs = self.elapsed.as_secs_f64();
        format!(
            "soak: {} clients × {:.0} s: {} operations ({:.0}/s): {} sign (all verified), {} decrypt (plaintext \
             checked), {} status, {} bad requests (exact codes)\n\
             wrong answers: {}\n\
             audit records: {} expected, {} found ({} successful signs), chain intact: {}\n\
             agent fds: idle {}, first sample {}, last sample {}, max {}, after {}\n\
             agent RSS KiB: idle {}, first sample {}, last sample {}, max {}, after {}\n\
             samples: {}\n",
            self.config.clients,
            secs,
            c.total(),
            c.total() as f64 / secs.max(0.001),
            c.sign,
            c.decrypt,
            c.status,
            c.bad,
            self.wrong_count,
            self.audit_expected,
            self.audit_found,
            self.audit_signs_ok,
            self.audit_chain_intact,
            self.baseline.fds,
            first.fds,
            last.fds,
            max.fds,
            self.after.fds,
            self.baseline.rss_kib,
            first.rss_kib,
            last.rss_kib,
            max.rss_kib,
            self.after.rss_kib,
            self.samples.len(),
        )
    }
}

/// Bad requests and the code each must get (the connection stays open after each).
const BAD: [(&str, &str); 5] = [
    (r#"{"v":1,"id":ID,"op":"erase_token"}"#, "unknown_operation"),
    (r#"{"v":1,"id":ID,"op":"sign","key":"no-such-key","profile":"nvflare","data":"aGk="}"#, "unknown_key"),
    (r#"{"v":2,"id":ID,"op":"status"}"#, "unsupported_version"),
    (r#"{"v":1,"id":ID,"op":"sign","key":"site-1","profile":"pss-please","data":"aGk="}"#, "invalid_request"),
    (r#"{"v":1,"id":ID,"op":"status""#, "malformed_request"),
];

struct Client {
    socket: std::path::PathBuf,
    public: Arc<PublicKey>,
    rsa: Arc<rsa::RsaPublicKey>,
    deadline: Instant,
    index: usize,
}

#[derive(Default)]
struct ClientResult {
    counts: Counts,
    wrong: Vec<String>,
    wrong_count: u64,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Client {
    fn run(self) -> ClientResult {
        let mut conn = RawConn::connect(&self.socket);
        let mut rng = rand::thread_rng();
        let mut result = ClientResult::default();
        let mut id = 0u64;
        while Instant::now() < self.deadline {
            id += 1;
            let pick = rng.gen_range(0..100);
            let problem = if pick < 40 {
                result.counts.sign += 1;
                self.sign(&mut conn, id, &mut rng)
            } else if pick < 65 {
                result.counts.decrypt += 1;
                self.decrypt(&mut conn, id, &mut rng)
            } else if pick < 80 {
                result.counts.status += 1;
                let reply = request(&mut conn, format!(r#"{{"v":1,"id":{id},"op":"status"}}"#).as_bytes());
                match reply {
                    Ok(Response { id: got, outcome: Outcome::Ok(Reply::Status(s)), .. })
                        if got == id && s.backend_health == "ok" =>
                    {
                        None
                    }
                    other => Some(format!("status {id}: {other:?}")),
                }
            } else {
                result.counts.bad += 1;
                let (template, code) = BAD[rng.gen_range(0..BAD.len())];
                let malformed = code == "malformed_request";
                let reply = request(&mut conn, template.replace("ID", &id.to_string()).as_bytes());
                match reply {
                    Ok(Response { id: got, outcome: Outcome::Error(e), .. })
                        if e.code.as_str() == code && (got == id || (malformed && got == 0)) =>
                    {
                        None
                    }
                    other => Some(format!("bad request `{template}` {id}: expected `{code}`, got {other:?}")),
                }
            };
            if let Some(problem) = problem {
                result.wrong_count += 1;
                if result.wrong.len() < 5 {
                    result.wrong.push(format!("client {}: {problem}", self.index));
                }
            }
        }
        result
    }

    fn sign(&self, conn: &mut RawConn, id: u64, rng: &mut impl Rng) -> Option<String> {
        let msg = format!("site-{}-{id}-{}", self.index, rng.gen::<u64>()).into_bytes();
        let body =
            format!(r#"{{"v":1,"id":{id},"op":"sign","key":"site-1","profile":"nvflare","data":"{}"}}"#, b64(&msg));
        match request(conn, body.as_bytes()) {
            Ok(Response { id: got, outcome: Outcome::Ok(Reply::Signature { signature, .. }), .. }) if got == id => {
                keyward_core::verify::verify(&self.public, SignProfile::Nvflare, &msg, &signature)
                    .err()
                    .map(|e| format!("sign {id}: signature does not verify: {e}"))
            }
            other => Some(format!("sign {id}: {other:?}")),
        }
    }

    fn decrypt(&self, conn: &mut RawConn, id: u64, rng: &mut rand::rngs::ThreadRng) -> Option<String> {
        let mut plain = vec![0u8; 32];
        rng.fill_bytes(&mut plain);
        let ct = self.rsa.encrypt(rng, rsa::Oaep::new::<sha2::Sha256>(), &plain).expect("OAEP encrypt");
        let body = format!(r#"{{"v":1,"id":{id},"op":"decrypt","key":"site-1","data":"{}"}}"#, b64(&ct));
        match request(conn, body.as_bytes()) {
            Ok(Response { id: got, outcome: Outcome::Ok(Reply::Plaintext { plaintext }), .. })
                if got == id && plaintext == plain =>
            {
                None
            }
            other => Some(format!("decrypt {id}: {other:?}")),
        }
    }
}

fn request(conn: &mut RawConn, body: &[u8]) -> Result<Response, String> {
    let reply = conn.request(body);
    serde_json::from_value(reply.clone()).map_err(|e| format!("{e}: {reply}"))
}

fn public_key(socket: &Path) -> (PublicKey, rsa::RsaPublicKey) {
    let mut conn = RawConn::connect(socket);
    let reply = request(&mut conn, br#"{"v":1,"id":1,"op":"public_key","key":"site-1"}"#).expect("public key");
    let Outcome::Ok(Reply::PublicKey { spki_der, .. }) = reply.outcome else { panic!("public key reply") };
    let rsa = rsa::RsaPublicKey::from_public_key_der(&spki_der).expect("RSA public key");
    (PublicKey { algorithm: KeyAlgorithm::Rsa2048, spki_der }, rsa)
}

/// Runs a soak on a fresh token and agent (RSA-2048 key `site-1`).
///
/// # Panics
/// When a fixture fails (token, agent, audit log); wrong answers are reported, not panics.
pub fn run(config: SoakConfig) -> SoakReport {
    let site = Site::new();
    site.generate("site-1", "rsa-2048");
    let per_peer = i64::try_from(config.clients + 8).expect("client count");
    site.set_config("limits", "max_connections", (per_peer + 64).into());
    site.set_config("limits", "max_connections_per_peer", per_peer.into());
    let agent = AgentProcess::start(&site);
    let socket = agent.socket().to_path_buf();
    let (public, rsa) = public_key(&socket);
    let (public, rsa) = (Arc::new(public), Arc::new(rsa));
    std::thread::sleep(Duration::from_millis(200));
    let baseline = procstat::usage(agent.pid());
    let audit_before = site.audit_records().len() as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let sampler = {
        let (stop, samples, pid) = (Arc::clone(&stop), Arc::clone(&samples), agent.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let usage = procstat::usage(pid);
                samples.lock().expect("samples").push((started.elapsed(), usage));
                let next = Instant::now() + config.sample_every;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    let deadline = started + config.duration;
    let clients: Vec<_> = (0..config.clients)
        .map(|index| {
            let client =
                Client { socket: socket.clone(), public: Arc::clone(&public), rsa: Arc::clone(&rsa), deadline, index };
            std::thread::spawn(move || client.run())
        })
        .collect();
    let mut counts = Counts::default();
    let (mut wrong, mut wrong_count) = (Vec::new(), 0);
    for c in clients {
        let r = c.join().expect("soak client thread");
        counts.add(&r.counts);
        wrong_count += r.wrong_count;
        wrong.extend(r.wrong);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler thread");
    procstat::wait_fds_at_most(agent.pid(), baseline.fds, Duration::from_secs(5));
    let after = procstat::usage(agent.pid());

    // After the agent's exit, which writes the summaries of refusal windows still open.
    drop(agent);
    let records = site.audit_records();
    let added = &records[usize::try_from(audit_before).expect("count")..];
    let audit_signs_ok = added.iter().filter(|r| r["op"] == "sign" && r["outcome"] == "ok").count() as u64;
    let verify = site.keyward(&["audit", "verify"]);
    let audit_chain_intact =
        verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains("chain intact");
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    SoakReport {
        config,
        counts,
        elapsed,
        wrong,
        wrong_count,
        audit_expected: counts.total(),
        audit_found: crate::agent::audited_events(added, None),
        audit_signs_ok,
        audit_chain_intact,
        baseline,
        samples,
        after,
    }
}
