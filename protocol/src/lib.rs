//! keyward-protocol: the agent's socket protocol, version 1, described once. The spec for
//! clients in other languages is `docs/protocol.md`; the golden vectors in `vectors/` (one
//! request frame and one reply per operation, the error-code table) are checked against
//! these types, against the Python client and against that page (`tests/`).
//!
//! - [`frame`]: a 4-byte big-endian length, then that many bytes of UTF-8 JSON; the limits.
//! - [`ops`]: one module per operation (its wire name, reply kind, fields and limits), and
//!   [`OpKind`], the list of operations derived from [`Operation`].
//! - [`Request`] / [`Operation`] and [`decode_request`]; [`Response`] / [`Reply`].
//! - [`ErrorCode`]: the stable error codes and their string table.
//!
//! Requests and responses are separate types; each carries the protocol version `v` and the
//! caller's request `id`, which the reply echoes. Binary fields are standard base64.

mod base64_field;
mod error_code;
pub mod frame;
pub mod ops;
mod request;
mod response;
mod sign_fast;
mod unique_keys;

pub use error_code::ErrorCode;
pub use frame::{codec, encode_frame, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES, MAX_REPLY_BYTES};
pub use ops::list_keys::KeyEntry;
pub use ops::status::{KeyStatus, OpLatency, StatusReport};
pub use ops::{OpKind, OpSpec};
pub use request::{decode_request, Operation, Request, RequestError};
pub use response::{Outcome, Reply, Response, WireError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest profile name accepted in a request.
pub const MAX_PROFILE_NAME: usize = 64;

#[cfg(test)]
mod tests;
