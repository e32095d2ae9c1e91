"""The plug-in refuses an NVFlare it was not tested with, at install and at client start: a copy of
the real nvflare 2.9.0 with `Authenticator._challenge_server` renamed (as a new release might),
put first on PYTHONPATH. `keyward-nvflare install` (and `install --dry-run`) and `check` refuse
naming what is missing (and write no hook); a client process that parses its key reference, as NVFlare's CredentialManager
does when the client's cell starts, logs it in NVFlare's own log and exits with status 78 before
the agent is asked anything; so does NVFlare's real client process, started by a provisioned kit's
own `sub_start.sh`. The unchanged nvflare installs, as the control."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import nvflare
import pytest

from keyward import nvflare_compat
from keyward.nvflare import PTH_NAME

from federation import (SITE, Processes, configure_server, free_port, kit_command, nvflare_env, provision,
                        wait_for_line)
from kwharness import make_linked_venv, run_python

MISSING = "`nvflare.private.fed.authenticator.Authenticator._challenge_server` is missing"


@pytest.fixture(scope="module")
def renamed_nvflare() -> Iterator[str]:
    """A folder for PYTHONPATH holding a copy of nvflare whose authenticator renamed
    `_challenge_server` to `_challenge_server_v2` everywhere in that module."""
    base = Path(tempfile.mkdtemp(prefix="kwnvcopy", dir="/tmp"))
    try:
        shutil.copytree(Path(nvflare.__file__).parent, base / "nvflare",
                        ignore=shutil.ignore_patterns("__pycache__"))
        module = base / "nvflare/private/fed/authenticator.py"
        text = module.read_text()
        assert text.count("_challenge_server") >= 2
        module.write_text(text.replace("_challenge_server", "_challenge_server_v2"))
        yield str(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def plugin(python: str, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_") and k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([python, "-m", "keyward.nvflare", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def site_packages(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_install_refuses_a_renamed_attribute_and_writes_no_hook(renamed_nvflare, short_tmp):
    py = make_linked_venv(short_tmp / "venv")
    refused = plugin(py, "install", pythonpath=renamed_nvflare)
    assert refused.returncode == 1, refused
    assert "keyward-nvflare: install refused" in refused.stderr and MISSING in refused.stderr
    assert "no longer calls `self._challenge_server`" in refused.stderr
    assert "tested with nvflare 2.9.0" in refused.stderr
    assert not (site_packages(py) / PTH_NAME).exists()

    # What `keyward nvflare migrate --python` runs before it imports the key: the same refusal.
    dry = plugin(py, "install", "--dry-run", pythonpath=renamed_nvflare)
    assert dry.returncode == 1, dry
    assert dry.stderr == refused.stderr
    assert not (site_packages(py) / PTH_NAME).exists()
    dry = plugin(py, "install", "--dry-run")
    assert dry.returncode == 0, dry
    assert f"dry run: install would write {site_packages(py) / PTH_NAME}" in dry.stdout
    assert "nvflare     2.9.0: every name" in dry.stdout
    assert not (site_packages(py) / PTH_NAME).exists(), "a dry run wrote the hook"

    control = plugin(py, "install")
    assert control.returncode == 0, control
    assert "nvflare     2.9.0: every name, attribute and call path the plug-in uses is present" in control.stdout
    assert (site_packages(py) / PTH_NAME).exists()


def test_check_refuses_before_asking_the_agent(agent, renamed_nvflare):
    refused = plugin(sys.executable, "check", str(agent.reference), pythonpath=renamed_nvflare)
    assert refused.returncode == 1, refused
    assert "keyward-nvflare: check refused" in refused.stderr and MISSING in refused.stderr
    assert "agent" not in refused.stdout
    control = plugin(sys.executable, "check", str(agent.reference))
    assert control.returncode == 0, control


CLIENT_START = """
    import copy, sys
    from nvflare.fuel.utils.log_utils import apply_log_config, default_log_dict
    apply_log_config(copy.deepcopy(default_log_dict), {logs!r})
    from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
    from nvflare.fuel.f3.drivers.driver_params import DriverParams
    from nvflare.fuel.f3.endpoint import Endpoint
    CredentialManager(Endpoint("site-1", conn_props={{
        DriverParams.CA_CERT.value: {root!r}, DriverParams.CLIENT_CERT.value: {crt!r},
        DriverParams.CLIENT_KEY.value: {ref!r}}}))
    print("the client went on")
