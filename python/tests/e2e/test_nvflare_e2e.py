"""The real nvflare (2.9.0, from PyPI) using the token key through keyward_nvflare.pth, with no
key file: NVFlare's IdentityAsserter signs the registration challenge and NVFlare's own
IdentityVerifier/verify_content accept it; CredentialManager parses the reference (twice) and
builds its cell cipher; the cell cipher works both ways between the site (agent) and a server
(a plain key). Each case runs NVFlare code in a fresh interpreter of a venv where the .pth is
installed, as an NVFlare client process would."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from cryptography import x509

from kwharness import run_python

NVFLARE_VERSION = "2.9.0"


def nvflare(agent, nvflare_python, code: str, **paths: str) -> dict:
    """Runs ``code`` with the kit paths bound as REF, CRT, ROOT (and ``paths``); returns the JSON
    object it prints last."""
    names = {"REF": str(agent.reference), "CRT": str(agent.cert_file), "ROOT": str(agent.root_ca_file), **paths}
    header = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    proc = run_python(header + code, python=nvflare_python)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_pinned_nvflare_is_the_one_under_test(agent, nvflare_python):
    out = nvflare(agent, nvflare_python, """
import json, nvflare, keyward._hook
print(json.dumps({"version": nvflare.__version__, "hook": keyward._hook.installed()}))
""")
    assert out == {"version": NVFLARE_VERSION, "hook": True}


def test_identity_asserter_signature_is_accepted_by_nvflares_identity_verifier(agent, nvflare_python):
    out = nvflare(agent, nvflare_python, """
import json, uuid
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID
from nvflare.lighter.utils import verify_content
from nvflare.private.fed.utils.identity_utils import IdentityAsserter, IdentityVerifier, InvalidCNSignature

asserter = IdentityAsserter(private_key_file=REF, cert_file=CRT)  # as Authenticator does
nonce = str(uuid.uuid4())                                        # the server's nonce
signature = asserter.sign_common_name(nonce=nonce)

# What the server does with the register message (fed_server.py -> client_manager.py):
chain = x509.load_pem_x509_certificates(asserter.cert_data)
verifier = IdentityVerifier(root_cert_file=ROOT)
ok = verifier.verify_common_name(asserted_cn="site-1", nonce=nonce, asserter_cert=chain[0], signature=signature,
                                 intermediate_certs=chain[1:], expected_eku=ExtendedKeyUsageOID.CLIENT_AUTH)
verify_content(content="site-1" + nonce, signature=signature, public_key=chain[0].public_key())
chain[0].public_key().verify(signature, ("site-1" + nonce).encode(),
                             padding.PSS(padding.MGF1(hashes.SHA256()), 222), hashes.SHA256())
try:
    verifier.verify_common_name("site-1", str(uuid.uuid4()), chain[0], signature, chain[1:], ExtendedKeyUsageOID.CLIENT_AUTH)
    wrong_nonce = "accepted"
except InvalidCNSignature:
    wrong_nonce = "refused"
b64 = asserter.sign("content", return_str=True)  # sign_content's base64 form
print(json.dumps({"key": type(asserter.pri_key).__name__, "cn": asserter.cn, "len": len(signature),
                  "raw": isinstance(signature, bytes), "ok": ok, "wrong_nonce": wrong_nonce,
                  "b64": asserter.verify_signature("content", b64)}))
""")
    assert out == {"key": "RemoteRSAPrivateKey", "cn": "site-1", "len": 256, "raw": True, "ok": True,
                   "wrong_nonce": "refused", "b64": True}


def test_credential_manager_parses_the_reference_twice_and_builds_its_cipher(agent, nvflare_python):
    out = nvflare(agent, nvflare_python, """
import copy, json
from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
from nvflare.fuel.f3.drivers.driver_params import DriverParams
from nvflare.fuel.f3.endpoint import Endpoint
from nvflare.lighter.utils import load_private_key, load_private_key_file

