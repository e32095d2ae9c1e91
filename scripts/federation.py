"""One live NVFlare 2.9.0 federation on loopback, driven from Python: provision, start and stop the
server, the clients and the admin's job submission, and every process they start.

Used two ways, so the federation is described once:
- ``python scripts/federation.py demo --keyward BIN --state DIR``: steps 4 to 13 of
  ``scripts/demo.sh``: a whole ``mtls`` federation with no private key file anywhere (SoftHSM2
  tokens for the server and for site-2 and the admin, swtpm for site-1, one agent each;
  ``nvflare provision``; ``keyward nvflare migrate`` of every kit; the server behind ``keyward
  server-tunnel``; site-1 through ``keyward tunnel``, site-2 and the admin through gRPC's custom
  signer; a job; the checks; the stop), printing ``==> [n/13]`` steps and a summary.
- imported by ``python/tests/e2e/test_live_federation.py`` (and its conftest puts this folder on
  ``sys.path``): the same ``provision``, ``configure_server``, ``Processes``, ``wait_for_line``,
  ``write_job`` and ``submit_job``.

Every process is started in a session of its own and stopped by its process group; NVFlare's
job processes (own sessions, PIDs in its logs) are killed by PID when their command line names
the federation's folder. Nothing else is signalled. Standard library only; ``nvflare`` runs from
the venv given (``--python``, default this interpreter's).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = "kwproject"
SERVER = "server1"
SITE = "site-1"
SITE2 = "site-2"
ADMIN = "admin@nvidia.com"
REGISTERED = f"Successfully registered client:{SITE}"
SCRIPTS = Path(__file__).resolve().parent

PROJECT_YML = """\
api_version: 3
name: {project}
description: keyward live federation (scripts/federation.py)
participants:
  - name: {server}
    type: server
    org: nvidia
    fed_learn_port: {port}
    default_host: localhost
    connection_security: {security}
{clients}  - name: {admin}
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config{scheme}
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""

CLIENT_YML = """\
  - name: {site}
    type: client
    org: nvidia
    connection_security: {security}
"""

#: A one-round ScatterAndGather job with NVFlare's numpy trainer.
JOB_SERVER = {
    "format_version": 2,
    "workflows": [{
        "id": "sag", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
        "args": {"min_clients": 1, "num_rounds": 1, "start_round": 0, "wait_time_after_min_received": 0,
                 "aggregator_id": "aggregator", "persistor_id": "persistor",
                 "shareable_generator_id": "shareable_generator", "train_task_name": "train", "train_timeout": 0},
    }],
    "components": [
        {"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {}},
        {"id": "shareable_generator",
         "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
         "args": {}},
        {"id": "aggregator",
         "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator",
         "args": {"expected_data_kind": "WEIGHTS"}},
    ],
}
JOB_CLIENT = {
    "format_version": 2,
    "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}],
    "task_result_filters": [], "task_data_filters": [], "components": [],
}
#: Submits a job with an admin kit through the FLARE API and waits for it; prints one JSON line.
SUBMIT = """
import json, sys
from nvflare.fuel.flare_api.flare_api import new_secure_session
session = new_secure_session(sys.argv[1], sys.argv[2], timeout=60)
try:
    job_id = session.submit_job(sys.argv[3])
    meta = session.wait_for_job(job_id, timeout=float(sys.argv[4]), poll_interval=1.0)
    print(json.dumps({"job_id": job_id, "status": meta.get("status")}))
finally:
    session.close()
"""


class FederationError(RuntimeError):
    """A step of the federation failed; the message says which and where to look."""


_handed_out: set[int] = set()


def free_port() -> int:
    """A random port below Linux's ephemeral range (32768-60999), which outgoing connections'
    source ports and their TIME_WAIT leftovers crowd, that binds right now and that this process
    never handed out before (a server given it may not have bound it yet)."""
    while True:
        port = random.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port


def nvflare_env(python_bin_dir: Path | None = None) -> dict[str, str]:
    """The environment NVFlare's processes get: no KEYWARD_*, NVFL_* or PYTHONPATH of the caller;
    ``python_bin_dir`` first on PATH (``sub_start.sh`` runs ``python3`` from PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYWARD_", "NVFL_"))}
    env.pop("PYTHONPATH", None)
    if python_bin_dir is not None:
        env["PATH"] = f"{python_bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def linked_venv(base: Path, python: str = sys.executable) -> str:
    """A venv in ``base`` (no pip) whose site-packages has one .pth adding ``python``'s
    site-packages, so its packages (and their .pth files) are seen while ``python``'s own venv
    stays as it is. Returns the new venv's python."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(base)], check=True, timeout=120)
    new = str(base / "bin" / "python")

    def purelib(py: str) -> str:
        return subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()

    # "00-" sorts before keyward_nvflare.pth: site processes .pth files in name order.
    pth = Path(purelib(new), "00-keyward-base.pth")
    pth.write_text(f"import site; site.addsitedir({purelib(python)!r})\n")
    pth.chmod(0o644)
    return new


@dataclass
class Processes:
    """Everything started here, each in its own session; stopped by process group."""

    started: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str], out: Path) -> subprocess.Popen:
        with open(out, "ab") as f:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
        """SIGTERM to the process group of ``proc``, then SIGKILL to whatever is left of it.
        A process already reaped is left alone (its PID may be someone else's by now).
        Returns its exit status."""
        if proc.returncode is not None:
            return proc.returncode
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            try:
                os.killpg(proc.pid, 0)  # the group may outlive its leader
            except ProcessLookupError:
                return proc.returncode
            if sig == signal.SIGTERM:
                time.sleep(1.0)
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return proc.returncode
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)

    @staticmethod
    def stop_job_processes(base: Path) -> None:
        """NVFlare starts job processes in sessions of their own and logs their PIDs: kill those
        still running whose command line names ``base``."""
        for log in base.rglob("log.txt"):
            for pid in map(int, re.findall(r"Launch the job in process ID: (\d+)", log.read_text(errors="replace"))):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(base).encode() in cmdline:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


