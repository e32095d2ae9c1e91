//! `nvflare_register`: NVFlare flow step 2, verify the server's challenge reply, then sign
//! the registration (`docs/protocol.md` §7). Request [`crate::Operation::NvflareRegister`],
//! reply [`crate::Reply::NvflareRegistration`].

use super::OpSpec;

/// `nvflare_register` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "nvflare_register",
    reply_kind: "nvflare_registration",
    fields: &["key", "client_nonce", "server_cert", "server_cn", "server_signature", "server_nonce"],
    keyed: true,
    text_limits: &[("client_nonce", 64), ("server_cn", 256), ("server_nonce", 256)],
};
