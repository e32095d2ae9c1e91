"""NVFlare 2.9.0's distributed provisioning with the sites' keys born in the token.

The project admin runs the unmodified NVFlare tools: `nvflare cert init`, and `nvflare cert
approve` on each request zip. The server makes its own request with `nvflare cert request` (a
server is not a site: its key file is NVFlare's business). Two sites make theirs with `keyward
nvflare request`: `site-1` with its key generated in SoftHSM, `site-2` with its key generated
in swtpm, each behind its own agent; the admin `admin@nvidia.com` with its key in site-1's
token. Each then runs the unmodified `nvflare package` in a venv with the keyward plug-in
(agent up: the plug-in answers NVFlare's key-against-certificate check), and `keyward nvflare
enroll` on the kit. Both sites register through their agents and a job that needs both runs to
completion, submitted by the admin whose key is in the token. After every step the request
folders and kits are scanned: no private key file ever exists on a site.

swtpm serves one TPM client at a time, so the TPM site's agent is stopped while the CLI uses
the TPM (`request`, `enroll`); with a kernel resource manager (`/dev/tpmrm0`) it need not be.
Run alone with `pytest -m federation python/tests/e2e/test_distributed_provisioning.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from keyward import keyref
from keyward.nvflare import PTH_NAME

from kwharness import Agent, keyward_bin, make_linked_venv, prepare_agent, start_agent, stop_agent
from federation import (
    JOB_CLIENT,
    JOB_SERVER,
    Processes,
    free_port,
    kit_command,
    nvflare_env,
    private_key_files,
    submit_job,
    wait_for_line,
)

pytestmark = pytest.mark.federation

PROJECT = "kwdist"
SERVER = "localhost"  # `nvflare cert approve` wants the server's name to be the profile's server.host
ADMIN = "admin@nvidia.com"
ADMIN_KEY = "admin"
NVFLARE_BIN = Path(sys.executable).with_name("nvflare")
REGISTER_LIMIT_S = 90.0
JOB_LIMIT_S = 180.0

def participant_yaml(name: str, kind: str, **extra: str) -> str:
    lines = [f"name: {PROJECT}", "participants:", f"  - name: {name}", f"    type: {kind}", "    org: nvidia"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or nvflare_env())
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def assert_no_private_key(*folders: Path) -> None:
    """No file anywhere under ``folders`` holds a PEM private key (nor a `.key` that parses as one)."""
    from cryptography.hazmat.primitives import serialization

    for folder in folders:
        assert private_key_files(folder) == [], f"private key files in {folder}"
        for path in folder.rglob("*.key"):
            with pytest.raises(ValueError):
                serialization.load_pem_private_key(path.read_bytes(), password=None)


class Swtpm:
    """swtpm on a free loopback port pair (P commands, P+1 control), killed by its own PID."""

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True)
        self.state = state
        for _ in range(10):
            self.port = free_port()
            if self._port_free(self.port + 1) and self._start():
                return
        pytest.fail("swtpm did not start on 10 port pairs")

    @staticmethod
    def _port_free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    def _start(self) -> bool:
        if shutil.which("swtpm") is None:
            pytest.fail("swtpm not found: run scripts/install-packages.sh", pytrace=False)
        with open(self.state / "swtpm.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}", "--server",
                 f"type=tcp,port={self.port},bindaddr=127.0.0.1", "--ctrl",
                 f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:  # the control port: swtpm serves one command client
                socket.create_connection(("127.0.0.1", self.port + 1), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def prepare_tpm_agent(base: Path, tpm: Swtpm) -> Agent:
    """A keyward.toml for swtpm (`keyward init --backend tpm`); the agent is not started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    env.update(KEYWARD_CONFIG=str(base / "keyward.toml"), KEYWARD_LOG="info")
    socket_path = str(base / "run" / "agent.sock")
    agent = Agent(bin=keyward_bin(), dir=base, env=env, socket=socket_path, log=base / "agent.log")
    base.mkdir(parents=True, exist_ok=True)
    agent.keyward("init", "--backend", "tpm", "--tcti", tpm.tcti, "--key-dir", str(base / "tpmkeys"),
                  "--socket", socket_path, "--state-dir", str(base / "state"), "--allow-root")
    return agent


@dataclass
class Site:
    """A site (or the admin) whose key is in the token behind ``agent``."""

    name: str
    key: str
    agent: Agent
    dir: Path  # the site's own folder: request folder, signed zip, workspace
    kit: Path | None = None

    @property
    def request_dir(self) -> Path:
        return self.dir / "request"


