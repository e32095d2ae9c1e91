//! Atomic file replacement: a temporary file in the same folder, fsynced, renamed over the
//! target, and the folder fsynced, so a crash leaves the old file or the new one, never half.
//!
//! What it never does: create a missing folder, follow a symbolic link at the last component
//! of the path, or rename over anything but a regular file (a device, FIFO or socket at the
//! path is left alone; `/dev/null` stays a device). Replacing an existing file carries its
//! owner, group and permission bits over to the new one (so a `chgrp keyward; chmod 0640`
//! config stays readable by the agent), except where the caller asks for a fixed mode
//! (plaintext is always the caller's, 0600). Writing *through* devices, FIFOs and standard
//! output, for `--out`, lives in `output.rs`.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// Why a file was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The last component of the path is a symbolic link.
    #[error("`{0}` is a symbolic link; keyward does not write through links (give the file's own path)")]
    Symlink(PathBuf),
    /// Something other than a regular file is at the path (where it would be replaced).
    #[error("`{path}` is a {kind}, not a regular file; not replacing it")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What is there (`folder`, `block device`, ...).
        kind: &'static str,
    },
    /// The folder the file would go into does not exist (it is never created).
    #[error("folder `{0}` does not exist (keyward does not create it)")]
    MissingFolder(PathBuf),
    /// The new file could not be given the old one's owner and group.
    #[error("cannot give the new `{path}` the old file's owner {uid} and group {gid}")]
    KeepOwner {
        /// The path.
        path: PathBuf,
        /// The old file's owner.
        uid: u32,
        /// The old file's group.
        gid: u32,
        /// Why `fchown` failed.
        #[source]
        source: std::io::Error,
    },
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<WriteError> for std::io::Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io(source) => source,
            other => std::io::Error::other(other),
        }
    }
}

/// Owner and mode of the file that gets written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// A replaced file's owner, group and permission bits carry over; a new file is the
    /// caller's with this mode.
    KeepExisting {
        /// Mode of a new file.
        new_mode: u32,
    },
    /// Always the caller's, with this mode, even over an existing file (plaintext).
    Fixed {
        /// Mode of the file.
        mode: u32,
    },
}

/// Writes `bytes` to `path` atomically. A new file gets permission `mode`; an existing regular
/// file is replaced with its owner, group and permission bits kept. With `replace = false`
/// an existing file is never replaced (the rename is a no-clobber link).
///
/// # Errors
/// `AlreadyExists` when `replace` is false and something is at `path`; [`WriteError`]s
/// (symbolic link or non-regular file at `path`, missing folder, owner not kept) as
/// `ErrorKind::Other`; other I/O errors as they are.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> std::io::Result<()> {
    if !replace {
        return Ok(replace_file(path, bytes, Ownership::Fixed { mode }, None, false)?);
    }
    let existing = match inspect(path)? {
        Existing::Missing => None,
        Existing::Regular(meta) => Some(meta),
        Existing::Symlink => return Err(WriteError::Symlink(path.to_path_buf()).into()),
        Existing::Other(kind) => return Err(WriteError::NotRegular { path: path.to_path_buf(), kind }.into()),
    };
    Ok(replace_file(path, bytes, Ownership::KeepExisting { new_mode: mode }, existing.as_ref(), true)?)
}

/// What is at a path, seen through a handle opened without following a link.
#[derive(Debug)]
pub enum Existing {
    /// Nothing.
    Missing,
    /// A regular file, with its `fstat`.
    Regular(Metadata),
    /// A symbolic link.
    Symlink,
    /// Anything else: `folder`, `character device`, `block device`, `FIFO`, `socket`.
    Other(&'static str),
}

/// Looks at `path` through an `O_PATH | O_NOFOLLOW` handle (no read, no side effect, no
/// blocking on a FIFO).
///
/// # Errors
/// I/O errors other than `NotFound`.
pub fn inspect(path: &Path) -> std::io::Result<Existing> {
    let handle = OpenOptions::new().read(true).custom_flags((OFlag::O_PATH | OFlag::O_NOFOLLOW).bits()).open(path);
    let meta = match handle {
        Ok(handle) => handle.metadata()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(e),
    };
    let file_type = meta.file_type();
    Ok(if file_type.is_file() {
        Existing::Regular(meta)
    } else if file_type.is_symlink() {
        Existing::Symlink
    } else {
        Existing::Other(kind_name(&meta))
    })
}

/// A word for what `meta` describes, for messages.
pub(crate) fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    match () {
        _ if t.is_file() => "regular file",
        _ if t.is_dir() => "folder",
        _ if t.is_symlink() => "symbolic link",
        _ if t.is_char_device() => "character device",
        _ if t.is_block_device() => "block device",
        _ if t.is_fifo() => "FIFO",
        _ if t.is_socket() => "socket",
        _ => "special file",
    }
}

/// The temp-file-and-rename step. `existing` is the `fstat` of the regular file being
/// replaced (its owner and mode carry over under [`Ownership::KeepExisting`]).
pub(crate) fn replace_file(
    path: &Path,
    bytes: &[u8],
    ownership: Ownership,
    existing: Option<&Metadata>,
    replace: bool,
) -> Result<(), WriteError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = match tempfile::Builder::new().prefix(".keyward-").tempfile_in(dir) {
        Ok(tmp) => tmp,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(WriteError::MissingFolder(dir.to_path_buf())),
        Err(e) => return Err(e.into()),
    };
    let mode = match (ownership, existing) {
        (Ownership::KeepExisting { .. }, Some(old)) => {
            keep_owner(tmp.as_file(), path, old)?;
            old.mode() & 0o777
        }
        (Ownership::KeepExisting { new_mode }, None) => new_mode,
        (Ownership::Fixed { mode }, _) => mode,
    };
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Gives `tmp` the owner and group of `old`; `fchown` runs only when they differ, so a
/// caller replacing its own file needs no privilege.
fn keep_owner(tmp: &File, path: &Path, old: &Metadata) -> Result<(), WriteError> {
    let now = tmp.metadata()?;
    if (now.uid(), now.gid()) == (old.uid(), old.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(tmp, Some(old.uid()), Some(old.gid())).map_err(|source| WriteError::KeepOwner {
        path: path.to_path_buf(),
        uid: old.uid(),
        gid: old.gid(),
        source,
    })
}

#[cfg(test)]
mod tests;
