"""One NVFlare 2.9.0 federation with no private key file anywhere, in `mtls` end to end (issue 13).

`nvflare provision` makes a project in `mtls` with scheme `grpc`: server `server1`, clients
`site-1` and `site-2`, an admin. Each key goes into a token behind its own agent, and each kit
keeps a key reference where NVFlare expects its key:

- the server's key in SoftHSM (agent S). NVFlare's server listens in plain text on a loopback
  port; `keyward server-tunnel` takes the kit's port with the server certificate and the token
  key, requires client certificates from the kit's root, and forwards to it. The server's
  challenge replies and the tokens it issues come from the agent (`nvflare_server_challenge`,
  `nvflare_server_register`, after the agent verified each registration);
- `site-1`'s key in swtpm (agent T): its client talks plain text to a local `keyward tunnel`,
  which opens the mutual TLS with the TPM key;
- `site-2`'s and the admin's keys in SoftHSM (agent C): their gRPC connections do the mutual TLS
  themselves, the handshake signed by the agent through gRPC's custom signer.

Both sites register, the admin's job runs on both to completion, `grep -r "PRIVATE KEY"` over
every kit finds nothing (before and after), and every TLS handshake and registration is in an
agent's audit log. A site of another provision (another root, its key as a file) gets no TLS
connection through the server's tunnel, so no token.

Run alone with `pytest -m federation python/tests/e2e/test_keyless_federation.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from federation import (ADMIN, SERVER, Kit, Processes, configure_server, free_port, kit_command, nvflare_env,
                        provision, submit_job, wait_for_line, write_job)
from kwharness import Agent, prepare_agent, start_agent, tear_down_federation
from test_distributed_provisioning import Swtpm, prepare_tpm_agent
from test_live_federation import ADMIN_KEY, JOB_LIMIT_S, REGISTER_LIMIT_S
from test_mtls_tunnel_federation import point_at
from test_server_key_federation import plugin_venv

pytestmark = pytest.mark.federation

SITE1, SITE2 = "site-1", "site-2"
#: How long the rogue site gets to (not) register.
ROGUE_LIMIT_S = 20.0


def registered(site: str) -> str:
    return f"Successfully registered client:{site}"


def migrate(kit: Path, key: str, agent: Agent) -> None:
    """`keyward nvflare migrate`: the kit's key into ``agent``'s token, a key reference in its
    place, the kit's root (and, for a client, the server it expects) pinned in the config."""
    agent.keyward("nvflare", "migrate", str(kit / "startup"), "--key", key)


def serve_in_clear_on(server_kit: Path, port: int) -> None:
    """NVFlare's server listens in plain text on ``port`` (loopback); the tunnel does its TLS."""
    path = server_kit / "startup" / "fed_server.json"
    config = json.loads(path.read_text())
    config["servers"][0]["service"]["target"] = f"127.0.0.1:{port}"
    config["servers"][0]["connection_security"] = "clear"
    path.write_text(json.dumps(config, indent=2))


def kit_grep(kit: Kit) -> str:
    grep = subprocess.run(["grep", "-r", "PRIVATE KEY", str(kit.root)], capture_output=True, text=True)
    assert grep.returncode in (0, 1), grep.stderr
    return grep.stdout


@dataclass
class Federation:
    dir: Path
    kit: Kit
    agents: dict[str, Agent]
    python: str
    procs: Processes
    logs: dict[str, Path]

    def start(self, participant: Path) -> subprocess.Popen:
        return self.procs.start(kit_command(participant), cwd=participant, env=nvflare_env(Path(self.python).parent),
                                out=participant / "console.txt")

    def tls_signs(self, agent: str, key: str) -> list[dict]:
        return [r for r in self.agents[agent].audit_records()
                if r.get("op") == "sign" and r.get("key") == key and str(r.get("profile", "")).startswith("tls-")]


@pytest.fixture(scope="module")
def keyless() -> Iterator[Federation]:
    base = Path(tempfile.mkdtemp(prefix="kwkl", dir="/tmp"))
    procs = Processes()
    agents: dict[str, Agent] = {}
    tpm = None
    try:
        kit = provision(base / "prov", free_port(), security="mtls", scheme="grpc", sites=(SITE1, SITE2))
        configure_server(kit, base / "store")
        assert kit_grep(kit), "provision wrote key files (the test would prove nothing)"

        agents["server"] = prepare_agent(base / "agent-server")
        migrate(kit.server, SERVER, agents["server"])
        tpm = Swtpm(base / "tpm")
        agents["tpm"] = prepare_tpm_agent(base / "agent-tpm", tpm)
        migrate(kit.root / SITE1, SITE1, agents["tpm"])
        agents["hsm"] = prepare_agent(base / "agent-hsm")
        migrate(kit.root / SITE2, SITE2, agents["hsm"])
        migrate(kit.admin, ADMIN_KEY, agents["hsm"])  # stays `mtls`: gRPC's custom signer
        for agent in agents.values():
            start_agent(agent)

        logs = {"server-tunnel": base / "server-tunnel.log", "tunnel": base / "tunnel.log"}
        internal = free_port()
        serve_in_clear_on(kit.server, internal)
        server_agent = agents["server"]
        front = procs.start([str(server_agent.bin), "server-tunnel", "--key", SERVER, "--listen",
                             f"127.0.0.1:{kit.port}", "--upstream", f"127.0.0.1:{internal}", "--ca",
                             str(kit.server / "startup" / "rootCA.pem"), "--socket", server_agent.socket],
                            cwd=base, env=server_agent.env, out=logs["server-tunnel"])
        wait_for_line(logs["server-tunnel"], "keyward server tunnel listening", front, 20)

        startup1 = kit.root / SITE1 / "startup"
        target = json.loads((startup1 / "fed_client.json").read_text())["servers"][0]["service"]["target"]
        tunnel_port, tpm_agent = free_port(), agents["tpm"]
        tunnel = procs.start([str(tpm_agent.bin), "tunnel", "--key", SITE1, "--listen", f"127.0.0.1:{tunnel_port}",
                              "--upstream", f"127.0.0.1:{kit.port}", "--server-name", target.rsplit(":", 1)[0],
                              "--ca", str(startup1 / "rootCA.pem"), "--alpn", "h2", "--socket", tpm_agent.socket],
                             cwd=base, env=tpm_agent.env, out=logs["tunnel"])
        wait_for_line(logs["tunnel"], "keyward tunnel listening", tunnel, 20)
        point_at(kit.root / SITE1, f"127.0.0.1:{tunnel_port}")

        fed = Federation(base, kit, agents, plugin_venv(base / "venv"), procs, logs)
        server = fed.start(kit.server)
        wait_for_line(kit.server / "log.txt", "Server started", server, 60)
        yield fed
    finally:
        tear_down_federation(base, procs, agents.values(), tpm)


