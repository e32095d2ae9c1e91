//! `keyward nvflare migrate` on a startup kit shaped like `nvflare provision`'s (made with
//! openssl here; the live-federation test in python/ uses a real provisioned kit): the key
//! moves into the token (or the TPM: the same case on swtpm), the kit keeps no private key,
//! the agent gets the kit's trust, and kits the change would break are refused untouched.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use keyward_tests::tools::assert_success;
use keyward_tests::{openssl, AgentProcess, AgentSite, Site, TestCa, TpmSite};

fn make_kit(site: &impl AgentSite) -> PathBuf {
    let dir = site.path("site-1/startup");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = site.path("provision");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    let (key, cert) = ca.leaf("/CN=site-1/O=nvidia", "client", "subjectAltName=DNS:site-1\n");
    std::fs::copy(&ca.cert, dir.join("rootCA.pem")).unwrap();
    std::fs::copy(key, dir.join("client.key")).unwrap();
    std::fs::copy(cert, dir.join("client.crt")).unwrap();
    let fed = r#"{"format_version": 2, "servers": [{"name": "example_project", "identity": "server1",
        "service": {"scheme": "http", "target": "server1:8002"}}], "client": {"ssl_private_key": "client.key",
        "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "connection_security": "tls"}}"#;
    std::fs::write(dir.join("fed_client.json"), fed).unwrap();
    dir
}

fn kit_holds_a_private_key(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let text = std::fs::read(e.unwrap().path()).unwrap_or_default();
        String::from_utf8_lossy(&text).contains("PRIVATE KEY")
    })
}

#[test]
fn migrate_moves_the_key_into_the_token_and_leaves_a_reference() {
    let site = Site::new();
    let config = site.config.clone();
    migrate_moves_the_key_and_leaves_a_reference(&site, &config);
}

#[test]
fn migrate_moves_the_key_into_the_tpm_and_leaves_a_reference() {
    let site = TpmSite::new();
    let config = site.config().to_owned();
    migrate_moves_the_key_and_leaves_a_reference(&site, &config);
}

/// The key moves into the backend (imported, certificate installed), the kit keeps a
/// reference and no key, the config gets the kit's trust, the agent serves the flow, and a
/// second migration is refused.
fn migrate_moves_the_key_and_leaves_a_reference(site: &impl AgentSite, config: &Path) {
    let kit = make_kit(site);
    let cert_spki = openssl(&["x509", "-in", kit.join("client.crt").to_str().unwrap(), "-pubkey", "-noout"]).stdout;
    assert!(kit_holds_a_private_key(&kit));

    let out = site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("verified against client.crt") && stderr.contains("undo"), "{stderr}");

    assert!(!kit_holds_a_private_key(&kit), "a private key is still in the kit");
    let reference = std::fs::read_to_string(kit.join("client.key")).unwrap();
    assert!(reference.starts_with("-----BEGIN KEYWARD KEY REFERENCE-----\n"), "{reference}");
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    let line = list.lines().find(|l| l.starts_with("site-1")).unwrap();
    assert!(line.contains("imported") && line.ends_with("yes"), "{list}");
    let public = std::fs::read_to_string(site.public_pem("site-1")).unwrap();
    assert_eq!(public.as_bytes(), cert_spki.as_slice());
    let config = std::fs::read_to_string(config).unwrap();
    assert!(config.contains("[keys.site-1.nvflare]") && config.contains("server_identity = \"server1\""), "{config}");
    // Its age is recorded as a lower bound: the kit certificate's notBefore (or the import).
    let birth = std::fs::read_to_string(site.path("state/keys/site-1.generated")).unwrap();
    assert!(birth.lines().nth(1).is_some_and(|l| l.starts_with("imported: at least this old")), "{birth}");

    // The agent starts with the kit's trust and serves the NVFlare flow for the key.
    let _agent = AgentProcess::start(site);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = keyward_client::AgentClient::connect(&site.socket()).await.unwrap();
        let key = keyward_core::KeyId::new("site-1").unwrap();
        assert!(c.call(keyward_protocol::Operation::NvflareChallenge { key }).await.is_ok());
    });

    let again = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"), "{again:?}");
}

