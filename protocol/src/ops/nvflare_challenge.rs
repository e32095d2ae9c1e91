//! `nvflare_challenge`: NVFlare flow step 1, a fresh client nonce for a key, bound to the
//! caller (`docs/protocol.md` §7). Request [`crate::Operation::NvflareChallenge`], reply
//! [`crate::Reply::NvflareChallenge`].

use super::OpSpec;

/// `nvflare_challenge` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "nvflare_challenge",
    reply_kind: "nvflare_challenge",
    fields: &["key"],
    keyed: true,
    text_limits: &[],
};
