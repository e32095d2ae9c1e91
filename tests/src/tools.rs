//! Locating the binaries and tools tests run: the built `keyward`, openssl, the project's
//! Python venv; and stopping a child process a fixture started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `keyward` binary: `$KEYWARD_BIN`, else next to this test executable in `target/`.
pub fn keyward_bin() -> PathBuf {
    match std::env::var_os("KEYWARD_BIN") {
        Some(p) => PathBuf::from(p),
        None => sibling_bin("keyward"),
    }
}

/// A binary of this workspace built into the same `target/<profile>/` as the running one.
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "`{}` not found: build the workspace first (cargo build --workspace --all-targets, or scripts/test.sh)",
        bin.display()
    );
    bin
}

/// The Python with `cryptography` installed: `$KEYWARD_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("KEYWARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(p.exists(), "Python venv `{}` missing: run scripts/python-venv.sh", p.display());
    p
}

/// Runs openssl with `args`, returning its output (never panics on a non-zero exit).
pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().expect("openssl is installed (scripts/install-packages.sh)")
}

/// Runs a Python snippet with arguments; returns the output.
pub fn run_python(code: &str, args: &[&str]) -> Output {
    Command::new(python()).arg("-c").arg(code).args(args).output().expect("python runs")
}

/// Runs `keyward ARGS` as uid/gid 65534 (`nobody`, no groups) with `env` added, from a copy of
/// the binary in `dir` that `nobody` may execute (the build tree may be private to its owner;
/// `dir` must be reachable by `nobody`).
pub fn keyward_as_nobody(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("keyward-for-nobody");
    if !bin.exists() {
        std::fs::copy(keyward_bin(), &bin).expect("copy keyward");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod keyward copy");
    }
    // A copy just written can be briefly "text file busy" while another test's fork still
    // holds the write descriptor; that is a harness race, so retry it, nothing else.
    for _ in 0..20 {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env_remove("KEYWARD_CONFIG")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()
            .expect("setpriv (util-linux) runs");
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("`{}` stayed busy", bin.display());
}

/// Asserts a command succeeded, showing its output when not.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops a child the test started: SIGTERM, up to 5 s to exit, then SIGKILL. Only this
/// child's PID is signalled.
pub fn stop_child(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
