"""NVFlare's client authentication routed through the agent's NVFlare flow (nvflare_flow.py), with
the real nvflare 2.9.0 and a real agent whose site key has `[keys.site-1.nvflare]`.

A PKI shaped like `nvflare provision` (root CA with KeyUsage keyCertSign/cRLSign/digitalSignature
critical and CA:TRUE; leaves with only SKI, AKI and SAN) is made with `cryptography`. NVFlare's own
`Authenticator.authenticate` runs in a fresh interpreter of a venv with keyward_nvflare.pth
(flow_driver.py), against a fake server cell that signs with nvflare's `sign_content` and checks
the registration with nvflare's `IdentityVerifier`. Forged server replies of every class are
refused by the agent with its own code, logged under "keyward" in NVFlare's log files, and end
the authentication at once. The agent-only classes (unknown, replayed, foreign nonces) are
checked with the client directly."""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyward import errors, keyref

from kwharness import Agent, Ca, prepare_agent, run_python, start_agent, stop_agent

DRIVER = Path(__file__).with_name("flow_driver.py")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nvidia")])


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@dataclass
class Flow:
    agent: Agent
    dir: Path
    servers: dict[str, tuple[str, str]]  # name -> (key file, cert file)
    plain_kit: Path                       # the same site as a plain PEM key file (no keyward)


