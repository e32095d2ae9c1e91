//! `tpm-bench`: signing on a fresh swtpm, in one run, raw tss-esapi against the keyward
//! agent, for RSA-2048 `nvflare` (maximum-salt PSS: software EMSA-PSS + TPM2_RSA_Decrypt),
//! RSA-2048 `tls-rsa-pss-sha256` (TPM2_Sign RSAPSS) and P-256 `tls-ecdsa-p256-sha256`
//! (TPM2_Sign ECDSA); one sequential client (swtpm serves one connection at a time).
//!
//! - `raw tss-esapi`: its own ESAPI context, the key loaded once, the TPM command the
//!   profile maps to in a loop, once with a password session (the limit; keyward before its
//!   keys had their own auth value) and once with a salted HMAC session kept open (what
//!   keyward does now, so the auth value never crosses the bus: the difference is its cost);
//! - `agent`: the real `keyward serve` on the same swtpm, one blocking client connection.
//!
//! The routes take turns in [`ROUNDS`] rounds; the agent is started for its turn and
//! stopped after it, so the raw loop has the TPM to itself (swtpm has no resource manager).
//! The issue 12 targets compare the agent with the HMAC-session loop: like with like. The
//! agent's context switches per request (all its threads) are shown next to the ratios.
//!
//! Usage: `cargo run --release -p keyward-tests --bin tpm-bench -- [--quick] [--seconds N]`
//! (or `scripts/bench.sh`). Prints a Markdown table for `docs/benchmarks.md`; never
//! asserts a speed.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use keyward_client::BlockingAgentClient;
use keyward_core::KeyId;
use keyward_protocol::{Operation, Reply};
use keyward_tests::procstat::{context_switches, switches_between};
use keyward_tests::report::{command_output, cpu_model, percentile};
use keyward_tests::{AgentProcess, AgentSite, TpmSite};
use sha2::Digest as _;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, EccScheme, HashScheme, HashcheckTicket, PublicKeyRsa, RsaDecryptionScheme, RsaExponent,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// What every request signs: the size of an NVFlare challenge (client CN + nonce).
const MESSAGE: &[u8] = b"site-1:3f9c2a7e51d84b06a1c3e5f7092b4d6e8f1a3c5e7092b4d6e8f1a3c5e7";
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
struct Case {
    key: &'static str,
    profile: &'static str,
    title: &'static str,
}

const CASES: [Case; 3] = [
    Case { key: "rsa", profile: "nvflare", title: "RSA-2048 `nvflare` (salt 222)" },
    Case { key: "rsa", profile: "tls-rsa-pss-sha256", title: "RSA-2048 `tls-rsa-pss-sha256`" },
    Case { key: "ec", profile: "tls-ecdsa-p256-sha256", title: "P-256 `tls-ecdsa-p256-sha256`" },
];

struct Sample {
    ops: u64,
    wall: Duration,
    latencies: Vec<u64>,
    /// The agent's context switches during the measurement (agent route only).
    switches: Option<(u64, u64)>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
}

