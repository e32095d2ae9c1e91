//! `nvflare_verify_token`: NVFlare flow step 3, verify the token signature the server
//! returned at registration (`docs/protocol.md` §7). Request
//! [`crate::Operation::NvflareVerifyToken`], reply [`crate::Reply::TokenVerified`].

use super::OpSpec;

/// `nvflare_verify_token` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "nvflare_verify_token",
    reply_kind: "token_verified",
    fields: &["session", "client_name", "token", "token_signature"],
    keyed: false,
    text_limits: &[("session", 64), ("client_name", 256), ("token", 256), ("token_signature", 4096)],
};
