//! Where `--out` output goes (`sign`, `decrypt`, `key public`, `csr`), decided on an open
//! handle, never by a check followed by a separate open:
//!
//! - `-`: standard output.
//! - `/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`, `/proc/thread-self/fd/N`:
//!   the process's own descriptor, opened for appending (like `-`; nothing is truncated).
//! - a character device or a FIFO (a pipe): written through, never replaced (`/dev/null`
//!   stays a device).
//! - an existing regular file: replaced atomically (`files.rs`), keeping its owner, group and
//!   mode; plaintext is always the caller's with mode 0600.
//! - nothing: a new file (0644, or 0600 for plaintext), never over something created meanwhile.
//! - refused: any other symbolic link at the last component (a link in a folder another user
//!   can write could point a root-run command at `/etc/shadow` or `/dev/mem`), a folder, a
//!   block device, a socket, and a missing parent folder (never created).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::files::{kind_name, replace_file, Ownership, WriteError};

/// What the output is, which decides the mode of a file it creates or replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Public data (signature, public key, CSR): a new file is 0644; a replaced file keeps its
    /// owner, group and mode.
    Public,
    /// Plaintext: the file is always the caller's, mode 0600.
    Secret,
}

/// Writes `bytes` to the `--out` target `out` (see the module doc for what each kind gets).
///
/// # Errors
/// [`WriteError`]: a refused target, a missing folder, or I/O errors.
pub fn write_output(out: &Path, bytes: &[u8], contents: Contents) -> Result<(), WriteError> {
    if out.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        return Ok(stdout.flush()?);
    }
    if is_own_descriptor(out) {
        // These names resolve, through links in root-owned /dev and /proc, to this process's
        // own descriptors: following them cannot be turned against the caller.
        let mut file = OpenOptions::new().append(true).custom_flags(OFlag::O_NOCTTY.bits()).open(out)?;
        return Ok(file.write_all(bytes)?);
    }
    let opened = OpenOptions::new().write(true).custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NOCTTY).bits()).open(out);
    let ownership = match contents {
        Contents::Public => Ownership::KeepExisting { new_mode: 0o644 },
        Contents::Secret => Ownership::Fixed { mode: 0o600 },
    };
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return replace_file(out, bytes, ownership, None, false),
        Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => return Err(WriteError::Symlink(out.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(Errno::EISDIR as i32) => {
            return Err(WriteError::NotRegular { path: out.to_path_buf(), kind: "folder" })
        }
        Err(e) if e.raw_os_error() == Some(Errno::ENXIO as i32) => {
            return Err(WriteError::NotRegular { path: out.to_path_buf(), kind: "socket" })
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        drop(file);
        replace_file(out, bytes, ownership, Some(&meta), true)
    } else if file_type.is_char_device() || file_type.is_fifo() {
        Ok(file.write_all(bytes)?)
    } else {
        Err(WriteError::NotRegular { path: out.to_path_buf(), kind: kind_name(&meta) })
    }
}

/// Whether `path` names one of this process's own descriptors.
fn is_own_descriptor(path: &Path) -> bool {
    let Some(text) = path.to_str() else { return false };
    if matches!(text, "/dev/stdout" | "/dev/stderr") {
        return true;
    }
    ["/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"].iter().any(|prefix| {
        text.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests;