ep = Endpoint("site-1", conn_props={DriverParams.CA_CERT.value: ROOT, DriverParams.CLIENT_CERT.value: CRT,
                                    DriverParams.CLIENT_KEY.value: REF})
cm = CredentialManager(local_endpoint=ep)
k1, k2 = cm.get_local_key(), cm.get_local_key()
k3 = load_private_key(open(REF).read())   # nvflare's str variant
k4 = load_private_key_file(REF)           # and its file variant (passes backend=)
print(json.dumps({"cipher": cm.cell_cipher is not None, "types": sorted({type(k).__name__ for k in (k1, k2, k3, k4)}),
                  "same_pub": k1.public_key() == k2.public_key() == k4.public_key(),
                  "deepcopy": copy.deepcopy(k1) is k1}))
""")
    assert out == {"cipher": True, "types": ["RemoteRSAPrivateKey"], "same_pub": True, "deepcopy": True}


@pytest.fixture(scope="module")
def server_credentials(agent, tmp_path_factory):
    """A server key and certificate from the same CA, as `nvflare provision` makes them."""
    folder = tmp_path_factory.mktemp("server")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = agent.ca.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server1"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]),
                          key.public_key(), "server1")
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(folder / "server.key"), str(folder / "server.crt")


def test_cell_cipher_works_both_ways_through_the_agent(agent, nvflare_python, server_credentials):
    skey, scrt = server_credentials
    before = agent.client().status()
    out = nvflare(agent, nvflare_python, """
import json
from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
from nvflare.fuel.f3.drivers.driver_params import DriverParams
from nvflare.fuel.f3.endpoint import Endpoint

site = CredentialManager(Endpoint("site-1", conn_props={
    DriverParams.CA_CERT.value: ROOT, DriverParams.CLIENT_CERT.value: CRT, DriverParams.CLIENT_KEY.value: REF}))
server = CredentialManager(Endpoint("server", conn_props={
    DriverParams.CA_CERT.value: ROOT, DriverParams.SERVER_CERT.value: SCRT, DriverParams.SERVER_KEY.value: SKEY}))
site_cert, server_cert = open(CRT, "rb").read(), open(SCRT, "rb").read()

to_site = server.encrypt(site_cert, b"global model weights")      # OAEP to the token key
from_server = site.decrypt(server_cert, to_site)                   # decrypt: through the agent
to_server = site.encrypt(server_cert, b"local metrics")             # PSS signature: through the agent
from_site = server.decrypt(site_cert, to_server)
print(json.dumps({"site_got": from_server.decode(), "server_got": from_site.decode()}))
""", SKEY=skey, SCRT=scrt)
    assert out == {"site_got": "global model weights", "server_got": "local metrics"}
    after = agent.client().status()
    assert after.decryptions == before.decryptions + 1
    assert after.signatures >= before.signatures + 1


def test_a_tampered_cell_cipher_message_is_refused(agent, nvflare_python, server_credentials):
    skey, scrt = server_credentials
    out = nvflare(agent, nvflare_python, """
import json
from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
from nvflare.fuel.f3.drivers.driver_params import DriverParams
from nvflare.fuel.f3.endpoint import Endpoint

site = CredentialManager(Endpoint("site-1", conn_props={
    DriverParams.CA_CERT.value: ROOT, DriverParams.CLIENT_CERT.value: CRT, DriverParams.CLIENT_KEY.value: REF}))
server = CredentialManager(Endpoint("server", conn_props={
    DriverParams.CA_CERT.value: ROOT, DriverParams.SERVER_CERT.value: SCRT, DriverParams.SERVER_KEY.value: SKEY}))
msg = bytearray(server.encrypt(open(CRT, "rb").read(), b"weights"))
msg[-1] ^= 1
try:
    site.decrypt(open(SCRT, "rb").read(), bytes(msg))
    result = "accepted"
