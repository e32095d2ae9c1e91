//! `keyward-bench`: signing throughput and latency on a fresh SoftHSM2 token, in one run,
//! for RSA-2048 (`nvflare` profile) and ECDSA P-256 (`tls-ecdsa-p256-sha256`) with 1 and
//! 2 concurrent clients (and 32), along five paths:
//!
//! - `raw cryptoki`: each thread its own session, `C_Sign` in a loop (the limit);
//! - `KeyStore`: `Pkcs11Backend::store()` per thread and `KeyStore::sign`;
//! - `session pool`: the agent's pool of 2 sessions (`daemon::back::Back`), used from one
//!   thread per client as the agent's connection threads use it (no socket, no JSON, no
//!   audit): the cost of lending a session;
//! - `socket floor`: the least any agent must do — a child process answering the same
//!   frames with a thread and a session per connection, decode, `C_Sign`, encode
//!   ([`FloorServer`]): agent minus floor is what keyward itself adds;
//! - `agent`: the real `keyward serve`, one `BlockingAgentClient` connection per client
//!   thread, sequential requests.
//!
//! The paths of one case run in interleaved rounds (see [`ROUNDS`]), so that a busy spell of
//! a shared machine does not land on one path only.
//!
//! Usage: `cargo run --release -p keyward-tests --bin keyward-bench -- [--quick] [--seconds N]`
//! (or `scripts/bench.sh`). It prints a Markdown table for `docs/benchmarks.md` and
//! never asserts a speed; CI runs `--quick` only so the bench keeps working.
//!
//! The in-process paths need `SOFTHSM2_CONF` in the environment of the process that loads
//! the module. The token (and so the config path) is created at run time, and `set_var`
//! is unsound once threads exist, so those paths run in a child: this binary re-executed
//! with `--in-process ...` and `SOFTHSM2_CONF` set through `Command::env`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_agent::daemon::back::{Back, BackendJob, JobOutput, ProfileChoice};
use keyward_client::BlockingAgentClient;
use keyward_core::{KeyId, KeyStore, Pin, SignProfile, TlsScheme};
use keyward_pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};
use keyward_protocol::{Operation, Reply, Response};
use keyward_tests::procstat::{context_switches, cpu_time, switches_between};
use keyward_tests::report::{command_output, cpu_model, percentile};
use keyward_tests::syscalls::SyscallCount;
use keyward_tests::{AgentProcess, Site};
use sha2::Digest;

/// What every request signs: the size of an NVFlare challenge (client CN + nonce).
const MESSAGE: &[u8] = b"site-1:3f9c2a7e51d84b06a1c3e5f7092b4d6e8f1a3c5e7092b4d6e8f1a3c5e7";

/// A key and the profile it is measured with.
#[derive(Clone, Copy)]
struct Case {
    /// Key name on the token (also what `keyward key generate` was given).
    key: &'static str,
    /// `--algorithm` for `keyward key generate`.
    algorithm: &'static str,
    profile: SignProfile,
    title: &'static str,
}

const CASES: [Case; 2] = [
    Case { key: "rsa", algorithm: "rsa-2048", profile: SignProfile::Nvflare, title: "RSA-2048 `nvflare`" },
    Case {
        key: "ec",
        algorithm: "p-256",
        profile: SignProfile::Tls(TlsScheme::EcdsaP256Sha256),
        title: "P-256 `tls-ecdsa-p256-sha256`",
    },
];

/// 1 and 2 sequential clients (the targets), and 32 (nothing may collapse under load).
const CLIENTS: [usize; 3] = [1, 2, 32];

/// Each case runs its routes this many times, interleaved (A B C D A B C D ...), each for
/// a share of the time. A row shows the median round and the range; "vs raw" is the median
/// of the per-round ratios, each taken against the raw loop of the same round, seconds
/// apart, so that a slow spell of a shared machine skews a ratio less.
const ROUNDS: usize = 5;

/// The measured paths (routes to `C_Sign`), in the order they run for each case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Cryptoki,
    KeyStore,
    Pool,
    Floor,
    Agent,
}

