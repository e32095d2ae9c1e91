//! Requests: what a client asks the agent, and [`decode_request`], which turns a frame body
//! into a [`Request`] or a precise [`RequestError`] (malformed JSON, unsupported version,
//! unknown operation, invalid fields) that still carries the request id when one was readable.
//! A frame with a repeated object key is malformed (`unique_keys.rs`). Which fields an
//! operation takes, and how long its text fields may be, is in its `ops/<name>.rs`.

use keyward_core::key::KeyId;
use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::ops::OpKind;
use crate::{unique_keys, PROTOCOL_VERSION};

/// One request frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
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
        #[serde(with = "crate::base64_field")]
        data: Vec<u8>,
    },
    /// Decrypt an RSA-OAEP-SHA-256 ciphertext.
    Decrypt {
        /// The key.
        key: KeyId,
        /// The ciphertext.
        #[serde(with = "crate::base64_field")]
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
        #[serde(with = "crate::base64_field")]
        server_cert: Vec<u8>,
        /// The reply's `cn`.
        server_cn: String,
        /// The reply's `signature` (raw bytes).
        #[serde(with = "crate::base64_field")]
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
    /// Destroy `key` in the token, once `replaced_by` is proven to serve in its place.
    RetireKey {
        /// The key to destroy.
        key: KeyId,
        /// Its successor, whose installed certificate must be its own and valid now.
        replaced_by: KeyId,
    },
    /// NVFlare server side, step 1: sign the challenge reply and issue a server nonce.
    NvflareServerChallenge {
        /// The server key.
        key: KeyId,
        /// The client's nonce (the challenge's `nonce` header, a uuid4 string).
        client_nonce: String,
    },
    /// NVFlare server side, step 2: verify a client's registration, then sign its token.
    NvflareServerRegister {
        /// The server key.
        key: KeyId,
        /// The server nonce `nvflare_server_challenge` issued (and the client signed).
        server_nonce: String,
        /// The `client_name` header: the name the client registers under.
        client_name: String,
        /// The register message's `cert`: the client certificate PEM bytes, as received.
        #[serde(with = "crate::base64_field")]
        client_cert: Vec<u8>,
        /// The register message's `signature` (raw bytes).
        #[serde(with = "crate::base64_field")]
        client_signature: Vec<u8>,
        /// The token the server issues to the client (a uuid4 string).
        token: String,
    },
}

impl Operation {
    /// Which operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Self::Hello => OpKind::Hello,
            Self::ListKeys => OpKind::ListKeys,
            Self::PublicKey { .. } => OpKind::PublicKey,
            Self::Sign { .. } => OpKind::Sign,
            Self::Decrypt { .. } => OpKind::Decrypt,
            Self::Status => OpKind::Status,
            Self::NvflareChallenge { .. } => OpKind::NvflareChallenge,
            Self::NvflareRegister { .. } => OpKind::NvflareRegister,
            Self::NvflareVerifyToken { .. } => OpKind::NvflareVerifyToken,
            Self::RetireKey { .. } => OpKind::RetireKey,
            Self::NvflareServerChallenge { .. } => OpKind::NvflareServerChallenge,
            Self::NvflareServerRegister { .. } => OpKind::NvflareServerRegister,
        }
    }

    /// The `op` name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The key the operation uses, if any.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            Self::PublicKey { key }
            | Self::Sign { key, .. }
            | Self::Decrypt { key, .. }
            | Self::NvflareChallenge { key }
            | Self::NvflareRegister { key, .. }
            | Self::RetireKey { key, .. }
            | Self::NvflareServerChallenge { key, .. }
            | Self::NvflareServerRegister { key, .. } => Some(key),
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
    if let Some(request) = crate::sign_fast::decode(body) {
        return Ok(request);
    }
    decode_general(body)
}

/// Every operation, and every refusal with its precise error: one parse into a `Value` that
/// refuses repeated keys, then the checks in the order the error codes are documented.
pub(crate) fn decode_general(body: &[u8]) -> Result<Request, RequestError> {
    let fail = |id, code, message: String| RequestError { id, code, message };
    let value = unique_keys::parse(body).map_err(|e| {
        let message = if e.classify() == serde_json::error::Category::Data {
            // Only a repeated key fails a parse into a plain value with a data error.
            let detail = e.to_string();
            let detail = detail.split(" at line ").next().unwrap_or_default().to_owned();
            format!("frame is not valid JSON: {detail}")
        } else {
            format!("frame is not JSON ({})", e.classify_name())
        };
        fail(None, ErrorCode::MalformedRequest, message)
    })?;
    let Some(obj) = value.as_object() else {
        return Err(fail(None, ErrorCode::MalformedRequest, "frame is not a JSON object".into()));
    };
    let id = obj.get("id").and_then(serde_json::Value::as_u64);
    match obj.get("v") {
        None => return Err(fail(id, ErrorCode::UnsupportedVersion, "missing protocol version `v`".into())),
        Some(v) => match v.as_u64() {
            Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
            Some(v) => {
                let message = format!("protocol version {v} is not supported; this agent speaks {PROTOCOL_VERSION}");
                return Err(fail(id, ErrorCode::UnsupportedVersion, message));
            }
            None => {
                return Err(fail(id, ErrorCode::UnsupportedVersion, "protocol version `v` must be an integer".into()))
            }
        },
    }
    if id.is_none() {
        return Err(fail(None, ErrorCode::InvalidRequest, "missing or non-integer request `id`".into()));
    }
    let kind = match obj.get("op").and_then(serde_json::Value::as_str) {
        None => return Err(fail(id, ErrorCode::InvalidRequest, "missing `op`".into())),
        Some(op) => OpKind::from_name(op).ok_or_else(|| {
            let shown: String = op.chars().take(40).collect();
            fail(id, ErrorCode::UnknownOperation, format!("unknown operation `{shown}`"))
        })?,
    };
    let spec = kind.spec();
    // serde ignores unknown fields of field-less operations; the operation's field list
    // refuses them for every operation, without re-serialising the request.
    if let Some(extra) =
        obj.keys().find(|k| !matches!(k.as_str(), "v" | "id" | "op") && !spec.fields.contains(&k.as_str()))
    {
        let shown: String = extra.chars().take(40).collect();
        return Err(fail(id, ErrorCode::InvalidRequest, format!("invalid request: unknown field `{shown}`")));
    }
    // Text fields are short in every valid request; refuse long ones before they reach logs.
    for (name, max) in spec.text_limits {
        if obj.get(*name).and_then(serde_json::Value::as_str).is_some_and(|text| text.len() > *max) {
            return Err(fail(
                id,
                ErrorCode::InvalidRequest,
                format!("invalid request: `{name}` longer than {max} bytes"),
            ));
        }
    }
    serde_json::from_value(value).map_err(|e| fail(id, ErrorCode::InvalidRequest, strip_serde_detail(&e)))
}

/// serde's message names the field and the problem; cut it to a readable length.
fn strip_serde_detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or_default();
    format!("invalid request: {}", text.chars().take(200).collect::<String>())
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "bad data",
            serde_json::error::Category::Eof => "ends early",
        }
    }
}
