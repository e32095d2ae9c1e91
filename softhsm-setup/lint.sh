#!/usr/bin/env bash
# lint.sh — clippy with warnings denied, in its own target dir (target/lint).
#
# Usage:    softhsm-setup/lint.sh
# Changes:  builds into target/lint; nothing else.
#
# Not part of test.sh (CI): on the 2-core CI VM, cargo's rustc target probe
# (`rustc - --print=...`) for a second compiler driver in the same run has
# failed repeatedly with stray input, so CI runs one driver (rustc) only.
# Developers run this before pushing (style guide: "Before you push").
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
exec </dev/null
cargo fmt --all --check
cargo clippy --target-dir target/lint --workspace --all-targets -- -D warnings