impl Route {
    fn arg(self) -> &'static str {
        match self {
            Self::Cryptoki => "cryptoki",
            Self::KeyStore => "keystore",
            Self::Pool => "pool",
            Self::Floor => "floor",
            Self::Agent => "agent",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Cryptoki => "raw cryptoki",
            Self::KeyStore => "KeyStore (in-process)",
            Self::Pool => "session pool (in-process)",
            Self::Floor => "socket floor (no agent work)",
            Self::Agent => "agent socket",
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU of the signing process (the bench child for in-process paths, the agent for
    /// the socket path) during the measurement.
    signer_cpu: Duration,
    /// CPU of the client process (agent path only).
    client_cpu: Option<Duration>,
    /// Context switches of the agent's threads, voluntary and not (agent path only).
    switches: Option<(u64, u64)>,
}

impl Sample {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops,
            "wall_ns": self.wall.as_nanos() as u64,
            "p50_ns": self.p50.as_nanos() as u64,
            "p99_ns": self.p99.as_nanos() as u64,
            "cpu_ns": self.signer_cpu.as_nanos() as u64,
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let ns = |name: &str| -> Result<u64> { v[name].as_u64().with_context(|| format!("`{name}` in {v}")) };
        Ok(Self {
            ops: ns("ops")?,
            wall: Duration::from_nanos(ns("wall_ns")?),
            p50: Duration::from_nanos(ns("p50_ns")?),
            p99: Duration::from_nanos(ns("p99_ns")?),
            signer_cpu: Duration::from_nanos(ns("cpu_ns")?),
            client_cpu: None,
            switches: None,
        })
    }
}

struct Options {
    seconds: f64,
    args: Vec<String>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--in-process") {
        return in_process_child(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--floor-server") {
        return floor_server(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--load") {
        return steady_load(&args[1..]);
    }
    let options = parse_options(args)?;
    run(&options)
}

fn parse_options(args: Vec<String>) -> Result<Options> {
    let mut seconds = 5.0;
    let mut explicit = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => seconds = 0.5,
            "--seconds" => {
                let value = iter.next().context("--seconds needs a number")?;
                let n: f64 = value.parse().with_context(|| format!("--seconds: `{value}` is not a number"))?;
                if !(n > 0.0 && n <= 600.0) {
                    bail!("--seconds must be in (0, 600]");
                }
                explicit = Some(n);
            }
            "-h" | "--help" => {
                println!(
                    "keyward-bench [--quick] [--seconds N]\n\n\
                     Signing throughput and latency on a fresh SoftHSM2 token: raw cryptoki, KeyStore,\n\
                     the session pool and the agent socket; RSA-2048 `nvflare` and P-256; 1 and 2 clients.\n\
                     Prints Markdown for docs/benchmarks.md; never fails on a slow result.\n\n\
                     --quick      about 0.5 s per case and path (CI)\n\
                     --load KEY CLIENTS SECONDS [floor]  only a steady load (KEY rsa or ec) on the\n\
                                  agent (or the socket floor), its pid on stderr, for profiling it\n\
                     --seconds N  seconds per case and path, split into 5 rounds (default 5; overrides --quick)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    Ok(Options { seconds: explicit.unwrap_or(seconds), args })
}

fn run(options: &Options) -> Result<()> {
    let duration = Duration::from_secs_f64(options.seconds);
    let date = command_output(&["date", "-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    eprintln!("keyward-bench: creating a SoftHSM2 token and keys");
    let site = Site::new();
    for case in CASES {
        site.generate(case.key, case.algorithm);
    }
    let agent = AgentProcess::start(&site);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let routes = [Route::Cryptoki, Route::KeyStore, Route::Pool, Route::Floor, Route::Agent];
    let floor = FloorServer::start(&site)?;
    let round_time = duration / ROUNDS as u32;
    let mut rows = Vec::new();
    for case in CASES {
        for clients in CLIENTS {
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); routes.len()];
            for round in 1..=ROUNDS {
                eprintln!("keyward-bench: {} · {clients} client(s) · round {round}/{ROUNDS}", case.title);
                for (route, samples) in routes.iter().zip(&mut samples) {
                    samples.push(match route {
                        Route::Agent => measure_agent(&agent, case, clients, round_time)?,
                        Route::Floor => measure_socket(&floor.socket, floor.pid(), case, clients, round_time)?,
                        _ => spawn_in_process(&site, *route, case, clients, round_time)?,
                    });
                }
            }
            let raw: Vec<f64> = samples[0].iter().map(Sample::ops_per_sec).collect();
            for (route, mut samples) in routes.into_iter().zip(samples) {
                let mut ratios: Vec<f64> = samples.iter().zip(&raw).map(|(s, r)| s.ops_per_sec() / r).collect();
                ratios.sort_by(f64::total_cmp);
                samples.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
                let range = (samples[0].ops_per_sec(), samples[ROUNDS - 1].ops_per_sec());
                let ops: u64 = samples.iter().map(|s| s.ops).sum();
                let per_op = |cpu: Duration| cpu.as_secs_f64() * 1e6 / ops.max(1) as f64;
                let signer_cpu = per_op(samples.iter().map(|s| s.signer_cpu).sum());
                let client_cpu = samples.iter().map(|s| s.client_cpu).sum::<Option<Duration>>().map(per_op);
                let switches = samples
                    .iter()
                    .map(|s| s.switches)
                    .try_fold((0, 0), |(v, n), s| s.map(|(sv, sn)| (v + sv, n + sn)))
                    .map(|(v, n)| (v as f64 / ops.max(1) as f64, n as f64 / ops.max(1) as f64));
                let syscalls = match route {
                    Route::Agent => Some(syscalls_per_request(&site, &agent, case, clients, round_time)?),
                    Route::Cryptoki => Some(raw_syscalls_per_request(&site, case, clients, round_time)?),
                    _ => None,
                };
                rows.push(Row {
                    case,
                    clients,
                    route,
                    median: samples[ROUNDS / 2],
                    range,
                    vs_raw: ratios[ROUNDS / 2],
                    cpu_per_op: (signer_cpu, client_cpu),
                    switches,
                    syscalls,
                });
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    drop(agent);
    drop(floor);

    print_report(options, &rows, &date, [load_before.trim(), load_after.trim()]);
    Ok(())
}

/// `--load KEY CLIENTS SECONDS [floor]`: a steady load on a fresh agent (or, with `floor`,
/// on the socket floor), for profiling it from outside (`perf record -g -p PID`, `strace -c
/// -f -p PID`): prints the server's pid on stderr, waits 2 s for the profiler to attach,
/// signs for SECONDS, and prints the rate, latency, CPU and context switches.
fn steady_load(args: &[String]) -> Result<()> {
    let (key, clients, seconds, floor) = match args {
        [key, clients, seconds] => (key, clients, seconds, false),
        [key, clients, seconds, floor] if floor == "floor" => (key, clients, seconds, true),
        _ => bail!("--load needs KEY CLIENTS SECONDS [floor] (KEY: rsa or ec)"),
    };
    let case = *CASES.iter().find(|c| c.key == key).with_context(|| format!("unknown key `{key}`"))?;
    let clients: usize = clients.parse().with_context(|| format!("CLIENTS: `{clients}`"))?;
    let duration = Duration::from_secs_f64(seconds.parse().with_context(|| format!("SECONDS: `{seconds}`"))?);
    let site = Site::new();
    site.generate(case.key, case.algorithm);
    let (agent, floor) =
        if floor { (None, Some(FloorServer::start(&site)?)) } else { (Some(AgentProcess::start(&site)), None) };
    let (socket, pid) = match (&agent, &floor) {
        (Some(agent), _) => (agent.socket().to_path_buf(), agent.pid()),
        (_, Some(floor)) => (floor.socket.clone(), floor.pid()),
        _ => unreachable!("one server was started"),
    };
    eprintln!("keyward-bench: server pid {pid}");
    std::thread::sleep(Duration::from_secs(2));
    let sample = measure_socket(&socket, pid, case, clients, duration)?;
    let ops = sample.ops.max(1) as f64;
    let (voluntary, involuntary) = sample.switches.unwrap_or_default();
    println!(
        "{} · {clients} client(s): {:.0} ops/s, p50 {} µs, p99 {} µs, server CPU {:.1} µs/op, client CPU {:.1} µs/op, \
         server context switches {:.2}/op",
        case.title,
        sample.ops_per_sec(),
        us(sample.p50),
        us(sample.p99),
        sample.signer_cpu.as_secs_f64() * 1e6 / ops,
        sample.client_cpu.unwrap_or_default().as_secs_f64() * 1e6 / ops,
        (voluntary + involuntary) as f64 / ops,
    );
    Ok(())
}

/// Runs one in-process measurement in a child (see the module docs for why).
fn spawn_in_process(site: &Site, route: Route, case: Case, clients: usize, duration: Duration) -> Result<Sample> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let out = Command::new(exe)
        .env("SOFTHSM2_CONF", &site.hsm.conf)
        .arg("--in-process")
        .args([route.arg(), case.key, &clients.to_string(), &duration.as_secs_f64().to_string()])
        .arg(&site.hsm.module)
        .arg(&site.hsm.label)
        .arg(&site.hsm.pin_file)
        .output()
        .context("running the in-process phase")?;
    if !out.status.success() {
        bail!("in-process phase failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).context("in-process phase output")?;
    Sample::from_json(&value)
}

/// The child: `--in-process PATH KEY CLIENTS SECONDS MODULE TOKEN PIN_FILE`; prints one
/// JSON [`Sample`].
fn in_process_child(args: &[String]) -> Result<()> {
    let [path, key, clients, seconds, module, token, pin_file] = args else {
        bail!("--in-process needs PATH KEY CLIENTS SECONDS MODULE TOKEN PIN_FILE");
    };
    let case = *CASES.iter().find(|c| c.key == key).with_context(|| format!("unknown key `{key}`"))?;
    let clients: usize = clients.parse()?;
    let duration = Duration::from_secs_f64(seconds.parse()?);
    let (module, pin_file) = (Path::new(module), Path::new(pin_file));
    let sample = match path.as_str() {
        "cryptoki" => raw_cryptoki(module, token, pin_file, case, clients, duration)?,
        "keystore" => keystore(module, token, pin_file, case, clients, duration)?,
        "pool" => pool(module, token, pin_file, case, clients, duration)?,
        other => bail!("unknown in-process path `{other}`"),
    };
    println!("{}", sample.to_json());
    Ok(())
}

/// The limit: plain cryptoki, one session per thread, the mechanism the profile maps to.
fn raw_cryptoki(
    module: &Path,
    token: &str,
    pin_file: &Path,
    case: Case,
    clients: usize,
    duration: Duration,
) -> Result<Sample> {
    let ctx = Pkcs11::new(module)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == token))
        .with_context(|| format!("no token `{token}`"))?;
    // Kept open for the whole run: PKCS#11 drops the login with the last session.
    let login = ctx.open_rw_session(slot)?;
    let pin = Pin::from_file(pin_file)?;
    login.login(UserType::User, Some(&AuthPin::from(pin.expose())))?;
    drop(pin);

    let mut workers = Vec::new();
    for _ in 0..clients {
        let session = ctx.open_rw_session(slot)?;
        let handles = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(case.key.as_bytes().to_vec()),
        ])?;
        let key = *handles.first().with_context(|| format!("no private key `{}`", case.key))?;
        let rsa = case.profile == SignProfile::Nvflare;
        workers.push(move || -> Result<()> {
            // Built per call, as keyward does (`Mechanism` is not `Send`); it is a plain struct.
            let signature = if rsa {
                let pss = Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 222u64.into(),
                });
                session.sign(&pss, key, MESSAGE)?
            } else {
                session.sign(&Mechanism::Ecdsa, key, &sha2::Sha256::digest(MESSAGE))?
            };
            check_len(signature.len())
        });
    }
    let sample = measure(workers, duration, None);
    drop(login);
    sample
}

/// Logs in to the token the way the agent does.
fn open_backend(module: &Path, token: &str, pin_file: &Path, workers: usize) -> Result<Pkcs11Backend> {
    let config = Pkcs11Config { module: module.to_owned(), token: TokenSelector::Label(token.to_owned()), workers };
    Ok(Pkcs11Backend::open(&config, Pin::from_file(pin_file)?)?)
}

/// keyward's own store, as the agent's workers use it, without the socket.
fn keystore(
    module: &Path,
    token: &str,
    pin_file: &Path,
    case: Case,
    clients: usize,
    duration: Duration,
) -> Result<Sample> {
    let backend = open_backend(module, token, pin_file, clients)?;
    let id = KeyId::new(case.key)?;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let mut store = backend.store()?;
        let id = id.clone();
        workers.push(move || -> Result<()> { check_len(store.sign(&id, case.profile, MESSAGE)?.len()) });
    }
    measure(workers, duration, None)
}

/// The agent's session pool without the socket: the same `Back` with the agent's default 2
/// sessions, called from one thread per client.
fn pool(module: &Path, token: &str, pin_file: &Path, case: Case, clients: usize, duration: Duration) -> Result<Sample> {
    let backend = open_backend(module, token, pin_file, 2)?;
    let (back, threads) = Back::start(std::sync::Arc::new(backend), 1024, Duration::from_secs(10))?;
    let id = KeyId::new(case.key)?;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (back, id) = (std::sync::Arc::clone(&back), id.clone());
        workers.push(move || -> Result<()> {
            let job = BackendJob::Sign { key: &id, profile: ProfileChoice::Exact(case.profile), data: MESSAGE };
            match back.run(job, Instant::now() + Duration::from_secs(10))? {
                JobOutput::Signature(signature, _) => check_len(signature.len()),
                other => bail!("unexpected output `{}`", other.kind()),
            }
        });
    }
    let sample = measure(workers, duration, None);
    drop(back);
    threads.stop();
    sample
}