except Exception as exc:
    result = type(exc).__name__
print(json.dumps({"result": result}))
""", SKEY=skey, SCRT=scrt)
    assert out["result"] == "InvalidSignature"


def test_an_unreachable_agent_is_reported_in_nvflares_own_log(agent, nvflare_python, short_tmp):
    """Spec §2.3: in NVFlare a key that fails to parse inside Cell() gives a silent hang. The
    hook raises at parse time and logs under "keyward", which NVFlare's log config (handlers on
    the root logger) writes to its console and log files."""
    from keyward import keyref

    dead = str(short_tmp / "agent.sock")
    ref = short_tmp / "client.key"
    keyref.write(ref, keyref.KeyReference(socket=dead, key="site-1"))
    logs = short_tmp / "logs"
    logs.mkdir()
    out = nvflare(agent, nvflare_python, """
import copy, json, os
from nvflare.fuel.utils.log_utils import apply_log_config, default_log_dict
apply_log_config(copy.deepcopy(default_log_dict), LOGS)
from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
from nvflare.fuel.f3.drivers.driver_params import DriverParams
from nvflare.fuel.f3.endpoint import Endpoint
try:
    CredentialManager(Endpoint("site-1", conn_props={
        DriverParams.CA_CERT.value: ROOT, DriverParams.CLIENT_CERT.value: CRT, DriverParams.CLIENT_KEY.value: BADREF}))
    raised = None
except Exception as exc:
    raised = type(exc).__name__
logged = {name: open(os.path.join(LOGS, name)).read() for name in sorted(os.listdir(LOGS))}
print(json.dumps({"raised": raised, "logged": logged}))
""", BADREF=str(ref), LOGS=str(logs))
    assert out["raised"] == "AgentUnreachable"
    text_logs = {name: text for name, text in out["logged"].items() if name.endswith(".txt")}
    assert text_logs, out["logged"]
    for name, text in text_logs.items():
        assert "keyward" in text and dead in text and "cannot connect" in text, (name, text)


def test_sign_folders_signs_a_job_with_the_token_key_and_refuses_a_file_over_the_frame_limit(agent, nvflare_python,
                                                                                              tmp_path):
    """What an admin's job submission does with its key (file_transfer.py `push_folder`):
    `load_private_key_file(client.key)` then `sign_folders`. With the reference, every file and
    sub-folder name is signed by the agent, and NVFlare's own folder check accepts the result.
    `sign` carries the whole file (the agent hashes it), so a file over about 3/4 of the agent's
    `max_frame_bytes` (base64 on the wire; 1 MiB by default) is refused with `frame_too_large`."""
    job = tmp_path / "job"
    (job / "app" / "config").mkdir(parents=True)
    (job / "meta.json").write_text('{"name": "kw"}')
    (job / "app" / "config" / "config_fed_client.json").write_bytes(b"x" * 700_000)  # fits in 1 MiB of base64
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.bin").write_bytes(b"y" * 800_000)  # does not
    out = nvflare(agent, nvflare_python, """
import json
from nvflare.lighter.utils import load_private_key_file, sign_folders, verify_folder_signature_and_get_signers
key = load_private_key_file(REF)
sign_folders(JOB, key, CRT)
verified, signers = verify_folder_signature_and_get_signers(JOB, ROOT)
try:
    sign_folders(BIG, key, CRT)
    refused = None
except Exception as exc:
    refused = [type(exc).__name__, str(exc)]
print(json.dumps({"key": type(key).__name__, "verified": verified, "signers": [list(s) for s in signers],
                  "refused": refused}))
""", JOB=str(job), BIG=str(big))
    assert out["key"] == "RemoteRSAPrivateKey"
    assert out["verified"] is True and [s[0] for s in out["signers"]] == ["site-1"], out
    assert out["refused"] and out["refused"][0] == "FrameTooLarge" and "keyward" in out["refused"][1], out
