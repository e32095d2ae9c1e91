//! What to open: the module path and how to find the token. The PIN is not here; it is a
//! [`keyward_core::Pin`] passed to `Pkcs11Backend::open` and dropped (zeroized) after login.

use std::path::PathBuf;

use crate::uri::Pkcs11Uri;

/// How to find the token. Never by slot number: slots move when tokens are added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// `CKA_LABEL` of the token (`token=` in a URI).
    Label(String),
    /// An RFC 7512 URI (`pkcs11:token=fl-site;serial=...`); every attribute given must match.
    Uri(Pkcs11Uri),
}

impl TokenSelector {
    /// Reads a label or, when it starts with `pkcs11:`, a URI.
    ///
    /// # Errors
    /// [`crate::Pkcs11Error::BadUri`] for a malformed URI.
    pub fn parse(text: &str) -> Result<Self, crate::Pkcs11Error> {
        if text.starts_with("pkcs11:") {
            Ok(Self::Uri(Pkcs11Uri::parse(text)?))
        } else {
            Ok(Self::Label(text.to_owned()))
        }
    }
}

impl TokenSelector {
    /// The label or URI as given, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Label(l) => l.clone(),
            Self::Uri(u) => u.to_string(),
        }
    }
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Label(l) => write!(f, "token `{l}`"),
            Self::Uri(u) => write!(f, "token `{u}`"),
        }
    }
}

/// Everything needed to open a token except the PIN.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// Sessions to open, one per worker thread.
    pub workers: usize,
}