@dataclass
class Project:
    dir: Path
    profile: Path
    ca: Path
    fingerprint: str
    fed_port: int
    admin_port: int
    python: str  # the NVFlare venv with the keyward plug-in
    procs: Processes = field(default_factory=Processes)
    sites: dict[str, Site] = field(default_factory=dict)
    server: Path | None = None
    tpm: Swtpm | None = None

    def approve(self, request_zip: Path, out: Path) -> Path:
        """The project admin's step, with NVFlare's own tool."""
        run([str(NVFLARE_BIN), "cert", "approve", str(request_zip), "-c", str(self.ca), "--profile",
             str(self.profile), "--out", str(out)], cwd=self.dir)
        return out

    def package(self, signed_zip: Path, request_dir: Path, workspace: Path, name: str, *, plugin: bool) -> Path:
        """The site's step, with NVFlare's own tool: in the plug-in venv when the key is in the token."""
        python = self.python if plugin else sys.executable
        run([python, "-m", "nvflare.cli", "package", str(signed_zip), "--request-dir", str(request_dir), "-w",
             str(workspace), "--fingerprint", self.fingerprint], cwd=workspace.parent)
        return workspace / PROJECT / "prod_00" / name

    def make_request(self, site: Site, definition: str, *, tpm_agent: bool) -> Path:
        """`keyward nvflare request` (the key is generated in the token), then approval."""
        (site.dir / f"{site.name}.yaml").write_text(definition)
        if tpm_agent:
            stop_agent(site.agent)
        site.agent.keyward("nvflare", "request", "-p", str(site.dir / f"{site.name}.yaml"), "--key", site.key,
                           "--out", str(site.request_dir))
        assert_no_private_key(site.dir)
        assert keyref.load(site.request_dir / f"{site.name}.key").key == site.key
        signed = self.approve(site.request_dir / f"{site.name}.request.zip", site.dir / f"{site.name}.signed.zip")
        assert_no_private_key(site.dir)
        return signed

    def package_and_enroll(self, site: Site, signed: Path, *, tpm_agent: bool) -> None:
        if site.agent.proc is None or site.agent.proc.poll() is not None:
            start_agent(site.agent)
        site.kit = self.package(signed, site.request_dir, site.dir / "ws", site.name, plugin=True)
        assert_no_private_key(site.dir)
        assert keyref.load(site.kit / "startup" / "client.key").key == site.key
        if tpm_agent:
            stop_agent(site.agent)
        site.agent.keyward("nvflare", "enroll", str(site.kit / "startup"), "--key", site.key)
        stop_agent(site.agent)
        start_agent(site.agent)  # loads [keys.<key>.nvflare]
        assert_no_private_key(site.dir)

    def start_client(self, site: Site) -> subprocess.Popen:
        assert site.kit is not None
        return self.procs.start(kit_command(site.kit), cwd=site.kit, env=nvflare_env(Path(self.python).parent),
                                out=site.kit / "console.txt")

    def submit_job(self, admin: Site, min_clients: int) -> dict:
        assert admin.kit is not None
        job = Path(tempfile.mkdtemp(prefix="job", dir=self.dir))
        (job / "app" / "config").mkdir(parents=True)
        (job / "meta.json").write_text(json.dumps({"name": "kw-dist", "resource_spec": {},
                                                   "deploy_map": {"app": ["@ALL"]}, "min_clients": min_clients}))
        server_config = json.loads(json.dumps(JOB_SERVER))
        server_config["workflows"][0]["args"]["min_clients"] = min_clients
        (job / "app" / "config" / "config_fed_server.json").write_text(json.dumps(server_config))
        (job / "app" / "config" / "config_fed_client.json").write_text(json.dumps(JOB_CLIENT))
        # The admin's key is in the token: the FLARE API runs in the venv with the plug-in.
        return submit_job(self.python, admin.kit, job, JOB_LIMIT_S)


