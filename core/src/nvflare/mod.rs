//! NVFlare's secure-mode client authentication, byte-compatible with nvflare 2.9
//! (`nvflare/private/fed/authenticator.py`, `identity_utils.py`; spec:
//! `shared/nvflare-protocol.md` §2). The agent runs it so that the site key signs a
//! registration only for a server it has verified itself (peer-bound signing):
//!
//! 1. [`NonceBook::issue`]: the client nonce, a uuid4 string bound to the caller and key.
//! 2. [`ServerTrust::verify_reply`]: the server's challenge reply — certificate chain to the
//!    pinned root CA (validity included), CN equal to the expected server identity,
//!    KeyUsage/ExtendedKeyUsage as NVFlare applies them, and the PSS signature over
//!    `server_cn + client_nonce` for a nonce this agent issued and that was not used before.
//! 3. [`registration_message`]: what the site key then signs, `client_cn + server_nonce`, for
//!    a server nonce shaped as NVFlare's server makes it ([`check_server_nonce`]).
//! 4. [`VerifiedServer::verify_token`]: the server's signature over `client_name + token`.
//!
//! The server's side (`client.rs`), for a server key held by the agent: [`NonceBook`] again
//! for the server nonces the agent issues with its challenge reply
//! ([`challenge_reply_message`]), then [`ClientTrust::verify_registration`] — the client's
//! certificate chains to the pinned root (clientAuth), its CN is the registering name, its
//! signature covers `client_cn + server_nonce` — before the server key signs
//! [`token_message`].
//!
//! Also [`key_reference`]: the file that takes `client.key`'s place in a startup kit.

mod chain;
mod client;
mod error;
mod keyref;
mod nonce;
mod server;
#[cfg(test)]
mod test_pki;

pub use client::{challenge_reply_message, token_message, ClientRegistration, ClientTrust, VerifiedClient};
pub use error::ChallengeError;
pub use keyref::{key_reference, KEY_REFERENCE_LABEL};
pub use nonce::{check_server_nonce, check_uuid4, NonceBook, NONCE_LIFETIME};
pub use server::{registration_message, ServerReply, ServerTrust, VerifiedServer};
