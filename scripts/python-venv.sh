#!/usr/bin/env bash
#
# python-venv.sh - create the Python virtualenv used by keyward's tests.
#
# Purpose:  provide a Python with `cryptography` (pinned, used to check
#           keyward's signatures independently of OpenSSL's CLI) and `pytest`.
#
# Usage:    scripts/python-venv.sh [VENV_DIR]
#               VENV_DIR defaults to <repo root>/.venv
#           KEYWARD_PYTHON="$(scripts/python-venv.sh)"
#
#           Prints the absolute path of the venv's python to STDOUT; all
#           logging (and pip's output) goes to stderr.
#
# Env vars: PYTHON3  interpreter used to create the venv (default: python3)
#           pip honours its usual PIP_* variables / pip.conf (index, proxy).
#
# Changes on the machine:
#           creates VENV_DIR with `python3 -m venv` if it has no bin/python,
#           and pip-installs cryptography==45.0.7 (or the newest available
#           release >= 45 if that exact version cannot be downloaded) and
#           pytest into it. Downloads from PyPI. Nothing outside VENV_DIR
#           except pip's cache (~/.cache/pip). If the venv already imports
#           cryptography (>= 45) and pytest it changes nothing.
#
set -euo pipefail
umask 077

readonly PROG="python-venv"
readonly CRYPTOGRAPHY_PIN="45.0.7"

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"
[[ $# -le 1 ]] || die "usage: $0 [VENV_DIR]"

VENV="${1:-$REPO_ROOT/.venv}"
[[ -n "$VENV" ]] || die "VENV_DIR must not be empty"
VENV="$(realpath -m -- "$VENV")"
VPY="$VENV/bin/python"
PY3="${PYTHON3:-python3}"

# venv_ok: the venv imports cryptography >= 45 and pytest.
venv_ok() {
    [[ -x "$VPY" ]] || return 1
    "$VPY" - >/dev/null 2>&1 <<'EOF'
import cryptography, pytest
assert int(cryptography.__version__.split(".")[0]) >= 45
EOF
}

if venv_ok; then
    log "venv $VENV with cryptography and pytest: already done"
    printf '%s\n' "$VPY"
    exit 0
fi

WORK="$(mktemp -d)"
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT

if [[ -x "$VPY" ]]; then
    log "venv $VENV exists but lacks cryptography/pytest: installing them"
else
    command -v "$PY3" >/dev/null 2>&1 || die "$PY3 not found; run scripts/install-packages.sh"
    log "creating venv $VENV with $(command -v "$PY3") ($("$PY3" --version 2>&1))"
    "$PY3" -m venv -- "$VENV" >&2 ||
        die "'$PY3 -m venv' failed (on Debian install python3-venv: scripts/install-packages.sh)"
fi
[[ -x "$VPY" ]] || die "$VPY missing after venv creation"

vpip() { "$VPY" -m pip --disable-pip-version-check "$@"; }

# Make sure the pinned cryptography resolves on the index before installing;
# otherwise fall back to the newest release >= 45.
crypto_spec="cryptography==$CRYPTOGRAPHY_PIN"
log "checking that $crypto_spec is downloadable"
if vpip download --no-deps -q -d "$WORK/dl" "$crypto_spec" >&2; then
    log "$crypto_spec is available"
else
    log "$crypto_spec not available; looking for the newest cryptography >= 45"
    rm -rf -- "$WORK/dl"
    vpip download --no-deps -q -d "$WORK/dl" 'cryptography>=45' >&2 ||
        die "no cryptography >= 45 could be downloaded (network / index problem?)"
    ver=""
    for f in "$WORK/dl"/cryptography-*; do
        [[ -e "$f" ]] || continue
        name="${f##*/}"
        name="${name#cryptography-}"
        name="${name%.tar.gz}"
        ver="${name%%-*}"
    done
    [[ "$ver" =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "could not tell which cryptography version pip downloaded"
    crypto_spec="cryptography==$ver"
    log "using $crypto_spec instead of $CRYPTOGRAPHY_PIN"
fi

log "installing $crypto_spec pytest into $VENV"
vpip install -q --find-links "$WORK/dl" "$crypto_spec" pytest >&2

venv_ok || die "venv $VENV still cannot import cryptography (>= 45) and pytest after install"
log "ready: $("$VPY" -c 'import cryptography, pytest; print("cryptography", cryptography.__version__, "/ pytest", pytest.__version__)')"

printf '%s\n' "$VPY"
