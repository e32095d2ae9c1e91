"""What the e2e tests use besides fixtures: the keyward binary lookup, a CA shaped like NVFlare's
provisioning root, the running agent's description, and running Python in a fresh interpreter.
The fixtures themselves (the agent, the throwaway venvs) are in conftest.py."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from keyward import KeywardClient, errors

if TYPE_CHECKING:
    from federation import Processes

REPO_ROOT = Path(__file__).resolve().parents[3]
INIT_SCRIPT = REPO_ROOT / "scripts" / "init-softhsm-token.sh"
PROJECT = "example_project"
READY_LIMIT_S = 20.0


def keyward_bin() -> Path:
    path = Path(os.environ.get("KEYWARD_BIN") or REPO_ROOT / "target" / "debug" / "keyward")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"keyward binary `{path}` not found: build it with `cargo build -p keyward-agent` "
            "or point KEYWARD_BIN at one",
            pytrace=False,
        )
    return path


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass
class Ca:
    """A root CA like `nvflare provision` makes (nvflare/lighter/utils.py::generate_cert)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, cn: str = PROJECT) -> "Ca":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=360))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, subject: x509.Name, public_key, dns: str, *, valid_from: datetime.datetime | None = None,
              valid_days: float = 360, eku: list | None = None) -> x509.Certificate:
        """A leaf as NVFlare provisions it: SKI, AKI and SAN only (no KeyUsage, no EKU). ``eku``
        adds an ExtendedKeyUsage; ``valid_from``/``valid_days`` move the validity period."""
        start = valid_from or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=valid_days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        return builder.sign(self.key, hashes.SHA256())


@dataclass
class Agent:
    """A `keyward serve` (once started) and everything around it."""

    bin: Path
    dir: Path
    env: dict[str, str]
    socket: str
    log: Path
    ca: Ca | None = None
    site_cert: x509.Certificate | None = None
    kit: Path | None = None  # a startup kit: client.key (the reference), client.crt, rootCA.pem
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def reference(self) -> Path:
        assert self.kit is not None
        return self.kit / "client.key"

    @property
    def cert_file(self) -> Path:
        assert self.kit is not None
        return self.kit / "client.crt"

    @property
    def root_ca_file(self) -> Path:
        assert self.kit is not None
        return self.kit / "rootCA.pem"

    @property
    def config(self) -> Path:
        return Path(self.env["KEYWARD_CONFIG"])

    @property
    def audit_log(self) -> Path:
        return self.dir / "state" / "audit.log"

    def client(self, **kw) -> KeywardClient:
        return KeywardClient(self.socket, **kw)

    def keyward(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.bin), *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            pytest.fail(f"`keyward {shlex.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                        pytrace=False)
        return proc

    def append_config(self, text: str) -> None:
        """Adds TOML to keyward.toml (read by `keyward serve` at start)."""
        with open(self.config, "a") as f:
            f.write("\n" + text)

    def enable_nvflare(self, key: str, root_ca: Path, server_identity: str) -> None:
        """The `[keys.<key>.nvflare]` table (docs/configuration.md): the agent's NVFlare flow."""
        self.append_config(f"[keys.{key}.nvflare]\nroot_ca = {json.dumps(str(root_ca))}\n"
                           f"server_identity = {json.dumps(server_identity)}\n")

    def audit_records(self) -> list[dict]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def prepare_agent(base: Path) -> Agent:
    """A SoftHSM2 token and a keyward.toml (`keyward init`) in ``base``, with the socket at
    ``base/run/agent.sock`` and the state in ``base/state``; the agent is not started."""
    binary = keyward_bin()
    hsm = softhsm_token(base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    env.update(SOFTHSM2_CONF=hsm["SOFTHSM2_CONF"], KEYWARD_CONFIG=str(base / "keyward.toml"), KEYWARD_LOG="info")
    socket_path = str(base / "run" / "agent.sock")
    agent = Agent(bin=binary, dir=base, env=env, socket=socket_path, log=base / "agent.log")
    agent.keyward("init", "--backend", "pkcs11", "--module", hsm["KEYWARD_PKCS11_MODULE"], "--token", "fl-site",
                  "--pin-file", hsm["KEYWARD_PIN_FILE"], "--socket", socket_path, "--state-dir", str(base / "state"),
                  "--allow-root")  # CI runs as root; the agent refuses that unless the config opts in
    return agent


def start_agent(agent: Agent) -> None:
    """Starts `keyward serve` and polls `hello` until it answers; stop it with ``stop_agent``."""
    with open(agent.log, "ab") as log:
        agent.proc = subprocess.Popen([str(agent.bin), "serve"], env=agent.env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready(agent)
    except BaseException:
        stop_agent(agent)
        raise


def softhsm_token(dir: Path) -> dict[str, str]:
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util not found: run scripts/install-packages.sh", pytrace=False)
    proc = subprocess.run(["bash", str(INIT_SCRIPT), str(dir / "hsm"), "fl-site"], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"init-softhsm-token.sh failed:\n{proc.stderr}", pytrace=False)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = shlex.split(value)[0]
    return out


def wait_ready(agent: Agent) -> None:
    deadline = time.monotonic() + READY_LIMIT_S
    client = KeywardClient(agent.socket, timeout=2)
    while True:
        assert agent.proc is not None
        code = agent.proc.poll()
        if code is not None:
            pytest.fail(f"`keyward serve` exited with {code} before it was ready; log:\n{agent.log_text()}",
                        pytrace=False)
        try:
            client.hello()
            return
        except errors.KeywardError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"agent not ready after {READY_LIMIT_S} s; log:\n{agent.log_text()}", pytrace=False)
        time.sleep(0.02)


def stop_agent(agent: Agent) -> None:
    proc = agent.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def tear_down_federation(base: Path, procs: "Processes", agents: "Iterable[Agent | None]", tpm: Any = None) -> None:
    """Stops what a live-federation fixture started, in order: NVFlare's processes and their job
    processes, the agents, swtpm (``tpm``); then removes ``base``."""
    from federation import Processes

    procs.stop_all()
    Processes.stop_job_processes(base)
    for agent in agents:
        if agent is not None:
            stop_agent(agent)
    if tpm is not None:
        tpm.stop()
    shutil.rmtree(base, ignore_errors=True)


def run_python(code: str, *, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``code`` (dedented) in a fresh interpreter; KEYWARD_* from this process are dropped."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    full.update(env or {})
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                          timeout=timeout)


def make_linked_venv(base: Path) -> str:
    """A venv in ``base`` that sees this interpreter's packages (scripts/federation.py
    ``linked_venv``). Returns its python."""
    from federation import linked_venv

    return linked_venv(base)