"""


def test_a_client_start_with_a_renamed_attribute_logs_it_and_exits(agent, nvflare_python, renamed_nvflare, short_tmp):
    logs = short_tmp / "logs"
    logs.mkdir()
    code = CLIENT_START.format(logs=str(logs), root=str(agent.root_ca_file), crt=str(agent.cert_file),
                               ref=str(agent.reference))
    before = len(agent.audit_records())
    proc = run_python(code, python=nvflare_python, env={"PYTHONPATH": renamed_nvflare}, timeout=120)
    assert proc.returncode == nvflare_compat.EXIT_INCOMPATIBLE == 78, proc
    assert "the client went on" not in proc.stdout
    assert MISSING in proc.stderr and "this process stops (exit 78)" in proc.stderr
    log = (logs / "log.txt").read_text()
    assert MISSING in log and "keyward" in log, log
    assert len(agent.audit_records()) == before, "the agent was asked nothing"

    control = run_python(code, python=nvflare_python, timeout=120)
    assert control.returncode == 0 and "the client went on" in control.stdout, control


#: How long the real client process may take to refuse (importing nvflare takes a few seconds).
CLIENT_REFUSES_WITHIN_S = 45.0
CLIENT_ENTRY = "exec python3 -u -m nvflare.private.fed.app.client.client_train -m \"$WORKSPACE\" -s fed_client.json"


def test_the_real_client_process_refuses_a_renamed_attribute_before_connecting(
        agent, nvflare_python, renamed_nvflare, short_tmp):
    """The kit's own start (`startup/sub_start.sh --once`, which execs NVFlare's client entry
    `client_train`) of a provisioned kit whose `client.key` is a key reference: with the renamed
    copy first on PYTHONPATH and the hook installed in the venv on PATH, the client exits 78 before
    it connects anywhere (no server runs), with the reason in the site's `log.txt`, and the agent
    is asked nothing."""
    kit = provision(short_tmp / "prov", free_port(), security="tls").site
    startup = kit / "startup"
    start_script = (startup / "sub_start.sh").read_text()
    assert CLIENT_ENTRY in start_script and f"uid={SITE}" in start_script, "the kit starts something else"
    wrote = plugin(sys.executable, "write-reference", "--socket", agent.socket, "--key", "site-1",
                   "--out", str(startup / "client.key"), "--force")
    assert wrote.returncode == 0, wrote
    assert b"PRIVATE KEY" not in (startup / "client.key").read_bytes()

    env = {**nvflare_env(Path(nvflare_python).parent), "PYTHONPATH": renamed_nvflare}
    before = len(agent.audit_records())
    started = time.monotonic()
    proc = subprocess.run(kit_command(kit), cwd=kit, env=env, capture_output=True, text=True,
                          timeout=CLIENT_REFUSES_WITHIN_S + 30)
    took = time.monotonic() - started
    assert proc.returncode == nvflare_compat.EXIT_INCOMPATIBLE == 78, (proc.returncode, proc.stdout[-3000:],
                                                                          proc.stderr[-3000:])
    assert took < CLIENT_REFUSES_WITHIN_S, took
    assert MISSING in proc.stderr and "this process stops (exit 78)" in proc.stderr
    log = (kit / "log.txt").read_text()
    assert MISSING in log and "keyward" in log, log[-3000:]
    assert "Successfully registered" not in log
    assert len(agent.audit_records()) == before, "the agent was asked something"

    # The control: the same start on the real nvflare gets past the key (it asks the agent for it),
    # then waits for a server that is not there; stopped by its process group.
    procs = Processes()
    try:
        client = procs.start(kit_command(kit), cwd=kit, env=nvflare_env(Path(nvflare_python).parent),
                             out=short_tmp / "control.txt")
        wait_for_line(kit / "log.txt", "keyward: using key `site-1`", client, CLIENT_REFUSES_WITHIN_S, len(log))
        assert client.poll() is None, "the control client stopped"
    finally:
        procs.stop_all()


def test_the_real_server_process_refuses_a_renamed_attribute_at_start(agent, nvflare_python, renamed_nvflare,
                                                                        short_tmp):
    """The server kit's own start (`sub_start.sh --once` -> NVFlare's `server_train`) with
    `server.key` a key reference, in `clear` on loopback as behind `keyward server-tunnel`: with the
    renamed copy first on PYTHONPATH it exits 78 at start with the reason in its `log.txt`, before
    any client could register, and the agent is asked nothing. The same start on the real nvflare
    serves."""
    kit = provision(short_tmp / "prov", free_port(), security="tls")
    configure_server(kit, short_tmp / "store")
    startup = kit.server / "startup"
    config = json.loads((startup / "fed_server.json").read_text())
    config["servers"][0]["connection_security"] = "clear"
    (startup / "fed_server.json").write_text(json.dumps(config, indent=2))
    wrote = plugin(sys.executable, "write-reference", "--socket", agent.socket, "--key", "site-1",
                   "--out", str(startup / "server.key"), "--force")
    assert wrote.returncode == 0, wrote

    env = {**nvflare_env(Path(nvflare_python).parent), "PYTHONPATH": renamed_nvflare}
    before = len(agent.audit_records())
    started = time.monotonic()
    proc = subprocess.run(kit_command(kit.server), cwd=kit.server, env=env, capture_output=True, text=True,
                          timeout=CLIENT_REFUSES_WITHIN_S + 30)
    took = time.monotonic() - started
    assert proc.returncode == nvflare_compat.EXIT_INCOMPATIBLE, (proc.returncode, proc.stdout[-3000:],
                                                                 proc.stderr[-3000:])
    assert took < CLIENT_REFUSES_WITHIN_S, took
    log = (kit.server / "log.txt").read_text()
    assert MISSING in log and "this process stops (exit 78)" in log, log[-3000:]
    assert "Server started" not in log
    assert len(agent.audit_records()) == before, "the agent was asked something"

    procs = Processes()
    try:
        server = procs.start(kit_command(kit.server), cwd=kit.server, env=nvflare_env(Path(nvflare_python).parent),
                             out=short_tmp / "control.txt")
        wait_for_line(kit.server / "log.txt", "Server started", server, 60, len(log))
    finally:
        procs.stop_all()
