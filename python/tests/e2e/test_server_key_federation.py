"""Live NVFlare 2.9.0 federations for issue 13: the server's key in SoftHSM behind the agent, and
a gRPC client in mutual TLS with its key in the agent and no tunnel (docs/nvflare-plugin.md §10,
§11).

`server_key`: `nvflare provision` with `connection_security: clear` (the server's own TLS needs
its key as a file; keyward's server-side TLS front is a separate part of the issue). The server's
`server.key`, the site's `client.key` and the admin's `client.key` are imported into one agent's
SoftHSM token (`--destroy-source`) and replaced by key references; `[keys.server1.nvflare_server]`
pins the server kit's root. The server runs unmodified in a venv with the plug-in: its challenge
replies come from `nvflare_server_challenge`, and each token it issues from
`nvflare_server_register`, after the agent verified the registration. The site registers, the
admin submits a job, it completes; no file of any kit holds a private key. A client of another
provision (same names, another root CA) that skips its own check of the server (a test-only
hook: a malicious client) is refused by the agent (`client_untrusted`) and gets no token.

`grpc_mtls`: `nvflare provision` with `mtls` and scheme `grpc`; the server keeps its key file;
the site's key goes into the agent, and its client connects straight to the server in `mtls`,
the TLS handshake signed by the agent through gRPC's custom signer (`tls-*` profiles, one per
connection: the parent and the job process).

Run alone with `pytest -m federation python/tests`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from keyward import keyref
from keyward.nvflare import PTH_NAME

from federation import (ADMIN, REGISTERED, SERVER, SITE, Kit, Processes, configure_server, free_port, kit_command,
                        linked_venv, nvflare_env, private_key_files, provision, submit_job, wait_for_line,
                        write_job)
from kwharness import Agent, prepare_agent, start_agent, tear_down_federation
from test_live_federation import ADMIN_KEY, JOB_LIMIT_S, REGISTER_LIMIT_S, migrate_site

pytestmark = pytest.mark.federation

#: How long a refused client may run before the test gives up on it.
REFUSED_LIMIT_S = 40.0

#: Test-only hook for the malicious client: NVFlare's client-side check of the server always
#: passes, so the client sends its registration to a server whose root it does not share.
SKIP_SERVER_CHECK = '''
import keyward._hook
def _patch(module):
    class Trusting(module.IdentityVerifier):
        def verify_common_name(self, *args, **kwargs):
            return True
    module.IdentityVerifier = Trusting
keyward._hook.when_imported("nvflare.private.fed.authenticator", _patch)
'''


def plugin_venv(base: Path) -> str:
    python = linked_venv(base)
    installed = subprocess.run([python, "-m", "keyward.nvflare", "install"], capture_output=True, text=True,
                               timeout=60)
    assert installed.returncode == 0 and PTH_NAME in installed.stdout, installed.stderr
    return python


def migrate_server(server: Path, agent: Agent) -> None:
    """The server kit: `keyward nvflare migrate` moves `server.key` into the token, leaves a
    reference in its place and pins the kit's root in `[keys.server1.nvflare_server]`."""
    startup = server / "startup"
    agent.keyward("nvflare", "migrate", str(startup))
    assert (startup / "server.key").read_bytes().startswith(keyref.BEGIN_MARKER)
    assert f"[keys.{SERVER}.nvflare_server]" in agent.config.read_text()


def migrate_clear_admin(admin: Path, agent: Agent) -> None:
    """The admin kit (as test_live_federation.migrate_admin), for a `clear` server."""
    startup = admin / "startup"
    agent.keyward("key", "import", ADMIN_KEY, "--from", str(startup / "client.key"), "--destroy-source")
    agent.keyward("cert", "install", ADMIN_KEY, str(startup / "client.crt"))
    config = json.loads((startup / "fed_admin.json").read_text())
    config["admin"]["connection_security"] = "clear"
    (startup / "fed_admin.json").write_text(json.dumps(config, indent=2))
    agent.enable_nvflare(ADMIN_KEY, startup / "rootCA.pem", config["admin"]["server_identity"])
    keyref.write(startup / "client.key", keyref.KeyReference(socket=agent.socket, key=ADMIN_KEY))