def configure_server(server: Path, fed_port: int, store: Path) -> None:
    """Loopback only and a job store of its own (spec §7)."""
    startup = server / "startup"
    config = json.loads((startup / "fed_server.json").read_text())
    config["servers"][0]["service"]["target"] = f"127.0.0.1:{fed_port}"
    (startup / "fed_server.json").write_text(json.dumps(config, indent=2))
    local = server / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(store / "snapshot-storage")
    for component in resources["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(store / "jobs-storage")
    (local / "resources.json").write_text(json.dumps(resources, indent=2))


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    base = Path(tempfile.mkdtemp(prefix="kwdp", dir="/tmp"))
    agents: list[Agent] = []
    proj: Project | None = None
    try:
        fed_port, admin_port = free_port(), free_port()
        profile = base / "admin" / "project_profile.yaml"
        profile.parent.mkdir(parents=True)
        profile.write_text(f"name: {PROJECT}\nscheme: grpc\nconnection_security: tls\nserver:\n  host: {SERVER}\n"
                           f"  fed_learn_port: {fed_port}\n  admin_port: {admin_port}\n")
        ca = base / "admin" / "ca"
        run([str(NVFLARE_BIN), "cert", "init", "--profile", str(profile), "-o", str(ca)], cwd=base)
        fingerprint = json.loads((ca / "ca.json").read_text())["rootCA_fingerprint"]

        venv = base / "venv"
        python = make_linked_venv(venv)
        installed = subprocess.run([python, "-m", "keyward.nvflare", "install"], capture_output=True, text=True,
                                   timeout=60)
        assert installed.returncode == 0 and PTH_NAME in installed.stdout, installed.stderr
        proj = Project(base, profile, ca, fingerprint, fed_port, admin_port, python)

        # The server: NVFlare's own request (its key file is not a site's).
        server_dir = base / "server"
        server_dir.mkdir()
        (server_dir / "server.yaml").write_text(participant_yaml(SERVER, "server"))
        run([str(NVFLARE_BIN), "cert", "request", "-p", "server.yaml", "--out", "request"], cwd=server_dir)
        signed = proj.approve(server_dir / "request" / f"{SERVER}.request.zip", server_dir / "server.signed.zip")
        proj.server = proj.package(signed, server_dir / "request", server_dir / "ws", SERVER, plugin=False)
        configure_server(proj.server, fed_port, base / "store")

        # site-1 and the admin: keys generated in SoftHSM.
        hsm_agent = prepare_agent(base / "site-1" / "agent")
        agents.append(hsm_agent)
        site1 = Site("site-1", "site-1", hsm_agent, base / "site-1")
        admin = Site(ADMIN, ADMIN_KEY, hsm_agent, base / "admin-user")
        admin.dir.mkdir()
        signed1 = proj.make_request(site1, participant_yaml("site-1", "client"), tpm_agent=False)
        signed_admin = proj.make_request(admin, participant_yaml(ADMIN, "admin", role="lead"), tpm_agent=False)
        proj.package_and_enroll(site1, signed1, tpm_agent=False)
        proj.package_and_enroll(admin, signed_admin, tpm_agent=False)

        # site-2: key generated in swtpm.
        proj.tpm = Swtpm(base / "tpm")
        tpm_agent = prepare_tpm_agent(base / "site-2" / "agent", proj.tpm)
        agents.append(tpm_agent)
        site2 = Site("site-2", "site-2", tpm_agent, base / "site-2")
        signed2 = proj.make_request(site2, participant_yaml("site-2", "client"), tpm_agent=True)
        proj.package_and_enroll(site2, signed2, tpm_agent=True)
        proj.sites = {"site-1": site1, "site-2": site2, ADMIN: admin}

        server = proj.procs.start(kit_command(proj.server), cwd=proj.server,
                                  env=nvflare_env(Path(sys.executable).parent), out=proj.server / "console.txt")
        wait_for_line(proj.server / "log.txt", "Server started", server, 60)
        yield proj
    finally:
        if proj is not None:
            proj.procs.stop_all()
            Processes.stop_job_processes(base)
            if proj.tpm is not None:
                for agent in agents:
                    stop_agent(agent)
                proj.tpm.stop()
        for agent in agents:
            stop_agent(agent)
        shutil.rmtree(base, ignore_errors=True)


def test_sites_with_keys_born_in_softhsm_and_swtpm_register_and_run_a_job(project):
    proj = project
    clients = {name: proj.start_client(proj.sites[name]) for name in ("site-1", "site-2")}
    for name, client in clients.items():
        kit = proj.sites[name].kit
        assert kit is not None
        wait_for_line(kit / "log.txt", f"Successfully registered client:{name}", client, REGISTER_LIMIT_S)
        log = (kit / "log.txt").read_text(errors="replace")
        assert f"keyward: the agent verified server `{SERVER}` and signed the registration of `{name}`" in log
    result = proj.submit_job(proj.sites[ADMIN], min_clients=2)
    assert result["status"] == "FINISHED:COMPLETED", result
    for name in ("site-1", "site-2"):
        site = proj.sites[name]
        regs = [r for r in site.agent.audit_records() if r.get("op") == "nvflare_register" and r["key"] == name]
        assert regs and regs[-1]["outcome"] == "ok", regs
        assert_no_private_key(site.dir)
    assert_no_private_key(proj.sites[ADMIN].dir)
    for client in clients.values():
        Processes.stop(client)


def test_the_request_has_the_shape_nvflare_cert_request_makes(project, tmp_path):
    """The same definition through the real `nvflare cert request`: the same files and modes, the
    same zip members in the same order, request.json with the same fields in the same order and
    the same values (but ids, times and hashes), site.yaml byte for byte, and a CSR of the same
    shape (subject attributes and their string types, no attributes, the signature algorithm)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    import zipfile

    ours = project.sites["site-1"]
    definition = ours.dir / "site-1.yaml"
    run([str(NVFLARE_BIN), "cert", "request", "-p", str(definition), "--out", str(tmp_path / "nv")], cwd=tmp_path)
    theirs = tmp_path / "nv"

    def listing(folder: Path) -> dict[str, int]:
        return {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}

    # (`nvflare package` has since added signed.json, site-1.crt and rootCA.pem to ours.)
    made = listing(theirs)
    assert set(made) == {"site-1.key", "site-1.csr", "request.json", "site.yaml", "site-1.request.zip"}
    assert {k: v for k, v in listing(ours.request_dir).items() if k in made} == made
    zips = [zipfile.ZipFile(d / "site-1.request.zip") for d in (ours.request_dir, theirs)]
    assert [z.namelist() for z in zips][0] == zips[1].namelist() == ["request.json", "site.yaml", "site-1.csr"]
    assert zips[0].read("site.yaml") == zips[1].read("site.yaml")
    assert (ours.request_dir / "site.yaml").read_bytes() == (theirs / "site.yaml").read_bytes()
    metas = [json.loads((d / "request.json").read_text()) for d in (ours.request_dir, theirs)]
    assert list(metas[0]) == list(metas[1])
    varying = {"request_id", "created_at", "csr_sha256", "public_key_sha256"}
    assert {k: v for k, v in metas[0].items() if k not in varying} == \
        {k: v for k, v in metas[1].items() if k not in varying}
    assert (ours.request_dir / "request.json").read_text().count("\n") == (theirs / "request.json").read_text().count("\n")

    csrs = [x509.load_pem_x509_csr((d / "site-1.csr").read_bytes()) for d in (ours.request_dir, theirs)]
    shape = [[(a.oid, a._type, a.value) for a in c.subject] for c in csrs]
    assert shape[0] == shape[1], shape
    assert [c.signature_algorithm_oid for c in csrs][0] == csrs[1].signature_algorithm_oid
    assert [len(c.extensions) for c in csrs] == [0, 0] and [len(c.attributes) for c in csrs] == [0, 0]
    assert all(c.is_signature_valid for c in csrs)
    pub = csrs[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert metas[0]["public_key_sha256"] == __import__("hashlib").sha256(pub).hexdigest()
    assert private_key_files(theirs) == [theirs / "site-1.key"], "the real tool writes the key as a file"


def _cert_not_after(agent: Agent, key: str) -> int:
    status = json.loads(agent.keyward("status", "--json").stdout)
    [entry] = [k for k in status["keys"] if k["key"] == key]
    return int(entry["certificate_not_after"])


def test_a_renewal_with_the_agent_running_is_used_without_restart_and_the_site_registers_with_it(project):
    """The same token key asks again (`keyward nvflare request --renew`) while its agent runs and
    serves; the admin approves a 30-day certificate; `nvflare package` makes a kit with it and
    `keyward nvflare enroll` installs it (the old one kept as `.previous.pem`). The running agent
    reports the new expiry at once (it reads the certificate at each use), and the client started
    from the new kit registers with the new certificate, without the agent restarting."""
    proj = project
    site = proj.sites["site-1"]
    agent_pid = site.agent.proc.pid if site.agent.proc else None
    before = _cert_not_after(site.agent, site.key)
    renewal = Site(site.name, site.key, site.agent, site.dir / "renewal")
    renewal.dir.mkdir()
    site.agent.keyward("nvflare", "request", "-p", str(site.dir / "site-1.yaml"), "--renew", "--out",
                       str(renewal.request_dir))
    assert_no_private_key(site.dir)
    signed = renewal.dir / "site-1.signed.zip"
    run([str(NVFLARE_BIN), "cert", "approve", str(renewal.request_dir / "site-1.request.zip"), "-c", str(proj.ca),
         "--profile", str(proj.profile), "--out", str(signed), "--valid-days", "30"], cwd=proj.dir)
    renewal.kit = proj.package(signed, renewal.request_dir, renewal.dir / "ws", site.name, plugin=True)
    assert_no_private_key(site.dir)
    site.agent.keyward("nvflare", "enroll", str(renewal.kit / "startup"), "--key", site.key)
    assert (site.agent.dir / "state" / "certs" / "site-1.previous.pem").exists()

    after = _cert_not_after(site.agent, site.key)
    assert after < before and after - time.time() < 31 * 86400, (before, after)
    assert site.agent.proc is not None and site.agent.proc.pid == agent_pid and site.agent.proc.poll() is None

    client = proj.start_client(renewal)
    wait_for_line(renewal.kit / "log.txt", "Successfully registered client:site-1", client, REGISTER_LIMIT_S)
    regs = [r for r in site.agent.audit_records() if r.get("op") == "nvflare_register" and r["key"] == site.key]
    assert regs[-1]["outcome"] == "ok"
    from cryptography import x509
    sent = x509.load_pem_x509_certificate((renewal.kit / "startup" / "client.crt").read_bytes())
    assert int(sent.not_valid_after_utc.timestamp()) == after, "the client registered with the renewed certificate"
    assert_no_private_key(site.dir)
    Processes.stop(client)


def test_a_rotation_with_the_agent_running_retires_the_old_key_after_the_new_one_registers(project):
    """A new key generated in the token while the agent runs and serves with the old one
    (`keyward nvflare request --key site-1-2`); the admin approves, `nvflare package` makes a kit
    whose `client.key` references the new key, `keyward nvflare enroll` installs its certificate,
    and a SIGHUP loads its `[keys.site-1-2.nvflare]` (no restart). The client started from the new
    kit registers with the new key and certificate. Then `keyward key retire site-1 --replaced-by
    site-1-2`: the audit record `destroying` is written before the old key is gone from the token,
    and the record of the outcome follows."""
    proj = project
    site = proj.sites["site-1"]
    assert site.agent.proc is not None
    agent_pid = site.agent.proc.pid
    new_key = "site-1-2"
    rotation = Site(site.name, new_key, site.agent, site.dir / "rotation")
    rotation.dir.mkdir()
    site.agent.keyward("nvflare", "request", "-p", str(site.dir / "site-1.yaml"), "--key", new_key, "--out",
                       str(rotation.request_dir))
    assert_no_private_key(site.dir)
    assert keyref.load(rotation.request_dir / "site-1.key").key == new_key
    signed = proj.approve(rotation.request_dir / "site-1.request.zip", rotation.dir / "site-1.signed.zip")
    rotation.kit = proj.package(signed, rotation.request_dir, rotation.dir / "ws", site.name, plugin=True)
    assert keyref.load(rotation.kit / "startup" / "client.key").key == new_key
    assert_no_private_key(site.dir)
    site.agent.keyward("nvflare", "enroll", str(rotation.kit / "startup"), "--key", new_key)
    reloads = site.agent.log_text().count("config reloaded")
    os.kill(agent_pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while site.agent.log_text().count("config reloaded") == reloads:
        assert time.monotonic() < deadline, "the agent did not reload its config"
        time.sleep(0.05)
    status = json.loads(site.agent.keyward("status", "--json").stdout)
    keys = {k["key"]: k for k in status["keys"]}
    assert keys[new_key]["renewal"] == "valid" and keys[new_key]["key_age_seconds"] >= 0, keys[new_key]

    client = proj.start_client(rotation)
    wait_for_line(rotation.kit / "log.txt", "Successfully registered client:site-1", client, REGISTER_LIMIT_S)
    regs = [r for r in site.agent.audit_records() if r.get("op") == "nvflare_register"]
    assert regs[-1]["key"] == new_key and regs[-1]["outcome"] == "ok", regs[-1]
    Processes.stop(client)

    retired = site.agent.keyward("key", "retire", site.key, "--replaced-by", new_key)
    assert f"retired `{site.key}`" in retired.stdout, retired.stdout
    records = [r for r in site.agent.audit_records() if r.get("op") == "retire_key"]
    assert [r["outcome"] for r in records] == ["destroying", "ok"], records
    assert records[0]["key"] == site.key and records[0]["replaced_by"] == new_key
    assert records[1]["seq"] == records[0]["seq"] + 1
    listed = site.agent.keyward("key", "list").stdout
    assert not any(line.split()[:1] == [site.key] for line in listed.splitlines()), listed
    assert any(line.split()[:1] == [new_key] for line in listed.splitlines()), listed
    assert site.agent.proc.pid == agent_pid and site.agent.proc.poll() is None, "the agent never restarted"
    assert_no_private_key(site.dir)
