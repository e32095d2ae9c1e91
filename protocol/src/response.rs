//! Responses: a [`Response`] echoes the request's `v` and `id` and holds either a [`Reply`]
//! (`"status": "ok"`) or a [`WireError`] (`"status": "error"`), never both. Each
//! [`Reply`] variant is the reply of one operation (`ops/<name>.rs` gives its `kind`).

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use keyward_core::key::{KeyAlgorithm, KeyId};

use crate::ops::list_keys::KeyEntry;
use crate::ops::status::StatusReport;

/// One response frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u16,
    /// The request's id (0 when the request's id could not be read).
    pub id: u64,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Success or failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "body", rename_all = "snake_case")]
pub enum Outcome {
    /// The operation succeeded.
    Ok(Reply),
    /// It failed.
    Error(WireError),
}

/// An error on the wire: a stable code and the top-level message only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

/// The successful result of each operation, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// For `hello`.
    Hello {
        /// Agent name and version.
        agent: String,
        /// Protocol version.
        protocol: u16,
        /// Backend kind.
        backend: String,
    },
    /// For `list_keys`.
    Keys {
        /// The keys.
        keys: Vec<KeyEntry>,
    },
    /// For `public_key`.
    PublicKey {
        /// The key.
        key: KeyId,
        /// Its type.
        algorithm: KeyAlgorithm,
        /// DER SubjectPublicKeyInfo.
        #[serde(with = "crate::base64_field")]
        spki_der: Vec<u8>,
        /// The installed certificate (chain) as PEM, if any.
        certificate_pem: Option<String>,
    },
    /// For `sign`.
    Signature {
        /// The profile actually used (`tls` resolved to its scheme).
        profile: String,
        /// The signature (DER for ECDSA).
        #[serde(with = "crate::base64_field")]
        signature: Vec<u8>,
    },
    /// For `decrypt`.
    Plaintext {
        /// The plaintext.
        #[serde(with = "crate::base64_field")]
        plaintext: Vec<u8>,
    },
    /// For `status`.
    Status(StatusReport),
    /// For `nvflare_challenge`.
    NvflareChallenge {
        /// The client nonce to send to the server (a uuid4 string).
        nonce: String,
    },
    /// For `nvflare_register`: what the client sends in its register message.
    NvflareRegistration {
        /// `cn`: the site CN from the installed certificate.
        cn: String,
        /// `cert`: the installed certificate PEM bytes.
        #[serde(with = "crate::base64_field")]
        cert: Vec<u8>,
        /// `signature`: raw PSS signature over `cn + server_nonce`.
        #[serde(with = "crate::base64_field")]
        signature: Vec<u8>,
        /// Handle for `nvflare_verify_token` (valid a few minutes, for this caller only).
        session: String,
    },
    /// For `nvflare_verify_token`.
    TokenVerified {
        /// The server CN that signed it.
        server_cn: String,
    },
    /// For `retire_key`: the key is destroyed; its audit record was written before.
    KeyRetired {
        /// The destroyed key.
        key: KeyId,
        /// Its successor.
        replaced_by: KeyId,
        /// The audit record's `seq` written before the key was destroyed.
        audit_seq: u64,
    },
    /// For `nvflare_server_challenge`: what the server sends in its challenge reply.
    NvflareServerChallenge {
        /// `cn`: the server CN from the installed certificate.
        cn: String,
        /// `nonce`: the server nonce the client's registration must sign (a uuid4 string).
        nonce: String,
        /// `signature`: raw PSS signature over `cn + client_nonce`.
        #[serde(with = "crate::base64_field")]
        signature: Vec<u8>,
    },
    /// For `nvflare_server_register`.
    NvflareClientRegistered {
        /// The verified client's CN.
        client_cn: String,
        /// Raw PSS signature over `client_cn + token` (NVFlare sends it base64-encoded).
        #[serde(with = "crate::base64_field")]
        token_signature: Vec<u8>,
    },
}

impl Response {
    /// A success reply.
    pub fn ok(id: u64, reply: Reply) -> Self {
        Self { v: crate::PROTOCOL_VERSION, id, outcome: Outcome::Ok(reply) }
    }

    /// An error reply.
    pub fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { v: crate::PROTOCOL_VERSION, id, outcome: Outcome::Error(WireError { code, message: message.into() }) }
    }
}