@dataclass
class Federation:
    dir: Path
    kit: Kit
    agent: Agent
    python: str  # the venv with the plug-in
    procs: Processes

    def start(self, participant: Path, python: str | None = None) -> subprocess.Popen:
        return self.procs.start(kit_command(participant), cwd=participant,
                                env=nvflare_env(Path(python or self.python).parent), out=participant / "console.txt")

    def job(self) -> Path:
        return write_job(Path(tempfile.mkdtemp(prefix="job", dir=self.dir)) / "job")


@pytest.fixture(scope="module")
def server_key() -> Iterator[Federation]:
    base = Path(tempfile.mkdtemp(prefix="kwsk", dir="/tmp"))
    procs = Processes()
    agent = None
    try:
        kit = provision(base / "prov", free_port(), security="clear")
        configure_server(kit, base / "store")
        agent = prepare_agent(base / "agent")
        migrate_server(kit.server, agent)
        migrate_site(kit.site, agent)
        migrate_clear_admin(kit.admin, agent)
        start_agent(agent)
        fed = Federation(base, kit, agent, plugin_venv(base / "venv"), procs)
        server = fed.start(kit.server)
        wait_for_line(kit.server / "log.txt", "Server started", server, 60)
        yield fed
    finally:
        tear_down_federation(base, procs, [agent])


def test_the_server_key_in_the_token_registers_the_site_and_runs_a_job(server_key):
    fed = server_key
    grep = subprocess.run(["grep", "-r", "PRIVATE KEY", str(fed.kit.root)], capture_output=True, text=True)
    assert grep.returncode == 1, f"a kit holds a private key:\n{grep.stdout}"
    assert private_key_files(fed.kit.root) == []

    client = fed.start(fed.kit.site)
    wait_for_line(fed.kit.site / "log.txt", REGISTERED, client, REGISTER_LIMIT_S)
    result = submit_job(fed.python, fed.kit.admin, fed.job(), JOB_LIMIT_S)
    assert result["status"] == "FINISHED:COMPLETED", result

    server_log = (fed.kit.server / "log.txt").read_text(errors="replace")
    assert f"keyward: using key `{SERVER}`" in server_log
    assert f"keyward: the agent verified the registration of `{SITE}` and signed its token" in server_log
    assert f"keyward: the agent verified the registration of `{ADMIN}` and signed its token" in server_log
    records = [r for r in fed.agent.audit_records() if r.get("key") == SERVER]
    challenges = [r for r in records if r["op"] == "nvflare_server_challenge"]
    assert challenges and all(r["outcome"] == "ok" and r["profile"] == "nvflare" for r in challenges), challenges
    tokens = [r for r in records if r["op"] == "nvflare_server_register"]
    assert sorted(r["payload_len"] for r in tokens if r["outcome"] == "ok") == [len(SITE) + 36, len(ADMIN) + 36]
    # The server's own token and the job's go through plain `sign`, which refused nothing.
    signs = [r for r in records if r["op"] == "sign"]
    assert signs and all(r["outcome"] == "ok" for r in signs), signs
    assert any(r["payload_len"] == len("server_job") + 36 for r in signs), "no job cell token"
    grep = subprocess.run(["grep", "-r", "PRIVATE KEY", str(fed.kit.root)], capture_output=True, text=True)
    assert grep.returncode == 1, f"a kit holds a private key after the run:\n{grep.stdout}"
    Processes.stop(client)


