"""A live NVFlare 2.9.0 federation whose server stays in its default `mtls` mode, with the site
key in SoftHSM behind keyward: the site's client talks `connection_security: clear` to a local
`keyward tunnel`, which opens the mutual TLS to the server with the token's key (spec §6).

`nvflare provision` makes a project (server `server1` in `mtls`, client `site-1`, an admin); the
site kit is migrated as in test_live_federation.py (`keyward key import --destroy-source`, `cert
install`, `[keys.site-1.nvflare]`, `client.key` a key reference, `keyward-nvflare install` in the
client's venv); its `fed_client.json` then targets the tunnel (`servers[0].service.target` =
`127.0.0.1:<tunnel port>`, `client.connection_security` = `clear`; scheme and identity
unchanged). Both schemes run: `http` (aiohttp WebSocket) and `grpc`, for which the tunnel offers
ALPN `h2` (`--alpn h2`; a gRPC server drops a connection without it, spec §6). The tunnel trusts the kit's `rootCA.pem`, checks the host name of the kit's original
target (`localhost`: the SAN provision writes from `default_host`), and presents the site
certificate. The client registers (application-level signature through the agent's
NVFlare flow, TLS client signature through the tunnel: the server enforces that the TLS peer CN
is `site-1`), and a job submitted by the admin (its key left as a file: an mtls admin needs
one) runs to completion — its job process goes through the tunnel too. Negative control: the
same `clear` client pointed straight at the mtls server never registers.

Run alone with `pytest -m federation python/tests`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from keyward.nvflare import PTH_NAME
from federation import (REGISTERED, SITE, Kit, Processes, configure_server, free_port, kit_command,
                        linked_venv, nvflare_env, provision, submit_job, wait_for_line, write_job)
from kwharness import Agent, prepare_agent, start_agent, tear_down_federation
from test_live_federation import JOB_LIMIT_S, migrate_site

pytestmark = pytest.mark.federation

#: A clear client pointed straight at the mtls server must still not be registered after this.
NO_REGISTRATION_S = 15.0
#: Registration through the tunnel (spec §7: ~2-4 s); fail fast while debugging.
REGISTER_LIMIT_S = 30.0


def provision_mtls(base: Path, port: int, scheme: str) -> Kit:
    kit = provision(base, port, security="mtls", scheme=scheme)
    config = json.loads((kit.server / "startup" / "fed_server.json").read_text())
    assert config["servers"][0]["service"]["scheme"] == scheme, config
    return kit


def point_at(site: Path, target: str) -> None:
    """The site's fed_client.json: `clear` to ``target`` (spec §6)."""
    path = site / "startup" / "fed_client.json"
    config = json.loads(path.read_text())
    config["servers"][0]["service"]["target"] = target
    config["servers"][0].pop("connection_security", None)
    config["client"]["connection_security"] = "clear"
    path.write_text(json.dumps(config, indent=2))


class Federation:
    def __init__(self, base: Path, kit: Kit, agent: Agent, client_python: str, procs: Processes, tunnel_log: Path,
                 scheme: str):
        self.dir, self.kit, self.agent, self.client_python, self.procs = base, kit, agent, client_python, procs
        self.tunnel_log, self.scheme = tunnel_log, scheme

    def start_client(self, participant: Path) -> subprocess.Popen:
        return self.procs.start(kit_command(participant), cwd=participant,
                                env=nvflare_env(Path(self.client_python).parent), out=participant / "console.txt")

    def submit_job(self) -> dict:
        # The admin kit keeps its key file (mtls admin), so the plain interpreter submits.
        return submit_job(sys.executable, self.kit.admin, write_job(Path(tempfile.mkdtemp(prefix="job", dir=self.dir))
                                                                    / "job"), JOB_LIMIT_S)


