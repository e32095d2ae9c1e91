//! `nvflare_server_challenge`: for an NVFlare server key, answer a client's challenge — sign
//! `server_cn + client_nonce` and issue the server nonce the client's registration must sign
//! (`docs/protocol.md` §7a). Request [`crate::Operation::NvflareServerChallenge`], reply
//! [`crate::Reply::NvflareServerChallenge`].

use super::OpSpec;

/// `nvflare_server_challenge` on the wire.
pub const SPEC: OpSpec = OpSpec {
    name: "nvflare_server_challenge",
    reply_kind: "nvflare_server_challenge",
    fields: &["key", "client_nonce"],
    keyed: true,
    text_limits: &[("client_nonce", 64)],
};
