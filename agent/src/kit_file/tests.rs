//! Unit tests of the no-follow kit file handles on a real file system (temp folders).

use std::os::unix::fs::symlink;

use super::*;

fn kit() -> (tempfile::TempDir, KitDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = KitDir::open(tmp.path()).unwrap();
    (tmp, dir)
}

#[test]
fn a_symlink_anywhere_in_the_folder_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("real/startup")).unwrap();
    symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    let err = KitDir::open(&tmp.path().join("link/startup")).unwrap_err();
    assert!(matches!(&err, KitFileError::Symlink(p) if p.ends_with("link")), "{err:?}");
    symlink(tmp.path().join("real/startup"), tmp.path().join("real/last")).unwrap();
    let err = KitDir::open(&tmp.path().join("real/last")).unwrap_err();
    assert!(matches!(&err, KitFileError::Symlink(p) if p.ends_with("last")), "{err:?}");
    assert!(matches!(KitDir::open(&tmp.path().join("real/../real")), Err(KitFileError::BadPath(_))));
    assert!(KitDir::open(&tmp.path().join("real/startup")).is_ok());
}

#[test]
fn a_symlinked_file_is_refused_and_its_target_untouched() {
    let (tmp, dir) = kit();
    std::fs::write(tmp.path().join("sentinel"), b"precious").unwrap();
    symlink(tmp.path().join("sentinel"), tmp.path().join("client.key")).unwrap();
    for access in [Access::Read, Access::ReadWrite] {
        let err = dir.open_file("client.key", access).unwrap_err();
        assert!(matches!(err, KitFileError::Symlink(_)), "{err:?}");
    }
    assert_eq!(std::fs::read(tmp.path().join("sentinel")).unwrap(), b"precious");
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let (tmp, dir) = kit();
    nix::unistd::mkfifo(&tmp.path().join("client.key"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = dir.open_file("client.key", Access::Read).unwrap_err();
    assert!(matches!(err, KitFileError::NotRegular { kind: "FIFO", .. }), "{err:?}");
    let err = dir.open_file("client.key", Access::ReadWrite).unwrap_err();
    assert!(matches!(err, KitFileError::NotRegular { kind: "FIFO", .. }), "{err:?}");
}

#[test]
fn a_hard_linked_file_is_not_destroyed() {
    let (tmp, dir) = kit();
    std::fs::write(tmp.path().join("client.key"), b"key").unwrap();
    std::fs::hard_link(tmp.path().join("client.key"), tmp.path().join("other")).unwrap();
    let err = dir.open_file("client.key", Access::ReadWrite).unwrap_err();
    assert!(matches!(err, KitFileError::HardLinked { links: 2, .. }), "{err:?}");
    assert!(dir.open_file("client.key", Access::Read).is_ok());
}

#[test]
fn destroy_zeroes_through_the_handle_and_refuses_a_swapped_name() {
    let (tmp, dir) = kit();
    let key = tmp.path().join("client.key");
    std::fs::write(&key, b"secret key").unwrap();
    std::fs::write(tmp.path().join("sentinel"), b"precious").unwrap();
    let mut file = dir.open_file("client.key", Access::ReadWrite).unwrap();
    assert_eq!(&file.read_all(1024).unwrap()[..], b"secret key");
    // The folder's owner swaps the name for a link after the read.
    let kept = tmp.path().join("kept");
    std::fs::rename(&key, &kept).unwrap();
    symlink(tmp.path().join("sentinel"), &key).unwrap();
    let err = dir.destroy(file).unwrap_err();
    assert!(matches!(err, KitFileError::Changed(_)), "{err:?}");
    assert_eq!(std::fs::read(tmp.path().join("sentinel")).unwrap(), b"precious");
    assert_eq!(std::fs::read(&kept).unwrap(), vec![0u8; 10], "the file read is zeroed through its handle");
    assert!(std::fs::symlink_metadata(&key).unwrap().file_type().is_symlink(), "the swapped name is left alone");
}

#[test]
fn destroy_removes_the_file_and_replace_puts_the_staged_file_in_its_place() {
    let (tmp, dir) = kit();
    std::fs::write(tmp.path().join("a.key"), b"secret").unwrap();
    let file = dir.open_file("a.key", Access::ReadWrite).unwrap();
    dir.destroy(file).unwrap();
    assert!(!tmp.path().join("a.key").exists());

    std::fs::write(tmp.path().join("client.key"), b"secret").unwrap();
    let file = dir.open_file("client.key", Access::ReadWrite).unwrap();
    let staged = dir.stage(".client.key.new", b"reference", 0o644, Some(file.owner())).unwrap();
    dir.replace(file, staged).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("client.key")).unwrap(), b"reference");
    assert!(!tmp.path().join(".client.key.new").exists());
}

#[test]
fn a_staged_file_is_removed_when_not_used_and_a_moved_folder_counts_as_changed() {
    let (tmp, dir) = kit();
    {
        let _staged = dir.stage(".x", b"x", 0o644, None).unwrap();
        assert!(tmp.path().join(".x").exists());
    }
    assert!(!tmp.path().join(".x").exists());

    std::fs::write(tmp.path().join("client.key"), b"secret").unwrap();
    let file = dir.open_file("client.key", Access::ReadWrite).unwrap();
    let moved = tmp.path().with_extension("moved");
    std::fs::rename(tmp.path(), &moved).unwrap();
    std::fs::create_dir(tmp.path()).unwrap();
    let err = dir.destroy(file).unwrap_err();
    assert!(matches!(err, KitFileError::Changed(_)), "{err:?}");
    assert!(moved.join("client.key").exists());
    std::fs::remove_dir_all(&moved).unwrap();
}

#[test]
fn reads_are_capped() {
    let (tmp, dir) = kit();
    std::fs::write(tmp.path().join("big"), vec![b'a'; 100]).unwrap();
    assert!(matches!(dir.read("big", 99), Err(KitFileError::TooLarge { max: 99, .. })));
    assert_eq!(dir.read("big", 100).unwrap().len(), 100);
}
