#!/usr/bin/env bash
#
# bench.sh - keyward's benchmarks, all in one run (docs/benchmarks.md).
#
# Purpose:  keyward-bench: signing throughput and p50/p99 latency on SoftHSM2
#           for RSA-2048 (`nvflare`) and ECDSA P-256 with 1 and 2 clients: a
#           raw cryptoki loop (the limit), keyward's KeyStore and StoreHandle
#           in-process, and the real agent through its Unix socket.
#           tpm-bench: the same on swtpm, raw tss-esapi against the agent.
#           keyward-bench also runs 32 clients and shows, per case, the agent
#           against in-process SoftHSM: ratio, added p50 and CPU, the agent's
#           context switches and system calls (strace -c) per request.
#           tls-bench: TLS handshakes/s and bulk MB/s through `keyward tunnel`
#           against stunnel4 and a direct client, and handshakes/s a server takes
#           behind `keyward server-tunnel` against `openssl s_server` with a key file.
#           Then (pytest -s, real nvflare and grpcio): registrations/s of an NVFlare
#           server's key work, key file vs the agent; gRPC mTLS connection latency,
#           key file vs custom signer vs tunnel.
#           Each prints a Markdown table with the machine and the date; copy
#           them into docs/benchmarks.md by hand. Never fails on a slow result.
#
# Usage:    scripts/bench.sh [--quick] [--seconds N]
#               --quick      a fraction of a second per measurement (CI)
#               --seconds N  seconds per measurement (defaults: 5, 3, 5)
#           Arguments are passed to each bench binary unchanged.
#
# Env vars: CI               when "true", cargo output is uncoloured
#           KEYWARD_BENCH_BEFORE  path of another `keyward` binary (e.g. built
#                            from main): keyward-bench and tpm-bench run
#                            against it first, then against this tree's, so
#                            one run shows before and after
#           CARGO_TARGET_DIR, CARGO_*, RUST* are honoured by cargo as usual.
#
# Changes on the machine:
#           installs missing apt packages (install-packages.sh, may use sudo);
#           cargo builds the release profile into target/. The benchmark makes
#           its own SoftHSM2 token and agent in a temp dir under /tmp and
#           removes both when it ends.
#
set -euo pipefail
umask 077

readonly PROG="bench"

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"

cd -- "$REPO_ROOT"

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

log "installing missing system packages"
bash "$SCRIPTS/install-packages.sh"

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.85 (e.g. https://rustup.rs) and rerun"

# The bench starts target/release/keyward (next to its own binary): build both.
log "building (cargo build --release -p keyward-agent -p keyward-tests)"
cargo build --release -p keyward-agent -p keyward-tests

if [[ -n "${KEYWARD_BENCH_BEFORE:-}" ]]; then
    [[ -x "$KEYWARD_BENCH_BEFORE" ]] || die "KEYWARD_BENCH_BEFORE=$KEYWARD_BENCH_BEFORE is not an executable"
    for bench in keyward-bench tpm-bench; do
        log "running $bench $* against the agent $KEYWARD_BENCH_BEFORE (before)"
        KEYWARD_BIN="$KEYWARD_BENCH_BEFORE" cargo run --release -q -p keyward-tests --bin "$bench" -- "$@"
        echo
    done
fi

for bench in keyward-bench tpm-bench tls-bench; do
    log "running $bench $*"
    cargo run --release -q -p keyward-tests --bin "$bench" -- "$@"
    echo
done

# The NVFlare server's key work and gRPC mTLS handshakes (issue 13) run in Python, with the
# real nvflare and grpcio; their tests also run in CI with a few iterations, here with more.
if [[ " $* " == *" --quick "* ]]; then iterations=(20 20); else iterations=(500 200); fi
VPY="$(project_python "$REPO_ROOT/.venv")"
ensure_keyward_package "$VPY" "nvflare,test"
log "running the NVFlare server registration and gRPC handshake benchmarks (pytest -s)"
KEYWARD_BIN="$REPO_ROOT/target/release/keyward" KEYWARD_BENCH_REGISTRATIONS="${iterations[0]}" \
    KEYWARD_BENCH_HANDSHAKES="${iterations[1]}" "$VPY" -m pytest -q -s -p no:cacheprovider \
    "$REPO_ROOT/python/tests/e2e/test_server_registration_rate.py" \
    "$REPO_ROOT/python/tests/e2e/test_grpc_handshake_latency.py"