/// Through the running agent: one connection per client thread, with the agent crate's
/// blocking client (the one the TLS signer uses), sequential requests.
fn measure_agent(agent: &AgentProcess, case: Case, clients: usize, duration: Duration) -> Result<Sample> {
    measure_socket(agent.socket(), agent.pid(), case, clients, duration)
}

/// Sequential `sign` requests to the server listening on `socket` (process `server`), one
/// `BlockingAgentClient` connection per client thread.
fn measure_socket(socket: &Path, server: u32, case: Case, clients: usize, duration: Duration) -> Result<Sample> {
    let mut workers = Vec::new();
    for _ in 0..clients {
        let mut client = BlockingAgentClient::connect(socket, Duration::from_secs(30))?;
        let key = KeyId::new(case.key)?;
        let profile = case.profile.name().to_owned();
        workers.push(move || -> Result<()> {
            let op = Operation::Sign { key: key.clone(), profile: profile.clone(), data: MESSAGE.to_vec() };
            match client.call(op)? {
                Reply::Signature { signature, .. } => check_len(signature.len()),
                other => bail!("unexpected reply {other:?}"),
            }
        });
    }
    measure(workers, duration, Some(server))
}

/// The floor of any agent on this machine: a child process (`--floor-server`) that answers
/// the same request frames on a Unix socket with the least work an agent can do — a thread
/// per connection with its own session, one read, the protocol's decode, `C_Sign`, the
/// reply's encode, one write — and none of keyward's (policy, session pool, audit, metrics,
/// watchdog). The agent's figures minus the floor's are what keyward itself adds.
struct FloorServer {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl FloorServer {
    fn start(site: &Site) -> Result<Self> {
        use std::io::BufRead as _;
        let socket = site.hsm.dir.path().join("floor.sock");
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut child = Command::new(exe)
            .env("SOFTHSM2_CONF", &site.hsm.conf)
            .arg("--floor-server")
            .arg(&site.hsm.module)
            .arg(&site.hsm.label)
            .arg(&site.hsm.pin_file)
            .arg(&socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the floor server")?;
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().context("floor server stdout")?).read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the floor server did not start");
        }
        Ok(Self { child, socket })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: `--floor-server MODULE TOKEN PIN_FILE SOCKET`; says `ready` on stdout once it
/// listens, then serves until killed.
fn floor_server(args: &[String]) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let [module, token, pin_file, socket] = args else {
        bail!("--floor-server needs MODULE TOKEN PIN_FILE SOCKET");
    };
    let ctx = Pkcs11::new(Path::new(module))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == token))
        .with_context(|| format!("no token `{token}`"))?;
    let login = ctx.open_rw_session(slot)?;
    let pin = Pin::from_file(Path::new(pin_file))?;
    login.login(UserType::User, Some(&AuthPin::from(pin.expose())))?;
    drop(pin);
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        let session = ctx.open_rw_session(slot)?;
        std::thread::spawn(move || -> Result<()> {
            let mut buf = vec![0u8; 16 << 10];
            let mut keys = std::collections::HashMap::new();
            loop {
                let mut have = 0;
                let len = loop {
                    let n = stream.read(&mut buf[have..])?;
                    if n == 0 {
                        return Ok(());
                    }
                    have += n;
                    if have >= 4 {
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if have >= 4 + len {
                            break len;
                        }
                    }
                };
                let request =
                    keyward_protocol::decode_request(&buf[4..4 + len]).map_err(|e| anyhow::anyhow!(e.message))?;
                let Operation::Sign { key, profile, data } = request.op else { bail!("not a sign request") };
                let case = *CASES.iter().find(|c| c.key == key.as_str()).context("unknown key")?;
                let handle = match keys.get(&key) {
                    Some(handle) => *handle,
                    None => {
                        let found = session.find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(key.as_str().as_bytes().to_vec()),
                        ])?;
                        let handle = *found.first().context("no such key")?;
                        keys.insert(key, handle);
                        handle
                    }
                };
                let signature = if case.profile == SignProfile::Nvflare {
                    let pss = Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                        hash_alg: MechanismType::SHA256,
                        mgf: PkcsMgfType::MGF1_SHA256,
                        s_len: 222u64.into(),
                    });
                    session.sign(&pss, handle, &data)?
                } else {
                    let raw = session.sign(&Mechanism::Ecdsa, handle, &sha2::Sha256::digest(&data))?;
                    keyward_core::signature::ecdsa_p256_raw_to_der(&raw)?
                };
                let reply = Response::ok(request.id, Reply::Signature { profile, signature });
                stream.write_all(&keyward_protocol::encode_frame(&reply)?)?;
            }
        });
    }
    drop(login);
    Ok(())
}

