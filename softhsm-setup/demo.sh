#!/usr/bin/env bash
#
# demo.sh - keyward end to end on SoftHSM2 (README command 1).
#
# Purpose:  show the main job: an NVFlare site key generated and kept inside a
#           PKCS#11 token, certified by a (throwaway) CA the way NVFlare
#           provisioning does, and used through the keyward agent's Unix socket
#           to sign an NVFlare-style challenge that OpenSSL then verifies.
#
#           Steps: 1 system packages, 2 build keyward, 3 SoftHSM2 token,
#           4 keyward init, 5 site key in the token, 6 demo CA + CSR + cert,
#           7 start the agent, 8 sign a challenge, 9 verify, audit log, stop.
#
# Usage:    softhsm-setup/demo.sh
#           Rerunnable: existing token, config, key and CA are reused.
#           To start over: rm -rf state   (or your KEYWARD_STATE_DIR)
#
# Env vars: KEYWARD_STATE_DIR  where all demo state lives (default <repo>/state)
#           CARGO_TARGET_DIR   honoured when locating the built binary
#           KEYWARD_CONFIG, SOFTHSM2_CONF, KEYWARD_TOKEN_LABEL, KEYWARD_PIN_FILE,
#           KEYWARD_SO_PIN_FILE, KEYWARD_PKCS11_MODULE are set by this script
#           (values from the caller are overwritten).
#
# Changes on the machine:
#           installs missing apt packages (install-packages.sh, may use sudo);
#           builds target/release/keyward; creates the state dir (0700) with
#           softhsm/ (private SoftHSM2 config, token, PIN files), keyward.toml,
#           run/ (agent socket while the agent runs), ca/ (demo CA key and
#           cert, UNENCRYPTED key: demo only), site-1.csr, site-1.crt,
#           site-1.pub.pem, challenge.msg, challenge.sig, agent.log, audit.log.
#           Starts `keyward serve` in the background and stops it (SIGTERM)
#           before exiting, also on error or Ctrl-C.
#
set -euo pipefail
umask 077

readonly PROG="demo"
readonly TOTAL_STEPS=9
readonly KEY="site-1"
readonly LABEL="fl-site"
readonly SUBJECT="CN=site-1,O=keyward-demo"
readonly CA_CN="keyward-demo-ca"
readonly DAYS=30

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n==> [%d/%d] %s\n' "$step_no" "$TOTAL_STEPS" "$*" >&2
}

case "${1:-}" in
    -h | --help)
        sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
        exit 0
        ;;
