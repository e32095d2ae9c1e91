#!/usr/bin/env bash
#
# deb.sh - build keyward's Debian package: the agent, its unit, user, folders, docs and the
#          Python plug-in as a wheel (agent/Cargo.toml, [package.metadata.deb]).
#
# Usage:    scripts/deb.sh
#           prints the path of the .deb on stdout (<target dir>/debian/keyward_<version>_<arch>.deb).
#           Install it with `apt-get install ./keyward_*.deb`; what it installs and how a site
#           sets it up: deploy/debian/README.Debian.
#
# Env vars: KEYWARD_PYTHON   Python that builds the wheel with `pip wheel` (default: python3)
#           CARGO_TARGET_DIR, CARGO_*, RUST* are honoured by cargo as usual.
#
# Changes on the machine:
#           installs cargo-deb with `cargo install cargo-deb --locked` when it is missing
#           (a few minutes, into $CARGO_HOME/bin, default ~/.cargo/bin); builds the wheel in a
#           temporary copy of python/ (pip may download setuptools from PyPI into its build
#           environment) into python/dist/ (ignored by git), the release agent into
#           <target dir>/release/, and the package into <target dir>/debian/. Nothing else.
#
set -euo pipefail
umask 022 # the package's files must be readable by everyone

readonly PROG="deb"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"
[[ $# -eq 0 ]] || die "takes no arguments (see --help)"

cd -- "$REPO_ROOT"
exec </dev/null

command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain >= 1.85 and rerun"
if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked >&2
fi
PY="${KEYWARD_PYTHON:-python3}"
"$PY" -m pip --version >/dev/null 2>&1 || die "\`$PY -m pip\` does not work: set KEYWARD_PYTHON to a Python with pip"

wheels="$REPO_ROOT/python/dist"

WORK="$(mktemp -d)"
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT

# A copy, so setuptools' build/ and *.egg-info never land in the work tree.
log "building the Python wheel into $wheels"
rm -rf -- "$wheels"
mkdir -p -- "$wheels"
cp -a -- python "$WORK/python"
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$wheels" "$WORK/python" >&2
wheel_count="$(find "$wheels" -name 'keyward-*.whl' | wc -l)"
[[ "$wheel_count" -eq 1 ]] || die "expected one keyward wheel in $wheels, found $wheel_count"

log "building the package (cargo deb -p keyward-agent --strip: a release build)"
deb="$(cargo deb -p keyward-agent --locked --strip | tail -n 1)"
[[ -f "$deb" ]] || die "cargo deb did not report a package file (got: $deb)"
log "built $deb"
printf '%s\n' "$deb"
