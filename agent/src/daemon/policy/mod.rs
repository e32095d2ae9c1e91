//! The rules a request is checked against, and how they change while the agent runs:
//! per-key policy (`key_policy.rs`: callers, operations, profiles, NVFlare trust), rate
//! limits (`rate_limit.rs`: token buckets), and SIGHUP reload (`reload.rs`: the rules and
//! `[access]` swapped as a whole; open connections of peers no longer allowed are closed by
//! the front end, `front/registry.rs`).

mod key_policy;
mod rate_limit;
mod reload;

pub use key_policy::{Grant, KeyPolicy, KeyUse, Policies, Refusal};
pub use reload::{Live, Reloader, Rules};
