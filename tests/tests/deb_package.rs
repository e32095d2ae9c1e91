//! The Debian package, end to end: built from the repo with one command
//! (`scripts/deb.sh`: the wheel, then `cargo deb`), checked with `lintian`, then
//! installed with apt inside a container over the Debian 12 tree (`tests/src/container.rs`,
//! systemd as PID 1, an overlay so the cached tree stays clean), with no `keyward` user or
//! binary there before. The package makes its user (sysusers.d) and folders (tmpfiles.d),
//! installs its unit neither enabled nor started, and the agent then serves under the PACKAGED
//! unit once the site is configured as `README.Debian` says. `apt-get remove` stops it and
//! keeps config, state and keys; `purge` removes the config but never a key, a PIN file or the
//! state folder: reinstalled, the same key signs again.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyward_tests::checks::{openssl_verifies, pss_sigopts};
use keyward_tests::container::{Container, FLARE_UID};
use keyward_tests::tools::{assert_success, python};
use keyward_tests::workspace_root;

const CONFIG: &str = "/etc/keyward/keyward.toml";
const SOCKET: &str = "/run/keyward/agent.sock";
const UNIT: &str = "/usr/lib/systemd/system/keyward.service";
const DEB: &str = "/srv/deb/keyward.deb";

/// Builds the package with the repo's one command; returns its path.
fn build_deb() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/deb.sh"))
        .env("KEYWARD_PYTHON", python())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/deb.sh");
    assert_success(&out, "scripts/deb.sh");
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.is_file(), "deb.sh printed `{}`", deb.display());
    deb
}

/// The package's file list (`dpkg-deb --contents`), as paths without the leading `.`.
fn contents(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb").arg("--contents").arg(deb).output().unwrap();
    assert_success(&out, "dpkg-deb --contents");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// `lintian` finds no error in the package (warnings are printed, not fatal).
fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .expect("lintian is installed (scripts/install-packages.sh)");
    eprintln!("lintian:\n{}", String::from_utf8_lossy(&out.stdout));
    assert_success(&out, "lintian --fail-on error");
}

fn text(ct: &Container, argv: &[&str]) -> String {
    ct.ok(argv).trim().to_owned()
}

fn journal(ct: &Container) -> String {
    ct.ok(&["journalctl", "--unit", "keyward", "--no-pager", "--output", "cat"])
}

/// The site as its administrator sets it up after `apt-get install` (README.Debian): config
/// and PIN in /etc/keyward, the SoftHSM drop-in copied from /usr/share/keyward/drop-ins, the
/// NVFlare user in group `keyward`.
fn configure_site(ct: &Container, pin: &str) {
    let gid = text(ct, &["getent", "group", "keyward"]).split(':').nth(2).unwrap().to_owned();
    let config = format!(
        "socket = \"{SOCKET}\"\nstate_dir = \"/var/lib/keyward\"\n\n[access]\nallowed_uids = [0, {FLARE_UID}]\nsocket_gid = {gid}\n\n[backend]\ntype = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"fl-site\"\n"
    );
    ct.write(CONFIG, config.as_bytes(), 0o640, 0, gid.parse().unwrap());
    ct.write("/etc/keyward/pin", pin.as_bytes(), 0o600, 0, 0);
    ct.ok(&["install", "-d", "/etc/systemd/system/keyward.service.d"]);
    ct.ok(&["cp", "/usr/share/keyward/drop-ins/softhsm.conf", "/etc/systemd/system/keyward.service.d/softhsm.conf"]);
    ct.ok(&["systemctl", "daemon-reload"]);
}

/// `keyward ARGS` as the agent's user with SoftHSM's group and the PIN file (`/run/kwsetup`).
fn as_keyward(ct: &Container, args: &[&str]) -> Vec<u8> {
    let mut argv = vec!["setpriv", "--reuid", "keyward", "--regid", "keyward", "--groups", "softhsm", "--"];
    argv.extend_from_slice(args);
    let out = ct.run(&argv);
    assert_success(&out, &args.join(" "));
    out.stdout
}

