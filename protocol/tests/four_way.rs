//! Adding an operation means four things, and this test fails while any is missing: its
//! module `protocol/src/ops/<name>.rs`, its vector `protocol/vectors/ops/<name>.json`, a
//! method `def <name>(` on the Python client (`python/src/keyward/client.py`), and its
//! handler `agent/src/daemon/ops/<name>.rs`. The operation list comes from the types
//! ([`OpKind::ALL`]). Until the agent's per-operation folder exists the last check is
//! skipped; once `agent/src/daemon/ops/` exists, every operation must have its file there.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod vector_files;

use keyward_protocol::OpKind;
use vector_files::{repo_root, vectors_dir};

#[test]
fn every_operation_has_its_protocol_module_vector_python_method_and_agent_handler() {
    let root = repo_root();
    let python = std::fs::read_to_string(root.join("python/src/keyward/client.py")).unwrap();
    let agent_ops = root.join("agent/src/daemon/ops");
    let mut missing = Vec::new();
    for kind in OpKind::ALL {
        let name = kind.name();
        let module = root.join(format!("protocol/src/ops/{name}.rs"));
        if !module.is_file() {
            missing.push(format!("protocol module `{}`", module.display()));
        }
        let vector = vectors_dir().join(format!("ops/{name}.json"));
        if !vector.is_file() {
            missing.push(format!("vector `{}`", vector.display()));
        }
        if !python.contains(&format!("    def {name}(")) {
            missing.push(format!("Python method `def {name}(` in python/src/keyward/client.py"));
        }
        if agent_ops.is_dir() && !agent_ops.join(format!("{name}.rs")).is_file() {
            missing.push(format!("agent handler `{}`", agent_ops.join(format!("{name}.rs")).display()));
        }
    }
    assert!(missing.is_empty(), "operations without all four parts:\n  {}", missing.join("\n  "));
}