/// Set in an in-process child's environment: after its warm-up it says [`TRACE_READY`] on
/// stderr and waits this many milliseconds before measuring, for strace to attach.
const TRACE_PAUSE_ENV: &str = "KEYWARD_BENCH_TRACE_PAUSE_MS";
const TRACE_READY: &str = "keyward-bench: warmed up";

/// The raw loop's system calls per request (SoftHSM's own): the in-process child with
/// strace attached after its warm-up, so module loading and login are not counted.
fn raw_syscalls_per_request(site: &Site, case: Case, clients: usize, time: Duration) -> Result<f64> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut child = Command::new(exe)
        .env("SOFTHSM2_CONF", &site.hsm.conf)
        .env(TRACE_PAUSE_ENV, "500")
        .arg("--in-process")
        .args([
            Route::Cryptoki.arg(),
            case.key,
            &clients.to_string(),
            &time.min(Duration::from_secs(1)).as_secs_f64().to_string(),
        ])
        .arg(&site.hsm.module)
        .arg(&site.hsm.label)
        .arg(&site.hsm.pin_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running the in-process phase")?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().context("child stderr")?);
    let mut line = String::new();
    while stderr.read_line(&mut line)? > 0 && !line.contains(TRACE_READY) {
        line.clear();
    }
    let out = site.hsm.dir.path().join(format!("strace-raw-{}-{clients}.txt", case.key));
    let trace = SyscallCount::attach(child.id(), &out)?;
    let output = child.wait_with_output().context("waiting for the in-process phase")?;
    let calls = trace.finish()?;
    let sample = Sample::from_json(&serde_json::from_slice(&output.stdout).context("in-process phase output")?)?;
    Ok(calls as f64 / sample.ops.max(1) as f64)
}