fn make_token_and_key(ct: &Container, pin: &str) -> Vec<u8> {
    let so_pin = format!("{:016x}", rand::random::<u64>());
    ct.ok(&["install", "-d", "-m", "0700", "-o", "keyward", "-g", "keyward", "/run/kwsetup"]);
    let uid: u32 = text(ct, &["id", "-u", "keyward"]).parse().unwrap();
    ct.write("/run/kwsetup/pin", pin.as_bytes(), 0o600, uid, uid);
    as_keyward(
        ct,
        &["softhsm2-util", "--init-token", "--free", "--label", "fl-site", "--so-pin", &so_pin, "--pin", pin],
    );
    as_keyward(
        ct,
        &["env", "KEYWARD_PIN_FILE=/run/kwsetup/pin", "keyward", "--config", CONFIG, "key", "generate", "site-1"],
    );
    public_key(ct)
}

/// The public key of `site-1`, read from the token by the agent's user.
fn public_key(ct: &Container) -> Vec<u8> {
    as_keyward(
        ct,
        &["env", "KEYWARD_PIN_FILE=/run/kwsetup/pin", "keyward", "--config", CONFIG, "key", "public", "site-1"],
    )
}

/// Signs as the NVFlare user through the running unit; openssl verifies with `public`.
fn sign_as_flare(ct: &Container, work: &Path, public: &[u8], text: &str) {
    ct.write("/tmp/msg", text.as_bytes(), 0o644, 0, 0);
    let out = ct.run_as(
        "flare",
        &["keyward", "--config", CONFIG, "sign", "site-1", "--profile", "tls", "--in", "/tmp/msg", "--out", "/tmp/sig"],
    );
    assert_success(&out, "sign as flare");
    let (msg, sig, key) = (work.join("msg"), work.join("sig"), work.join("pub.pem"));
    std::fs::write(&msg, text).unwrap();
    std::fs::write(&key, public).unwrap();
    std::fs::copy(ct.host_path("/tmp/sig"), &sig).unwrap();
    ct.ok(&["rm", "-f", "/tmp/sig"]);
    let opts = pss_sigopts("rsa_pss_saltlen:32", "rsa_mgf1_md:sha256");
    assert!(openssl_verifies(&key, &msg, &sig, "-sha256", &opts), "openssl verifies the signature");
}

