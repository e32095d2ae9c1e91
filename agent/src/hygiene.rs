//! Process hygiene for the agent, applied before it reads the PIN: no core dumps
//! (`RLIMIT_CORE` 0) and not dumpable (`PR_SET_DUMPABLE` 0, which also keeps other processes
//! of the same user from ptrace-attaching and reading its memory). Failures are logged, not
//! fatal: a hardened environment may already forbid the calls. Also the refusal to run as
//! root unless the config allows it (`[agent] allow_root`).

/// `keyward serve` ran as root without `[agent] allow_root = true`.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to run as root (effective uid 0): run the agent as its own user (see deploy/systemd/keyward.service), \
     or set `allow_root = true` in the `[agent]` table of the config"
)]
pub struct RootRefused;

/// Refuses an effective uid of 0 unless `allow_root`; logs a warning when allowed.
///
/// # Errors
/// [`RootRefused`] when running as root without `allow_root`.
pub fn check_not_root(allow_root: bool) -> Result<(), RootRefused> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    if !allow_root {
        return Err(RootRefused);
    }
    tracing::warn!("running as root because `agent.allow_root = true`; a dedicated user is safer");
    Ok(())
}

/// Applies the settings.
pub fn harden_process() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Under the systemd unit the limit is already 0 (LimitCORE=0) and setrlimit is filtered
    // out (SystemCallFilter=~@resources): only set it when needed.
    let already_off = getrlimit(Resource::RLIMIT_CORE).is_ok_and(|limits| limits == (0, 0));
    if !already_off {
        if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
            tracing::warn!(error = %e, "cannot disable core dumps (RLIMIT_CORE)");
        }
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable (PR_SET_DUMPABLE)");
    }
}