/// The agent's system calls per request: a short extra run of `clients` clients with
/// `strace -c -f` attached to the agent (slowed down by it, so no timing is kept).
fn syscalls_per_request(site: &Site, agent: &AgentProcess, case: Case, clients: usize, time: Duration) -> Result<f64> {
    let out = site.hsm.dir.path().join(format!("strace-{}-{clients}.txt", case.key));
    let trace = SyscallCount::attach(agent.pid(), &out)?;
    let sample = measure_agent(agent, case, clients, time.min(Duration::from_secs(1)));
    let calls = trace.finish()?;
    Ok(calls as f64 / sample?.ops.max(1) as f64)
}

fn check_len(len: usize) -> Result<()> {
    if len < 64 {
        bail!("signature of {len} bytes");
    }
    Ok(())
}

/// Runs each worker on its own thread: a warm-up, then all start together and sign until
/// `duration` has passed. CPU is read from `/proc` around the measured part: of `server`
/// when given (the agent; the bench's own CPU is then the client's), else of this process.
fn measure<W>(workers: Vec<W>, duration: Duration, server: Option<u32>) -> Result<Sample>
where
    W: FnMut() -> Result<()> + Send + 'static,
{
    let warmup = (duration / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
    let barrier = Arc::new(Barrier::new(workers.len() + 1));
    let threads: Vec<_> = workers
        .into_iter()
        .map(|mut work| {
            let barrier = Arc::clone(&barrier);
            // The worker comes back with the result: its connection must outlive the CPU and
            // context-switch readings (a closed connection ends its agent thread, and with it
            // that thread's counts).
            std::thread::spawn(move || -> Result<(Instant, Instant, Vec<u64>, W)> {
                let warm_until = Instant::now() + warmup;
                let mut warm = Ok(());
                while warm.is_ok() && Instant::now() < warm_until {
                    warm = work();
                }
                // Twice: all warmed up; then go, once the main thread has read the CPU times.
                barrier.wait();
                barrier.wait();
                warm?;
                let start = Instant::now();
                let deadline = start + duration;
                let mut latencies = Vec::with_capacity(1 << 16);
                loop {
                    let t = Instant::now();
                    work()?;
                    let end = Instant::now();
                    latencies.push((end - t).as_nanos() as u64);
                    if end >= deadline {
                        return Ok((start, end, latencies, work));
                    }
                }
            })
        })
        .collect();
    let signer_pid = server.unwrap_or_else(std::process::id);
    barrier.wait();
    if let Some(pause) = std::env::var_os(TRACE_PAUSE_ENV) {
        // The parent attaches strace now (`raw_syscalls_per_request`).
        eprintln!("{TRACE_READY}");
        std::thread::sleep(Duration::from_millis(pause.to_str().and_then(|p| p.parse().ok()).unwrap_or(500)));
    }
    let cpu_before = (process_cpu(signer_pid), process_cpu(std::process::id()));
    let switches_before = server.map(context_switches).transpose()?;
    barrier.wait();
    let mut all = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut finished = Vec::new();
    for thread in threads {
        let (start, end, latencies, work) = thread.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        finished.push(work);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        all.extend(latencies);
    }
    let (signer_after, self_after) = (process_cpu(signer_pid)?, process_cpu(std::process::id())?);
    let switches_after = server.map(context_switches).transpose()?;
    drop(finished);
    let switches = switches_before.zip(switches_after).map(|(b, a)| switches_between(&b, &a));
    let (signer_before, self_before) = (cpu_before.0?, cpu_before.1?);
    let (Some(first), Some(last)) = (first, last) else { bail!("no workers") };
    all.sort_unstable();
    Ok(Sample {
        ops: all.len() as u64,
        wall: last - first,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        signer_cpu: signer_after.saturating_sub(signer_before),
        client_cpu: server.map(|_| self_after.saturating_sub(self_before)),
        switches,
    })
}

fn process_cpu(pid: u32) -> Result<Duration> {
    cpu_time(pid).with_context(|| format!("/proc/{pid}/stat"))
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// One line of the table.
struct Row {
    case: Case,
    clients: usize,
    route: Route,
    /// The round with the median rate.
    median: Sample,
    /// Slowest and fastest round, ops/s.
    range: (f64, f64),
    /// Median of the per-round ratios to the raw loop.
    vs_raw: f64,
    /// Signer and client CPU per operation over all rounds, µs.
    cpu_per_op: (f64, Option<f64>),
    /// The agent's context switches per request, voluntary and not (agent path only).
    switches: Option<(f64, f64)>,
    /// System calls per request of the signing process, from a separate run under strace
    /// (raw and agent paths).
    syscalls: Option<f64>,
}

/// The agent against the socket floor of the same case and rounds: what keyward itself adds
/// on top of the round trip, decode, `C_Sign` and encode that any agent needs.
fn print_agent_vs_floor(rows: &[Row]) {
    println!("### The agent against the socket floor (what keyward itself adds)\n");
    println!(
        "| key / profile | clients | floor ops/s | agent ops/s | floor / raw | agent / raw | p50 floor µs | p50 agent µs | \
         agent − floor p50 µs | CPU floor µs/op | CPU agent µs/op | agent − floor CPU µs/op | ctx switches/req floor / agent |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for case in CASES {
        for clients in CLIENTS {
            let (Some(floor), Some(agent)) =
                (find(rows, case.key, clients, Route::Floor), find(rows, case.key, clients, Route::Agent))
            else {
                continue;
            };
            let switches = |r: &Row| r.switches.map_or_else(|| "–".into(), |(v, n)| format!("{:.2}", v + n));
            println!(
                "| {} | {clients} | {:.0} | {:.0} | {:.3} | {:.3} | {} | {} | {:+.1} | {:.1} | {:.1} | {:+.1} | {} / {} |",
                case.title,
                floor.median.ops_per_sec(),
                agent.median.ops_per_sec(),
                floor.vs_raw,
                agent.vs_raw,
                us(floor.median.p50),
                us(agent.median.p50),
                (agent.median.p50.as_secs_f64() - floor.median.p50.as_secs_f64()) * 1e6,
                floor.cpu_per_op.0,
                agent.cpu_per_op.0,
                agent.cpu_per_op.0 - floor.cpu_per_op.0,
                switches(floor),
                switches(agent),
            );
        }
    }
    println!();
    println!(
        "floor: a child process serving the same frames on a Unix socket with a thread and a session per connection, \
         one read, the protocol's decode, C_Sign, the reply's encode and one write, nothing else; measured in the same \
         rounds as the agent, with the same client."
    );
    println!();
}

fn find<'a>(rows: &'a [Row], key: &str, clients: usize, route: Route) -> Option<&'a Row> {
    rows.iter().find(|r| r.case.key == key && r.clients == clients && r.route == route)
}

