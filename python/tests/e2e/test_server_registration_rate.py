"""How many registrations per second an NVFlare server's key work allows: `server.key` as a file
(nvflare 2.9.0's own `IdentityAsserter` and `IdentityVerifier`) against the key in SoftHSM
through the agent (`nvflare_server_challenge` + `nvflare_server_register`, plus NVFlare's own
check, as the plug-in runs it), in the same run (docs/benchmarks.md). Only the server's side is
timed: the challenge reply, the check of the registration and the token signature; the client's
signature is made between the timed parts. Asserts nothing about speed.
`KEYWARD_BENCH_REGISTRATIONS` (default 50) per mode; `-s` prints the table row.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kwharness import Ca, prepare_agent, start_agent, stop_agent

REGISTRATIONS = int(os.environ.get("KEYWARD_BENCH_REGISTRATIONS", "50"))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_measure_server_registrations_per_second_with_the_key_in_the_agent_and_as_a_file(short_tmp: Path):
    from nvflare.lighter.utils import sign_content
    from nvflare.private.fed.utils.identity_utils import IdentityAsserter, IdentityVerifier
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = Ca.new()
    root = short_tmp / "rootCA.pem"
    root.write_bytes(_pem(ca.cert))
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client_cert = ca.issue(_name("site-1"), client_key.public_key(), "site-1")
    client_pem = _pem(client_cert)

    file_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (short_tmp / "server.key").write_bytes(file_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (short_tmp / "server.crt").write_bytes(_pem(ca.issue(_name("server1"), file_key.public_key(), "localhost")))

    agent = prepare_agent(short_tmp / "agent")
    agent.keyward("key", "generate", "server1")
    csr_file = short_tmp / "server1.csr"
    agent.keyward("csr", "server1", "--subject", "CN=server1", "--out", str(csr_file))
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    (short_tmp / "agent-server.crt").write_bytes(_pem(ca.issue(csr.subject, csr.public_key(), "localhost")))
    agent.keyward("cert", "install", "server1", str(short_tmp / "agent-server.crt"))
    agent.append_config(f'[keys.server1.nvflare_server]\nroot_ca = "{root}"\n')
    start_agent(agent)
    try:
        client = agent.client()
        asserter = IdentityAsserter(private_key_file=str(short_tmp / "server.key"),
                                    cert_file=str(short_tmp / "server.crt"))
        verifier = IdentityVerifier(root_cert_file=str(root))

        def nvflare_check(nonce: str, signature: bytes) -> None:
            verifier.verify_common_name(asserted_cn="site-1", nonce=nonce, asserter_cert=client_cert,
                                        signature=signature, intermediate_certs=[],
                                        expected_eku=ExtendedKeyUsageOID.CLIENT_AUTH)

        def with_file() -> float:
            start = time.perf_counter()
            asserter.sign_common_name(str(uuid.uuid4()))
            server_nonce = str(uuid.uuid4())
            middle = time.perf_counter()
            signature = sign_content("site-1" + server_nonce, client_key, return_str=False)
            resume = time.perf_counter()
            nvflare_check(server_nonce, signature)
            asserter.sign("site-1" + str(uuid.uuid4()), return_str=True)
            return (middle - start) + (time.perf_counter() - resume)

        def with_agent() -> float:
            start = time.perf_counter()
            server_nonce = client.nvflare_server_challenge("server1", str(uuid.uuid4())).nonce
            middle = time.perf_counter()
            signature = sign_content("site-1" + server_nonce, client_key, return_str=False)
            resume = time.perf_counter()
            client.nvflare_server_register("server1", server_nonce, "site-1", client_pem, signature,
                                           str(uuid.uuid4()))
            nvflare_check(server_nonce, signature)
            return (middle - start) + (time.perf_counter() - resume)

        for run in (with_file, with_agent):  # warm-up
            run()
        times = {"file": [], "agent": []}
        for _ in range(REGISTRATIONS):  # interleaved, so both see the same load
            times["file"].append(with_file())
            times["agent"].append(with_agent())
    finally:
        stop_agent(agent)

    row = []
    for mode in ("file", "agent"):
        total = sum(times[mode])
        row.append(f"{mode}: {REGISTRATIONS / total:.0f} registrations/s, "
                   f"p50 {statistics.median(times[mode]) * 1e3:.2f} ms")
    records = agent.audit_records()
    for op in ("nvflare_server_challenge", "nvflare_server_register"):
        latency = [r["latency_us"] for r in records if r.get("op") == op and r["outcome"] == "ok"]
        row.append(f"{op} in the agent p50 {statistics.median(latency) / 1e3:.2f} ms")
    print("\nserver key work per registration (" + "; ".join(row) + f"; n={REGISTRATIONS})")
    ok = [r for r in records if r.get("op") == "nvflare_server_register" and r["outcome"] == "ok"]
    assert len(ok) == REGISTRATIONS + 1
