//! `hello`: the agent's name, protocol version and backend kind. No fields; the reply is
//! [`crate::Reply::Hello`].

use super::OpSpec;

/// `hello` on the wire.
pub const SPEC: OpSpec = OpSpec { name: "hello", reply_kind: "hello", fields: &[], keyed: false, text_limits: &[] };
