#!/usr/bin/env bash
#
# test.sh - run keyward's whole test suite (README command 2; also CI).
#
# Purpose:  prepare the machine (system packages, Python venv) and run every
#           test: the format check and clippy -D warnings (lint.sh), build all
#           targets of the workspace, then `cargo test`, the
#           Python tests, the benchmarks once, and every fuzz target for 20 s
#           (fuzz.sh).
#
# Usage:    scripts/test.sh
#           Exits non-zero on the first failure.
#
# Env vars: CI               when "true", cargo output is uncoloured
#                            (CARGO_TERM_COLOR=never)
#           KEYWARD_PYTHON   set by this script to <repo>/.venv/bin/python and
#                            exported to the tests (a caller's value is replaced)
#           CARGO_TARGET_DIR, CARGO_*, RUST* are honoured by cargo as usual.
#
# Changes on the machine:
#           installs missing apt packages (install-packages.sh, may use sudo);
#           creates/updates <repo>/.venv (python-venv.sh, downloads from PyPI);
#           cargo builds into target/ (downloads crates on first run); installs
#           cargo-fuzz into ~/.cargo/bin when missing and builds the fuzz
#           targets into fuzz/target/ (fuzz.sh). Tests
#           create their own temporary SoftHSM2 tokens; the real-unit test
#           (tests/tests/service_unit_real.rs, needs root) builds a Debian 12
#           tree once into /var/cache/keyward-test/bookworm (service-tree.sh,
#           debootstrap, ~2 min) and boots it in systemd-nspawn containers;
#           the package test (tests/tests/deb_package.rs) builds the .deb
#           with deb.sh (installs cargo-deb into ~/.cargo/bin when missing, a
#           release build, the wheel into python/dist/) and installs it only
#           inside such a container; nothing else changes.
#
set -euo pipefail
umask 077

readonly PROG="test"
readonly TOTAL_STEPS=8

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"
[[ $# -eq 0 ]] || die "takes no arguments (see --help)"

cd -- "$REPO_ROOT"
# Nothing here reads standard input; no tool inherits a stray one.
exec </dev/null

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

step "installing missing system packages"
bash "$SCRIPTS/install-packages.sh"

step "preparing the Python venv (cryptography, pytest)"
KEYWARD_PYTHON="$(project_python "$REPO_ROOT/.venv")"
export KEYWARD_PYTHON
log "KEYWARD_PYTHON=$KEYWARD_PYTHON"
# The keyward Python package (editable) with the pinned real nvflare for its e2e tests.
ensure_keyward_package "$KEYWARD_PYTHON" "nvflare,test"

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.85 (e.g. https://rustup.rs) and rerun"

step "checking the format and lints (scripts/lint.sh: cargo fmt --check, clippy -D warnings)"
bash "$SCRIPTS/lint.sh"

step "building the workspace (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

step "running the Rust tests (cargo test --workspace -- --test-threads 4)"
cargo test --workspace -- --test-threads 4

step "running the Python tests (pytest python/tests, real agent and real nvflare)"
KEYWARD_BIN="$REPO_ROOT/target/debug/keyward" "$KEYWARD_PYTHON" -m pytest -q "$REPO_ROOT/python/tests"

step "running the benchmarks once in --quick mode (keeps them working; assert no speed)"
cargo run -q -p keyward-tests --bin keyward-bench -- --quick >/dev/null
cargo run -q -p keyward-tests --bin tls-bench -- --quick >/dev/null
cargo run -q -p keyward-tests --bin tpm-bench -- --quick >/dev/null

step "fuzzing every parser of outside input for 20 s per target (scripts/fuzz.sh 20)"
bash "$SCRIPTS/fuzz.sh" 20

log "all tests passed"
