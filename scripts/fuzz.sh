#!/usr/bin/env bash
#
# fuzz.sh - run every cargo-fuzz target of keyward for a fixed time (fuzz/README.md).
#
# Purpose:  fuzz the parsers of data that comes from outside the machine: the
#           socket's frame decoder and request parser, the NVFlare server
#           reply check, certificate parsing, and the PEM private-key import.
#           Each target starts from its committed seeds (fuzz/seeds/<target>;
#           for private_key, keys made fresh by fuzz/seeds/private_key.sh, so no
#           private key is committed) plus what earlier runs found
#           (fuzz/corpus/<target>, not committed).
#           Prints one line per target: executions, seconds, corpus size.
#
# Usage:    scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
#           Exits non-zero when a target crashes, times out (10 s for one
#           input) or runs out of memory; the input that did it is kept in
#           fuzz/artifacts/<target>/ and `cargo fuzz run <target> <file>`
#           (with RUSTC_BOOTSTRAP=1, in fuzz/) replays it.
#
# Env vars: FUZZ_TARGETS     space-separated targets to run (default: all)
#           CARGO_*, RUST* are honoured by cargo as usual.
#
# Changes on the machine:
#           installs cargo-fuzz with `cargo install --locked` when it is
#           missing (a few minutes, into $CARGO_HOME/bin, default ~/.cargo/bin,
#           where cargo finds it even when that folder is not on PATH); builds into
#           fuzz/target/. Only the stable toolchain is needed: cargo-fuzz's
#           nightly flags are enabled with RUSTC_BOOTSTRAP=1 for its builds.
#
set -euo pipefail
umask 022

readonly PROG="fuzz"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"
[[ $# -le 1 ]] || die "takes at most one argument, the seconds per target (see --help)"
SECONDS_PER_TARGET="${1:-30}"
[[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]] || die "seconds per target must be a positive integer, not \`$SECONDS_PER_TARGET\`"

FUZZ_DIR="$(cd -- "$SCRIPTS/../fuzz" && pwd -P)"
cd -- "$FUZZ_DIR"
exec </dev/null

command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain >= 1.85 and rerun"
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
log "building the targets: ${targets//$'\n'/ }"
cargo fuzz build

# The private_key target's seeds are keys: made here each run, never committed.
bash seeds/private_key.sh generated/private_key

failed=()
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    out="artifacts/$target/last-run.log"
    log "running $target for ${SECONDS_PER_TARGET}s"
    status=0
    seeds="seeds/$target"
    [[ -d "$seeds" ]] || seeds="generated/$target"
    cargo fuzz run "$target" "corpus/$target" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$out" 2>&1 || status=$?
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' | tail -n1)"
    corpus="$(find "corpus/$target" -type f | wc -l)"
    printf '%-16s %12s executions in %ss, corpus %s, exit %s\n' "$target" "${runs:-?}" "$SECONDS_PER_TARGET" "$corpus" "$status"
    if [[ "$status" -ne 0 ]]; then
        grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$out" >&2 || tail -n 30 "$out" >&2
        failed+=("$target")
    fi
done
[[ ${#failed[@]} -eq 0 ]] || die "crash in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
log "no crash in any target"
