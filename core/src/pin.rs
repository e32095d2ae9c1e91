//! [`Pin`]: a PIN or auth value held in zeroizing memory. It has no `Display`, `Serialize`
//! or `Clone`, and its `Debug` prints `<redacted>`, so it cannot leak into a log line, an
//! error message or a reply by accident. It is read from a file whose mode and owner are
//! checked, never from argv or a socket request.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    /// Empty, too long, or not UTF-8.
    #[error("PIN file `{path}` does not hold a PIN (empty, longer than {MAX_PIN_BYTES} bytes, or not UTF-8)")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

impl Pin {
    /// Wraps a PIN already in memory.
    pub fn new(pin: Zeroizing<String>) -> Self {
        Self(pin)
    }

    /// Reads a PIN from `path`: the file must be owned by the effective user and have no
    /// group or other permissions. One trailing newline is dropped.
    ///
    /// # Errors
    /// [`PinError`] naming the file and the problem, never the content.
    pub fn from_file(path: &Path) -> Result<Self, PinError> {
        let read_err = |source| PinError::Read { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PinError::TooOpen { path: path.to_owned(), mode });
        }
        let me = std::fs::metadata("/proc/self").map_err(read_err)?.uid();
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

    #[test]
    fn refuses_empty_file() {
        let d = tempdir();
        assert!(matches!(Pin::from_file(&write(&d, "\n", 0o600)), Err(PinError::Invalid { .. })));
    }
}
