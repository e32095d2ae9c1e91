#!/usr/bin/env bash
# lint.sh — the format check and clippy with warnings denied, for the whole workspace.
#
# Usage:    scripts/lint.sh
# Changes:  builds clippy's metadata into target/; nothing else.
#
# Part of test.sh (CI, step 3). Developers run it before pushing (style guide:
# "Before you push").
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
exec </dev/null
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
