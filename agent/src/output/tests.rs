//! Tests of `output.rs` on real device nodes, FIFOs and pipes made in a temp folder (never the
//! machine's own `/dev/null`). Device tests need root (mknod); CI runs as root.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::*;

#[test]
fn a_character_device_is_written_through_not_replaced() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (mknod); CI runs as root");
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    for contents in [Contents::Public, Contents::Secret] {
        write_output(&null, b"signature", contents).unwrap();
        let meta = std::fs::symlink_metadata(&null).unwrap();
        assert!(meta.file_type().is_char_device(), "the device was replaced");
        assert_eq!(meta.rdev(), makedev(1, 3));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temp file was left behind");
}

#[test]
fn a_fifo_is_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    write_output(&fifo, b"through the fifo", Contents::Public).unwrap();
    assert_eq!(reader.join().unwrap(), b"through the fifo");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_proc_self_fd_name_writes_to_that_descriptor() {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let name = format!("/proc/self/fd/{}", write_end.as_raw_fd());
    write_output(Path::new(&name), b"via the pipe", Contents::Secret).unwrap();
    drop(write_end);
    let mut got = Vec::new();
    std::fs::File::from(read_end).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"via the pipe");
}

#[test]
fn a_symlink_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shadow");
    std::fs::write(&target, "precious").unwrap();
    let link = dir.path().join("out.sig");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = write_output(&link, b"evil", Contents::Public).unwrap_err();
    assert!(matches!(err, WriteError::Symlink(_)), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn a_missing_folder_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_output(&dir.path().join("no/such/out.sig"), b"x", Contents::Public).unwrap_err();
    assert!(matches!(err, WriteError::MissingFolder(_)), "{err}");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn a_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_output(dir.path(), b"x", Contents::Public).unwrap_err();
    assert!(err.to_string().contains("is a folder"), "{err}");
}

#[test]
fn plaintext_is_always_0600_and_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.bin");
    write_output(&new, b"secret", Contents::Secret).unwrap();
    assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o7777, 0o600);

    let old = dir.path().join("old.bin");
    std::fs::write(&old, "old").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&old, Some(65534), Some(65534)).unwrap();
    }
    write_output(&old, b"secret", Contents::Secret).unwrap();
    let meta = std::fs::metadata(&old).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(std::fs::read(&old).unwrap(), b"secret");
}

#[test]
fn a_replaced_public_file_keeps_its_mode_and_hard_links_are_not_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.sig");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    let other = dir.path().join("other-name");
    std::fs::hard_link(&out, &other).unwrap();
    write_output(&out, b"new", Contents::Public).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(&other).unwrap(), b"old", "the other link was written into");
}

#[test]
fn descriptor_names_are_recognised_exactly() {
    for yes in ["/dev/stdout", "/dev/stderr", "/dev/fd/3", "/proc/self/fd/12", "/proc/thread-self/fd/0"] {
        assert!(is_own_descriptor(Path::new(yes)), "{yes}");
    }
    for no in ["/dev/stdin", "/dev/fd/", "/dev/fd/3/x", "/proc/self/fd/a", "/proc/1/fd/1", "/dev/null", "-"] {
        assert!(!is_own_descriptor(Path::new(no)), "{no}");
    }
}
