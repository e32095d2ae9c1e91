//! `sign`: sign a message (not a digest) with a key as a profile prescribes
//! (`docs/protocol.md` §5). Request [`crate::Operation::Sign`], reply
//! [`crate::Reply::Signature`].

use super::OpSpec;

/// `sign` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "sign",
    reply_kind: "signature",
    fields: &["key", "profile", "data"],
    keyed: true,
    text_limits: &[("profile", crate::MAX_PROFILE_NAME)],
};