esac
[[ $# -eq 0 ]] || die "takes no arguments (see --help)"

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$HERE/.." && pwd -P)"
STATE="$(realpath -m -- "${KEYWARD_STATE_DIR:-$REPO_ROOT/state}")"
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
    export CARGO_TARGET_DIR
fi
KEYWARD="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/keyward"

CONFIG="$STATE/keyward.toml"
SOCKET="$STATE/run/agent.sock"
CA_DIR="$STATE/ca"
CSR="$STATE/$KEY.csr"
CERT="$STATE/$KEY.crt"
PUB="$STATE/$KEY.pub.pem"
MSG="$STATE/challenge.msg"
SIG="$STATE/challenge.sig"
AGENT_LOG="$STATE/agent.log"
AUDIT_LOG="$STATE/audit.log"

AGENT_PID=""
WORK="$(mktemp -d)"

# has_exited PID: true once PID is gone or a zombie (exited, not yet reaped).
has_exited() {
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    st="${st##*) }"
    [[ "${st%% *}" == "Z" ]]
}

# stop_agent: SIGTERM our own agent process, wait up to 10 s (then SIGKILL),
# reap it and return its exit status.
stop_agent() {
    local pid="$AGENT_PID" rc=0 deadline
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while ! has_exited "$pid"; do
        if ((SECONDS >= deadline)); then
            log "agent (pid $pid) still running 10 s after SIGTERM: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || rc=$?
    AGENT_PID=""
    return "$rc"
}

cleanup() {
    if [[ -n "$AGENT_PID" ]]; then
        log "stopping the agent started by this script (pid $AGENT_PID)"
        stop_agent || true
    fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# kw ARGS...: run keyward, showing the command line (no secrets are passed in
# argv: the PIN is read by keyward from the PIN file).
kw() {
    log "\$ keyward $*"
    "$KEYWARD" "$@"
}

# ---------------------------------------------------------------------------
step "installing missing system packages (softhsm2, opensc, openssl, ...)"
bash "$HERE/install-packages.sh"

# ---------------------------------------------------------------------------
step "building keyward (cargo build --release -p keyward-agent)"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.85 (e.g. https://rustup.rs) and rerun"
(cd -- "$REPO_ROOT" && cargo build --release -p keyward-agent)
[[ -x "$KEYWARD" ]] || die "build finished but $KEYWARD does not exist"
log "binary: $KEYWARD"

# ---------------------------------------------------------------------------
step "creating SoftHSM2 token '$LABEL' in $STATE/softhsm"
mkdir -p -- "$STATE"
env_lines="$(bash "$HERE/init-softhsm-token.sh" "$STATE/softhsm" "$LABEL")"
eval "$env_lines"
: "${SOFTHSM2_CONF:?}" "${KEYWARD_TOKEN_LABEL:?}" "${KEYWARD_PIN_FILE:?}" \
    "${KEYWARD_SO_PIN_FILE:?}" "${KEYWARD_PKCS11_MODULE:?}"
log "SOFTHSM2_CONF=$SOFTHSM2_CONF"
log "PKCS#11 module: $KEYWARD_PKCS11_MODULE"
log "user PIN file: $KEYWARD_PIN_FILE (SO PIN: $KEYWARD_SO_PIN_FILE)"

# ---------------------------------------------------------------------------
step "writing keyward config $CONFIG"
if [[ -f "$CONFIG" ]]; then
    log "$CONFIG exists: already done"
else
    mkdir -p -- "$STATE/run"
    kw --config "$CONFIG" init --backend pkcs11 \
        --module "$KEYWARD_PKCS11_MODULE" \
        --token "$KEYWARD_TOKEN_LABEL" \
        --pin-file "$KEYWARD_PIN_FILE" \
        --socket "$SOCKET" \
        --state-dir "$STATE" >&2
    [[ -f "$CONFIG" ]] || die "keyward init succeeded but did not write $CONFIG"
fi
export KEYWARD_CONFIG="$CONFIG"
log "KEYWARD_CONFIG=$KEYWARD_CONFIG"

# ---------------------------------------------------------------------------
step "generating site key $KEY inside the token (RSA-2048, never leaves it)"
key_list="$("$KEYWARD" key list)" || die "keyward key list failed"
if grep -Eq "(^|[^[:alnum:]_.-])${KEY}([^[:alnum:]_.-]|\$)" <<<"$key_list"; then
    log "key $KEY already in token '$KEYWARD_TOKEN_LABEL': already done"
else
    kw key generate "$KEY" --algorithm rsa-2048 >&2
fi
kw key list >&2

# ---------------------------------------------------------------------------
step "demo CA in $CA_DIR, CSR from the token key, CA-issued certificate"
mkdir -p -- "$CA_DIR"
CA_KEY="$CA_DIR/ca.key"
CA_CERT="$CA_DIR/ca.crt"
if [[ -s "$CA_KEY" && -s "$CA_CERT" ]] &&
    openssl x509 -in "$CA_CERT" -noout -checkend 86400 >/dev/null 2>&1; then
    log "CA $CA_CERT exists and is valid for at least a day: already done"
else
    # Mimics NVFlare's provisioned root: self-signed RSA-2048 CA.
    # The CA key is stored unencrypted: throwaway demo CA only.
    cat >"$WORK/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = $CA_CN
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl req -x509 -new -config "$WORK/ca.cnf" -newkey rsa:2048 -nodes \
        -sha256 -days "$DAYS" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>"$WORK/openssl.err" ||
        die "creating the demo CA failed: $(cat "$WORK/openssl.err")"
    mv -f "$WORK/ca.key" "$CA_KEY"
    mv -f "$WORK/ca.crt" "$CA_CERT"
    rm -f -- "$CA_DIR/ca.srl"
    log "created CA $CA_CERT (CN=$CA_CN, $DAYS days)"
fi

kw csr "$KEY" --subject "$SUBJECT" --out "$CSR" >&2
openssl req -in "$CSR" -noout -verify >/dev/null 2>"$WORK/openssl.err" ||
    die "CSR $CSR does not verify: $(cat "$WORK/openssl.err")"
log "CSR $CSR is signed by the token key"

csr_pub="$(openssl req -in "$CSR" -noout -pubkey)"
reuse_cert=false
if [[ -s "$CERT" ]] &&
    openssl verify -CAfile "$CA_CERT" "$CERT" >/dev/null 2>&1 &&
    openssl x509 -in "$CERT" -noout -checkend 86400 >/dev/null 2>&1 &&
    [[ "$(openssl x509 -in "$CERT" -noout -pubkey)" == "$csr_pub" ]]; then
    reuse_cert=true
fi
if [[ "$reuse_cert" == true ]]; then
    log "certificate $CERT matches the token key and the CA: already done"
else
    cat >"$WORK/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
subjectAltName = DNS:$KEY
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl x509 -req -in "$CSR" -CA "$CA_CERT" -CAkey "$CA_KEY" \
        -CAserial "$CA_DIR/ca.srl" -CAcreateserial -sha256 -days "$DAYS" \
        -extfile "$WORK/leaf.ext" -out "$WORK/leaf.crt" 2>"$WORK/openssl.err" ||
        die "signing $CSR failed: $(cat "$WORK/openssl.err")"
    mv -f "$WORK/leaf.crt" "$CERT"
    log "issued $CERT (subject $SUBJECT, SAN DNS:$KEY, $DAYS days)"
fi
kw cert install "$KEY" "$CERT" >&2

# ---------------------------------------------------------------------------
step "starting the agent (keyward serve) on $SOCKET"
if "$KEYWARD" status >/dev/null 2>&1; then
    die "an agent is already answering for $CONFIG (not started by this script); stop it and rerun"
fi
printf '=== demo.sh: keyward serve started %s ===\n' "$(date -Is)" >>"$AGENT_LOG"
log "\$ keyward serve   (output appended to $AGENT_LOG)"
"$KEYWARD" serve </dev/null >>"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
log "agent pid $AGENT_PID"
deadline=$((SECONDS + 10))
until "$KEYWARD" status >/dev/null 2>&1; do
    if has_exited "$AGENT_PID"; then
        rc=0
        wait "$AGENT_PID" || rc=$?
        AGENT_PID=""
        log "last lines of $AGENT_LOG:"
        tail -n 20 -- "$AGENT_LOG" >&2 || true
        die "keyward serve exited early with status $rc"
    fi
    if ((SECONDS >= deadline)); then
        log "last lines of $AGENT_LOG:"
        tail -n 20 -- "$AGENT_LOG" >&2 || true
        die "agent did not answer 'keyward status' within 10 s"
    fi
    sleep 0.2
done
kw status >&2

# ---------------------------------------------------------------------------
step "signing an NVFlare-style challenge through the agent"
uuid="$(cat /proc/sys/kernel/random/uuid)"
printf '%s%s' "$KEY" "$uuid" >"$MSG"
log "challenge: '$KEY$uuid' (no newline) in $MSG"
kw sign "$KEY" --profile nvflare --in "$MSG" --out "$SIG" >&2
[[ -s "$SIG" ]] || die "keyward sign wrote no signature to $SIG"
log "signature: $SIG ($(stat -c %s -- "$SIG") bytes)"

# ---------------------------------------------------------------------------
step "verifying with OpenSSL, showing the audit log, stopping the agent"
openssl verify -CAfile "$CA_CERT" "$CERT" >&2 ||
    die "certificate $CERT does not verify against $CA_CERT"
openssl x509 -in "$CERT" -noout -pubkey >"$PUB"
log "public key from the certificate: $PUB"
# NVFlare signs with RSA-PSS, SHA-256, MGF1-SHA-256, maximum salt length
# (222 bytes for RSA-2048).
verify_out="$(openssl dgst -sha256 \
    -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:222 -sigopt rsa_mgf1_md:sha256 \
    -verify "$PUB" -signature "$SIG" "$MSG" 2>&1)" ||
    die "signature check failed: $verify_out"
[[ "$verify_out" == "Verified OK" ]] || die "unexpected openssl output: $verify_out"
log "openssl dgst -sha256 -sigopt rsa_padding_mode:pss ... -verify: $verify_out"

if [[ -s "$AUDIT_LOG" ]]; then
    log "last lines of the audit log $AUDIT_LOG:"
    tail -n 5 -- "$AUDIT_LOG" >&2
else
    die "audit log $AUDIT_LOG is missing or empty"
fi

log "stopping the agent (SIGTERM to pid $AGENT_PID)"
agent_rc=0
stop_agent || agent_rc=$?
[[ "$agent_rc" -eq 0 ]] || die "agent exited with status $agent_rc after SIGTERM (see $AGENT_LOG)"
[[ ! -e "$SOCKET" && ! -S "$SOCKET" ]] || die "agent stopped but left its socket $SOCKET behind"
log "agent stopped cleanly, socket $SOCKET removed"

# ---------------------------------------------------------------------------
cat >&2 <<EOF

==> done: the site key never left the token, and OpenSSL verified the signature.
    state dir         $STATE
    keyward binary    $KEYWARD
    keyward config    $CONFIG   (export KEYWARD_CONFIG=$CONFIG)
    SoftHSM2 config   $SOFTHSM2_CONF
    token / label     $STATE/softhsm/tokens  /  $KEYWARD_TOKEN_LABEL
    user PIN file     $KEYWARD_PIN_FILE
    PKCS#11 module    $KEYWARD_PKCS11_MODULE
    demo CA           $CA_CERT  (key: $CA_KEY)
    CSR / cert        $CSR  /  $CERT
    public key        $PUB
    challenge / sig   $MSG  /  $SIG
    agent log         $AGENT_LOG
    audit log         $AUDIT_LOG
    rerun: softhsm-setup/demo.sh     start over: rm -rf '$STATE'
EOF
