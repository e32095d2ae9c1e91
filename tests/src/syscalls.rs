//! System calls a process makes while some work runs, counted by `strace -c -f -p PID`
//! (every thread of the process, none of the caller's). For the benchmarks only: strace
//! slows the traced process a lot, so the counts are divided by the requests served while
//! it was attached, and no timing is taken in the same window.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `strace -c` attached to a process.
pub struct SyscallCount {
    child: Child,
    out: PathBuf,
}

impl SyscallCount {
    /// Attaches to every thread of `pid`; the summary goes to `out`.
    ///
    /// # Errors
    /// When strace is missing (install it with `softhsm-setup/install-packages.sh`) or does
    /// not attach.
    pub fn attach(pid: u32, out: &Path) -> Result<Self> {
        let child = Command::new("strace")
            .args(["-c", "-f", "-q", "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strace (apt-get install strace; softhsm-setup/install-packages.sh)")?;
        // strace prints nothing once attached with -q; give it time to stop every thread.
        let attached = Instant::now();
        while attached.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, out: out.to_owned() })
    }

    /// Detaches and returns the number of system calls made while attached.
    ///
    /// # Errors
    /// When strace failed or its summary cannot be read.
    pub fn finish(mut self) -> Result<u64> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).context("strace pid")?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).context("stopping strace")?;
        let status = self.child.wait().context("waiting for strace")?;
        let summary = std::fs::read_to_string(&self.out).context("reading the strace summary")?;
        total_calls(&summary).with_context(|| format!("strace ({status}) summary without a total:\n{summary}"))
    }
}

/// The `calls` column of the `total` line of an `strace -c` summary.
fn total_calls(summary: &str) -> Result<u64> {
    let Some(line) = summary.lines().rev().find(|l| l.trim_end().ends_with("total")) else {
        bail!("no total line");
    };
    // `% time  seconds  usecs/call  calls  [errors]  total`
    let fields: Vec<&str> = line.split_whitespace().collect();
    Ok(fields.get(3).context("short total line")?.parse()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_total_is_read_with_or_without_errors() {
        let with = "------ ----------- ----------- --------- --------- ----------------\n100.00    0.012345           3      4567        12 total\n";
        assert_eq!(super::total_calls(with).unwrap(), 4567);
        let without = "100.00    0.000100           1        89           total\n";
        assert_eq!(super::total_calls(without).unwrap(), 89);
    }
}
