//! Fixtures for keyward's end-to-end tests and benchmark, with real components: a SoftHSM2
//! token in its own temp dir ([`SoftHsm`]), a keyward config for it ([`Site`]), an swtpm on
//! its own state dir and port pair ([`Swtpm`]) with a config for it ([`TpmSite`]), the real
//! `keyward serve` binary ([`AgentProcess`]), and the real tools that check its output
//! (openssl, Python `cryptography`), and TLS peers for the tunnel ([`OpensslServer`],
//! [`TunnelProcess`], and the in-process [`TlsSink`] for throughput). Every fixture owns a short `/tmp` dir (socket paths
//! are limited to ~107 bytes), passes environment with `Command::env` (never `set_var`),
//! polls for readiness instead of sleeping, and kills only its own child on drop.
//! A missing tool is a test failure with a message saying how to install it, never a skip.

pub mod agent;
pub mod bulk;
pub mod checks;
pub mod container;
pub mod pki;
pub mod procstat;
pub mod raw;
pub mod report;
pub mod soak;
pub mod softhsm;
pub mod swtpm;
pub mod syscalls;
pub mod tls;
pub mod tls_sink;
pub mod tmpfs;
pub mod tools;
pub mod tpm_maker;

pub use agent::{audited_events, AgentProcess, AgentSite};
pub use pki::TestCa;
pub use softhsm::{Site, SoftHsm};
pub use swtpm::{Swtpm, TpmSite};
pub use tls::{OpensslServer, PythonTlsServer, TunnelProcess};
pub use tls_sink::TlsSink;
pub use tools::{openssl, python, workspace_root};
pub use tpm_maker::TpmMaker;
