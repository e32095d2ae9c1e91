"""gRPC mutual-TLS connection latency for a client: the key as a file (`grpc.ssl_channel_credentials`),
the key in SoftHSM through gRPC's custom signer and the agent (nvflare_grpc.py), and a plaintext
channel through `keyward tunnel` (the agent signs there too), against one grpcio server that
requires client certificates, in the same run (docs/benchmarks.md). Each connection is new (a
local subchannel pool): TCP, the TLS 1.3 handshake, HTTP/2 settings. Asserts only that every
mode connects; `KEYWARD_BENCH_HANDSHAKES` (default 20) per mode; `-s` prints the row.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent import futures

import grpc
import grpc.experimental
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from federation import free_port, wait_for_line
from keyward.nvflare_grpc import tls_signer

HANDSHAKES = int(os.environ.get("KEYWARD_BENCH_HANDSHAKES", "20"))
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _connect(channel: grpc.Channel) -> float:
    start = time.perf_counter()
    try:
        grpc.channel_ready_future(channel).result(timeout=15)
        return time.perf_counter() - start
    finally:
        channel.close()


def _tls_signs(agent) -> int:
    return sum(1 for r in agent.audit_records()
               if r.get("op") == "sign" and r.get("key") == "site-1" and str(r.get("profile")).startswith("tls-")
               and r["outcome"] == "ok")


def test_measure_grpc_mtls_connection_latency_custom_signer_key_file_and_tunnel(agent, short_tmp):
    ca = agent.ca
    root = _pem(ca.cert)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = ca.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server1")]),
                           server_key.public_key(), "localhost")
    file_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    file_cert = ca.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-1")]), file_key.public_key(),
                         "site-1")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    credentials = grpc.ssl_server_credentials([(_key_pem(server_key), _pem(server_cert))], root_certificates=root,
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    (short_tmp / "rootCA.pem").write_bytes(root)
    tunnel_port = free_port()
    log = short_tmp / "tunnel.log"
    with open(log, "ab") as out:
        tunnel = subprocess.Popen([str(agent.bin), "tunnel", "--key", "site-1", "--listen", f"127.0.0.1:{tunnel_port}",
                                   "--upstream", f"127.0.0.1:{port}", "--server-name", "localhost",
                                   "--ca", str(short_tmp / "rootCA.pem"), "--socket", agent.socket, "--alpn", "h2"],
                                  env=agent.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_line(log, "keyward tunnel listening", tunnel, 20)
        signer = tls_signer(agent.client(), "site-1")
        site_cert = agent.cert_file.read_bytes()
        modes = {
            "key file": lambda: grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(
                root_certificates=root, private_key=_key_pem(file_key), certificate_chain=_pem(file_cert)),
                options=OPTIONS),
            "custom signer": lambda: grpc.secure_channel(
                f"localhost:{port}", grpc.experimental.ssl_channel_credentials_with_custom_signer(
                    private_key_sign_fn=signer, root_certificates=root, certificate_chain=site_cert),
                options=OPTIONS),
            "keyward tunnel": lambda: grpc.insecure_channel(f"127.0.0.1:{tunnel_port}", options=OPTIONS),
        }
        signs_before = _tls_signs(agent)
        for make in modes.values():  # warm-up, and each mode must connect
            _connect(make())
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(HANDSHAKES):
            for name, make in modes.items():
                times[name].append(_connect(make()))
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)
        server.stop(None)
    # One agent signature per custom-signer and per tunnel connection.
    assert _tls_signs(agent) - signs_before == 2 * (HANDSHAKES + 1)
    row = "; ".join(f"{name} p50 {statistics.median(t) * 1e3:.2f} ms" for name, t in times.items())
    print(f"\ngRPC mTLS new connection ({row}; n={HANDSHAKES})")
