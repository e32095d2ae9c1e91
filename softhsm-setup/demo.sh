#!/usr/bin/env bash
#
# demo.sh - a live NVFlare 2.9.0 federation whose site key is in SoftHSM2
#           behind the keyward agent (README command 1).
#
# Purpose:  show the main job end to end, on loopback: `nvflare provision`
#           makes a project (server1, site-1, an admin; connection_security
#           tls), `keyward nvflare migrate` moves site-1's client.key into a
#           SoftHSM2 token and leaves a key reference in its place, then the
#           agent, the server and the client start; the client registers
#           through the agent (which verifies the server before it signs),
#           the admin submits a small job that runs to completion, and the
#           script shows that no private key file is left in the site kit and
#           the agent's audit records of the registration. This is what
#           python/tests/e2e/test_live_federation.py tests.
#
#           Steps: 1 system packages, 2 build keyward, 3 Python venv with
#           nvflare 2.9.0 and the keyward package, 4 SoftHSM2 token,
#           5 keyward init, 6 nvflare provision, 7 keyward nvflare migrate,
#           8 start the agent, 9 start the server, 10 start the client and
#           wait for its registration, 11 submit a job and wait for it,
#           12 checks (no key file, openssl, audit), 13 stop everything.
#
# Usage:    softhsm-setup/demo.sh
#           Rerunnable: each run starts from an empty state dir (the previous
#           run's state dir is removed first; see below). The Python venv and
#           the build are reused.
#
# Env vars: KEYWARD_STATE_DIR  where all demo state lives (default <repo>/state).
#                              It is deleted and recreated at the start of a
#                              run: it must be the default, or empty, or hold
#                              the marker file a previous run left.
#           CARGO_TARGET_DIR   honoured when locating the built binary
#           KEYWARD_CONFIG, SOFTHSM2_CONF, KEYWARD_TOKEN_LABEL, KEYWARD_PIN_FILE,
#           KEYWARD_SO_PIN_FILE, KEYWARD_PKCS11_MODULE are set by this script
#           (values from the caller are overwritten); NVFL_* and PYTHONPATH
#           are dropped for NVFlare's processes.
#
# Changes on the machine:
#           installs missing apt packages (install-packages.sh, may use sudo);
#           builds target/release/keyward; creates <repo>/.venv if needed
#           (python-venv.sh) and pip-installs 'python[nvflare]' (editable,
#           nvflare==2.9.0) into it unless it already imports both (downloads
#           from PyPI); recreates the state dir (0700) with softhsm/ (private
#           SoftHSM2 config, token, PIN files), keyward.toml, run/ (agent
#           socket), provision/ (project.yml and NVFlare's workspace: the kits
#           of server1, site-1 and the admin, and the provisioning state with
#           the root CA key, UNENCRYPTED: demo only), store/ (the server's job
#           store), client-venv/ (a throwaway venv that sees .venv's packages,
#           with the keyward NVFlare hook; .venv itself is left alone), job/,
#           submit_job.py, job-result.json, job-submit.log, demo.msg, demo.sig,
#           site-1.pub.pem, agent.log, audit.log. Listens on one free 127.0.0.1 TCP port.
#           Starts the agent, the NVFlare server and client (each in its own
#           session) and stops them by PID before exiting, also on error or
#           Ctrl-C, together with the job processes NVFlare started.
#
set -euo pipefail
umask 077

readonly PROG="demo"
readonly TOTAL_STEPS=13
readonly SITE="site-1"
readonly SERVER="server1"
readonly ADMIN="admin@nvidia.com"
readonly PROJECT="kwdemo"
readonly LABEL="fl-site"
readonly NVFLARE_VERSION="2.9.0"
readonly REGISTERED="Successfully registered client:$SITE"
readonly MARKER=".keyward-demo-state"
readonly START_LIMIT_S=60
readonly JOB_LIMIT_S=180

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

T0=$SECONDS
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$HERE/.." && pwd -P)"
STATE="$(realpath -m -- "${KEYWARD_STATE_DIR:-$REPO_ROOT/state}")"
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
    export CARGO_TARGET_DIR