/// Calls `op` until `duration` is over, recording each latency.
fn measure(duration: Duration, mut op: impl FnMut() -> Result<()>) -> Result<Sample> {
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        op()?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let wall = start.elapsed();
    latencies.sort_unstable();
    Ok(Sample { ops: latencies.len() as u64, wall, latencies, switches: None })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 3.0;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => seconds = 0.3,
            "--seconds" => seconds = iter.next().context("--seconds needs a value")?.parse()?,
            other => bail!("unknown argument `{other}` (usage: tpm-bench [--quick] [--seconds N])"),
        }
    }
    let duration = Duration::from_secs_f64(seconds / ROUNDS as f64);

    let site = TpmSite::new();
    site.generate("rsa", "rsa-2048");
    site.generate("ec", "p-256");

    println!("## Signing on swtpm: raw tss-esapi vs through the agent");
    println!();
    println!(
        "{} · {} cores · {} · {} · {seconds} s per route and case, {ROUNDS} interleaved rounds, 1 sequential client",
        command_output(&["date", "-u", "+%Y-%m-%d"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        command_output(&["swtpm", "--version"]),
    );
    println!();
    println!("agent binary: `{}`", keyward_tests::tools::keyward_bin().display());
    println!();
    println!("| case | route | ops/s | p50 | p99 | vs raw (password) | vs raw (HMAC, like with like) | agent ctx switches/req |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut targets = Vec::new();
    for case in CASES {
        let (mut raw_samples, mut hmac_samples, mut agent_samples) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            // swtpm serves one connection at a time: each route has it to itself in turn.
            raw_samples.push(RawTpm::connect(&site.swtpm.tcti(), false)?.run(case, duration)?);
            hmac_samples.push(RawTpm::connect(&site.swtpm.tcti(), true)?.run(case, duration)?);
            agent_samples.push(through_agent(&site, case, duration)?);
        }
        let raw_rate = median(raw_samples.iter().map(Sample::rate));
        let hmac_rate = median(hmac_samples.iter().map(Sample::rate));
        for (route, samples) in [
            ("raw tss-esapi, password session", &raw_samples),
            ("raw tss-esapi, salted HMAC session", &hmac_samples),
            ("agent socket (HMAC session)", &agent_samples),
        ] {
            let mut all: Vec<u64> = samples.iter().flat_map(|s| s.latencies.iter().copied()).collect();
            all.sort_unstable();
            let rate = median(samples.iter().map(Sample::rate));
            let switches = samples
                .iter()
                .map(|s| s.switches)
                .try_fold((0, 0), |(v, n), s| s.map(|(sv, sn)| (v + sv, n + sn)))
                .map_or_else(
                    || "–".to_owned(),
                    |(v, n)| {
                        let ops = samples.iter().map(|s| s.ops).sum::<u64>().max(1) as f64;
                        format!("{:.2} ({:.2} + {:.2})", (v + n) as f64 / ops, v as f64 / ops, n as f64 / ops)
                    },
                );
            println!(
                "| {} | {route} | {rate:.0} | {:.0} µs | {:.0} µs | {:.1} % | {:.1} % | {switches} |",
                case.title,
                percentile(&all, 0.50).as_secs_f64() * 1e6,
                percentile(&all, 0.99).as_secs_f64() * 1e6,
                100.0 * rate / raw_rate,
                100.0 * rate / hmac_rate,
            );
        }
        let agent_rate = median(agent_samples.iter().map(Sample::rate));
        targets.push((case, agent_rate / hmac_rate));
    }
    println!();
    println!("Targets (issue 12), the agent against raw tss-esapi with the same salted HMAC session:");
    println!();
    for (case, ratio) in targets {
        let target = if case.key == "ec" { 0.90 } else { 0.97 };
        let verdict = if ratio >= target { "met" } else { "not met" };
        println!("- {}: {ratio:.3} (target ≥ {target}): {verdict}", case.title);
    }
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The agent route: start `keyward serve`, sign in a loop over one connection, stop it.
fn through_agent(site: &TpmSite, case: Case, duration: Duration) -> Result<Sample> {
    let agent = AgentProcess::start(site);
    let mut client = BlockingAgentClient::connect(&site.socket(), Duration::from_secs(10))?;
    let key = KeyId::new(case.key)?;
    // One warm-up request loads the key, as the raw route loads it before measuring.
    let mut sign = || -> Result<()> {
        let op = Operation::Sign { key: key.clone(), profile: case.profile.into(), data: MESSAGE.to_vec() };
        match client.call(op)? {
            Reply::Signature { .. } => Ok(()),
            other => bail!("unexpected reply {other:?}"),
        }
    };
    sign()?;
    let before = context_switches(agent.pid())?;
    let mut sample = measure(duration, sign)?;
    sample.switches = Some(switches_between(&before, &context_switches(agent.pid())?));
    drop(agent);
    Ok(sample)
}

/// Raw tss-esapi: a context, the storage primary (keyward's template) and both keys created
/// under it with keyward's templates, loaded once, and the session keys are used in.
struct RawTpm {
    ctx: Context,
    rsa: tss_esapi::handles::KeyHandle,
    ec: tss_esapi::handles::KeyHandle,
    session: AuthSession,
}

impl RawTpm {
    /// `hmac`: use keys through a salted HMAC session (as keyward does), else a password one.
    fn connect(tcti: &str, hmac: bool) -> Result<Self> {
        let mut ctx = Context::new(TctiNameConf::from_str(tcti)?)?;
        let template = tss_esapi::utils::create_restricted_decryption_rsa_public(
            SymmetricDefinitionObject::AES_128_CFB,
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )?;
        let primary = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })?
            .key_handle;
        let rsa_template = tss_esapi::utils::create_unrestricted_encryption_decryption_rsa_public(
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )?;
        let ec_template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )?;
        let mut load = |public| -> Result<tss_esapi::handles::KeyHandle> {
            Ok(ctx.execute_with_session(Some(AuthSession::Password), |c| {
                let created = c.create(primary, public, None, None, None, None)?;
                c.load(primary, created.out_private, created.out_public)
            })?)
        };
        let (rsa, ec) = (load(rsa_template)?, load(ec_template)?);
        let session = if hmac {
            let session = ctx
                .execute_without_session(|c| {
                    c.start_auth_session(
                        Some(primary),
                        None,
                        None,
                        tss_esapi::constants::SessionType::Hmac,
                        tss_esapi::structures::SymmetricDefinition::AES_128_CFB,
                        HashingAlgorithm::Sha256,
                    )
                })?
                .context("no HMAC session")?;
            let (attributes, mask) =
                tss_esapi::attributes::SessionAttributesBuilder::new().with_continue_session(true).build();
            ctx.tr_sess_set_attributes(session, attributes, mask)?;
            session
        } else {
            AuthSession::Password
        };
        ctx.flush_context(primary.into())?;
        Ok(Self { ctx, rsa, ec, session })
    }

    fn run(&mut self, case: Case, duration: Duration) -> Result<Sample> {
        let (rsa, ec) = (self.rsa, self.ec);
        let ctx = &mut self.ctx;
        ctx.set_sessions((Some(self.session), None, None));
        let ticket = || {
            HashcheckTicket::try_from(tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
                tag: tss_esapi::constants::tss::TPM2_ST_HASHCHECK,
                hierarchy: tss_esapi::constants::tss::TPM2_RH_NULL,
                digest: Default::default(),
            })
        };
        let digest = || Digest::try_from(sha2::Sha256::digest(MESSAGE).to_vec());
        match case.profile {
            "nvflare" => measure(duration, || {
                let mut salt = [0u8; 222];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
                let em = keyward_core::pss::encode_sha256(&sha2::Sha256::digest(MESSAGE), 2047, &salt)?;
                let mut input = vec![0u8; 256 - em.len()];
                input.extend(em);
                ctx.rsa_decrypt(rsa, PublicKeyRsa::try_from(input)?, RsaDecryptionScheme::Null, Data::default())?;
                Ok(())
            }),
            "tls-rsa-pss-sha256" => measure(duration, || {
                let scheme = SignatureScheme::RsaPss { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
                ctx.sign(rsa, digest()?, scheme, ticket()?)?;
                Ok(())
            }),
            _ => measure(duration, || {
                let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
                ctx.sign(ec, digest()?, scheme, ticket()?)?;
                Ok(())
            }),
        }
    }
}