@dataclass
class Kit:
    """One provision's output (``<workspace>/<project>/prod_00``) and its server's port."""

    root: Path
    port: int

    @property
    def server(self) -> Path:
        return self.root / SERVER

    @property
    def site(self) -> Path:
        return self.root / SITE

    @property
    def admin(self) -> Path:
        return self.root / ADMIN


def provision(base: Path, port: int, nvflare_bin: Path | None = None, security: str = "tls",
              scheme: str | None = None, sites: tuple[str, ...] = (SITE,)) -> Kit:
    """``nvflare provision`` of ``PROJECT_YML`` in ``base`` (created), with ``connection_security``
    ``security`` for the server and the ``sites``, and the communication ``scheme`` (NVFlare's
    default when None); checks that all got that security and that no kit is signed (the edits
    would break it)."""
    nvflare_bin = nvflare_bin or Path(sys.executable).with_name("nvflare")
    base.mkdir(parents=True, exist_ok=True)
    clients = "".join(CLIENT_YML.format(site=site, security=security) for site in sites)
    (base / "project.yml").write_text(PROJECT_YML.format(
        project=PROJECT, server=SERVER, port=port, clients=clients, admin=ADMIN, security=security,
        scheme=f"\n      scheme: {scheme}" if scheme else ""))
    proc = subprocess.run([str(nvflare_bin), "provision", "-p", "project.yml", "-w", "ws", "--force"], cwd=base,
                          capture_output=True, text=True, timeout=120, env=nvflare_env())
    (base / "provision.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise FederationError(f"nvflare provision failed (see {base / 'provision.log'}):\n{proc.stderr[-3000:]}")
    kit = Kit(base / "ws" / PROJECT / "prod_00", port)
    participants = [(kit.server, "fed_server.json")] + [(kit.root / site, "fed_client.json") for site in sites]
    for participant, name in participants:
        config = json.loads((participant / "startup" / name).read_text())
        got = config["servers"][0].get("connection_security") or config["client"].get("connection_security", "mtls")
        if got != security:
            raise FederationError(f"{participant / 'startup' / name}: connection_security {got}, not {security}")
    if list(kit.root.rglob("signature.json")):
        raise FederationError("the kits have a signature.json: migrating client.key would break them")
    return kit


def configure_server(kit: Kit, store: Path) -> None:
    """Loopback only, and a job store of its own (servers on one machine otherwise share
    /tmp/nvflare/jobs-storage)."""
    startup = kit.server / "startup"
    config = json.loads((startup / "fed_server.json").read_text())
    config["servers"][0]["service"]["target"] = f"127.0.0.1:{kit.port}"
    (startup / "fed_server.json").write_text(json.dumps(config, indent=2))
    local = kit.server / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(store / "snapshot-storage")
    for component in resources["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(store / "jobs-storage")
    (local / "resources.json").write_text(json.dumps(resources, indent=2))


def kit_command(participant: Path) -> list[str]:
    """The kit's own start command in the foreground: ``startup/sub_start.sh --once``."""
    return ["bash", str(participant / "startup" / "sub_start.sh"), "--once"]


def wait_for_line(log: Path, needle: str, proc: subprocess.Popen, limit: float, offset: int = 0) -> str:
    """The first line of ``log`` (after ``offset``) holding ``needle``; FederationError if
    ``proc`` exits first or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while True:
        text = log.read_text(errors="replace")[offset:] if log.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise FederationError(f"process exited ({proc.returncode}) before `{needle}`; {log}:\n{text[-4000:]}")
        if time.monotonic() > deadline:
            raise FederationError(f"no `{needle}` within {limit:g} s; {log}:\n{text[-4000:]}")
        time.sleep(0.05)


def write_job(folder: Path) -> Path:
    """The job folder (a fresh one per submission: NVFlare signs it in place)."""
    (folder / "app" / "config").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"name": "kw-sag", "resource_spec": {},
                                                  "deploy_map": {"app": ["@ALL"]}, "min_clients": 1}))
    (folder / "app" / "config" / "config_fed_server.json").write_text(json.dumps(JOB_SERVER))
    (folder / "app" / "config" / "config_fed_client.json").write_text(json.dumps(JOB_CLIENT))
    return folder


def submit_job(python: str, admin_kit: Path, job: Path, limit: float = 180.0) -> dict:
    """Submits ``job`` as the admin with ``python`` (whose venv has the plug-in if the admin's
    key is in the token) and waits for it; returns ``{"job_id", "status"}``."""
    proc = subprocess.run([python, "-c", SUBMIT, ADMIN, str(admin_kit), str(job), str(limit)],
                          capture_output=True, text=True, timeout=limit + 60, env=nvflare_env())
    if proc.returncode != 0:
        raise FederationError(f"submitting the job failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def private_key_files(folder: Path) -> list[Path]:
    """Files under ``folder`` holding a PEM private key."""
    return [p for p in folder.rglob("*")
            if p.is_file() and re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", p.read_bytes())]


# --- the demo: steps 4 to 13 of scripts/demo.sh ------------------------------------------------

TOTAL_STEPS = 13
MARKER = ".keyward-demo-state"


class Demo:
    def __init__(self, keyward: str, state: Path, python: str) -> None:
        self.keyward_bin, self.state, self.python = keyward, state, python
        self.nvflare = Path(python).with_name("nvflare")
        self.env = dict(os.environ)
        self.procs = Processes()
        self.step_no = 3

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n==> [{self.step_no}/{TOTAL_STEPS}] {text}", file=sys.stderr, flush=True)

    @staticmethod
    def log(text: str) -> None:
        print(f"demo: {text}", file=sys.stderr, flush=True)

    def kw(self, env: dict[str, str], *args: str, quiet: bool = False) -> str:
        self.log("$ keyward " + " ".join(args))
        proc = subprocess.run([self.keyward_bin, *args], env=env, capture_output=True, text=True, timeout=120)
        if not quiet:
            sys.stderr.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise FederationError(f"keyward {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc.stdout

    def fresh_state(self, default: Path) -> None:
        s = self.state
        if s.exists():
            if s != default and not (s / MARKER).exists() and any(s.iterdir()):
                raise FederationError(f"{s} is not empty and was not made by demo.sh ({MARKER} missing): "
                                      "choose another KEYWARD_STATE_DIR")
            for config in [s / "keyward.toml", *s.glob("*/keyward.toml")]:
                sock = config.parent / "run/agent.sock"
                if sock.is_socket() and subprocess.run(
                        [self.keyward_bin, "--config", str(config), "status"], capture_output=True).returncode == 0:
                    raise FederationError(f"an agent still answers on {sock}: stop it and rerun")
            self.log(f"removing the previous run's state dir {s}")
            shutil.rmtree(s)
        s.mkdir(mode=0o700, parents=True)
        (s / MARKER).touch()

    def agent(self, name: str, backend: str, tcti: str = "") -> DemoAgent:
        """A keyward config in ``<state>/<name>`` for a SoftHSM2 token of its own (``softhsm``)
        or the swtpm at ``tcti`` (``tpm``); the agent is not started."""
        base = self.state / name
        (base / "run").mkdir(parents=True)
        env = {k: v for k, v in self.env.items() if not k.startswith("KEYWARD_")}
        env.update(KEYWARD_CONFIG=str(base / "keyward.toml"), KEYWARD_LOG="info")
        root = ["--allow-root"] if os.geteuid() == 0 else []  # the agent refuses root unless told
        common = ["--socket", str(base / "run" / "agent.sock"), "--state-dir", str(base / "state"), *root]
        if backend == "softhsm":
            out = subprocess.run(["bash", str(SCRIPTS / "init-softhsm-token.sh"), str(base / "softhsm"), "fl-" + name],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                var, _, value = line.removeprefix("export ").partition("=")
                env[var] = shlex.split(value)[0]
            self.kw(env, "init", "--backend", "pkcs11", "--module", env["KEYWARD_PKCS11_MODULE"], "--token",
                    env["KEYWARD_TOKEN_LABEL"], "--pin-file", env["KEYWARD_PIN_FILE"], *common)
        else:
            self.kw(env, "init", "--backend", "tpm", "--tcti", tcti, "--key-dir", str(base / "tpmkeys"), *common)
        return DemoAgent(name, base, env)

    def start_agent(self, agent: DemoAgent) -> None:
        proc = self.procs.start([self.keyward_bin, "serve"], cwd=agent.dir, env=agent.env, out=agent.dir / "agent.log")
        deadline = time.monotonic() + 15
        while subprocess.run([self.keyward_bin, "status"], env=agent.env, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FederationError(f"agent `{agent.name}` did not answer `keyward status` (see {agent.dir}/agent.log)")
            time.sleep(0.2)
        agent.proc = proc

    def start_swtpm(self) -> str:
        """swtpm on a free port pair (P commands, P+1 control) in ``<state>/swtpm``; its TCTI."""
        state = self.state / "swtpm"
        state.mkdir()
        for _ in range(10):
            port = free_port()
            proc = self.procs.start(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server",
                                     f"type=tcp,port={port},bindaddr=127.0.0.1", "--ctrl",
                                     f"type=tcp,port={port + 1},bindaddr=127.0.0.1", "--flags",
                                     "not-need-init,startup-clear"], cwd=state, env=self.env, out=state / "swtpm.log")
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port + 1), timeout=1).close()
                    return f"swtpm:host=127.0.0.1,port={port}"
                except OSError:
                    time.sleep(0.05)
            Processes.stop(proc)
        raise FederationError(f"swtpm did not start (see {state}/swtpm.log)")

    def run(self, default_state: Path) -> None:
        started, st = time.monotonic(), self.state
        self.step(f"a fresh state dir {st}: SoftHSM2 tokens for the server and for site-2 and the admin, swtpm for site-1")
        self.fresh_state(default_state)
        tcti = self.start_swtpm()
        self.log(f"swtpm: {tcti}")

        self.step("keyward init: one agent per token (server, tpm, site), each with its own socket and audit log")
        agents = {"server": self.agent("server", "softhsm"), "tpm": self.agent("tpm", "tpm", tcti),
                  "site": self.agent("site", "softhsm")}

        sites = (SITE, SITE2)
        self.step(f"nvflare provision: {SERVER}, {SITE}, {SITE2} and {ADMIN}, mtls and grpc, in {st}/provision")
        kit = provision(st / "provision", free_port(), self.nvflare, security="mtls", scheme="grpc", sites=sites)
        configure_server(kit, st / "store")
        files = sorted(str(p.relative_to(kit.root)) for p in private_key_files(kit.root))
        self.log(f"kits: {kit.root}; private key files provision wrote: {', '.join(files)}")

        self.step("keyward nvflare migrate: every kit's key into its token, a key reference in its place")
        python = linked_venv(st / "venv", self.python)
        self.log(f"NVFlare venv: {st}/venv (sees the packages of {Path(self.python).parent.parent})")
        for participant, agent, key in ((kit.server, "server", SERVER), (kit.root / SITE, "tpm", SITE),
                                        (kit.root / SITE2, "site", SITE2), (kit.admin, "site", "admin")):
            self.kw(agents[agent].env, "nvflare", "migrate", str(participant / "startup"), "--key", key,
                    "--python", python)
        self.log("server1/startup/server.key is now a key reference:\n" + (kit.server / "startup/server.key").read_text())

        self.step("starting the three agents (keyward serve)")
        for agent in agents.values():
            self.start_agent(agent)
            self.kw(agent.env, "key", "list")

        internal = free_port()
        self.step(f"keyward server-tunnel on 127.0.0.1:{kit.port} (the server's TLS, key in SoftHSM) and the NVFlare "
                  f"server behind it on 127.0.0.1:{internal}")
        path = kit.server / "startup" / "fed_server.json"
        config = json.loads(path.read_text())
        config["servers"][0]["service"]["target"] = f"127.0.0.1:{internal}"
        config["servers"][0]["connection_security"] = "clear"
        path.write_text(json.dumps(config, indent=2))
        server_agent = agents["server"]
        front = self.procs.start([self.keyward_bin, "server-tunnel", "--key", SERVER, "--listen", f"127.0.0.1:{kit.port}",
                                  "--upstream", f"127.0.0.1:{internal}", "--ca",
                                  str(server_agent.dir / "state" / "trust" / f"{SERVER}.rootCA.pem")],
                                 cwd=st, env=server_agent.env, out=st / "server-tunnel.log")
        self.log(wait_for_line(st / "server-tunnel.log", "keyward server tunnel listening", front, 20))
        server = self.procs.start(kit_command(kit.server), cwd=kit.server, env=nvflare_env(Path(python).parent),
                                  out=kit.server / "console.txt")
        self.log(wait_for_line(kit.server / "log.txt", "Server started", server, 60))

        self.step(f"{SITE} through keyward tunnel (key in swtpm), {SITE2} through gRPC's custom signer (key in SoftHSM)")
        site1 = kit.root / SITE
        target = json.loads((site1 / "startup/fed_client.json").read_text())["servers"][0]["service"]["target"]
        tunnel_port, tpm_agent = free_port(), agents["tpm"]
        tunnel = self.procs.start([self.keyward_bin, "tunnel", "--key", SITE, "--listen", f"127.0.0.1:{tunnel_port}",
                                   "--upstream", f"127.0.0.1:{kit.port}", "--server-name", target.rsplit(":", 1)[0],
                                   "--ca", str(site1 / "startup/rootCA.pem"), "--alpn", "h2"],
                                  cwd=st, env=tpm_agent.env, out=st / "tunnel.log")
        self.log(wait_for_line(st / "tunnel.log", "keyward tunnel listening", tunnel, 20))
        path = site1 / "startup" / "fed_client.json"
        config = json.loads(path.read_text())
        config["servers"][0]["service"]["target"] = f"127.0.0.1:{tunnel_port}"
        config["client"]["connection_security"] = "clear"
        path.write_text(json.dumps(config, indent=2))
        for site in sites:
            client = self.procs.start(kit_command(kit.root / site), cwd=kit.root / site,
                                      env=nvflare_env(Path(python).parent), out=kit.root / site / "console.txt")
            self.log(wait_for_line(kit.root / site / "log.txt", f"Successfully registered client:{site}", client, 60))

        self.step(f"submitting a one-round ScatterAndGather job as {ADMIN} (key in SoftHSM) and waiting for it")
        job = submit_job(python, kit.admin, write_job(st / "job"))
        self.log(f"job: {json.dumps(job)}")
        if job["status"] != "FINISHED:COMPLETED":
            raise FederationError(f"job {job['job_id']} ended {job['status']} (see {kit.server}/{job['job_id']})")

        self.step("checks: no private key file in any kit, every TLS handshake and registration in an audit log")
        if private_key_files(kit.root):
            raise FederationError(f"a private key file is in a kit: {private_key_files(kit.root)}")
        self.log(f"no file under {kit.root} holds a private key")
        for name, agent in agents.items():
            records = [json.loads(line) for line in (agent.dir / "state/audit.log").read_text().splitlines()]
            ops: dict[str, int] = {}
            for r in records:
                op = r.get("op", "?") + (f" {r['profile']}" if str(r.get("profile", "")).startswith("tls-") else "")
                ops[op] = ops.get(op, 0) + 1
            refused = [r for r in records if r.get("outcome") not in ("ok", None)]
            self.log(f"agent `{name}` audit: {json.dumps(ops)}; refusals: {len(refused)}")
        for line in (st / "server-tunnel.log").read_text().splitlines():
            if "connection done" in line and "client_cn=" in line:
                print(line, file=sys.stderr)
                break
        self.kw(agents["server"].env, "audit", "verify", "--log", str(agents["server"].dir / "state/audit.log"))

        self.step("stopping the clients, the server, the tunnels, the job processes, the agents and swtpm")
        self.stop()
        for name, agent in agents.items():
            if agent.proc is not None and agent.proc.returncode != 0:
                raise FederationError(f"agent `{name}` exited with status {agent.proc.returncode} (see {agent.dir}/agent.log)")
        self.log("all stopped")
        print(f"""
==> done in {time.monotonic() - started:.0f} s: a whole mtls federation with no private key file anywhere.
    {SITE} (swtpm, keyward tunnel) and {SITE2} (SoftHSM, gRPC custom signer) registered with {SERVER}
    (SoftHSM, behind keyward server-tunnel; its registrations verified by its agent), and job
    {job['job_id']} submitted by {ADMIN} (SoftHSM) ended {job['status']}.
    state dir          {st}   (rerun: scripts/demo.sh; remove: rm -rf '{st}')
    keyward binary     {self.keyward_bin}
    agents             {st}/server, {st}/tpm, {st}/site   (keyward.toml, run/agent.sock, agent.log, state/audit.log)
    tunnels            {st}/server-tunnel.log, {st}/tunnel.log
    provisioning       {st}/provision/project.yml, workspace {st}/provision/ws (root CA key in its state/)
    kits               {kit.root}   (every key file is a key reference)
    NVFlare venv       {st}/venv   (keyward_nvflare.pth)
    job                {st}/job -> {job['job_id']}""", file=sys.stderr)

    def openssl(self, *args: object) -> None:
        argv = ["openssl", *map(str, args)]
        self.log("$ " + " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        sys.stderr.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise FederationError(f"openssl {args[0]} failed")

    def stop(self) -> None:
        """Everything in reverse order of start (clients, server, tunnels, agents, swtpm), and
        NVFlare's job processes before the agents: by PID, never by name."""
        agents = [p for p in self.procs.started if p.args[1:2] == ["serve"] or p.args[0] == "swtpm"]
        for proc in reversed(self.procs.started):
            if proc not in agents:
                Processes.stop(proc)
        Processes.stop_job_processes(self.state)
        for proc in reversed(agents):
            Processes.stop(proc)


@dataclass
class DemoAgent:
    """One agent of the demo: its folder, its environment (config, token), its process."""

    name: str
    dir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="steps 4 to 13 of scripts/demo.sh")
    demo.add_argument("--keyward", required=True, help="the keyward binary")
    demo.add_argument("--state", required=True, type=Path, help="the state dir (deleted and made anew)")
    demo.add_argument("--default-state", type=Path, help="the state dir that may be deleted without a marker")
    demo.add_argument("--python", default=sys.executable, help="the venv's python with nvflare and keyward")
    args = parser.parse_args(argv)
    run = Demo(args.keyward, args.state.resolve(), args.python)
    try:
        run.run((args.default_state or args.state).resolve())
    except (FederationError, subprocess.CalledProcessError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        run.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