fi
KEYWARD="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/keyward"
VENV="$REPO_ROOT/.venv"

CONFIG="$STATE/keyward.toml"
SOCKET="$STATE/run/agent.sock"
AGENT_LOG="$STATE/agent.log"
AUDIT_LOG="$STATE/audit.log"
PROV="$STATE/provision"
KITS="$PROV/ws/$PROJECT/prod_00"
SERVER_KIT="$KITS/$SERVER"
SITE_KIT="$KITS/$SITE"
ADMIN_KIT="$KITS/$ADMIN"
STORE="$STATE/store"
CLIENT_VENV="$STATE/client-venv"
JOB_DIR="$STATE/job"

AGENT_PID=""
SERVER_PID=""
CLIENT_PID=""
SUBMIT_PID=""

# has_exited PID: true once PID is gone or a zombie (exited, not yet reaped).
has_exited() {
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    st="${st##*) }"
    [[ "${st%% *}" == "Z" ]]
}

# stop_pid NAME PID [group]: SIGTERM our own process (its whole process group
# with "group": it leads a session of its own), wait up to 20 s, then SIGKILL;
# reap it and return its exit status.
stop_pid() {
    local name="$1" pid="$2" target="$2" rc=0 deadline
    [[ -n "$pid" ]] || return 0
    [[ "${3:-}" == group ]] && target="-$pid"
    if ! has_exited "$pid"; then
        log "stopping $name (pid $pid, SIGTERM)"
        kill -TERM -- "$target" 2>/dev/null || true
        deadline=$((SECONDS + 20))
        while ! has_exited "$pid"; do
            if ((SECONDS >= deadline)); then
                log "$name (pid $pid) still running 20 s after SIGTERM: sending SIGKILL"
                kill -KILL -- "$target" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # Whatever is left of the group (e.g. a child that outlived its leader).
    if [[ "$target" == "-$pid" ]]; then
        kill -KILL -- "$target" 2>/dev/null || true
    fi
    return "$rc"
}

# stop_job_processes: NVFlare starts each job's processes in a session of
# their own (setsid) and logs their PIDs; stop those still running from the
# state dir.
stop_job_processes() {
    local logf pid
    [[ -d "$KITS" ]] || return 0
    while IFS= read -r -d '' logf; do
        while IFS= read -r pid; do
            [[ "$pid" =~ ^[0-9]+$ ]] || continue
            if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$STATE"; then
                log "stopping NVFlare job process $pid"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
        done < <(sed -n 's/.*Launch the job in process ID: \([0-9][0-9]*\).*/\1/p' "$logf")
    done < <(find "$KITS" -name log.txt -print0)
}

stop_all() {
    stop_pid "the job submission" "$SUBMIT_PID" || true
    SUBMIT_PID=""
    stop_pid "the NVFlare client" "$CLIENT_PID" group || true
    CLIENT_PID=""
    stop_pid "the NVFlare server" "$SERVER_PID" group || true
    SERVER_PID=""
    stop_job_processes
    stop_pid "the agent" "$AGENT_PID" || true
    AGENT_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT
    if [[ -n "$SUBMIT_PID$CLIENT_PID$SERVER_PID$AGENT_PID" ]]; then
        log "stopping what this script started"
        stop_all
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# kw ARGS...: run keyward, showing the command line (no secrets are passed in
# argv: keyward reads the PIN from the PIN file).
kw() {
    log "\$ keyward $*"
    "$KEYWARD" "$@"
}

# nvf_unset_args: `env` options that drop KEYWARD_* and NVFL_* (names of
# environment variables have no blanks, so the output may be word-split).
nvf_unset_args() {
    local name
    for name in $(compgen -e); do
        case "$name" in KEYWARD_* | NVFL_*) printf -- '-u %s\n' "$name" ;; esac
    done
}

# nvf_env ARGS...: run ARGS with the environment NVFlare's processes get
# (no KEYWARD_*, NVFL_* or PYTHONPATH from the caller).
nvf_env() {
    # shellcheck disable=SC2046 # word splitting wanted: see nvf_unset_args
    env -u PYTHONPATH $(nvf_unset_args) "$@"
}

