//! Where the CLI's `--out` writes, with the real agent and token: a device node or FIFO is
//! written through and stays what it was (`--out /dev/null` as root once replaced the
//! machine's `/dev/null` with a regular file), `-` and `/proc/self/fd/1` are standard output, a
//! symbolic link and a missing folder are refused, plaintext is always 0600, and a replaced
//! certificate keeps its owner, group and mode. Device nodes are made with mknod in the
//! test's own folder, so a failure never harms the machine's `/dev/null`. Needs root (CI).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use keyward_tests::checks::{openssl_oaep_encrypt, openssl_verifies};
use keyward_tests::{AgentProcess, Site, TestCa};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

fn site_with_key() -> Site {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (mknod, chown); CI runs as root");
    let site = Site::new();
    site.generate("site-1", "p-256");
    std::fs::write(site.path("m"), b"signed for output_files").unwrap();
    site
}

fn sign_to(site: &Site, out: &Path) -> std::process::Output {
    let msg = site.path("m");
    let args = ["sign", "site-1", "--profile", "tls", "--in", msg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    // In the site's folder, so that a relative `--out` (`-`) could only land there.
    site.command().current_dir(site.hsm.dir.path()).args(args).output().unwrap()
}

fn assert_verifies(site: &Site, signature: &[u8]) {
    let sig = site.path("sig-to-check");
    std::fs::write(&sig, signature).unwrap();
    assert!(openssl_verifies(&site.public_pem("site-1"), &site.path("m"), &sig, "-sha256", &[]), "openssl rejects it");
}

#[test]
fn sign_out_to_a_device_node_writes_through_and_leaves_it_a_device() {
    let site = site_with_key();
    let _agent = AgentProcess::start(&site);
    let null = site.path("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    let out = sign_to(&site, &null);
    assert!(out.status.success(), "{out:?}");
    let meta = std::fs::symlink_metadata(&null).unwrap();
    assert!(meta.file_type().is_char_device(), "`--out` replaced the device node with a regular file");
    assert_eq!(meta.rdev(), makedev(1, 3));
}

#[test]
fn sign_out_to_a_fifo_writes_through_it() {
    let site = site_with_key();
    let _agent = AgentProcess::start(&site);
    let fifo = site.path("fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = sign_to(&site, &fifo);
    assert!(out.status.success(), "{out:?}");
    // Checked before joining: had the FIFO been replaced, the reader would wait forever.
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "`--out` replaced the FIFO");
    assert_verifies(&site, &reader.join().unwrap());
}

#[test]
fn dash_and_proc_self_fd_1_are_standard_output() {
    let site = site_with_key();
    let _agent = AgentProcess::start(&site);
    let out = sign_to(&site, Path::new("-"));
    assert!(out.status.success(), "{out:?}");
    assert_verifies(&site, &out.stdout);
    assert!(!site.path("-").exists(), "a file named `-` was written");

    // `/proc/self/fd/1`, not `/dev/stdout`: should the fix regress, the old code's rename
    // into `/proc/self/fd` fails instead of replacing the machine's `/dev/stdout`.
    let public = site.keyward_ok(&["key", "public", "site-1", "--out", "/proc/self/fd/1"]);
    assert_eq!(public.stdout, std::fs::read(site.public_pem("site-1")).unwrap());
}

#[test]
fn a_symlink_or_a_missing_folder_is_refused_and_nothing_is_written() {
    let site = site_with_key();
    let _agent = AgentProcess::start(&site);
    let victim = site.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = site.path("out.sig");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = sign_to(&site, &link);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"), "{out:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    let out = sign_to(&site, &site.path("no/such/folder/out.sig"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");
    assert!(!site.path("no").exists(), "the missing folder was created");
}

#[test]
fn decrypted_output_is_0600_and_the_callers_even_over_another_users_file() {
    let site = site_with_key();
    site.generate("rsa", "rsa-2048");
    let _agent = AgentProcess::start(&site);
    let plain = site.path("plain");
    std::fs::write(&plain, b"thirty-two bytes of an AES key!!").unwrap();
    let ct = site.path("ct");
    openssl_oaep_encrypt(&site.public_pem("rsa"), "sha256", &plain, &ct);
    let decrypted = site.path("decrypted");
    std::fs::write(&decrypted, "old").unwrap();
    std::os::unix::fs::chown(&decrypted, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&decrypted, std::fs::Permissions::from_mode(0o644)).unwrap();
    site.keyward_ok(&["decrypt", "rsa", "--in", ct.to_str().unwrap(), "--out", decrypted.to_str().unwrap()]);
    assert_eq!(std::fs::read(&decrypted).unwrap(), std::fs::read(&plain).unwrap());
    let meta = std::fs::metadata(&decrypted).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600));
}

#[test]
fn a_replaced_certificate_keeps_its_owner_group_and_mode() {
    let site = site_with_key();
    let csr = site.path("site-1.csr");
    site.keyward_ok(&["csr", "site-1", "--subject", "CN=site-1,O=hospital-a", "--out", csr.to_str().unwrap()]);
    let ca = TestCa::new(site.hsm.dir.path(), "ca");
    let (first, second) = (site.path("first.crt"), site.path("second.crt"));
    ca.issue(&csr, &first, "subjectAltName=DNS:site-1\n");
    ca.issue(&csr, &second, "subjectAltName=DNS:site-1\n");
    site.keyward_ok(&["cert", "install", "site-1", first.to_str().unwrap()]);
    let installed = site.state_dir.join("certs/site-1.pem");
    std::os::unix::fs::chown(&installed, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o640)).unwrap();
    site.keyward_ok(&["cert", "install", "site-1", second.to_str().unwrap()]);
    let meta = std::fs::metadata(&installed).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o640));
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&second).unwrap());
}