@pytest.fixture(scope="module")
def flow() -> Iterator[Flow]:
    base = Path(tempfile.mkdtemp(prefix="kwfl", dir="/tmp"))
    try:
        agent = prepare_agent(base)
        agent.ca = ca = Ca.new()
        agent.kit = base / "kit"
        agent.kit.mkdir()
        agent.root_ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        for key in ("site-1", "site-2"):
            agent.keyward("key", "generate", key)
            csr_file = base / f"{key}.csr"
            agent.keyward("csr", key, "--subject", f"CN={key},O=nvidia", "--out", str(csr_file))
            csr = x509.load_pem_x509_csr(csr_file.read_bytes())
            cert_file = _write_cert(base / f"{key}.crt", ca.issue(csr.subject, csr.public_key(), key))
            agent.keyward("cert", "install", key, cert_file)
            agent.enable_nvflare(key, agent.root_ca_file, "server1")
        shutil.copy(base / "site-1.crt", agent.cert_file)
        keyref.write(agent.reference, keyref.KeyReference(socket=agent.socket, key="site-1"))

        servers: dict[str, tuple[str, str]] = {}
        rogue = Ca.new()  # another provision: same project and server names, another root CA
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        for name, issuer, cn, kw in (
            ("server1", ca, "server1", {}),
            ("rogue", rogue, "server1", {}),
            ("server2", ca, "server2", {}),
            ("expired", ca, "server1", {"valid_from": long_ago, "valid_days": 2}),
            ("client_eku", ca, "server1", {"eku": [ExtendedKeyUsageOID.CLIENT_AUTH]}),
        ):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            cert = issuer.issue(_name(cn), key.public_key(), cn, **kw)
            servers[name] = (_write_key(base / f"{name}.key", key), _write_cert(base / f"{name}.crt", cert))

        plain = base / "plain-kit"
        plain.mkdir()
        site_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(plain / "client.key", site_key)
        _write_cert(plain / "client.crt", ca.issue(_name("site-1"), site_key.public_key(), "site-1"))
        shutil.copy(agent.root_ca_file, plain / "rootCA.pem")

        start_agent(agent)
        try:
            yield Flow(agent, base, servers, plain)
        finally:
            stop_agent(agent)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def authenticate(flow: Flow, nvflare_python: str, server: str = "server1", kit: Path | None = None,
                 **scenario) -> dict:
    """Runs nvflare's Authenticator in a fresh interpreter (flow_driver.py) and returns its report."""
    kit = kit or flow.agent.kit
    logs = Path(tempfile.mkdtemp(prefix="logs", dir=flow.dir))
    key, crt = flow.servers[server]
    cfg = {"ref": str(kit / "client.key"), "crt": str(kit / "client.crt"), "root": str(kit / "rootCA.pem"),
           "logs": str(logs), "server_key": key, "server_crt": crt, "server_cn": "server1", **scenario}
    proc = run_python(f"import sys; sys.argv = ['flow_driver', {json.dumps(cfg)!r}]\n"
                      f"exec(compile(open({str(DRIVER)!r}).read(), {str(DRIVER)!r}, 'exec'))",
                      python=nvflare_python, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def registrations(agent: Agent) -> list[dict]:
    return [r for r in agent.audit_records() if r.get("op") == "nvflare_register"]


def test_nvflare_registers_through_the_agent_and_the_server_accepts_it(flow, nvflare_python):
    before = len(registrations(flow.agent))
    status_before = flow.agent.client().status()
    out = authenticate(flow, nvflare_python)
    assert out.get("raised") is None, out
    assert out["patched"] is True
    assert out["server_verified_client"] is True and out["registered_cn"] == "site-1"
    assert out["token"] and out["ssid"] == "ssid-1" and out["verifier"] == "KeywardTokenVerifier"
    log = out["logs"]["log.txt"]
    assert "verified server identity 'server1'" in log
    assert "keyward: the agent verified server `server1` and signed the registration of `site-1`" in log
    assert "keyward: the agent verified the registration token signed by server `server1`" in log

    new = registrations(flow.agent)[before:]
    assert [(r["outcome"], r["payload_len"], r["key"]) for r in new] == [("ok", 42, "site-1")]
    ops = [r["op"] for r in flow.agent.audit_records()]
    assert "nvflare_challenge" in ops and "nvflare_verify_token" in ops
    # The registration was the only signature: no plain `sign` of it was even tried.
    assert flow.agent.client().status().signatures == status_before.signatures + 1


def test_every_challenge_retry_gets_a_fresh_nonce_from_the_agent(flow, nvflare_python):
    out = authenticate(flow, nvflare_python, comm_errors=2)
    assert out.get("raised") is None, out
    assert len(out["nonces"]) == 3 and len(set(out["nonces"])) == 3
    issued = [r for r in flow.agent.audit_records() if r.get("op") == "nvflare_challenge"]
    assert len(issued) >= 3


FORGED = [
    # (what the server sends, scenario, the agent's code)
    ("a certificate from another provision's root CA", {"server": "rogue"}, "server_untrusted"),
    ("a server CN other than the configured identity", {"server": "server2", "server_cn": "server2"},
     "server_identity_mismatch"),
    ("a certificate whose CN is not the claimed CN", {"server": "server2"}, "server_identity_mismatch"),
    ("an expired certificate", {"server": "expired"}, "server_cert_expired"),
    ("a certificate whose EKU lacks serverAuth", {"server": "client_eku"}, "server_cert_usage"),
    ("a signature over another nonce (a replayed reply)", {"sign_nonce": "0f8fad5b-d9cb-469f-a165-70867728950e"},
     "server_signature_invalid"),
    ("a token signed by another key", {"token_key": "rogue"}, "token_signature_invalid"),
]


@pytest.mark.parametrize("what, scenario, code", FORGED, ids=[c for _, _, c in FORGED])
def test_a_forged_server_reply_is_refused_by_the_agent_and_ends_the_authentication(flow, nvflare_python, what,
                                                                                    scenario, code):
    scenario = dict(scenario)
    if "token_key" in scenario:
        scenario["token_key"] = flow.servers[scenario["token_key"]][0]
    before = len(registrations(flow.agent))
    status_before = flow.agent.client().status()
    out = authenticate(flow, nvflare_python, **scenario)

    cls = errors.ERROR_CLASSES[code]
    assert (out.get("raised"), out.get("code")) == (cls.__name__, code), (what, out)
    assert out["seconds"] < 10, "a refusal must end the authentication, not retry"
    if code != "token_signature_invalid":
        assert out["server_verified_client"] is False, "the register message must not be sent"
        assert registrations(flow.agent)[before:][-1]["outcome"] != "ok"
        assert flow.agent.client().status().signatures == status_before.signatures
    # In NVFlare's own log files, with the agent's code and message, naming keyward.
    for name in ("log.txt", "error_log.txt"):
        line = next((ln for ln in out["logs"][name].splitlines() if f"failed: {code}: " in ln), None)
        assert line is not None and " - keyward - ERROR - " in line and "keyward: `nvflare_" in line, (name, out)


def test_a_plain_key_file_keeps_nvflares_own_code_in_a_process_that_uses_keyward(flow, nvflare_python):
    """The patch is per Authenticator: a kit with a real PEM key (here in a process that also
    parsed a reference, so the patch is in place) still registers with NVFlare's own code."""
    out = authenticate(flow, nvflare_python, kit=flow.plain_kit, parse_first=False,
                       also_parse=str(flow.agent.reference))
    assert out.get("raised") is None, out
    assert out["patched"] is True
    assert out["server_verified_client"] is True and out["verifier"] == "TokenVerifier"


def test_no_patch_in_a_process_that_never_parsed_a_reference(flow, nvflare_python):
    out = authenticate(flow, nvflare_python, kit=flow.plain_kit, parse_first=False)
    assert out.get("raised") is None, out
    assert out["patched"] is False and out["verifier"] == "TokenVerifier"


def test_a_key_without_the_nvflare_table_fails_fast_with_the_agents_refusal(flow, nvflare_python, short_tmp):
    """The agent refuses `nvflare_challenge` for a key it has no NVFlare settings for; the plug-in
    never falls back to a plain `sign`."""
    flow.agent.keyward("key", "generate", "site-3")
    kit = short_tmp / "kit3"
    kit.mkdir()
    keyref.write(kit / "client.key", keyref.KeyReference(socket=flow.agent.socket, key="site-3"))
    shutil.copy(flow.agent.cert_file, kit / "client.crt")
    shutil.copy(flow.agent.root_ca_file, kit / "rootCA.pem")
    out = authenticate(flow, nvflare_python, kit=kit)
    assert (out.get("raised"), out.get("code")) == ("PolicyDenied", "policy_denied"), out
    assert "issued no client nonce" in out["logs"]["error_log.txt"]


# --- the refusals only the agent can see, through the client directly --------------------------


def _server_reply(flow: Flow, client_nonce: str, server: str = "server1") -> dict:
    from nvflare.lighter.utils import load_private_key_file, sign_content

    key, crt = flow.servers[server]
    return {"server_cert": Path(crt).read_bytes(), "server_cn": "server1",
            "server_signature": sign_content("server1" + client_nonce, load_private_key_file(key), return_str=False),
            "server_nonce": str(uuid.uuid4())}


def test_a_nonce_the_agent_did_not_issue_is_refused(flow):
    client = flow.agent.client()
    nonce = str(uuid.uuid4())
    with pytest.raises(errors.NonceUnknown):
        client.nvflare_register("site-1", nonce, **_server_reply(flow, nonce))


def test_a_replayed_nonce_is_refused_even_with_a_valid_reply(flow):
    client = flow.agent.client()
    nonce = client.nvflare_challenge("site-1")
    reply = _server_reply(flow, nonce)
    reg = client.nvflare_register("site-1", nonce, **reply)
    assert reg.cn == "site-1" and len(reg.signature) == 256
    with pytest.raises(errors.NonceReplayed):
        client.nvflare_register("site-1", nonce, **reply)


def test_a_nonce_issued_for_another_key_is_refused(flow):
    client = flow.agent.client()
    nonce = client.nvflare_challenge("site-2")
    with pytest.raises(errors.NonceNotYours):
        client.nvflare_register("site-1", nonce, **_server_reply(flow, nonce))


def test_the_registration_signature_verifies_with_nvflares_verifier_and_a_plain_sign_of_it_is_refused(flow):
    from nvflare.lighter.utils import verify_content
    from nvflare.private.fed.utils.identity_utils import IdentityVerifier

    client = flow.agent.client()
    nonce = client.nvflare_challenge("site-1")
    reply = _server_reply(flow, nonce)
    reg = client.nvflare_register("site-1", nonce, **reply)
    chain = x509.load_pem_x509_certificates(reg.cert)
    assert IdentityVerifier(str(flow.agent.root_ca_file)).verify_common_name(
        "site-1", reply["server_nonce"], chain[0], reg.signature, chain[1:], ExtendedKeyUsageOID.CLIENT_AUTH)
    verify_content("site-1" + reply["server_nonce"], reg.signature, chain[0].public_key())
    with pytest.raises(errors.PolicyDenied):
        client.sign("site-1", "nvflare", ("site-1" + reply["server_nonce"]).encode())


def test_nvflares_default_token_signature_is_refused(flow):
    """A register reply without `__token_signature__` gives NVFlare's default "NA"."""
    client = flow.agent.client()
    nonce = client.nvflare_challenge("site-1")
    reg = client.nvflare_register("site-1", nonce, **_server_reply(flow, nonce))
    with pytest.raises(errors.InvalidRequest):
        client.nvflare_verify_token(reg.session, "site-1", str(uuid.uuid4()), "NA")
