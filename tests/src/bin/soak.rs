//! `soak`: the long soak of `keyward_tests::soak` — by default 64 clients for 5 minutes on
//! a fresh SoftHSM token — printing its figures for `docs/reliability.md`. Exits non-zero on
//! any wrong answer, a lost or extra audit record, a broken audit chain, or fds not back to
//! their idle count. CI runs the short version as `tests/soak.rs`.
//!
//! Usage: `cargo run --release -p keyward-tests --bin soak -- [--clients N] [--seconds S]`
//! (build the agent first: `cargo build --release -p keyward-agent`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keyward_tests::report::{command_output, cpu_model};
use keyward_tests::soak::{self, SoakConfig};

fn parse_args() -> Result<SoakConfig> {
    let mut config =
        SoakConfig { clients: 64, duration: Duration::from_secs(300), sample_every: Duration::from_secs(5) };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = args.next().with_context(|| format!("`{name}` needs a value"))?;
            v.parse().with_context(|| format!("`{name}` takes a positive integer, not `{v}`"))
        };
        match arg.as_str() {
            "--clients" => config.clients = usize::try_from(value("--clients")?)?,
            "--seconds" => config.duration = Duration::from_secs(value("--seconds")?),
            other => bail!("unknown argument `{other}` (usage: soak [--clients N] [--seconds S])"),
        }
    }
    if config.clients == 0 || config.duration.is_zero() {
        bail!("--clients and --seconds must be greater than zero");
    }
    Ok(config)
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = soak::run(config);
    println!("machine: {} ({} cores), {}", cpu_model(), command_output(&["nproc"]), command_output(&["uname", "-sr"]));
    println!("date: {}", command_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]));
    print!("{}", report.markdown());
    print!("{}", report.series(Duration::from_secs(30)));
    for w in &report.wrong {
        println!("wrong: {w}");
    }
    let failed = report.wrong_count > 0
        || report.audit_found != report.audit_expected
        || report.audit_signs_ok != report.counts.sign
        || !report.audit_chain_intact
        || report.after.fds > report.baseline.fds;
    if failed {
        eprintln!("soak: FAILED (see above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
