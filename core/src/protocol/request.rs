//! Requests: what a client asks the agent, and [`decode_request`], which turns a frame body
//! into a [`Request`] or a precise [`RequestError`] (malformed JSON, unsupported version,
//! unknown operation, invalid fields) that still carries the request id when one was readable.
//! The decoding itself, in one pass over the frame, is in `decode.rs`; a frame with a
//! repeated object key is malformed (`unique_keys.rs`).

use serde::{Deserialize, Serialize};

use super::error_code::ErrorCode;
use crate::key::KeyId;

/// One request frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version; must be [`super::PROTOCOL_VERSION`].
    pub v: u16,
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Operation,
}

/// The operations, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Agent name, protocol version, backend.
    Hello,
    /// The keys in the store.
    ListKeys,
    /// A key's SubjectPublicKeyInfo and installed certificate.
    PublicKey {
        /// The key.
        key: KeyId,
    },
    /// Sign `data` (the message, not a digest) with `key` as `profile` prescribes.
    Sign {
        /// The key.
        key: KeyId,
        /// `nvflare`, `tls`, or `tls-<scheme>`.
        profile: String,
        /// The message.
        #[serde(with = "super::base64_field")]
        data: Vec<u8>,
    },
    /// Decrypt an RSA-OAEP-SHA-256 ciphertext.
    Decrypt {
        /// The key.
        key: KeyId,
        /// The ciphertext.
        #[serde(with = "super::base64_field")]
        data: Vec<u8>,
    },
    /// Backend health and counters.
    Status,
    /// NVFlare flow, step 1: a fresh client nonce for `key`, bound to this caller.
    NvflareChallenge {
        /// The site key.
        key: KeyId,
    },
    /// NVFlare flow, step 2: verify the server's challenge reply, then sign the registration.
    NvflareRegister {
        /// The site key.
        key: KeyId,
        /// The nonce `nvflare_challenge` returned (and the client sent to the server).
        client_nonce: String,
        /// The reply's `cert`: the server certificate PEM bytes, exactly as received.
        #[serde(with = "super::base64_field")]
        server_cert: Vec<u8>,
        /// The reply's `cn`.
        server_cn: String,
        /// The reply's `signature` (raw bytes).
        #[serde(with = "super::base64_field")]
        server_signature: Vec<u8>,
        /// The reply's `nonce`: the server nonce the registration signature covers.
        server_nonce: String,
    },
    /// NVFlare flow, step 3: verify the token signature the server returned at registration.
    NvflareVerifyToken {
        /// The session `nvflare_register` returned.
        session: String,
        /// The client name the token was issued to.
        client_name: String,
        /// `__token__`.
        token: String,
        /// `__token_signature__` (base64 text, as NVFlare sends it).
        token_signature: String,
    },
}

impl Operation {
    /// Every `op` name, for telling an unknown operation from a malformed one.
    pub const NAMES: [&'static str; 9] = [
        "hello",
        "list_keys",
        "public_key",
        "sign",
        "decrypt",
        "status",
        "nvflare_challenge",
        "nvflare_register",
        "nvflare_verify_token",
    ];

    /// The `op` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::ListKeys => "list_keys",
            Self::PublicKey { .. } => "public_key",
            Self::Sign { .. } => "sign",
            Self::Decrypt { .. } => "decrypt",
            Self::Status => "status",
            Self::NvflareChallenge { .. } => "nvflare_challenge",
            Self::NvflareRegister { .. } => "nvflare_register",
            Self::NvflareVerifyToken { .. } => "nvflare_verify_token",
        }
    }

    /// The key the operation uses, if any.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            Self::PublicKey { key }
            | Self::Sign { key, .. }
            | Self::Decrypt { key, .. }
            | Self::NvflareChallenge { key }
            | Self::NvflareRegister { key, .. } => Some(key),
            Self::Hello | Self::ListKeys | Self::Status | Self::NvflareVerifyToken { .. } => None,
        }
    }
}

/// A request that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    /// The request id, when it could be read.
    pub id: Option<u64>,
    /// What kind of failure.
    pub code: ErrorCode,
    /// Detail for the caller (never echoes request data).
    pub message: String,
}

/// Decodes a frame body.
///
/// # Errors
/// [`RequestError`] with code `malformed_request`, `unsupported_version`,
/// `unknown_operation` or `invalid_request`.
pub fn decode_request(body: &[u8]) -> Result<Request, RequestError> {
    super::decode::decode(body)
}

/// Text fields are short in every valid request; refuse long ones before they reach logs.
pub(super) fn oversized_field(op: &Operation) -> Option<String> {
    let limit = |name: &str, value: &str, max: usize| {
        (value.len() > max).then(|| format!("invalid request: `{name}` longer than {max} bytes"))
    };
    match op {
        Operation::Sign { profile, .. } => limit("profile", profile, super::MAX_PROFILE_NAME),
        Operation::NvflareRegister { client_nonce, server_cn, server_nonce, .. } => {
            limit("client_nonce", client_nonce, 64)
                .or_else(|| limit("server_cn", server_cn, 256))
                .or_else(|| limit("server_nonce", server_nonce, 256))
        }
        Operation::NvflareVerifyToken { session, client_name, token, token_signature } => limit("session", session, 64)
            .or_else(|| limit("client_name", client_name, 256))
            .or_else(|| limit("token", token, 256))
            .or_else(|| limit("token_signature", token_signature, 4096)),
        _ => None,
    }
}