fn print_report(options: &Options, rows: &[Row], date: &str, load: [&str; 2]) {
    let args: String = options.args.iter().map(|a| format!(" {a}")).collect();
    let args = if args.is_empty() { args } else { format!(" --{args}") };
    println!("## keyward-bench, SoftHSM2\n");
    println!("- date (start): {date}");
    println!("- command: `cargo run --release -p keyward-tests --bin keyward-bench{args}`");
    println!(
        "- machine: {} × {} (nproc), kernel {}",
        command_output(&["nproc"]),
        cpu_model(),
        command_output(&["uname", "-r"])
    );
    println!("- SoftHSM: `{}`", command_output(&["dpkg-query", "-W", "softhsm2"]).replace('\t', " "));
    println!("- load average before / after: `{}` / `{}`", load[0], load[1]);
    println!("- agent binary: `{}`", keyward_tests::tools::keyward_bin().display());
    println!(
        "- {} s per case and path, as {ROUNDS} interleaved rounds (each after a warm-up); message {} bytes; \
         the agent has the default 2 sessions (`workers`)",
        options.seconds,
        MESSAGE.len()
    );
    println!();
    println!(
        "| key / profile | clients | path | ops/s | rounds min–max | p50 µs | p99 µs | vs raw | signer CPU µs/op | client CPU µs/op |"
    );
    println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|");
    for Row { case, clients, route, median: s, range: (min, max), vs_raw, cpu_per_op: (signer, client), .. } in rows {
        let client = client.map_or_else(|| "–".to_owned(), |c| format!("{c:.0}"));
        println!(
            "| {} | {clients} | {} | {:.0} | {min:.0}–{max:.0} | {} | {} | {:.1}% | {:.0} | {client} |",
            case.title,
            route.title(),
            s.ops_per_sec(),
            us(s.p50),
            us(s.p99),
            100.0 * vs_raw,
            signer,
        );
    }
    println!();
    println!(
        "ops/s, p50, p99: the median of {ROUNDS} rounds; vs raw: the median of the per-round ratios to the raw cryptoki \
         loop of the same case; CPU: over all rounds."
    );
    println!("signer CPU: utime+stime of the process that calls C_Sign (the bench child for in-process paths, the agent for the socket path) per operation; client CPU: the bench process driving the agent.");
    println!();
    print_agent_vs_raw(rows);
}

