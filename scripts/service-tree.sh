#!/usr/bin/env bash
#
# service-tree.sh - build (once) the Debian 12 root tree in which the real-unit test boots
# systemd as PID 1 of a container (tests/tests/service_unit_real.rs).
#
# Purpose:  `systemd-nspawn -D <tree> -b` needs a root tree with systemd, dbus, SoftHSM2,
#           the libtss2 runtime libraries keyward links, openssl and util-linux (setpriv).
#           The tree also holds the agent's system user `keyward` and a caller user
#           `flare` (another uid, as NVFlare runs in a real deployment). keyward itself
#           is NOT installed: the test binds the freshly built binary at /usr/bin/keyward.
#           A systemd is never booted on the machine's own root (its tmpfiles would
#           clean the host's /tmp); only this tree boots, and the test boots it with
#           --volatile=overlay so the cached tree stays as built.
#
# Usage:    scripts/service-tree.sh [TREE]
#           prints the tree's path on stdout. TREE defaults to $KEYWARD_SERVICE_TREE or
#           /var/cache/keyward-test/bookworm. A tree that is complete (marker file
#           <TREE>/.keyward-tree-v1) is left alone ("already done").
#
# Env vars: KEYWARD_SERVICE_TREE  default tree path
#           KEYWARD_DEBIAN_MIRROR Debian mirror (default: the first `URIs:` of
#                                 /etc/apt/sources.list.d/debian.sources, else the
#                                 first `deb` line of /etc/apt/sources.list, else
#                                 http://deb.debian.org/debian)
#
# Changes on the machine:
#           creates TREE with debootstrap (needs root, network to the mirror, about
#           300 MB and 2-4 minutes) and the lock file TREE.lock (parallel callers wait
#           for one build); a half-built tree (no marker) is removed and rebuilt.
#           Nothing else.
#
set -euo pipefail
umask 022 # the tree's system files must be readable by its users

readonly PROG="service-tree"
readonly MARKER=".keyward-tree-v1"
readonly SUITE="bookworm"
readonly INCLUDE="systemd,systemd-sysv,dbus,softhsm2,libtss2-esys-3.0.2-0,libtss2-tctildr0,libtss2-mu0,libtss2-sys1,openssl,util-linux,procps"

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

help_from_header "$@"
[[ $# -le 1 ]] || die "takes at most one argument, the tree path (see --help)"

tree="${1:-${KEYWARD_SERVICE_TREE:-/var/cache/keyward-test/bookworm}}"
[[ "$tree" == /* ]] || die "the tree path must be absolute (got: $tree)"
[[ "$tree" != "/" ]] || die "refusing to use / as the tree"

if [[ -f "$tree/$MARKER" ]]; then
    log "tree $tree is complete: already done"
    printf '%s\n' "$tree"
    exit 0
fi

[[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root"
mkdir -p -- "$(dirname -- "$tree")"
# Tests run in parallel: one builds, the others wait for it and then find the marker.
exec 9>"$tree.lock"
flock 9
if [[ -f "$tree/$MARKER" ]]; then
    log "tree $tree was completed meanwhile: already done"
    printf '%s\n' "$tree"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (scripts/install-packages.sh installs it)"

mirror() {
    if [[ -n "${KEYWARD_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$KEYWARD_DEBIAN_MIRROR"
        return
    fi
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '/^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)"
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

if [[ -e "$tree" ]]; then
    log "removing the incomplete tree $tree"
    rm -rf --one-file-system -- "$tree"
fi
started=$SECONDS
source_uri="$(mirror)"
log "debootstrap $SUITE into $tree from $source_uri (a few minutes)"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tree" "$source_uri" >&2

# The agent's system user (deploy/systemd/keyward.service: User=keyward) and a caller of
# another uid. Fixed ids so the test can name them.
chroot "$tree" groupadd --system --gid 990 keyward
chroot "$tree" useradd --system --uid 990 --gid 990 --home-dir /var/lib/keyward --shell /usr/sbin/nologin keyward
chroot "$tree" groupadd --gid 2001 flare
chroot "$tree" useradd --uid 2001 --gid 2001 --home-dir /home/flare --shell /bin/sh flare
# Nothing in the container needs a login prompt or the network.
chroot "$tree" systemctl mask console-getty.service getty@.service systemd-networkd.service \
    systemd-resolved.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
printf 'keyward-test\n' >"$tree/etc/hostname"
touch -- "$tree/$MARKER"
log "tree built in $((SECONDS - started)) s"
printf '%s\n' "$tree"
