"""The real agent for the e2e tests, once per session: a SoftHSM2 token made by
scripts/init-softhsm-token.sh in a short folder under /tmp, a config written by
`keyward init`, the RSA-2048 key `site-1` (plus a P-256 key `ec-1` for refusals), a throwaway CA
shaped like NVFlare's provisioning root, a certificate for `site-1` issued from the CSR the token
signed (`keyward csr`, `keyward cert install`), a startup kit with `client.key` as a keyward
reference, and `keyward serve`, polled until it answers and stopped with SIGTERM at the end.

The binary is `$KEYWARD_BIN`, else `<repo>/target/debug/keyward`. A missing binary or tool fails
the session; nothing is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from cryptography.hazmat.primitives import serialization

from keyward import keyref
from kwharness import Agent, Ca, make_linked_venv, prepare_agent, start_agent, stop_agent

# scripts/federation.py, the federation driver the demo uses too, is imported by the live tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))


@pytest.fixture(scope="session")
def agent() -> Iterator[Agent]:
    base = Path(tempfile.mkdtemp(prefix="kwpy", dir="/tmp"))
    try:
        agent = prepare_agent(base)
        agent.ca = ca = Ca.new()
        agent.kit = base / "kit"
        agent.keyward("key", "generate", "site-1")
        agent.keyward("key", "generate", "ec-1", "--algorithm", "p-256")

        csr_file = base / "site-1.csr"
        agent.keyward("csr", "site-1", "--subject", "CN=site-1,O=test", "--out", str(csr_file))
        csr = x509.load_pem_x509_csr(csr_file.read_bytes())
        assert csr.is_signature_valid, "the CSR the token signed does not verify"
        site_cert = ca.issue(csr.subject, csr.public_key(), "site-1")
        agent.site_cert = site_cert
        cert_file = base / "site-1.crt"
        cert_file.write_bytes(site_cert.public_bytes(serialization.Encoding.PEM))
        agent.keyward("cert", "install", "site-1", str(cert_file))

        agent.kit.mkdir()
        keyref.write(agent.reference, keyref.KeyReference(socket=agent.socket, key="site-1"))
        shutil.copy(cert_file, agent.cert_file)
        agent.root_ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))

        start_agent(agent)
        try:
            yield agent
        finally:
            stop_agent(agent)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def hook_venv() -> Iterator[Path]:
    """A throwaway venv that sees the repo venv's packages, and has no keyward_nvflare.pth yet
    (the install/uninstall test writes it with this venv's own interpreter)."""
    base = Path(tempfile.mkdtemp(prefix="kwvenv", dir="/tmp"))
    try:
        make_linked_venv(base)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def nvflare_python() -> Iterator[str]:
    """The interpreter of another throwaway venv that sees the repo venv's packages (the real
    nvflare among them) and has keyward_nvflare.pth installed by `python -m keyward.nvflare
    install`: every process it starts runs the hook at interpreter start, as an NVFlare client
    process would."""
    base = Path(tempfile.mkdtemp(prefix="kwnvf", dir="/tmp"))
    try:
        py = make_linked_venv(base)
        subprocess.run([py, "-m", "keyward.nvflare", "install"], check=True, capture_output=True, timeout=60)
        yield py
    finally:
        shutil.rmtree(base, ignore_errors=True)