# start_kit NAME KIT PYTHON_BIN_DIR: start a kit with its own start command,
# `startup/sub_start.sh --once` (it execs `python3` from PATH), in its own
# session, output appended to KIT/console.txt. Sets STARTED_PID.
STARTED_PID=""
start_kit() {
    local name="$1" kit="$2" bindir="$3"
    log "\$ (cd $kit && PATH=$bindir:\$PATH startup/sub_start.sh --once)   (console: $kit/console.txt, log: $kit/log.txt)"
    (
        cd -- "$kit"
        export PATH="$bindir:$PATH"
        # shellcheck disable=SC2046 # word splitting wanted: see nvf_unset_args
        exec setsid env -u PYTHONPATH $(nvf_unset_args) bash startup/sub_start.sh --once
    ) </dev/null >>"$kit/console.txt" 2>&1 &
    STARTED_PID=$!
    log "$name pid $STARTED_PID"
}

# wait_for_line FILE TEXT PID LIMIT_S NAME: wait until FILE has a line with
# TEXT; fail if PID exits first or after LIMIT_S seconds.
wait_for_line() {
    local file="$1" text="$2" pid="$3" limit="$4" name="$5" deadline
    deadline=$((SECONDS + limit))
    until [[ -f "$file" ]] && grep -qF -- "$text" "$file"; do
        if has_exited "$pid"; then
            [[ -f "$file" ]] && tail -n 30 -- "$file" >&2
            die "$name exited before logging '$text' (see $file)"
        fi
        if ((SECONDS >= deadline)); then
            [[ -f "$file" ]] && tail -n 30 -- "$file" >&2
            die "no '$text' from $name within $limit s (see $file)"
        fi
        sleep 0.2
    done
    grep -F -- "$text" "$file" | tail -n 1 >&2
}

# ---------------------------------------------------------------------------
step "installing missing system packages (softhsm2, opensc, openssl, python3-venv, ...)"
bash "$HERE/install-packages.sh"

