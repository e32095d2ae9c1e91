//! Process hygiene for the agent, applied before it reads the PIN: no core dumps
//! (`RLIMIT_CORE` 0) and not dumpable (`PR_SET_DUMPABLE` 0, which also keeps other processes
//! of the same user from ptrace-attaching and reading its memory). Failures are logged, not
//! fatal: a hardened environment may already forbid the calls.

/// Applies the settings.
pub fn harden_process() {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps (RLIMIT_CORE)");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable (PR_SET_DUMPABLE)");
    }
}