#[test]
fn kits_the_change_would_break_are_refused_untouched() {
    let site = Site::new();
    let kit = make_kit(&site);
    let key_before = std::fs::read(kit.join("client.key")).unwrap();

    std::fs::write(kit.join("signature.json"), "{}").unwrap();
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature.json"), "{out:?}");
    std::fs::remove_file(kit.join("signature.json")).unwrap();

    // A key that does not belong to the certificate.
    let other = site.path("other.key");
    assert_success(&openssl(&["genrsa", "-traditional", "-out", other.to_str().unwrap(), "2048"]), "other key");
    std::fs::copy(&other, kit.join("client.key")).unwrap();
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not the key of"), "{out:?}");
    std::fs::write(kit.join("client.key"), &key_before).unwrap();

    assert_eq!(std::fs::read(kit.join("client.key")).unwrap(), key_before);
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    assert!(!list.contains("site-1"), "nothing may be imported by a refused migration: {list}");
    assert!(!std::fs::read_to_string(&site.config).unwrap().contains("nvflare"));
}

#[test]
fn enroll_wires_a_token_born_key_into_a_kit_without_a_key_file() {
    let site = Site::new();
    let kit = make_kit(&site);
    // The kit of a site enrolled with a token-born key has no client.key and a client.crt
    // issued for the token key's CSR.
    let private_key_file = std::fs::read(kit.join("client.key")).unwrap();
    std::fs::remove_file(kit.join("client.key")).unwrap();
    site.generate("site-1", "rsa-2048");
    let csr = site.path("site-1.csr");
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=nvidia", "--out", csr.to_str().unwrap()]);
    let pki = site.path("enroll-ca");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    ca.issue(&csr, &kit.join("client.crt"), "subjectAltName=DNS:site-1\n");
    std::fs::copy(&ca.cert, kit.join("rootCA.pem")).unwrap();

    site.keyward_ok(&["nvflare", "enroll", kit.to_str().unwrap(), "--key", "site-1"]);
    let reference = std::fs::read_to_string(kit.join("client.key")).unwrap();
    assert!(reference.starts_with("-----BEGIN KEYWARD KEY REFERENCE-----\n"));
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("[keys.site-1.nvflare]"));
    assert!(!kit_holds_a_private_key(&kit));

    // A kit that still holds a private key file is sent to `migrate` instead.
    std::fs::write(kit.join("client.key"), &private_key_file).unwrap();
    let out = site.keyward(&["nvflare", "enroll", kit.to_str().unwrap(), "--key", "site-1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyward nvflare migrate"), "{out:?}");
    assert_eq!(std::fs::read(kit.join("client.key")).unwrap(), private_key_file);
}

#[test]
fn an_admin_kit_migrates_with_the_server_identity_from_fed_admin_json() {
    let site = Site::new();
    let dir = site.path("admin@nvidia.com/startup");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = site.path("provision");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "root");
    let (key, cert) = ca.leaf("/CN=admin@nvidia.com/O=nvidia", "admin", "subjectAltName=DNS:admin@nvidia.com\n");
    std::fs::copy(&ca.cert, dir.join("rootCA.pem")).unwrap();
    std::fs::copy(key, dir.join("client.key")).unwrap();
    std::fs::copy(cert, dir.join("client.crt")).unwrap();
    let fed_admin = r#"{"format_version": 1, "admin": {"username": "admin@nvidia.com", "server_identity": "server1",
        "host": "localhost", "port": 8003, "connection_security": "mtls", "client_key": "client.key"}}"#;
    std::fs::write(dir.join("fed_admin.json"), fed_admin).unwrap();

    // The admin CN is an e-mail address, not a key name: the CLI says to pass --key.
    let out = site.keyward(&["nvflare", "migrate", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"), "{out:?}");

    let out = site.keyward_ok(&["nvflare", "migrate", dir.to_str().unwrap(), "--key", "admin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the kit uses `mtls`") && stderr.contains("custom signer"), "{stderr}");
    assert!(!kit_holds_a_private_key(&dir));
    let config = std::fs::read_to_string(&site.config).unwrap();
    assert!(config.contains("[keys.admin.nvflare]") && config.contains("server_identity = \"server1\""), "{config}");
}

// ---------------------------------------------------------------------------------------
// Root runs the migration on a kit its owner (the NVFlare user) can change at any moment.

/// The kit's files by name: type and content (symbolic links by target).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(e.path()).unwrap().into_os_string().into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().into_string().unwrap(), (format!("{:?}", meta.file_type()), content))
        })
        .collect()
}

