#!/usr/bin/env bash
#
# demo.sh - a live NVFlare 2.9.0 federation in mtls with no private key file anywhere
#           (README command 1).
#
# Purpose:  show the main job end to end, on loopback. This script installs and builds
#           (steps 1-3); scripts/federation.py runs the federation (steps 4-13), the driver the
#           live tests use too: swtpm and two SoftHSM2 tokens, three agents (`keyward init`),
#           `nvflare provision` (server1, site-1, site-2, an admin; mtls, grpc), `keyward nvflare
#           migrate` of every kit (each key into its token, a key reference in its place), the
#           server behind `keyward server-tunnel`, site-1 (TPM) through `keyward tunnel`, site-2
#           and the admin (SoftHSM) through gRPC's custom signer, both sites registering, a job
#           that must end FINISHED:COMPLETED, the checks (no private key file in any kit, the
#           agents' audit), and the stop of everything it started, by PID (also on an error or
#           Ctrl-C).
#
# Usage:    scripts/demo.sh
#           Rerunnable: each run starts from an empty state dir; the venv and build are reused.
#
# Env vars: KEYWARD_STATE_DIR  where all demo state lives (default <repo>/state). It is deleted
#                              and recreated at the start of a run: it must be the default, or
#                              empty, or hold the marker file a previous run left.
#           CARGO_TARGET_DIR   honoured when locating the built binary
#           KEYWARD_CONFIG, SOFTHSM2_CONF and the other KEYWARD_* token variables are set by
#           the driver; NVFL_* and PYTHONPATH are dropped for NVFlare's processes.
#
# Changes on the machine:
#           installs missing apt packages (install-packages.sh, may use sudo); builds
#           target/release/keyward; creates <repo>/.venv if needed (python-venv.sh) and
#           pip-installs 'python[nvflare]' (editable, nvflare==2.9.0) unless it has it; recreates
#           the state dir (0700) with swtpm/ (TPM state), server/, tpm/ and site/ (one agent
#           each: keyward.toml, run/agent.sock, agent.log, state/ with the audit log; server/
#           and site/ with softhsm/: private SoftHSM2 config, token, PIN files), provision/
#           (project.yml, the kits, and the provisioning state with the root CA key,
#           UNENCRYPTED: demo only), store/ (the server's job store), venv/ (sees .venv's
#           packages, with the keyward NVFlare hook), job/, server-tunnel.log, tunnel.log.
#           Listens on free 127.0.0.1 TCP ports (server, its tunnel, site-1's tunnel, swtpm).
#
set -euo pipefail
umask 077

readonly PROG="demo"
readonly TOTAL_STEPS=13
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
help_from_header "$@"
[[ $# -eq 0 ]] || die "takes no arguments (see --help)"

KEYWARD="$(realpath -m -- "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release/keyward"
STATE="$(realpath -m -- "${KEYWARD_STATE_DIR:-$REPO_ROOT/state}")"

step "installing missing system packages (softhsm2, opensc, openssl, python3-venv, ...)"
bash "$SCRIPTS/install-packages.sh"

step "building keyward (cargo build --release -p keyward-agent)"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.85 (e.g. https://rustup.rs) and rerun"
(cd -- "$REPO_ROOT" && cargo build --release -p keyward-agent)
[[ -x "$KEYWARD" ]] || die "build finished but $KEYWARD does not exist"
log "binary: $KEYWARD"

step "Python venv $REPO_ROOT/.venv with nvflare==2.9.0 and the keyward package (python/)"
VPY="$(project_python "$REPO_ROOT/.venv")"
ensure_keyward_package "$VPY" "nvflare"
log "python: $VPY"

exec "$VPY" "$SCRIPTS/federation.py" demo --keyward "$KEYWARD" --state "$STATE" \
    --default-state "$REPO_ROOT/state" --python "$VPY"
