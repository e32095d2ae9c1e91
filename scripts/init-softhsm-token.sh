#!/usr/bin/env bash
#
# init-softhsm-token.sh - create a private SoftHSM2 token for keyward.
#
# Purpose:  set up a self-contained SoftHSM2 configuration in DIR (never the
#           system-wide /etc/softhsm) with one initialised token labelled LABEL
#           and random SO / user PINs stored in files, for tests and the demo.
#
# Usage:    scripts/init-softhsm-token.sh DIR [LABEL]
#               LABEL defaults to "fl-site" (at most 32 bytes).
#           eval "$(scripts/init-softhsm-token.sh state/softhsm)"
#
#           On success prints to STDOUT exactly these lines, for eval:
#               export SOFTHSM2_CONF='<abs DIR>/softhsm2.conf'
#               export KEYWARD_TOKEN_LABEL='<label>'
#               export KEYWARD_PIN_FILE='<abs DIR>/user-pin'
#               export KEYWARD_SO_PIN_FILE='<abs DIR>/so-pin'
#               export KEYWARD_PKCS11_MODULE='<path of libsofthsm2.so>'
#           Everything else goes to stderr.
#
# Env vars: none read (SOFTHSM2_CONF from the caller is ignored; the script
#           always uses DIR/softhsm2.conf).
#
# Changes on the machine (only inside DIR, created 0700 if missing):
#           DIR/softhsm2.conf  (0600; rewritten only if its content differs)
#           DIR/tokens/        (0700; SoftHSM2 token store)
#           DIR/so-pin, DIR/user-pin (0600, 16 hex chars, no trailing newline;
#                              existing non-empty files are kept and reused)
#           one token LABEL in DIR/tokens, unless a token with that label
#           already exists there, in which case it is left alone ("already done").
#
set -euo pipefail
umask 077

readonly PROG="init-softhsm-token"

# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
usage() {
    sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
if [[ $# -lt 1 || $# -gt 2 || -z "$1" ]]; then
    usage
    die "expected DIR [LABEL]"
fi

LABEL="${2:-fl-site}"
[[ -n "$LABEL" ]] || die "LABEL must not be empty"
# PKCS#11 token labels are 32 bytes, space padded.
[[ "$(printf '%s' "$LABEL" | LC_ALL=C wc -c)" -le 32 ]] || die "LABEL '$LABEL' is longer than 32 bytes"
[[ "$LABEL" != *[[:space:]] && "$LABEL" != [[:space:]]* ]] || die "LABEL must not start or end with whitespace"

command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util not found; run scripts/install-packages.sh first"

# shq VALUE: VALUE as a single-quoted shell word, safe for eval.
shq() {
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
}

# find_module: print the path of libsofthsm2.so.
find_module() {
    local m=/usr/lib/softhsm/libsofthsm2.so
    if [[ -f "$m" ]]; then
        printf '%s\n' "$m"
        return 0
    fi
    m="$(find /usr/lib*/ -name libsofthsm2.so \( -type f -o -type l \) -print -quit 2>/dev/null || true)"
    [[ -n "$m" ]] || return 1
    printf '%s\n' "$m"
}

# mode_of FILE: octal permission bits, e.g. 600.
mode_of() { stat -c '%a' "$1"; }

# ensure_mode FILE MODE: chmod only if the mode differs.
ensure_mode() {
    local cur
    cur="$(mode_of "$1")"
    if [[ "$cur" != "$2" ]]; then
        log "fixing mode of $1: $cur -> $2"
        chmod "$2" "$1"
    fi
}

# token_exists: true when `softhsm2-util --show-slots` lists a token whose
# label (space padded to 32 bytes in the output) is exactly $LABEL.
token_exists() {
    local slots
    slots="$(SOFTHSM2_CONF="$CONF" softhsm2-util --show-slots 2>/dev/null)" ||
        die "softhsm2-util --show-slots failed with SOFTHSM2_CONF=$CONF"
    LABEL="$LABEL" awk '
        /^[[:space:]]*Label:/ {
            sub(/^[[:space:]]*Label:[[:space:]]*/, "")
            sub(/[[:space:]]+$/, "")
            if ($0 == ENVIRON["LABEL"]) found = 1
        }
        END { exit(found ? 0 : 1) }
    ' <<<"$slots"
}

# new_pin: 16 random hex characters.
new_pin() {
    local pin
    pin="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    [[ "$pin" =~ ^[0-9a-f]{16}$ ]] || die "could not generate a PIN from /dev/urandom"
    printf '%s' "$pin"
}

# write_secret FILE VALUE: atomically write VALUE (no newline) with mode 0600.
# printf is a bash builtin, so VALUE never appears in any process's argv.
write_secret() {
    local tmp
    tmp="$(mktemp "$WORK/secret.XXXXXX")"
    printf '%s' "$2" >"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$1"
}

mkdir -p -- "$1"
DIR="$(cd -- "$1" && pwd -P)"
CONF="$DIR/softhsm2.conf"
TOKENS="$DIR/tokens"
SO_PIN_FILE="$DIR/so-pin"
USER_PIN_FILE="$DIR/user-pin"

MODULE="$(find_module)" || die "libsofthsm2.so not found (looked at /usr/lib/softhsm and under /usr/lib*); run scripts/install-packages.sh"

# Temporary files live inside DIR so that the final mv is an atomic rename.
WORK="$(mktemp -d "$DIR/.tmp.XXXXXX")"
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT

log "SoftHSM2 setup directory: $DIR"

# 1. token directory
if [[ -d "$TOKENS" ]]; then
    ensure_mode "$TOKENS" 700
else
    mkdir -m 700 -- "$TOKENS"
    log "created $TOKENS"
fi

# 2. private softhsm2.conf
desired_conf="$(
    cat <<EOF
# SoftHSM2 configuration for keyward, written by scripts/init-softhsm-token.sh
directories.tokendir = $TOKENS
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
)"
if [[ -f "$CONF" ]] && [[ "$(cat -- "$CONF")" == "$desired_conf" ]]; then
    ensure_mode "$CONF" 600
    log "config $CONF: already done"
else
    [[ -e "$CONF" ]] && log "config $CONF differs from the expected content: rewriting it"
    tmp="$(mktemp "$WORK/conf.XXXXXX")"
    printf '%s\n' "$desired_conf" >"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$CONF"
    log "wrote $CONF"
fi

# 3. token
if token_exists; then
    for f in "$SO_PIN_FILE" "$USER_PIN_FILE"; do
        [[ -s "$f" ]] || die "token '$LABEL' exists in $TOKENS but $f is missing or empty; its PIN cannot be recovered. To start over remove $TOKENS and the PIN files."
        ensure_mode "$f" 600
    done
    log "token '$LABEL' already exists in $TOKENS: already done"
else
    for f in "$SO_PIN_FILE" "$USER_PIN_FILE"; do
        if [[ -s "$f" ]]; then
            ensure_mode "$f" 600
            log "reusing existing PIN file $f"
        else
            write_secret "$f" "$(new_pin)"
            log "wrote random PIN to $f (mode 0600)"
        fi
    done
    so_pin="$(cat -- "$SO_PIN_FILE")"
    user_pin="$(cat -- "$USER_PIN_FILE")"
    log "initialising token '$LABEL' in a free slot"
    # NOTE: softhsm2-util only takes PINs on its command line (or from a tty),
    # so the PINs are briefly visible in this machine's process list. That is
    # acceptable only because this is a throwaway test/demo token; initialise
    # tokens holding real keys interactively instead.
    SOFTHSM2_CONF="$CONF" softhsm2-util --init-token --free --label "$LABEL" \
        --so-pin "$so_pin" --pin "$user_pin" >&2 ||
        die "softhsm2-util --init-token failed"
    unset so_pin user_pin
    token_exists || die "token '$LABEL' not listed by softhsm2-util --show-slots after initialisation"
    log "token '$LABEL' initialised in $TOKENS"
fi

printf 'export SOFTHSM2_CONF=%s\n' "$(shq "$CONF")"
printf 'export KEYWARD_TOKEN_LABEL=%s\n' "$(shq "$LABEL")"
printf 'export KEYWARD_PIN_FILE=%s\n' "$(shq "$USER_PIN_FILE")"
printf 'export KEYWARD_SO_PIN_FILE=%s\n' "$(shq "$SO_PIN_FILE")"
printf 'export KEYWARD_PKCS11_MODULE=%s\n' "$(shq "$MODULE")"
