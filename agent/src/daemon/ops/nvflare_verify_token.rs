//! `nvflare_verify_token`: NVFlare flow, step 3. Verifies the token signature the server
//! returned at registration, with the server identity verified then (the session of
//! `nvflare_register`, usable only by the same uid and only for its lifetime).

use keyward_protocol::{ErrorCode, Reply};

use super::nvflare_state::{lock, SESSION_LIFETIME};
use super::{AuditExtra, Ctx, Done, Failure};

pub(super) fn run(ctx: &Ctx<'_>, session: &str, client_name: &str, token: &str, token_signature: &str) -> Done {
    let sessions = lock(&ctx.agent.nvflare.sessions);
    let unknown = || Failure {
        code: ErrorCode::InvalidRequest,
        message: "unknown or expired registration session; register again".into(),
    };
    let s = sessions.get(session).ok_or_else(unknown)?;
    if s.caller != ctx.peer.uid || s.created.elapsed() >= SESSION_LIFETIME {
        return Err(unknown());
    }
    s.server.verify_token(client_name, token, token_signature)?;
    Ok((Reply::TokenVerified { server_cn: s.server.cn.clone() }, AuditExtra::default()))
}
