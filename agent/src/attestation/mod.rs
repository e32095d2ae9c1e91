//! TPM key attestation around the TPM backend's evidence and verifier
//! (`keyward_tpm::attest`): the JSON documents site and admin exchange (`documents.rs`), the
//! admin's verifier config (`verifier_config.rs`) and the verifier's open challenges
//! (`pending.rs`). The flow and what is checked: docs/attestation.md; the commands:
//! `cli/attest.rs`.

pub mod documents;
pub mod pending;
pub mod verifier_config;
