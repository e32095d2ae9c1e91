//! [`Pin`]: a PIN or auth value held in zeroizing memory. It has no `Display`, `Serialize`
//! or `Clone`, and its `Debug` prints `<redacted>`, so it cannot leak into a log line, an
//! error message or a reply by accident. It is read from a file whose mode and owner are
//! checked, never from argv or a socket request.
//!
//! The file is opened once, without following a symbolic link and without blocking (a FIFO
//! would otherwise hang the agent until someone writes to it), and every check runs on that
//! open handle (`fstat`), so nothing can be swapped in between the check and the read.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use zeroize::Zeroizing;

/// Longest PIN accepted from a file (PKCS#11 tokens allow far less; this only bounds reads).
const MAX_PIN_BYTES: u64 = 256;

/// A secret PIN or auth value.
pub struct Pin(Zeroizing<String>);

/// Why a PIN file could not be used. Never contains the PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The file could not be read.
    #[error("cannot read PIN file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error("PIN file `{path}` has mode {mode:04o}; it must not be accessible to group or others (chmod 600)")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by another user than the one running keyward.
    #[error("PIN file `{path}` is owned by uid {owner}, not by uid {me} that runs keyward")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// A symbolic link: refused, so that whoever can replace the link cannot point the
    /// agent at another file.
    #[error("PIN file `{path}` is a symbolic link; set the path of the file itself")]
    Symlink {
        /// The file.
        path: PathBuf,
    },
    /// A FIFO, device, socket or folder rather than a regular file.
    #[error("PIN file `{path}` is a {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// More than one line (one trailing newline is allowed).
    #[error("PIN file `{path}` has more than one line; it must hold the PIN alone")]
    MultipleLines {
        /// The file.
        path: PathBuf,
    },
    /// Empty, too long, or not UTF-8.
    #[error("PIN file `{path}` does not hold a PIN (empty, longer than {MAX_PIN_BYTES} bytes, or not UTF-8)")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// What a file that is not a regular file is, for the error message.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_dir() {
        "folder"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

impl Pin {
    /// Wraps a PIN already in memory.
    pub fn new(pin: Zeroizing<String>) -> Self {
        Self(pin)
    }

    /// Reads a PIN from `path`: a regular file (not a symbolic link, FIFO or device), owned
    /// by the effective user, with no group or other permissions, holding one line. One
    /// trailing newline is dropped.
    ///
    /// # Errors
    /// [`PinError`] naming the file and the problem, never the content.
    pub fn from_file(path: &Path) -> Result<Self, PinError> {
        let read_err = |source| PinError::Read { path: path.to_owned(), source };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::ELOOP as i32 => PinError::Symlink { path: path.to_owned() },
                _ => read_err(e),
            })?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.file_type().is_file() {
            return Err(PinError::NotRegular { path: path.to_owned(), kind: kind_of(meta.file_type()) });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PinError::TooOpen { path: path.to_owned(), mode });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(PinError::WrongOwner { path: path.to_owned(), owner: meta.uid(), me });
        }
        let mut raw = Zeroizing::new(Vec::new());
        file.take(MAX_PIN_BYTES + 1).read_to_end(&mut raw).map_err(read_err)?;
        let invalid = || PinError::Invalid { path: path.to_owned() };
        let mut text = Zeroizing::new(String::from_utf8(std::mem::take(&mut *raw)).map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            invalid()
        })?);
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if text.is_empty() || text.len() as u64 > MAX_PIN_BYTES {
            return Err(invalid());
        }
        if text.contains(['\n', '\r']) {
            return Err(PinError::MultipleLines { path: path.to_owned() });
        }
        Ok(Self(text))
    }

    /// The secret, for the moment of the device call only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let p = dir.join("pin");
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("keyward-pin-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn reads_pin_and_drops_one_newline() {
        let d = tempdir();
        let pin = Pin::from_file(&write(&d, "s3cret\n", 0o600)).unwrap();
        assert_eq!(pin.expose(), "s3cret");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn refuses_group_readable_file_without_showing_content() {
        let d = tempdir();
        let err = Pin::from_file(&write(&d, "s3cret", 0o640)).unwrap_err();
        assert!(matches!(err, PinError::TooOpen { mode: 0o640, .. }));
        assert!(!err.to_string().contains("s3cret"));
    }

    /// Runs `f` on another thread and fails the test if it has not returned within 5 s.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("Pin::from_file hung")
    }

    #[test]
    fn a_fifo_is_refused_before_it_blocks() {
        let d = tempdir();
        let fifo = d.join("pin-fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = within_5s(move || Pin::from_file(&fifo).unwrap_err());
        assert!(matches!(err, PinError::NotRegular { kind: "FIFO", .. }), "{err}");
        assert!(err.to_string().ends_with("is a FIFO, not a regular file"), "{err}");
    }

    #[test]
    fn a_folder_a_device_and_a_symlink_are_refused() {
        let d = tempdir();
        assert!(matches!(Pin::from_file(&d), Err(PinError::NotRegular { kind: "folder", .. })));
        let dev = within_5s(|| Pin::from_file(Path::new("/dev/zero")).unwrap_err());
        assert!(matches!(dev, PinError::NotRegular { kind: "device", .. }), "{dev}");
        let target = write(&d, "s3cret\n", 0o600);
        let link = d.join("pin-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Pin::from_file(&link).unwrap_err();
        assert!(matches!(err, PinError::Symlink { .. }), "{err}");
    }

    #[test]
    fn a_file_of_more_than_one_line_is_refused_without_showing_content() {
        let d = tempdir();
        for content in ["s3cret\nsecond\n", "s3cret\n\n", "s3cret\rx", "\ns3cret"] {
            let err = Pin::from_file(&write(&d, content, 0o600)).unwrap_err();
            assert!(matches!(err, PinError::MultipleLines { .. }), "{content:?}: {err}");
            assert!(!err.to_string().contains("s3cret"));
        }
        assert_eq!(Pin::from_file(&write(&d, "s3cret\r\n", 0o600)).unwrap().expose(), "s3cret");
    }

    #[test]
    fn refuses_empty_file() {
        let d = tempdir();
        assert!(matches!(Pin::from_file(&write(&d, "\n", 0o600)), Err(PinError::Invalid { .. })));
    }
}
