#!/usr/bin/env bash
#
# install-packages.sh - install the Debian/Ubuntu system packages keyward needs.
#
# Purpose:  make a fresh Debian 12 (or similar apt-based) machine able to build,
#           test and demo keyward: SoftHSM2, OpenSC, OpenSSL, swtpm, tpm2-tools,
#           TSS2 headers, pkg-config, python3-venv, util-linux (setpriv),
#           ca-certificates, hyperfine, shellcheck, stunnel4 (tls-bench), strace
#           (bench.sh: system calls per request) and
#           systemd (systemd-analyze checks the service unit in the tests),
#           systemd-container and debootstrap (the real-unit test boots the unit
#           under systemd in a container over a Debian 12 tree, service-tree.sh),
#           lintian (the package test checks the .deb deb.sh builds).
#
# Usage:    scripts/install-packages.sh
#
# Env vars: none read. apt-get is run with DEBIAN_FRONTEND=noninteractive.
#
# Changes on the machine:
#           only if a package is missing: runs `apt-get update` once, then
#           `apt-get install -y --no-install-recommends` for the missing
#           packages only. Nothing else. When every package is already
#           installed it changes nothing and says "already done".
#           Uses sudo when not run as root (and sudo exists).
#
set -euo pipefail
umask 077

readonly PROG="install-packages"

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly PACKAGES=(
    softhsm2
    opensc
    openssl
    swtpm
    swtpm-tools
    tpm2-tools
    libtss2-dev
    pkg-config
    python3-venv
    util-linux # setpriv
    ca-certificates
    hyperfine
    shellcheck
    stunnel4 # tls-bench: the key-file baseline for keyward tunnel
    strace   # keyward-bench: the agent's system calls per request (strace -c)
    systemd  # systemd-analyze verify/security on deploy/systemd/keyward.service
    systemd-container # systemd-nspawn: the real-unit test boots systemd in a container
    debootstrap       # the Debian 12 tree for that container (service-tree.sh)
    lintian           # checks the Debian package (tests/tests/deb_package.rs)
)

if [[ $# -gt 0 ]]; then
    case "$1" in
        -h | --help)
            sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
            exit 0
            ;;
        *) die "takes no arguments (got: $*)" ;;
    esac
fi

command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script supports apt-based systems (Debian 12) only"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports apt-based systems (Debian 12) only"

# is_installed PKG: true when dpkg reports the package fully installed
# (a package removed with only its config files left does not count).
is_installed() {
    local status
    status="$(dpkg -s "$1" 2>/dev/null)" || return 1
    grep -qx 'Status: install ok installed' <<<"$status"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "all ${#PACKAGES[@]} packages present (${PACKAGES[*]}): already done"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo not found; install as root: ${missing[*]}"
    SUDO=(sudo)
fi

log "missing packages: ${missing[*]}"

# apt/dpkg maintainer scripts create system files (e.g. the CA bundle in
# /etc/ssl/certs) that other users must be able to read, so they must not
# inherit this script's umask 077. Run them under the usual system umask.
# apt output goes to stderr so that stdout stays clean for callers.
(
    umask 022
    log "running apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    log "running apt-get install -y --no-install-recommends ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
)

still_missing=()
for pkg in "${missing[@]}"; do
    if ! is_installed "$pkg"; then
        still_missing+=("$pkg")
    fi
done
[[ ${#still_missing[@]} -eq 0 ]] || die "still not installed after apt-get: ${still_missing[*]}"

log "installed: ${missing[*]}"
