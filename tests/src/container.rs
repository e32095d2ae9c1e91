//! [`Container`]: a real systemd booted as PID 1 of a `systemd-nspawn` container over the
//! Debian 12 tree `scripts/service-tree.sh` builds (and caches), with
//! `--volatile=overlay` so every boot starts from the same tree and writes go to a tmpfs.
//! Never a systemd on the machine's own root: its tmpfiles would clean the host's `/tmp`.
//!
//! Commands run inside through `nsenter` into the container's namespaces (as root, or as a
//! user of the tree through `setpriv`); files are written through `/proc/<leader>/root`.
//! `Drop` asks the container to power off (SIGTERM to our own `systemd-nspawn`, which
//! forwards it to the container's systemd as SIGRTMIN+3) and kills it by PID if it is still
//! there after 30 s.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{assert_success, keyward_bin, workspace_root};

/// How long boot may take before the test fails.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The agent's user in the tree (`service-tree.sh`).
pub const KEYWARD_UID: u32 = 990;
/// The caller user (`flare`, as NVFlare runs) in the tree.
pub const FLARE_UID: u32 = 2001;

/// A booted container.
pub struct Container {
    nspawn: Child,
    leader: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// Holds the 0755 copy of `keyward` bound into the tree ([`Container::boot`]).
    _binary: Option<tempfile::TempDir>,
    /// How long `service-tree.sh` took (seconds; a cached tree takes well under one).
    pub tree_seconds: f64,
    /// How long the boot took until `systemctl is-system-running --wait` returned.
    pub boot_seconds: f64,
}

/// Builds the tree when missing (`scripts/service-tree.sh`), returning its path and the
/// time it took.
pub fn service_tree() -> (PathBuf, f64) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/service-tree.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/service-tree.sh");
    assert_success(&out, "scripts/service-tree.sh");
    let tree = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
    (tree, started.elapsed().as_secs_f64())
}

/// A copy of the freshly built `keyward`, mode 0755, in a folder of its own: the build's own
/// file may be 0700 (CI builds under `umask 077`), which the tree's users could not execute.
fn executable_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("kwbin").tempdir_in("/tmp").expect("temp dir");
    let copy = dir.path().join("keyward");
    std::fs::copy(keyward_bin(), &copy).expect("copying the keyward binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    (dir, copy)
}

impl Container {
    /// Boots the tree with the freshly built `keyward` bound read-only at `/usr/bin/keyward`,
    /// plus `binds` (`host:container` pairs, read-only), and waits for the boot to finish.
    pub fn boot(binds: &[(PathBuf, &str)]) -> Self {
        let (binary_dir, agent) = executable_copy();
        let mut all = vec![(agent, "/usr/bin/keyward")];
        all.extend(binds.iter().cloned());
        let mut container = Self::boot_bare(&all);
        container._binary = Some(binary_dir);
        container
    }

    /// Boots the tree with only `binds` (`host:container` pairs, read-only): no `keyward` in
    /// it until a test installs one (the package test), and waits for the boot to finish.
    pub fn boot_bare(binds: &[(PathBuf, &str)]) -> Self {
        let (tree, tree_seconds) = service_tree();
        let dir = tempfile::Builder::new().prefix("kwct").tempdir_in("/tmp").expect("temp dir");
        let log = dir.path().join("nspawn.log");
        let name = format!("kw{}", std::process::id());
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg("--directory")
            .arg(&tree)
            .args(["--boot", "--volatile=overlay", "--register=no", "--keep-unit", "--private-network"])
            .arg(format!("--machine={name}"));
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        let started = Instant::now();
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.path().join("nspawn.err")).expect("log"))
            .spawn()
            .expect("systemd-nspawn is installed (package systemd-container, install-packages.sh)");
        let leader = wait_for_leader(nspawn.id(), &log);
        let mut container = Self { nspawn, leader, log, _dir: dir, _binary: None, tree_seconds, boot_seconds: 0.0 };
        // Until systemd listens on its private socket, systemctl fails at once, and before it
        // made /run/systemd/system it answers `offline` (on a busy machine, seen): poll.
        let mut state = String::new();
        while started.elapsed() < BOOT_LIMIT {
            let out = container.run(&["systemctl", "is-system-running", "--wait"]);
            state = format!("{}{}", String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr));
            if !out.stdout.is_empty() && out.stdout.trim_ascii() != b"offline" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if state == "degraded" {
            // Seen once with three containers booting at the same time: the static device nodes'
            // tmpfiles run failed in one. Start each failed unit once more, then judge.
            state = container.retry_failed_units();
        }
        assert!(state == "running", "container boot ended `{state}`:\n{}", container.failed_units());
        container.boot_seconds = started.elapsed().as_secs_f64();
        container
    }

    /// The container's systemd, as the host sees its pid.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// A host path for `path` inside the container (root only).
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.leader))
    }

    /// Writes a file inside the container with this mode and owner.
    pub fn write(&self, path: &str, contents: &[u8], mode: u32, uid: u32, gid: u32) {
        let host = self.host_path(path);
        std::fs::write(&host, contents).unwrap_or_else(|e| panic!("writing `{path}` in the container: {e}"));
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&host, Some(uid), Some(gid)).expect("chown");
    }

    /// Runs `argv` as root inside the container, with a clean environment.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv).output().expect("nsenter")
    }

    /// Runs `argv` inside the container as `user` (with its groups), a clean environment.
    pub fn run_as(&self, user: &str, argv: &[&str]) -> Output {
        let mut full = vec!["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"];
        full.extend_from_slice(argv);
        self.run(&full)
    }

    /// The `nsenter` command for `argv`.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.leader.to_string())
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd=/", "--"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
            .args(argv)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` as root and asserts success, returning stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert_success(&out, &argv.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restarts every failed unit once and returns `systemctl is-system-running` afterwards.
    fn retry_failed_units(&self) -> String {
        let out = self.run(&["systemctl", "--failed", "--no-legend", "--plain"]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(unit) = line.split_whitespace().next() {
                eprintln!("container: {unit} failed during boot; starting it once more");
                let _ = self.run(&["systemctl", "restart", unit]);
            }
        }
        let out = self.run(&["systemctl", "is-system-running"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl --failed` and the boot log, for failure messages.
    pub fn failed_units(&self) -> String {
        let out = self.command(&["systemctl", "--failed", "--no-legend"]).output().expect("nsenter");
        format!("{}\n{}", String::from_utf8_lossy(&out.stdout), std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Powers the container off and waits for our `systemd-nspawn` to exit; true when it did
    /// within 30 s (else it is killed by PID).
    pub fn stop(&mut self) -> bool {
        if self.nspawn.try_wait().ok().flatten().is_some() {
            return true;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.nspawn.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.nspawn.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        false
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The container's systemd: the child of our `systemd-nspawn` named `systemd`.
fn wait_for_leader(nspawn: u32, log: &Path) -> u32 {
    let deadline = Instant::now() + BOOT_LIMIT;
    while Instant::now() < deadline {
        for child in children(nspawn) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return child;
            }
        }
        if !Path::new(&format!("/proc/{nspawn}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no systemd in the container:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}
