//! NVFlare 2.9's distributed provisioning with a key that never leaves the token: the request
//! folder `nvflare cert request` makes (`<name>.csr`, `request.json`, `site.yaml`,
//! `<name>.request.zip`), made here with a key generated in the PKCS#11 token or TPM and a
//! CSR the token signs; `<name>.key` is a keyward key reference, which `nvflare package`
//! (with the keyward plug-in in its venv) checks against the signed certificate and copies
//! into the kit. The project admin's side (`nvflare cert init`, `nvflare cert approve`) is
//! NVFlare's, unchanged.
//!
//! - `participant.rs`: the participant definition (`-p <name>.yaml`) and its two copies.
//! - `yaml_out.rs`: writing `site.yaml` as PyYAML does.
//! - `csr.rs`: the PKCS#10 request, built by rcgen and signed in the token.
//! - `request.rs`: `request.json`, the request zip, and the folder.
//!
//! Source of the formats: nvflare/tool/cert/cert_commands.py (`handle_cert_request`,
//! `_read_request_zip`, `_validate_request_metadata`), nvflare 2.9.0.

pub mod csr;
pub mod participant;
pub mod request;
pub mod yaml_out;

use std::path::PathBuf;

use keyward_core::StoreError;

/// Why a request was not made.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The participant definition is not one NVFlare would take.
    #[error("the participant definition {0}")]
    Definition(String),
    /// The token refused or failed.
    #[error("{op} in the token failed")]
    Store {
        /// What was asked.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The token's public key does not parse.
    #[error("the token returned a malformed public key for `{0}`")]
    PublicKey(keyward_core::KeyId),
    /// rcgen could not build the request.
    #[error("building the certificate request failed")]
    Csr(#[source] rcgen::Error),
    /// A file of a request is already there.
    #[error("`{0}` exists: a request folder is never overwritten; use another --out")]
    Exists(PathBuf),
    /// Writing the request zip failed.
    #[error("writing the request zip `{path}` failed")]
    Zip {
        /// The zip.
        path: PathBuf,
        /// Cause.
        #[source]
        source: zip::result::ZipError,
    },
    /// File system error.
    #[error("cannot write `{path}`")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