/// Hands the kit to uid/gid 65534, as a kit owned by the NVFlare user.
fn give_kit_to_nobody(kit: &Path) {
    std::os::unix::fs::chown(kit, Some(65534), Some(65534)).unwrap();
    for e in std::fs::read_dir(kit).unwrap() {
        std::os::unix::fs::lchown(e.unwrap().path(), Some(65534), Some(65534)).unwrap();
    }
}

fn token_has(site: &Site, name: &str) -> bool {
    let list = String::from_utf8(site.keyward_ok(&["key", "list"]).stdout).unwrap();
    list.lines().any(|l| l.split_whitespace().next() == Some(name))
}

/// Runs `keyward ARGS`, killing it after `secs` (a FIFO used to hang the old code).
fn keyward_with_deadline(site: &Site, args: &[&str], secs: u64) -> std::process::Output {
    let child = site
        .command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(secs)).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        panic!("`keyward {}` still running after {secs} s", args.join(" "))
    })
}

/// The kit's owner waits until migrate has read `client.key` (inotify), then swaps it for a
/// symbolic link to a file of root's. The old code, which opened the path again to overwrite
/// it, zeroed that file and exited 0.
#[test]
fn a_kit_owner_who_swaps_client_key_for_a_symlink_during_the_import_changes_no_other_file() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let site = Site::new();
    let kit = make_kit(&site);
    give_kit_to_nobody(&kit);
    let sentinel = site.path("root-owned-file");
    std::fs::write(&sentinel, "precious").unwrap();

    let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    inotify.add_watch(&kit.join("client.key"), AddWatchFlags::IN_ACCESS | AddWatchFlags::IN_CLOSE_NOWRITE).unwrap();
    let (kit2, sentinel2) = (kit.clone(), sentinel.clone());
    let attacker = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while inotify.read_events().map(|e| e.is_empty()).unwrap_or(true) {
            assert!(std::time::Instant::now() < deadline, "migrate never read client.key");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        std::fs::rename(kit2.join("client.key"), kit2.join("client.key.moved")).unwrap();
        std::os::unix::fs::symlink(&sentinel2, kit2.join(".swap")).unwrap();
        std::fs::rename(kit2.join(".swap"), kit2.join("client.key")).unwrap();
    });

    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
    attacker.join().unwrap();
    assert!(std::fs::read_to_string(&sentinel).unwrap() == "precious", "migrate wrote through the swapped name");
    assert!(!out.status.success(), "a kit changed under the migration must not end in success: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was replaced while keyward worked on it"), "{stderr}");
    assert!(std::fs::symlink_metadata(kit.join("client.key")).unwrap().file_type().is_symlink());
    assert!(!kit.join(".client.key.keyward").exists(), "the staged reference is cleaned up");
    // The key file that was read is zeroed through the handle that read it.
    assert!(!kit_holds_a_private_key(&kit));
}

