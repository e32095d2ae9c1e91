"""Enrolling a site whose key never existed as a file (docs/nvflare-plugin.md, "Enroll a new site"),
with the real `nvflare provision` (2.9.0) as the project's CA and a real agent.

The project admin provisions a project (server1, site-1) and hands the site its kit without
`client.key`/`client.crt`. The site admin generates `site-1` in the token (`keyward key
generate`) and writes a CSR there (`keyward csr`); the project admin issues the certificate with
`keyward-nvflare sign-csr --ca-dir <workspace>/<project>/state`; the site admin installs it
(`keyward cert install`), adds `[keys.site-1.nvflare]` and writes `startup/client.key` with
`keyward-nvflare write-reference`. Then NVFlare's own `Authenticator.authenticate` (flow_driver.py)
registers through the agent against a fake server that uses the provisioned server1's key and
certificate and checks the registration with NVFlare's `IdentityVerifier`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from keyward import keyref

from kwharness import Agent, prepare_agent, run_python, start_agent, stop_agent

DRIVER = Path(__file__).with_name("flow_driver.py")
NVFLARE_BIN = Path(sys.executable).with_name("nvflare")
PROJECT = "enroll_project"

PROJECT_YML = f"""\
api_version: 3
name: {PROJECT}
description: keyward enroll test
participants:
  - name: server1
    type: server
    org: nvidia
    fed_learn_port: 8002
    connection_security: tls
  - name: site-1
    type: client
    org: nvidia
    connection_security: tls
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
  - path: nvflare.lighter.impl.cert.CertBuilder
"""


def keyward_nvflare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keyward.nvflare", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def enrolled() -> Iterator[tuple[Agent, Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="kwen", dir="/tmp"))
    try:
        prov = base / "prov"
        prov.mkdir()
        (prov / "project.yml").write_text(PROJECT_YML)
        proc = subprocess.run([str(NVFLARE_BIN), "provision", "-p", "project.yml", "-w", "ws", "--force"], cwd=prov,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        kits = prov / "ws" / PROJECT / "prod_00"
        ca_dir = prov / "ws" / PROJECT / "state"
        # The kit the site receives: no key, no certificate (they come from the token and the CSR).
        startup = base / "site-1" / "startup"
        shutil.copytree(kits / "site-1" / "startup", startup)
        (startup / "client.key").unlink()
        (startup / "client.crt").unlink()

        agent = prepare_agent(base / "agent")
        agent.kit = startup
        agent.keyward("key", "generate", "site-1")
        csr = base / "site-1.csr"
        agent.keyward("csr", "site-1", "--subject", "CN=site-1,O=nvidia", "--out", str(csr))
        signed = keyward_nvflare("sign-csr", "--ca-dir", str(ca_dir), "--csr", str(csr),
                                 "--out", str(startup / "client.crt"))
        assert signed.returncode == 0, signed.stdout + signed.stderr
        agent.keyward("cert", "install", "site-1", str(startup / "client.crt"))
        identity = json.loads((startup / "fed_client.json").read_text())["servers"][0]["identity"]
        agent.enable_nvflare("site-1", startup / "rootCA.pem", identity)
        wrote = keyward_nvflare("write-reference", "--socket", agent.socket, "--key", "site-1",
                                "--out", str(startup / "client.key"))
        assert wrote.returncode == 0, wrote.stdout + wrote.stderr
        start_agent(agent)
        try:
            yield agent, kits / "server1" / "startup", base
        finally:
            stop_agent(agent)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_issued_certificate_matches_the_token_key_and_provisions_shape(enrolled):
    agent, server_startup, _ = enrolled
    cert = x509.load_pem_x509_certificate(agent.cert_file.read_bytes())
    provisioned = x509.load_pem_x509_certificate((server_startup / "server.crt").read_bytes())
    assert cert.issuer == provisioned.issuer
    assert cert.subject.rfc4514_string() == "O=nvidia,CN=site-1"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(agent.root_ca_file.read_bytes()))
    checked = subprocess.run([sys.executable, "-m", "keyward.nvflare", "check", str(agent.reference),
                              "--cert", str(agent.cert_file)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "matches the key" in checked.stdout, checked.stdout + checked.stderr
    assert keyref.load(agent.reference).key == "site-1"
    assert not [p for p in agent.kit.iterdir() if b"PRIVATE KEY" in p.read_bytes()]


def test_the_enrolled_site_registers_through_the_agent(enrolled, nvflare_python):
    agent, server_startup, base = enrolled
    logs = Path(tempfile.mkdtemp(prefix="logs", dir=base))
    cfg = {"ref": str(agent.reference), "crt": str(agent.cert_file), "root": str(agent.root_ca_file),
           "logs": str(logs), "server_key": str(server_startup / "server.key"),
           "server_crt": str(server_startup / "server.crt"), "server_cn": "server1"}
    proc = run_python(f"import sys; sys.argv = ['flow_driver', {json.dumps(cfg)!r}]\n"
                      f"exec(compile(open({str(DRIVER)!r}).read(), {str(DRIVER)!r}, 'exec'))",
                      python=nvflare_python, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.get("raised") is None, out
    assert out["server_verified_client"] is True and out["registered_cn"] == "site-1"
    assert "keyward: the agent verified server `server1` and signed the registration of `site-1`" in \
        out["logs"]["log.txt"]
    regs = [r for r in agent.audit_records() if r.get("op") == "nvflare_register"]
    assert [(r["outcome"], r["key"], r["payload_len"]) for r in regs] == [("ok", "site-1", 42)]