fn package_state(ct: &Container) -> String {
    let out = ct.run(&["dpkg-query", "--show", "--showformat", "${db:Status-Abbrev}", "keyward"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn apt(ct: &Container, args: &[&str]) -> String {
    // `env -C /`: nsenter leaves a working directory apt cannot resolve (getcwd fails).
    let mut argv = vec!["env", "-C", "/", "DEBIAN_FRONTEND=noninteractive", "apt-get", "--yes"];
    argv.extend_from_slice(args);
    let out = ct.run(&argv);
    assert_success(&out, &format!("apt-get {}", args.join(" ")));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_package_installs_serves_under_its_unit_and_removes_without_touching_keys() {
    let work = tempfile::Builder::new().prefix("kwdeb").tempdir_in("/tmp").unwrap();
    let deb = build_deb();
    let files = contents(&deb);
    for expected in [
        "/usr/bin/keyward",
        UNIT,
        "/usr/lib/sysusers.d/keyward.conf",
        "/usr/lib/tmpfiles.d/keyward.conf",
        "/usr/share/keyward/drop-ins/softhsm.conf",
        "/usr/share/keyward/drop-ins/tpm.conf",
        "/usr/share/keyward/drop-ins/allowed-executables.conf",
        "/usr/share/keyward/keyward.toml.example",
        "/usr/share/doc/keyward/configuration.md",
        "/usr/share/doc/keyward/README.Debian",
    ] {
        assert!(files.iter().any(|f| f == expected), "`{expected}` in the package:\n{}", files.join("\n"));
    }
    assert!(
        files.iter().any(|f| f.starts_with("/usr/share/keyward/python/keyward-") && f.ends_with("-py3-none-any.whl")),
        "the wheel is in the package"
    );
    assert!(!files.iter().any(|f| f.starts_with("/etc/")), "no conffile that could start a half-configured agent");
    lintian(&deb);

    let debs = work.path().join("deb");
    std::fs::create_dir(&debs).unwrap();
    std::fs::copy(&deb, debs.join("keyward.deb")).unwrap();
    let ct = Container::boot_bare(&[(debs, "/srv/deb")]);
    // The cached tree holds a `keyward` user for the other real-unit tests: the package must
    // make its own.
    ct.ok(&["userdel", "keyward"]);
    assert!(!ct.run(&["getent", "group", "keyward"]).status.success(), "no group `keyward` before the install");
    assert!(!ct.host_path("/usr/bin/keyward").exists());

    apt(&ct, &["install", DEB]);
    assert_eq!(package_state(&ct), "ii");
    let user = text(&ct, &["getent", "passwd", "keyward"]);
    let fields: Vec<&str> = user.split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "a system user: {user}");
    assert_eq!((fields[5], fields[6]), ("/var/lib/keyward", "/usr/sbin/nologin"), "{user}");
    assert_eq!(text(&ct, &["stat", "-c", "%a %U %G", "/etc/keyward"]), "750 root keyward");
    assert_eq!(text(&ct, &["stat", "-c", "%a %U %G", "/var/lib/keyward"]), "700 keyward keyward");
    // Installed, but not enabled and not started: no config yet.
    assert_eq!(String::from_utf8_lossy(&ct.run(&["systemctl", "is-enabled", "keyward"]).stdout).trim(), "disabled");
    assert_eq!(String::from_utf8_lossy(&ct.run(&["systemctl", "is-active", "keyward"]).stdout).trim(), "inactive");
    // The packaged unit, whichever name of the merged /usr systemd reports.
    let fragment = text(&ct, &["systemctl", "show", "--property", "FragmentPath", "--value", "keyward"]);
    assert!(UNIT.ends_with(&fragment), "the unit systemd loads is the package's: {fragment}");

    let pin = format!("{:016x}", rand::random::<u64>());
    ct.ok(&["usermod", "--append", "--groups", "keyward", "flare"]);
    configure_site(&ct, &pin);
    let public = make_token_and_key(&ct, &pin);
    let out = ct.run(&["systemctl", "enable", "--now", "keyward"]);
    assert_success(&out, &format!("systemctl enable --now keyward\n{}", journal(&ct)));
    assert_eq!(text(&ct, &["systemctl", "is-active", "keyward"]), "active");
    let main_pid = text(&ct, &["systemctl", "show", "--property", "MainPID", "--value", "keyward"]);
    assert_eq!(text(&ct, &["ps", "-o", "user=", "-p", &main_pid]), "keyward");
    sign_as_flare(&ct, work.path(), &public, "signed under the packaged unit");

    // remove: the agent stops, binary and unit go; config, state and keys stay.
    apt(&ct, &["remove", "keyward"]);
    assert_eq!(package_state(&ct), "rc");
    assert!(ct.run(&["pgrep", "-x", "keyward"]).stdout.is_empty(), "no keyward process left after remove");
    for gone in ["/usr/bin/keyward", UNIT, "/usr/share/keyward"] {
        assert!(!ct.host_path(gone).exists(), "`{gone}` removed");
    }
    for kept in [CONFIG, "/etc/keyward/pin", "/var/lib/keyward", "/var/lib/softhsm/tokens"] {
        assert!(ct.host_path(kept).exists(), "`{kept}` kept by remove");
    }

    // purge: the config goes; the PIN file, the state folder, the token and the user stay.
    let said = apt(&ct, &["purge", "keyward"]);
    assert_eq!(package_state(&ct), "", "purged");
    assert!(!ct.host_path(CONFIG).exists(), "purge removes the config");
    assert!(said.contains("purge kept /etc/keyward"), "purge says what it kept and why:\n{said}");
    for kept in ["/etc/keyward/pin", "/var/lib/keyward", "/var/lib/softhsm/tokens"] {
        assert!(ct.host_path(kept).exists(), "`{kept}` kept by purge");
    }
    assert!(ct.run(&["getent", "passwd", "keyward"]).status.success(), "the system user stays");

    // Reinstalled and configured again: the same key, still in the token, signs.
    apt(&ct, &["install", DEB]);
    configure_site(&ct, &pin);
    assert_success(&ct.run(&["systemctl", "enable", "--now", "keyward"]), "systemctl enable --now keyward again");
    assert_eq!(public_key(&ct), public, "the key survived remove and purge");
    sign_as_flare(&ct, work.path(), &public, "signed after a purge and a reinstall");
    assert!(Path::new("/dev/null")
        .metadata()
        .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
        .unwrap());
}