# ---------------------------------------------------------------------------
step "building keyward (cargo build --release -p keyward-agent)"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.85 (e.g. https://rustup.rs) and rerun"
(cd -- "$REPO_ROOT" && cargo build --release -p keyward-agent)
[[ -x "$KEYWARD" ]] || die "build finished but $KEYWARD does not exist"
log "binary: $KEYWARD"

# ---------------------------------------------------------------------------
step "Python venv $VENV with nvflare==$NVFLARE_VERSION and the keyward package (python/)"
VPY="$(bash "$HERE/python-venv.sh" "$VENV")"
[[ -x "$VPY" ]] || die "python-venv.sh did not return a usable python ($VPY)"
if "$VPY" - "$NVFLARE_VERSION" "$REPO_ROOT/python" >/dev/null 2>&1 <<'EOF'
import os, sys
import nvflare, keyward
assert nvflare.__version__ == sys.argv[1], nvflare.__version__
assert os.path.realpath(keyward.__file__).startswith(os.path.realpath(sys.argv[2]) + os.sep)
EOF
then
    log "$VENV imports nvflare $NVFLARE_VERSION and this checkout's keyward: already done"
else
    log "\$ $VPY -m pip install -e '$REPO_ROOT/python[nvflare]'   (downloads nvflare and its dependencies)"
    "$VPY" -m pip install --disable-pip-version-check -q -e "$REPO_ROOT/python[nvflare]" >&2
fi
NVFLARE="$VENV/bin/nvflare"
[[ -x "$NVFLARE" ]] || die "$NVFLARE not found after installing nvflare"
log "python: $VPY; nvflare: $NVFLARE"

# ---------------------------------------------------------------------------
step "SoftHSM2 token '$LABEL' in a fresh state dir $STATE/softhsm"
if [[ -e "$STATE" ]]; then
    [[ -d "$STATE" ]] || die "$STATE exists and is not a folder"
    if [[ "$STATE" != "$REPO_ROOT/state" && ! -e "$STATE/$MARKER" ]] &&
        [[ -n "$(find "$STATE" -mindepth 1 -maxdepth 1 -print -quit)" ]]; then
        die "$STATE is not empty and was not made by demo.sh ($MARKER missing): choose another KEYWARD_STATE_DIR"
    fi
    if [[ -S "$SOCKET" ]] && "$KEYWARD" --config "$CONFIG" status >/dev/null 2>&1; then
        die "an agent still answers on $SOCKET (not started by this run): stop it and rerun"
    fi
    log "removing the previous run's state dir $STATE"
    rm -rf -- "$STATE"
fi
mkdir -p -- "$STATE"
: >"$STATE/$MARKER"
env_lines="$(bash "$HERE/init-softhsm-token.sh" "$STATE/softhsm" "$LABEL")"
eval "$env_lines"
: "${SOFTHSM2_CONF:?}" "${KEYWARD_TOKEN_LABEL:?}" "${KEYWARD_PIN_FILE:?}" \
    "${KEYWARD_SO_PIN_FILE:?}" "${KEYWARD_PKCS11_MODULE:?}"
log "SOFTHSM2_CONF=$SOFTHSM2_CONF"
log "PKCS#11 module: $KEYWARD_PKCS11_MODULE"
log "user PIN file: $KEYWARD_PIN_FILE (SO PIN: $KEYWARD_SO_PIN_FILE)"

# ---------------------------------------------------------------------------
step "writing the keyward config $CONFIG (keyward init)"
mkdir -p -- "$STATE/run"
# The agent refuses to run as root unless its config opts in; a demo in a root container must.
root_opt=()
if [[ "$(id -u)" -eq 0 ]]; then
    root_opt=(--allow-root)
fi
kw --config "$CONFIG" init --backend pkcs11 \
    --module "$KEYWARD_PKCS11_MODULE" \
    --token "$KEYWARD_TOKEN_LABEL" \
    --pin-file "$KEYWARD_PIN_FILE" \
    --socket "$SOCKET" \
    --state-dir "$STATE" "${root_opt[@]}" >&2
[[ -f "$CONFIG" ]] || die "keyward init succeeded but did not write $CONFIG"
export KEYWARD_CONFIG="$CONFIG"
log "KEYWARD_CONFIG=$KEYWARD_CONFIG"

# ---------------------------------------------------------------------------
step "nvflare provision: $SERVER, $SITE and $ADMIN (connection_security tls) in $PROV"
PORT="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p -- "$PROV"
cat >"$PROV/project.yml" <<EOF
api_version: 3
name: $PROJECT
description: keyward demo federation (softhsm-setup/demo.sh)
participants:
  - name: $SERVER
    type: server
    org: nvidia
    fed_learn_port: $PORT
    default_host: localhost
    connection_security: tls
  - name: $SITE
    type: client
    org: nvidia
    connection_security: tls
  - name: $ADMIN
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
EOF
log "\$ (cd $PROV && nvflare provision -p project.yml -w ws)"
(cd -- "$PROV" && nvf_env "$NVFLARE" provision -p project.yml -w ws --force) >"$PROV/provision.log" 2>&1 ||
    { tail -n 30 -- "$PROV/provision.log" >&2; die "nvflare provision failed (see $PROV/provision.log)"; }
for kit in "$SERVER_KIT" "$SITE_KIT" "$ADMIN_KIT"; do
    [[ -d "$kit/startup" ]] || die "provision made no $kit/startup"
done
# The server listens on 127.0.0.1 only, and keeps its jobs in a store of its
# own (by default every server on a machine shares /tmp/nvflare).
"$VPY" - "$SERVER_KIT" "$SITE_KIT" "$PORT" "$STORE" <<'EOF'
import json, sys
from pathlib import Path
server, site, port, store = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
fed = server / "startup" / "fed_server.json"
config = json.loads(fed.read_text())
config["servers"][0]["service"]["target"] = f"127.0.0.1:{port}"
fed.write_text(json.dumps(config, indent=2))
local = server / "local"
resources = json.loads((local / "resources.json.default").read_text())
resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = f"{store}/snapshot-storage"
for component in resources["components"]:
    if component["id"] == "job_manager":
        component["args"]["uri_root"] = f"{store}/jobs-storage"
(local / "resources.json").write_text(json.dumps(resources, indent=2))
for name, kit in (("fed_server.json", server), ("fed_client.json", site)):
    c = json.loads((kit / "startup" / name).read_text())
    security = c["servers"][0].get("connection_security") or c["client"]["connection_security"]
    assert security == "tls", (name, security)
EOF
if [[ -n "$(find "$KITS" -name signature.json -print -quit)" ]]; then
    die "the kits have a signature.json: migrating client.key would break them"
fi
log "kits: $KITS/{$SERVER,$SITE,$ADMIN}; server on 127.0.0.1:$PORT, job store $STORE"
log "provisioning state (root CA and its key): $PROV/ws/$PROJECT/state"
log "site kit before the migration:"
ls -l -- "$SITE_KIT/startup" >&2

# ---------------------------------------------------------------------------
step "keyward nvflare migrate $SITE_KIT/startup (key into the token, reference in its place, plug-in)"
# The client runs from a throwaway venv that sees .venv's packages (a .pth
# adding .venv's site-packages), so the hook goes there and .venv, which runs
# the tests, stays as it is.
if [[ ! -x "$CLIENT_VENV/bin/python" ]]; then
    "$VPY" -m venv --without-pip "$CLIENT_VENV"
fi
client_purelib="$("$CLIENT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
venv_purelib="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf 'import site; site.addsitedir(%s)\n' "'$venv_purelib'" >"$client_purelib/00-keyward-demo-base.pth"
chmod 0644 "$client_purelib/00-keyward-demo-base.pth"
log "client venv: $CLIENT_VENV (sees the packages of $VENV)"
kw nvflare migrate "$SITE_KIT/startup" --python "$CLIENT_VENV/bin/python" >&2
log "site kit after the migration:"
ls -l -- "$SITE_KIT/startup" >&2
log "startup/client.key is now a key reference:"
cat -- "$SITE_KIT/startup/client.key" >&2

# ---------------------------------------------------------------------------
step "starting the agent (keyward serve) on $SOCKET"
printf '=== demo.sh: keyward serve started %s ===\n' "$(date -Is)" >>"$AGENT_LOG"
log "\$ keyward serve   (output appended to $AGENT_LOG)"
"$KEYWARD" serve </dev/null >>"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
log "agent pid $AGENT_PID"
deadline=$((SECONDS + 10))
until "$KEYWARD" status >/dev/null 2>&1; do
    if has_exited "$AGENT_PID"; then
        tail -n 20 -- "$AGENT_LOG" >&2 || true
        die "keyward serve exited early (see $AGENT_LOG)"
    fi
    ((SECONDS < deadline)) || { tail -n 20 -- "$AGENT_LOG" >&2; die "agent did not answer 'keyward status' within 10 s"; }
    sleep 0.2
done
kw status >&2
log "\$ keyward-nvflare check startup/client.key --cert startup/client.crt   (in the client venv)"
nvf_env "$CLIENT_VENV/bin/python" -m keyward.nvflare check "$SITE_KIT/startup/client.key" \
    --cert "$SITE_KIT/startup/client.crt" >&2

# ---------------------------------------------------------------------------
step "starting the NVFlare server $SERVER from its kit $SERVER_KIT"
start_kit "the NVFlare server" "$SERVER_KIT" "$VENV/bin"
SERVER_PID=$STARTED_PID
wait_for_line "$SERVER_KIT/log.txt" "Server started" "$SERVER_PID" "$START_LIMIT_S" "the server"

# ---------------------------------------------------------------------------
step "starting the NVFlare client $SITE from its kit $SITE_KIT (registration through the agent)"
start_kit "the NVFlare client" "$SITE_KIT" "$CLIENT_VENV/bin"
CLIENT_PID=$STARTED_PID
wait_for_line "$SITE_KIT/log.txt" "$REGISTERED" "$CLIENT_PID" "$START_LIMIT_S" "the client"
grep -F ' - keyward - ' -- "$SITE_KIT/log.txt" >&2 || true

# ---------------------------------------------------------------------------
step "submitting a one-round ScatterAndGather job as $ADMIN and waiting for it"
mkdir -p -- "$JOB_DIR/app/config"
cat >"$JOB_DIR/meta.json" <<'EOF'
{"name": "kw-demo-sag", "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": 1}
EOF
cat >"$JOB_DIR/app/config/config_fed_server.json" <<'EOF'
{"format_version": 2,
 "workflows": [{"id": "sag", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
   "args": {"min_clients": 1, "num_rounds": 1, "start_round": 0, "wait_time_after_min_received": 0,
            "aggregator_id": "aggregator", "persistor_id": "persistor",
            "shareable_generator_id": "shareable_generator", "train_task_name": "train", "train_timeout": 0}}],
 "components": [
   {"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {}},
   {"id": "shareable_generator",
    "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "args": {}},
   {"id": "aggregator",
    "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator",
    "args": {"expected_data_kind": "WEIGHTS"}}]}
EOF
cat >"$JOB_DIR/app/config/config_fed_client.json" <<'EOF'
{"format_version": 2,
 "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}],
 "task_result_filters": [], "task_data_filters": [], "components": []}
EOF
log "job folder: $JOB_DIR"
cat >"$STATE/submit_job.py" <<'EOF'
"""Submits the job with the admin's kit and waits for it (demo.sh)."""
import json, sys
from nvflare.fuel.flare_api.flare_api import new_secure_session
session = new_secure_session(sys.argv[1], sys.argv[2], timeout=60)
try:
    job_id = session.submit_job(sys.argv[3])
    print(f"submitted job {job_id}", file=sys.stderr)
    meta = session.wait_for_job(job_id, timeout=float(sys.argv[4]), poll_interval=1.0)
    print(json.dumps({"job_id": job_id, "status": meta.get("status")}))
finally:
    session.close()
EOF
log "\$ python $STATE/submit_job.py $ADMIN $ADMIN_KIT $JOB_DIR   (nvflare.fuel.flare_api; log: $STATE/job-submit.log)"
# In the background and waited for, so that Ctrl-C or SIGTERM stops the demo at once.
(
    # shellcheck disable=SC2046 # word splitting wanted: see nvf_unset_args
    exec env -u PYTHONPATH $(nvf_unset_args) "$VPY" "$STATE/submit_job.py" "$ADMIN" "$ADMIN_KIT" "$JOB_DIR" "$JOB_LIMIT_S"
) </dev/null >"$STATE/job-result.json" 2>"$STATE/job-submit.log" &
SUBMIT_PID=$!
submit_rc=0
wait "$SUBMIT_PID" || submit_rc=$?
SUBMIT_PID=""
if [[ "$submit_rc" -ne 0 ]]; then
    tail -n 30 -- "$STATE/job-submit.log" >&2
    die "submitting the job failed (see $STATE/job-submit.log)"
fi
job_json="$(cat -- "$STATE/job-result.json")"
job_json="$(tail -n 1 <<<"$job_json")"
log "job: $job_json"
JOB_ID="$("$VPY" -c 'import json, sys; print(json.loads(sys.argv[1])["job_id"])' "$job_json")"
JOB_STATUS="$("$VPY" -c 'import json, sys; print(json.loads(sys.argv[1])["status"])' "$job_json")"
[[ "$JOB_STATUS" == "FINISHED:COMPLETED" ]] || die "job $JOB_ID ended $JOB_STATUS (see $SERVER_KIT/$JOB_ID and $SITE_KIT/$JOB_ID)"
if [[ -f "$SITE_KIT/$JOB_ID/log.txt" ]] && grep -qF "keyward: using key \`$SITE\`" "$SITE_KIT/$JOB_ID/log.txt"; then
    log "the job's client process ($SITE_KIT/$JOB_ID/log.txt) used the key through the agent too"
fi

# ---------------------------------------------------------------------------
step "checks: no private key file in the site kit, the key in the token, the agent's audit"
log "\$ grep -rlE -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' $SITE_KIT"
if grep -rlE -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' "$SITE_KIT"; then
    die "a private key file is in the site kit (listed above)"
fi
log "no file of the site kit holds a private key"
kw key list >&2
# The site certificate chains to the project's root; and a signature made in
# the token verifies with OpenSSL against the public key in client.crt (PSS,
# SHA-256, maximum salt: 222 bytes for RSA-2048; a message that is not shaped
# like a registration, which the agent signs only in its NVFlare flow).
openssl verify -CAfile "$SITE_KIT/startup/rootCA.pem" "$SITE_KIT/startup/client.crt" >&2 ||
    die "client.crt does not verify against the kit's rootCA.pem"
printf 'keyward demo %s\n' "$(date -Is)" >"$STATE/demo.msg"
kw sign "$SITE" --profile nvflare --in "$STATE/demo.msg" --out "$STATE/demo.sig" >&2
openssl x509 -in "$SITE_KIT/startup/client.crt" -noout -pubkey >"$STATE/site-1.pub.pem"
verify_out="$(openssl dgst -sha256 \
    -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:222 -sigopt rsa_mgf1_md:sha256 \
    -verify "$STATE/site-1.pub.pem" -signature "$STATE/demo.sig" "$STATE/demo.msg" 2>&1)" ||
    die "signature check failed: $verify_out"
log "openssl dgst -sha256 -sigopt rsa_padding_mode:pss ... -verify: $verify_out"
log "\$ grep nvflare_ $AUDIT_LOG"
grep -F '"op":"nvflare_' -- "$AUDIT_LOG" >&2 || die "no nvflare_* records in $AUDIT_LOG"
grep -F '"op":"nvflare_register"' -- "$AUDIT_LOG" | grep -qF '"outcome":"ok"' ||
    die "no successful nvflare_register in $AUDIT_LOG"

# ---------------------------------------------------------------------------
step "stopping the client, the server, the job processes and the agent"
stop_pid "the NVFlare client" "$CLIENT_PID" group || true
CLIENT_PID=""
stop_pid "the NVFlare server" "$SERVER_PID" group || true
SERVER_PID=""
stop_job_processes
agent_rc=0
stop_pid "the agent" "$AGENT_PID" || agent_rc=$?
AGENT_PID=""
[[ "$agent_rc" -eq 0 ]] || die "agent exited with status $agent_rc after SIGTERM (see $AGENT_LOG)"
[[ ! -e "$SOCKET" ]] || die "agent stopped but left its socket $SOCKET behind"
log "all stopped; socket $SOCKET removed"

# ---------------------------------------------------------------------------
cat >&2 <<EOF

==> done in $((SECONDS - T0)) s: $SITE registered with $SERVER through the agent, job $JOB_ID ended
    $JOB_STATUS, and the site's private key never left the token after the migration.
    state dir          $STATE   (rerun: softhsm-setup/demo.sh; remove: rm -rf '$STATE')
    keyward binary     $KEYWARD
    keyward config     $CONFIG   (export KEYWARD_CONFIG=$CONFIG)
    SoftHSM2 config    $SOFTHSM2_CONF   token '$KEYWARD_TOKEN_LABEL', user PIN in $KEYWARD_PIN_FILE
    agent socket       $SOCKET
    agent log / audit  $AGENT_LOG  /  $AUDIT_LOG
    provisioning       $PROV/project.yml, workspace $PROV/ws (root CA key in $PROV/ws/$PROJECT/state)
    server kit         $SERVER_KIT   (log.txt; 127.0.0.1:$PORT; job store $STORE)
    site kit           $SITE_KIT   (startup/client.key is a key reference; log.txt)
    admin kit          $ADMIN_KIT
    client venv        $CLIENT_VENV   (keyward_nvflare.pth; sees $VENV)
    job                $JOB_DIR -> $JOB_ID   ($SITE_KIT/$JOB_ID/log.txt)
EOF