/// The issue 12 view: the agent against the raw cryptoki loop of the same case and round,
/// with what the agent adds per request (latency, CPU, context switches, system calls).
fn print_agent_vs_raw(rows: &[Row]) {
    println!("### The agent against in-process SoftHSM (issue 12)\n");
    println!(
        "| key / profile | clients | raw ops/s | agent ops/s | agent / raw | p50 raw µs | p50 agent µs | added p50 µs | \
         CPU raw µs/op | CPU agent µs/op | added CPU µs/op | agent ctx switches/req (vol + invol) | syscalls/req raw / agent |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for case in CASES {
        for clients in CLIENTS {
            let (Some(raw), Some(agent)) =
                (find(rows, case.key, clients, Route::Cryptoki), find(rows, case.key, clients, Route::Agent))
            else {
                continue;
            };
            let switches =
                agent.switches.map_or_else(|| "–".into(), |(v, n)| format!("{:.2} ({v:.2} + {n:.2})", v + n));
            let calls = |r: &Row| r.syscalls.map_or_else(|| "–".into(), |c| format!("{c:.1}"));
            let syscalls = format!("{} / {}", calls(raw), calls(agent));
            println!(
                "| {} | {clients} | {:.0} | {:.0} | {:.3} | {} | {} | {:+.1} | {:.1} | {:.1} | {:+.1} | {switches} | {syscalls} |",
                case.title,
                raw.median.ops_per_sec(),
                agent.median.ops_per_sec(),
                agent.vs_raw,
                us(raw.median.p50),
                us(agent.median.p50),
                (agent.median.p50.as_secs_f64() - raw.median.p50.as_secs_f64()) * 1e6,
                raw.cpu_per_op.0,
                agent.cpu_per_op.0,
                agent.cpu_per_op.0 - raw.cpu_per_op.0,
            );
        }
    }
    println!();
    println!(
        "agent / raw: median of the per-round ratios; added p50: agent p50 − raw p50 (medians); CPU: utime+stime per \
         request of the signing process (raw: the bench child; agent: the agent process); context switches: all agent \
         threads (/proc/<pid>/task/*/status) over the measured rounds; system calls: every thread of the signing process \
         (raw: the bench child after its warm-up, i.e. SoftHSM's own; agent: the agent) under `strace -c -f` in a \
         separate short run (not timed)."
    );
    println!();
    print_agent_vs_floor(rows);
    println!("#### Targets (issue 12)\n");
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let agent = |key: &str, clients: usize| find(rows, key, clients, Route::Agent);
    let raw = |key: &str, clients: usize| find(rows, key, clients, Route::Cryptoki);
    for (key, name, clients, target) in
        [("rsa", "RSA-2048", 1, 0.95), ("rsa", "RSA-2048", 2, 0.95), ("ec", "P-256", 1, 0.65), ("ec", "P-256", 2, 0.85)]
    {
        if let Some(a) = agent(key, clients) {
            println!(
                "- {name}, {clients} client(s): agent / raw = {:.3} (target ≥ {target}): {}",
                a.vs_raw,
                verdict(a.vs_raw >= target)
            );
        }
    }
    if let (Some(one), Some(two)) = (agent("rsa", 1), agent("rsa", 2)) {
        let scale = two.median.ops_per_sec() / one.median.ops_per_sec();
        println!("- RSA-2048 agent 2 clients / 1 client: {scale:.2}× (target ≥ 1.85×): {}", verdict(scale >= 1.85));
    }
    if let (Some(a), Some(r)) = (agent("ec", 1), raw("ec", 1)) {
        let added = (a.median.p50.as_secs_f64() - r.median.p50.as_secs_f64()) * 1e6;
        println!("- P-256, 1 client: added p50 {added:.1} µs (target ≤ 25 µs): {}", verdict(added <= 25.0));
    }
    for key in ["rsa", "ec"] {
        if let (Some(a), Some(r)) = (agent(key, 1), raw(key, 1)) {
            let added = a.cpu_per_op.0 - r.cpu_per_op.0;
            println!(
                "- {key}, 1 client: agent CPU per request {added:+.1} µs over in-process (target ≤ +15 µs): {}",
                verdict(added <= 15.0)
            );
        }
    }
    for key in ["rsa", "ec"] {
        if let Some(a) = agent(key, 32) {
            println!("- {key}, 32 clients: agent / raw = {:.3} (nothing may collapse)", a.vs_raw);
        }
    }
}
