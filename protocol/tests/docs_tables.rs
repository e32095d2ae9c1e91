//! `docs/protocol.md` against the vectors and the types: the operation table of §3 (names
//! and fields), the reply-kind table of §4 and the error-code table list exactly what
//! `vectors/` and [`OpKind::ALL`] / [`ErrorCode::ALL`] do.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod vector_files;

use std::collections::BTreeSet;

use keyward_protocol::{ErrorCode, OpKind};
use vector_files::{error_code_names, op_vector_names, repo_root};

/// The rows of the Markdown table whose header line is `header`, as cells.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "docs/protocol.md has no table `{header}`");
    lines
        .skip(1) // the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// The backticked words of a cell (`` `a`, `b` (base64) `` → a, b).
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn doc() -> String {
    std::fs::read_to_string(repo_root().join("docs/protocol.md")).unwrap()
}

#[test]
fn the_operation_table_lists_every_operation_with_its_fields() {
    let rows = table(&doc(), "| `op` | fields | does |");
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| ticked(&r[0])).collect();
    let vectors: BTreeSet<String> = op_vector_names().into_iter().collect();
    let types: BTreeSet<String> = OpKind::ALL.iter().map(|k| k.name().to_owned()).collect();
    assert_eq!(documented, vectors, "docs/protocol.md §3 against vectors/ops");
    assert_eq!(documented, types, "docs/protocol.md §3 against OpKind::ALL");
    for row in &rows {
        let kind = OpKind::from_name(&ticked(&row[0])[0]).unwrap();
        let fields: BTreeSet<String> = ticked(&row[1]).into_iter().collect();
        let spec: BTreeSet<String> = kind.spec().fields.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(fields, spec, "docs/protocol.md §3: the fields of `{kind}`");
    }
}

#[test]
fn the_reply_kind_table_gives_each_operation_its_kind() {
    let rows = table(&doc(), "| `kind` | for | fields |");
    let mut documented: Vec<(String, String)> =
        rows.iter().map(|r| (ticked(&r[1])[0].clone(), ticked(&r[0])[0].clone())).collect();
    let mut types: Vec<(String, String)> =
        OpKind::ALL.iter().map(|k| (k.name().to_owned(), k.spec().reply_kind.to_owned())).collect();
    documented.sort();
    types.sort();
    assert_eq!(documented, types, "docs/protocol.md §4 reply kinds (op, kind)");
}

#[test]
fn the_error_code_table_lists_every_code_once() {
    let rows = table(&doc(), "| `code` | meaning | connection |");
    let documented: Vec<String> = rows.iter().flat_map(|r| ticked(&r[0])).collect();
    let unique: BTreeSet<String> = documented.iter().cloned().collect();
    assert_eq!(unique.len(), documented.len(), "a code documented twice: {documented:?}");
    let vectors: BTreeSet<String> = error_code_names().into_iter().collect();
    let types: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(unique, vectors, "docs/protocol.md error codes against vectors/error_codes.json");
    assert_eq!(unique, types, "docs/protocol.md error codes against ErrorCode::ALL");
}
