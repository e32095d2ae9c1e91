//! The audit log: one JSON line per operation (and per refused connection or bad frame),
//! written before the reply is sent. It records who (peer uid/gid/pid), what (operation,
//! key, profile), on what (SHA-256 of the payload and its length), the outcome and the
//! latency — never a PIN, a plaintext or a signature. A private-key result whose record
//! cannot be written is withheld (`audit_failed`, `daemon/ops/mod.rs`).
//!
//! The lines form a hash chain: each carries `seq` (one more than the line before, across
//! agent restarts and rotated files) and `prev`, the SHA-256 of the previous line's bytes;
//! a head file kept apart holds both ends of the chain, so `keyward audit verify` detects
//! edited, removed or reordered lines, including the last and the first ones.
//!
//! Files: `record.rs` (what a line says), `log.rs` (appending, rotation, retention, repair
//! at start), `files.rs` (the files on disk, torn tails), `head.rs` (the head file),
//! `flood.rs` (refusal flood control), `chain.rs` (verification), `error.rs`.

pub mod chain;
mod error;
mod files;
mod flood;
mod head;
mod log;
mod record;

pub use error::AuditError;
pub use files::{log_files, rotated_files};
pub use head::{read_head, Head, HeadUnreadable};
pub use log::{AuditLog, AuditSettings};
pub use record::{micros, sha256_hex, AuditNote, AuditRecord, Peer, GENESIS};

#[cfg(test)]
mod tests;