def test_a_whole_mtls_federation_runs_a_job_with_no_private_key_file_anywhere(keyless):
    fed = keyless
    assert kit_grep(fed.kit) == "", "a kit holds a private key"

    site1, site2 = fed.start(fed.kit.root / SITE1), fed.start(fed.kit.root / SITE2)
    try:
        wait_for_line(fed.kit.root / SITE1 / "log.txt", registered(SITE1), site1, REGISTER_LIMIT_S)
        wait_for_line(fed.kit.root / SITE2 / "log.txt", registered(SITE2), site2, REGISTER_LIMIT_S)
    except BaseException:
        for name, log in fed.logs.items():
            print(f"{name} log:\n" + log.read_text(errors="replace")[-3000:])
        raise
    result = submit_job(fed.python, fed.kit.admin, write_job(Path(tempfile.mkdtemp(dir=fed.dir)) / "job"), JOB_LIMIT_S)
    assert result["status"] == "FINISHED:COMPLETED", result
    assert kit_grep(fed.kit) == "", "a kit holds a private key after the run"

    server_log = (fed.kit.server / "log.txt").read_text(errors="replace")
    for name in (SITE1, SITE2, ADMIN):
        assert f"keyward: the agent verified the registration of `{name}` and signed its token" in server_log, name
    front = fed.logs["server-tunnel"].read_text(errors="replace")
    for name in (SITE1, SITE2, ADMIN):
        assert f"client_cn={name}" in front, f"no TLS connection of `{name}` through the server's tunnel:\n{front}"
    # Every TLS handshake on both ends was signed in a token: the server's, site-1's (TPM, through
    # its tunnel), site-2's and the admin's (gRPC's custom signer).
    assert fed.tls_signs("server", SERVER), "the server tunnel's handshakes"
    assert fed.tls_signs("tpm", SITE1), "site-1's tunnel"
    assert fed.tls_signs("hsm", SITE2), "site-2's custom signer"
    assert fed.tls_signs("hsm", ADMIN_KEY), "the admin's custom signer"
    failed = [r for a in fed.agents.values() for r in a.audit_records() if r.get("outcome") not in ("ok", None)]
    print(f"\naudit: {sum(len(a.audit_records()) for a in fed.agents.values())} records, refusals: {failed}")
    Processes.stop(site1)
    Processes.stop(site2)


def test_a_site_of_another_root_gets_no_tls_connection_and_no_token(keyless):
    fed = keyless
    rogue = provision(fed.dir / "rogue", free_port(), security="mtls", scheme="grpc", sites=(SITE2,))
    site = rogue.root / SITE2
    config = json.loads((site / "startup" / "fed_client.json").read_text())
    config["servers"][0]["service"]["target"] = f"localhost:{fed.kit.port}"
    (site / "startup" / "fed_client.json").write_text(json.dumps(config, indent=2))
    seen = len(fed.logs["server-tunnel"].read_text(errors="replace"))
    tokens_before = len([r for r in fed.agents["server"].audit_records() if r.get("op") == "nvflare_server_register"])
    # Plain NVFlare with its key file (no plug-in): the venv's own interpreter.
    client = fed.procs.start(kit_command(site), cwd=site, env=nvflare_env(Path(sys.executable).parent),
                             out=site / "console.txt")
    try:
        line = wait_for_line(fed.logs["server-tunnel"], "connection refused", client, ROGUE_LIMIT_S, offset=seen)
    except BaseException:
        for name in ("console.txt", "log.txt"):
            if (site / name).exists():
                print(f"rogue {name}:\n" + (site / name).read_text(errors="replace")[-3000:])
        raise
    finally:
        Processes.stop(client)
    # Each end refuses the other's root (the rogue its server check first); the tunnel's own
    # refusal of a client certificate from another root is tests/tests/tls_server_tunnel.rs.
    assert "TLS handshake failed" in line, line
    log = (site / "log.txt").read_text(errors="replace") if (site / "log.txt").exists() else ""
    assert registered(SITE2) not in log
    tokens = [r for r in fed.agents["server"].audit_records() if r.get("op") == "nvflare_server_register"]
    assert len(tokens) == tokens_before, "the rogue site reached the server's registration"
