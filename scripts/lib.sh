# shellcheck shell=bash
#
# lib.sh - what every script here shares; sourced, never run.
#
# Usage:    readonly PROG="name"                  # the prefix of log lines
#           # shellcheck source=scripts/lib.sh
#           source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
#           help_from_header "$@"                  # -h/--help prints the script's header
#
# Gives:    log MSG, die MSG (exit 1), step MSG (`==> [n/TOTAL_STEPS] MSG`; set TOTAL_STEPS),
#           SCRIPTS (this folder) and REPO_ROOT (absolute, symlinks resolved),
#           project_python VENV (the venv python-venv.sh makes, its python on stdout) and
#           ensure_keyward_package PYTHON EXTRAS (the editable keyward package with EXTRAS).
#           Everything logs to stderr; stdout stays for results.
# Changes on the machine: nothing by itself.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n==> [%d/%d] %s\n' "$step_no" "${TOTAL_STEPS:-?}" "$*" >&2
}

# help_from_header ARGS...: on -h/--help, print the calling script's header comment and exit 0.
help_from_header() {
    case "${1:-}" in
        -h | --help)
            sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
            exit 0
            ;;
    esac
}

SCRIPTS="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPTS/.." && pwd -P)"
export SCRIPTS REPO_ROOT

# project_python VENV: makes VENV with python-venv.sh (cryptography, pytest) when needed and
# prints its python.
project_python() {
    local py
    py="$(bash "$SCRIPTS/python-venv.sh" "$1")"
    [[ -x "$py" ]] || die "python-venv.sh did not return a usable python ($py)"
    printf '%s\n' "$py"
}

# ensure_keyward_package PYTHON EXTRAS: this checkout's keyward package (editable) with EXTRAS
# (e.g. "nvflare,test") in PYTHON's venv; pip runs only when the venv lacks it.
ensure_keyward_package() {
    local py="$1" extras="$2"
    if "$py" - "$REPO_ROOT/python" "$extras" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md, os, sys
import keyward
assert os.path.realpath(keyward.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep)
for extra in filter(None, sys.argv[2].split(",")):
    for req in md.requires("keyward") or []:
        if f'extra == "{extra}"' in req:
            name = req.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip()
            md.version(name)
PYEOF
    then
        log "$py imports this checkout's keyward with [$extras]: already done"
        return 0
    fi
    log "\$ $py -m pip install -e '$REPO_ROOT/python[$extras]'"
    "$py" -m pip install --disable-pip-version-check -q -e "$REPO_ROOT/python[$extras]" >&2
}