/// A `client.key` that is already a symbolic link (to a key file of root's) or a FIFO is
/// refused before anything changes: the old code imported the link's target and zeroed it,
/// and hung on the FIFO.
#[test]
fn a_client_key_that_is_a_symlink_or_a_fifo_is_refused_before_anything_changes() {
    let site = Site::new();
    let kit = make_kit(&site);
    let real_key = site.path("root-key.pem");
    std::fs::rename(kit.join("client.key"), &real_key).unwrap();
    let key_bytes = std::fs::read(&real_key).unwrap();
    std::os::unix::fs::symlink(&real_key, kit.join("client.key")).unwrap();
    give_kit_to_nobody(&kit);
    let before = snapshot(&kit);

    let out = keyward_with_deadline(&site, &["nvflare", "migrate", kit.to_str().unwrap()], 30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"), "{out:?}");
    assert_eq!(std::fs::read(&real_key).unwrap(), key_bytes, "the link's target must be untouched");
    assert_eq!(snapshot(&kit), before);
    assert!(!token_has(&site, "site-1"));

    std::fs::remove_file(kit.join("client.key")).unwrap();
    nix::unistd::mkfifo(&kit.join("client.key"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let before = snapshot(&kit);
    for args in [
        vec!["nvflare", "migrate", kit.to_str().unwrap()],
        vec!["nvflare", "enroll", kit.to_str().unwrap(), "--key", "site-1"],
    ] {
        let out = keyward_with_deadline(&site, &args, 30);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("is a FIFO, not a regular file"), "{out:?}");
        assert_eq!(snapshot(&kit), before);
    }
    assert!(!token_has(&site, "site-1"));
}

/// Every precondition is checked before the key is imported: a refused migration leaves the
/// token without the key, the kit byte-identical and the config as it was.
#[test]
fn every_failing_precondition_leaves_the_token_the_kit_and_the_config_unchanged() {
    let site = Site::new();
    let kit = make_kit(&site);
    let config_before = std::fs::read(&site.config).unwrap();
    let pki = site.path("other-pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new(&pki, "other");
    let (bad_ku_key, bad_ku_cert) = ca.leaf("/CN=site-1/O=nvidia", "bad-ku", "keyUsage=critical,keyEncipherment\n");
    let fed = |target: &str, identity: &str| {
        format!(
            r#"{{"format_version": 2, "servers": [{{"name": "p", {identity} "service": {{"scheme": "grpc", "target": "{target}"}}}}],
            "client": {{"connection_security": "tls"}}}}"#
        )
    };

    type Setup<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "kit not writable",
            Box::new(|k: &Path| {
                assert_success(&std::process::Command::new("chattr").arg("+i").arg(k).output().unwrap(), "chattr")
            }),
            "creating",
        ),
        (
            "client.crt does not parse",
            Box::new(|k: &Path| std::fs::write(k.join("client.crt"), "junk").unwrap()),
            "client.crt",
        ),
        (
            "rootCA.pem is not a CA",
            Box::new(|k: &Path| std::fs::copy(k.join("client.crt"), k.join("rootCA.pem")).map(drop).unwrap()),
            "not a CA certificate",
        ),
        (
            "rootCA.pem does not parse",
            Box::new(|k: &Path| std::fs::write(k.join("rootCA.pem"), "junk").unwrap()),
            "rootCA.pem",
        ),
        (
            "fed_client.json does not parse",
            Box::new(|k: &Path| std::fs::write(k.join("fed_client.json"), "{").unwrap()),
            "parsing",
        ),
        (
            "target does not parse",
            Box::new(|k: &Path| {
                std::fs::write(k.join("fed_client.json"), fed("[::1", r#""identity": "server1","#)).unwrap()
            }),
            "target",
        ),
        (
            "no identity and a target without a port",
            Box::new(|k: &Path| std::fs::write(k.join("fed_client.json"), fed("server1", "")).unwrap()),
            "target",
        ),
        (
            "client.crt NVFlare would reject",
            Box::new(|k: &Path| {
                std::fs::copy(&bad_ku_key, k.join("client.key")).unwrap();
                std::fs::copy(&bad_ku_cert, k.join("client.crt")).unwrap();
                std::fs::copy(&ca.cert, k.join("rootCA.pem")).unwrap();
            }),
            "digitalSignature",
        ),
    ];
    for (what, setup, message) in cases {
        let pristine = snapshot(&kit);
        setup(&kit);
        let before = snapshot(&kit);
        let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap()]);
        let _ = std::process::Command::new("chattr").arg("-i").arg(&kit).output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: migrated anyway");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(!token_has(&site, "site-1"), "{what}: the key was imported by a refused migration");
        assert_eq!(snapshot(&kit), before, "{what}: the kit changed");
        assert_eq!(std::fs::read(&site.config).unwrap(), config_before, "{what}: the config changed");
        // Back to the good kit for the next case.
        for (name, (_, bytes)) in &pristine {
            std::fs::write(kit.join(name), bytes).unwrap();
        }
    }

    // An IPv6 target with its port parses (and an identity-less kit takes the host from it).
    std::fs::write(kit.join("fed_client.json"), fed("[::1]:8002", "")).unwrap();
    site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("server_identity = \"::1\""));
}

