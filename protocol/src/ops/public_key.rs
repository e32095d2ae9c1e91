//! `public_key`: a key's DER SubjectPublicKeyInfo and its installed certificate. Request
//! [`crate::Operation::PublicKey`], reply [`crate::Reply::PublicKey`].

use super::OpSpec;

/// `public_key` on the wire.
pub const SPEC: OpSpec =
    OpSpec { name: "public_key", reply_kind: "public_key", fields: &["key"], keyed: true, text_limits: &[] };
