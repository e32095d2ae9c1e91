//! `hello`: the agent's name and version, the protocol version and the backend kind.
//! Answered from memory: no session, no device.

use keyward_protocol::{Reply, PROTOCOL_VERSION};

use super::{AuditExtra, Ctx, Done};

pub(super) fn run(ctx: &Ctx<'_>) -> Done {
    let reply = Reply::Hello {
        agent: format!("keyward {}", env!("CARGO_PKG_VERSION")),
        protocol: PROTOCOL_VERSION,
        backend: ctx.agent.back.info().backend.to_owned(),
    };
    Ok((reply, AuditExtra::default()))
}
