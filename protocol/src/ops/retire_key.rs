//! `retire_key`: the last step of a key rotation. The agent proves the successor (its
//! installed certificate is its own and valid now, and a signature it makes verifies against
//! that certificate), writes the retirement's audit record, and only then destroys the old
//! key in the token. Request [`crate::Operation::RetireKey`], reply
//! [`crate::Reply::KeyRetired`]. Refused to any caller but root and the agent's own user.

use super::OpSpec;

/// `retire_key` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "retire_key",
    reply_kind: "key_retired",
    fields: &["key", "replaced_by"],
    keyed: true,
    text_limits: &[],
};