@pytest.fixture(scope="module", params=["http", "grpc"])
def federation(request) -> Iterator[Federation]:
    scheme = request.param
    base = Path(tempfile.mkdtemp(prefix="kwmt", dir="/tmp"))
    procs = Processes()
    agent = None
    try:
        kit = provision_mtls(base / "prov", free_port(), scheme)
        configure_server(kit, base / "store")
        agent = prepare_agent(base / "agent")
        migrate_site(kit.site, agent)
        start_agent(agent)

        client_python = linked_venv(base / "venv")
        installed = subprocess.run([client_python, "-m", "keyward.nvflare", "install"], capture_output=True, text=True,
                                   timeout=60)
        assert installed.returncode == 0 and PTH_NAME in installed.stdout, installed.stderr

        startup = kit.site / "startup"
        # The name to check is the host of the kit's own target: provision puts `default_host`
        # (here `localhost`) into the server certificate's SAN, not the identity `server1`.
        target = json.loads((startup / "fed_client.json").read_text())["servers"][0]["service"]["target"]
        server_name = target.rsplit(":", 1)[0]
        assert server_name == "localhost", target
        tunnel_port = free_port()
        tunnel_log = base / "tunnel.log"
        tunnel = procs.start([str(agent.bin), "tunnel", "--key", SITE, "--listen", f"127.0.0.1:{tunnel_port}",
                              "--upstream", f"127.0.0.1:{kit.port}", "--server-name", server_name,
                              "--ca", str(startup / "rootCA.pem"), "--socket", agent.socket,
                              # gRPC servers drop a connection without ALPN h2 (spec §6).
                              *(["--alpn", "h2"] if scheme == "grpc" else [])],
                             cwd=base, env=agent.env, out=tunnel_log)
        wait_for_line(tunnel_log, "keyward tunnel listening", tunnel, 20)
        point_at(kit.site, f"127.0.0.1:{tunnel_port}")

        server = procs.start(kit_command(kit.server), cwd=kit.server, env=nvflare_env(Path(sys.executable).parent),
                             out=kit.server / "console.txt")
        wait_for_line(kit.server / "log.txt", "Server started", server, 60)
        yield Federation(base, kit, agent, client_python, procs, tunnel_log, scheme)
    finally:
        tear_down_federation(base, procs, [agent])


def test_a_clear_client_registers_and_runs_a_job_through_the_tunnel_to_an_mtls_server(federation):
    fed = federation
    site = fed.kit.site
    client = fed.start_client(site)
    try:
        line = wait_for_line(site / "log.txt", REGISTERED, client, REGISTER_LIMIT_S)
    except BaseException:
        print("tunnel log:\n" + fed.tunnel_log.read_text(errors="replace")[-4000:])
        raise
    assert REGISTERED in line
    log = (site / "log.txt").read_text()
    assert "keyward: the agent verified server `server1` and signed the registration of `site-1`" in log

    result = fed.submit_job()
    assert result["status"] == "FINISHED:COMPLETED", result
    job_log = site / result["job_id"] / "log.txt"
    assert job_log.exists(), f"no job log for the client at {job_log}"

    tunnel = fed.tunnel_log.read_text(errors="replace")
    assert "connection refused" not in tunnel, tunnel[-4000:]
    done = [ln for ln in tunnel.splitlines() if "connection done" in ln]
    alpn = "alpn=h2" if fed.scheme == "grpc" else "alpn=-"
    assert all(alpn in ln for ln in done), done
    # The TLS client signatures: one `tls-*` sign per tunnel connection, by the site key.
    signs = [r for r in fed.agent.audit_records() if r.get("op") == "sign" and r.get("key") == SITE]
    assert signs and all(r["profile"].startswith("tls-rsa-") and r["outcome"] == "ok" for r in signs), signs
    # The parent and the job process each hold a connection: at least two handshakes.
    assert len(signs) >= 2, signs
    regs = [r for r in fed.agent.audit_records() if r.get("op") == "nvflare_register"]
    assert regs and regs[-1]["outcome"] == "ok"
    print(f"\ntunnel handshakes signed: {len(signs)}; tunnel log tail:\n" + "\n".join(tunnel.splitlines()[-5:]))
    Processes.stop(client)


def test_the_same_clear_client_pointed_straight_at_the_mtls_server_never_registers(federation):
    fed = federation
    direct = fed.dir / "direct" / SITE
    for folder in ("startup", "local"):
        shutil.copytree(fed.kit.site / folder, direct / folder)
    point_at(direct, f"127.0.0.1:{fed.kit.port}")
    client = fed.start_client(direct)
    try:
        time.sleep(NO_REGISTRATION_S)
        log = (direct / "log.txt").read_text(errors="replace") if (direct / "log.txt").exists() else ""
        assert REGISTERED not in log, log[-4000:]
    finally:
        Processes.stop(client)
