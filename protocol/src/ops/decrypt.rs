//! `decrypt`: RSA-OAEP-SHA-256 decryption with a key (`docs/protocol.md` §6). Request
//! [`crate::Operation::Decrypt`], reply [`crate::Reply::Plaintext`].

use super::OpSpec;

/// `decrypt` on the wire.
pub const SPEC: OpSpec =
    OpSpec { name: "decrypt", reply_kind: "plaintext", fields: &["key", "data"], keyed: true, text_limits: &[] };
