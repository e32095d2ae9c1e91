//! The agent's socket protocol, version 1 (the full spec, for clients in other languages,
//! is `docs/protocol.md`).
//!
//! Each message is a frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//! Requests and responses are separate types; each carries the protocol version `v` and the
//! caller's request `id`, which the reply echoes. Binary fields are standard base64.

mod base64_field;
mod decode;
mod error_code;
mod request;
mod response;
mod unique_keys;

pub use error_code::ErrorCode;
pub use request::{decode_request, Operation, Request, RequestError};
pub use response::{KeyEntry, KeyStatus, OpLatency, Outcome, Reply, Response, StatusReport, WireError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Default largest frame the agent accepts (1 MiB): far above any sign or decrypt request.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest reply frame either end accepts (16 MiB): replies are never limited by the
/// (smaller, configurable) request limit.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// Longest profile name accepted in a request.
pub const MAX_PROFILE_NAME: usize = 64;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The frame codec both ends use: 4-byte big-endian length prefix, `max_frame_bytes` limit
/// checked before the body is read or allocated.
pub fn codec(max_frame_bytes: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_PREFIX_BYTES)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

#[cfg(test)]
mod tests;