def test_a_client_of_another_root_that_skips_its_server_check_gets_no_token(server_key):
    fed = server_key
    rogue = provision(fed.dir / "rogue", free_port(), security="clear")
    kit = fed.dir / "malicious" / SITE
    for folder in ("startup", "local"):
        shutil.copytree(rogue.site / folder, kit / folder)
    config = json.loads((kit / "startup" / "fed_client.json").read_text())
    config["servers"][0]["service"]["target"] = f"127.0.0.1:{fed.kit.port}"
    (kit / "startup" / "fed_client.json").write_text(json.dumps(config, indent=2))
    python = linked_venv(fed.dir / "malicious-venv")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "kwmalicious.py").write_text(textwrap.dedent(SKIP_SERVER_CHECK))
    Path(purelib, "zz-kwmalicious.pth").write_text("import kwmalicious\n")

    before = len(fed.agent.audit_records())
    client = fed.start(kit, python)
    deadline = time.monotonic() + REFUSED_LIMIT_S
    refused: list[dict] = []
    while time.monotonic() < deadline and not refused and client.poll() is None:
        time.sleep(0.5)
        refused = [r for r in fed.agent.audit_records()[before:]
                   if r.get("op") == "nvflare_server_register" and r["outcome"] == "client_untrusted"]
    Processes.stop(client)
    log = (kit / "log.txt").read_text(errors="replace") if (kit / "log.txt").exists() else ""
    assert refused, f"the agent was not asked or did not refuse; client log:\n{log[-4000:]}"
    assert REGISTERED not in log
    new = fed.agent.audit_records()[before:]
    assert not [r for r in new if r.get("op") == "nvflare_server_register" and r["outcome"] == "ok"], new
    server_log = (fed.kit.server / "log.txt").read_text(errors="replace")
    assert "keyward: the agent refused the registration of `site-1`: client_untrusted" in server_log \
        or "client certificate not trusted" in server_log, server_log[-3000:]


@pytest.fixture(scope="module")
def grpc_mtls() -> Iterator[Federation]:
    base = Path(tempfile.mkdtemp(prefix="kwgm", dir="/tmp"))
    procs = Processes()
    agent = None
    try:
        kit = provision(base / "prov", free_port(), security="mtls", scheme="grpc")
        configure_server(kit, base / "store")
        agent = prepare_agent(base / "agent")
        migrate_site(kit.site, agent)
        start_agent(agent)
        fed = Federation(base, kit, agent, plugin_venv(base / "venv"), procs)
        server = fed.start(kit.server, sys.executable)
        wait_for_line(kit.server / "log.txt", "Server started", server, 60)
        yield fed
    finally:
        tear_down_federation(base, procs, [agent])


def test_a_grpc_client_in_mtls_signs_its_handshakes_in_the_agent_without_a_tunnel(grpc_mtls):
    fed = grpc_mtls
    site = fed.kit.site
    config = json.loads((site / "startup" / "fed_client.json").read_text())
    assert config["client"].get("connection_security", "mtls") == "mtls"
    assert config["servers"][0]["service"]["scheme"] == "grpc"
    assert private_key_files(site) == []

    client = fed.start(site)
    wait_for_line(site / "log.txt", REGISTERED, client, REGISTER_LIMIT_S)
    # An mtls admin loads its key into Python's TLS: it keeps its file here.
    result = submit_job(sys.executable, fed.kit.admin, fed.job(), JOB_LIMIT_S)
    assert result["status"] == "FINISHED:COMPLETED", result

    log = (site / "log.txt").read_text(errors="replace")
    assert f"keyward: gRPC mutual TLS with key `{SITE}` held by the agent (custom signer)" in log
    signs = [r for r in fed.agent.audit_records() if r.get("op") == "sign" and r.get("key") == SITE]
    assert signs and all(r["profile"].startswith("tls-rsa-") and r["outcome"] == "ok" for r in signs), signs
    assert len(signs) >= 2, "the parent and the job process each sign a handshake"
    assert private_key_files(site) == [], "nothing wrote a key into the site kit"
    print(f"\ngRPC handshakes signed by the agent: {len(signs)} ({sorted({r['profile'] for r in signs})})")
    Processes.stop(client)
