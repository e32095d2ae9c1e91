//! `nvflare_server_register`: for an NVFlare server key, verify a client's registration
//! against the server nonce the agent issued, then sign the client's token
//! (`docs/protocol.md` §7a). Request [`crate::Operation::NvflareServerRegister`], reply
//! [`crate::Reply::NvflareClientRegistered`].

use super::OpSpec;

/// `nvflare_server_register` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "nvflare_server_register",
    reply_kind: "nvflare_client_registered",
    fields: &["key", "server_nonce", "client_name", "client_cert", "client_signature", "token"],
    keyed: true,
    text_limits: &[("server_nonce", 64), ("client_name", 256), ("token", 64)],
};