/// The agent trusts its own copy of the kit's root CA: what the kit's owner writes into the
/// kit afterwards changes nothing.
#[test]
fn the_trust_anchor_is_copied_into_the_agents_state_and_the_kits_file_no_longer_counts() {
    let site = Site::new();
    let kit = make_kit(&site);
    let root_before = std::fs::read(kit.join("rootCA.pem")).unwrap();
    site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);

    let config: toml::Table = toml::from_str(&std::fs::read_to_string(&site.config).unwrap()).unwrap();
    let pinned = PathBuf::from(config["keys"]["site-1"]["nvflare"]["root_ca"].as_str().unwrap());
    assert!(pinned.starts_with(&site.state_dir), "the config pins `{}`, not the agent's copy", pinned.display());
    assert_eq!(std::fs::read(&pinned).unwrap(), root_before);
    let meta = std::fs::metadata(&pinned).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o022,
        0,
        "the copy is writable by others"
    );

    // The kit's owner replaces the kit's root CA: the agent's anchor stays the same.
    let pki = site.path("evil-pki");
    std::fs::create_dir_all(&pki).unwrap();
    let evil = TestCa::new(&pki, "evil");
    std::fs::copy(&evil.cert, kit.join("rootCA.pem")).unwrap();
    assert_eq!(std::fs::read(&pinned).unwrap(), root_before);
    let _agent = AgentProcess::start(&site);
}

/// A fake venv of uid 65534 whose `bin/python` records who ran it and with what arguments, and
/// refuses (as the plug-in does on an NVFlare it was not tested with) while `<venv>/refuse`
/// exists.
fn fake_venv(site: &Site) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    // uid 65534 must reach its venv inside the test's folder.
    std::fs::set_permissions(site.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let venv = site.path("nvflare-venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    let python = venv.join("bin/python");
    let script = "#!/bin/sh\nd=$(dirname \"$0\")/..\necho \"$(id -u) $(id -G) $*\" >>\"$d/ran-as\"\n\
                  if [ -e \"$d/refuse\" ]; then echo 'install refused: nvflare 9.9 untested' >&2; exit 1; fi\n";
    std::fs::write(&python, script).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [venv.clone(), venv.join("bin"), venv.join("pyvenv.cfg"), python] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    venv
}

/// `--python` run by root installs the plug-in as the venv's owner (no root groups), and a
/// venv others can write is refused before the key is imported.
#[test]
fn the_plugin_is_installed_as_the_venvs_owner_never_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let kit = make_kit(&site);
    let venv = fake_venv(&site);
    let python = venv.join("bin/python");

    std::fs::set_permissions(&venv, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = snapshot(&kit);
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap(), "--python", python.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by others"), "{out:?}");
    assert!(!venv.join("ran-as").exists());
    assert!(!token_has(&site, "site-1"));
    assert_eq!(snapshot(&kit), before);

    std::fs::set_permissions(&venv, std::fs::Permissions::from_mode(0o755)).unwrap();
    site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap(), "--python", python.to_str().unwrap()]);
    let ran_as = std::fs::read_to_string(venv.join("ran-as")).unwrap();
    assert_eq!(
        ran_as, "65534 65534 -I -m keyward.nvflare install --dry-run\n65534 65534 -I -m keyward.nvflare install\n",
        "the installer must run as the venv's owner (uid and groups), checked before the import"
    );
}

/// A venv whose plug-in refuses its NVFlare (`install --dry-run` fails, as on a release the
/// plug-in was not tested with) stops the migration before the import: nothing changes.
#[test]
fn a_plugin_that_refuses_the_venvs_nvflare_stops_the_migration_before_the_import() {
    let site = Site::new();
    let kit = make_kit(&site);
    let venv = fake_venv(&site);
    std::fs::write(venv.join("refuse"), "").unwrap();
    let before = snapshot(&kit);
    let config_before = std::fs::read(&site.config).unwrap();
    let python = venv.join("bin/python");
    let out = site.keyward(&["nvflare", "migrate", kit.to_str().unwrap(), "--python", python.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("nvflare 9.9 untested") && stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(venv.join("ran-as")).unwrap(),
        "65534 65534 -I -m keyward.nvflare install --dry-run\n"
    );
    assert!(!token_has(&site, "site-1"));
    assert_eq!(snapshot(&kit), before);
    assert_eq!(std::fs::read(&site.config).unwrap(), config_before);
}

#[test]
fn migrate_keeps_the_configs_owner_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (chown to uid 65534); CI runs as root");
    let site = Site::new();
    let kit = make_kit(&site);
    // The documented deployment: the agent's group may read the config (`chgrp keyward; chmod 0640`).
    std::os::unix::fs::chown(&site.config, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    site.keyward_ok(&["nvflare", "migrate", kit.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("[keys.site-1.nvflare]"));
    let meta = std::fs::metadata(&site.config).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o640));
}
