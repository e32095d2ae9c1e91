//! Tests of `files.rs`: atomic replacement keeps owner, group and mode, and never follows a
//! link, replaces a device, or creates a folder. Owner tests need root (CI runs as root).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn no_clobber_keeps_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    write_atomic(&p, b"one", 0o600, false).unwrap();
    let err = write_atomic(&p, b"two", 0o600, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&p).unwrap(), b"one");
}

#[test]
fn a_new_file_gets_the_given_mode_and_a_replaced_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    write_atomic(&p, b"one", 0o644, true).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&p, b"two", 0o600, true).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
}

#[test]
fn replacing_a_file_of_another_owner_keeps_owner_group_and_mode() {
    assert!(is_root(), "this test needs root (fchown to uid 65534); CI runs as root");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("keyward.toml");
    std::fs::write(&p, "old").unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&p, b"new", 0o600, true).unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o640));
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
}

#[test]
fn a_symlink_at_the_path_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, "precious").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = write_atomic(&link, b"evil", 0o644, true).unwrap_err();
    assert!(err.to_string().contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    // A dangling link is not replaced either.
    std::fs::remove_file(&target).unwrap();
    assert!(write_atomic(&link, b"evil", 0o644, true).is_err());
    assert!(!target.exists());
}

#[test]
fn a_device_or_fifo_at_the_path_is_never_replaced() {
    assert!(is_root(), "this test needs root (mknod); CI runs as root");
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    let err = write_atomic(&null, b"x", 0o644, true).unwrap_err();
    assert!(err.to_string().contains("is a character device"), "{err}");
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device());
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
    let err = write_atomic(&fifo, b"x", 0o644, true).unwrap_err();
    assert!(err.to_string().contains("is a FIFO"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_missing_folder_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing/sub/f");
    let err = write_atomic(&p, b"x", 0o644, true).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("missing").exists());
}
