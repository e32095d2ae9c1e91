//! The one-pass decoder of `sign`, the request on the path of every signature: serde reads
//! the frame straight into a struct, with no `Value` tree, no buffering of the flattened,
//! tagged [`Operation`] and no second walk. It accepts only what [`crate::decode_request`]'s
//! general path accepts — an object, every field exactly once (serde refuses a repeated
//! field), no field besides `v`, `id`, `op`, `key`, `profile` and `data`, the supported
//! version, `op` = `sign`, the profile's length limit — and returns `None` for anything
//! else, which the general path then decodes, or refuses with its precise error. The
//! protocol's tests check both paths agree on every golden vector and a set of bad frames.

use keyward_core::key::KeyId;
use serde::Deserialize;

use crate::request::{Operation, Request};
use crate::{MAX_PROFILE_NAME, PROTOCOL_VERSION};

/// The only `op` this decoder takes.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SignTag {
    Sign,
}

/// A `sign` frame, field for field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignFrame {
    v: u16,
    id: u64,
    #[allow(dead_code)]
    op: SignTag,
    key: KeyId,
    profile: String,
    #[serde(with = "crate::base64_field")]
    data: Vec<u8>,
}

/// `body` as a `sign` request, when it is a valid one; `None` otherwise.
pub(crate) fn decode(body: &[u8]) -> Option<Request> {
    // serde also reads a struct from a JSON array; the wire takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let frame: SignFrame = serde_json::from_slice(body).ok()?;
    if frame.v != PROTOCOL_VERSION || frame.profile.len() > MAX_PROFILE_NAME {
        return None;
    }
    let op = Operation::Sign { key: frame.key, profile: frame.profile, data: frame.data };
    Some(Request { v: frame.v, id: frame.id, op })
}
