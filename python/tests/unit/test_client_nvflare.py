"""The client's NVFlare flow operations (docs/protocol.md §7) against a scripted fake agent: the
exact request fields (binary ones in base64, `token_signature` as text), the typed replies, the
agent's refusal codes as typed errors, and replies of the wrong kind or shape."""

from __future__ import annotations

import base64

import pytest

from keyward import KeywardClient, Registration, errors

from test_client import err, fake, ok, recv_frame, send_json  # noqa: F401  (fake is a fixture)

NONCE = "0f8fad5b-d9cb-469f-a165-70867728950e"
SERVER_NONCE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
SERVER_CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SIGNATURE = bytes(range(256))
SITE_CERT = b"-----BEGIN CERTIFICATE-----\nsite\n-----END CERTIFICATE-----\n"
SESSION = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def scripted(replies: dict):
    """A handler answering each op with ``replies[op](request)``, over any number of requests."""

    def handler(conn, seen):
        while True:
            try:
                req = recv_frame(conn)
            except Exception:
                return
            seen.append(req)
            send_json(conn, replies[req["op"]](req))

    return handler


GOOD = {
    "nvflare_challenge": lambda r: ok(r["id"], kind="nvflare_challenge", nonce=NONCE),
    "nvflare_register": lambda r: ok(r["id"], kind="nvflare_registration", cn="site-1", cert=b64(SITE_CERT),
                                     signature=b64(SIGNATURE), session=SESSION, later_field=1),
    "nvflare_verify_token": lambda r: ok(r["id"], kind="token_verified", server_cn="server1"),
}


def test_the_flow_sends_the_documented_fields_and_parses_the_replies(fake):
    agent = fake(scripted(GOOD))
    client = KeywardClient(agent.path)
    nonce = client.nvflare_challenge("site-1")
    reg = client.nvflare_register("site-1", nonce, SERVER_CERT, "server1", SIGNATURE, SERVER_NONCE)
    server_cn = client.nvflare_verify_token(reg.session, "site-1", "tok", "c2ln")
    assert nonce == NONCE and server_cn == "server1"
    assert reg == Registration(cn="site-1", cert=SITE_CERT, signature=SIGNATURE, session=SESSION)
    assert SESSION not in repr(reg)

    challenge, register, verify = agent.seen
    assert list(challenge) == ["v", "id", "op", "key"] and challenge["key"] == "site-1"
    assert list(register)[:3] == ["v", "id", "op"]
    assert {k: v for k, v in register.items() if k not in ("v", "id")} == {
        "op": "nvflare_register", "key": "site-1", "client_nonce": NONCE, "server_cert": b64(SERVER_CERT),
        "server_cn": "server1", "server_signature": b64(SIGNATURE), "server_nonce": SERVER_NONCE}
    assert {k: v for k, v in verify.items() if k not in ("v", "id")} == {
        "op": "nvflare_verify_token", "session": SESSION, "client_name": "site-1", "token": "tok",
        "token_signature": "c2ln"}  # NVFlare's base64 text, passed on as it is


def test_the_operations_also_work_on_one_connection(fake):
    agent = fake(scripted(GOOD))
    with KeywardClient(agent.path).connect() as conn:
        nonce = conn.nvflare_challenge("site-1")
        reg = conn.nvflare_register("site-1", nonce, bytearray(SERVER_CERT), "server1", memoryview(SIGNATURE),
                                    SERVER_NONCE)
        assert conn.nvflare_verify_token(reg.session, "site-1", "tok", "c2ln") == "server1"
    assert len({r["id"] for r in agent.seen}) == 3


@pytest.mark.parametrize("code, cls", [
    ("nonce_unknown", errors.NonceUnknown),
    ("nonce_expired", errors.NonceExpired),
    ("nonce_replayed", errors.NonceReplayed),
    ("nonce_not_yours", errors.NonceNotYours),
    ("server_identity_mismatch", errors.ServerIdentityMismatch),
    ("server_untrusted", errors.ServerUntrusted),
    ("server_cert_expired", errors.ServerCertExpired),
    ("server_cert_usage", errors.ServerCertUsage),
    ("server_signature_invalid", errors.ServerSignatureInvalid),
    ("policy_denied", errors.PolicyDenied),
])
def test_register_refusals_are_typed_errors_naming_the_code_and_the_agents_message(fake, code, cls):
    message = f"refused for the test ({code})"
    agent = fake(scripted({"nvflare_register": lambda r: err(r["id"], code, message)}))
    with pytest.raises(cls) as info:
        KeywardClient(agent.path).nvflare_register("site-1", NONCE, SERVER_CERT, "server1", SIGNATURE, SERVER_NONCE)
    exc = info.value
    assert (exc.code, exc.reason, exc.op, exc.key, exc.socket_path) == (code, message, "nvflare_register", "site-1",
                                                                      agent.path)
    assert f"failed: {code}: {message}" in str(exc) and str(exc).startswith("keyward: `nvflare_register`")


def test_challenge_and_verify_token_refusals_are_typed(fake):
    agent = fake(scripted({
        "nvflare_challenge": lambda r: err(r["id"], "policy_denied", "key `site-1` has no [keys.site-1.nvflare]"),
        "nvflare_verify_token": lambda r: err(r["id"], "token_signature_invalid", "token signature does not verify"),
    }))
    client = KeywardClient(agent.path)
    with pytest.raises(errors.PolicyDenied, match="has no"):
        client.nvflare_challenge("site-1")
    with pytest.raises(errors.TokenSignatureInvalid) as info:
        client.nvflare_verify_token(SESSION, "site-1", "tok", "c2ln")
    assert info.value.op == "nvflare_verify_token" and info.value.key is None


@pytest.mark.parametrize("op, reply", [
    ("nvflare_challenge", {"kind": "signature", "profile": "nvflare", "signature": "AQI="}),
    ("nvflare_challenge", {"kind": "nvflare_challenge", "nonce": 5}),
    ("nvflare_challenge", {"kind": "nvflare_challenge", "nonce": ""}),
    ("nvflare_register", {"kind": "nvflare_registration", "cn": "site-1", "cert": "not base64!",
                          "signature": "AQI=", "session": SESSION}),
    ("nvflare_register", {"kind": "nvflare_registration", "cn": "site-1", "cert": "AQI=", "signature": "AQI="}),
    ("nvflare_verify_token", {"kind": "token_verified"}),
])
def test_replies_of_the_wrong_kind_or_shape_are_protocol_errors(fake, op, reply):
    agent = fake(scripted({op: lambda r: ok(r["id"], **reply)}))
    client = KeywardClient(agent.path)
    call = {
        "nvflare_challenge": lambda: client.nvflare_challenge("site-1"),
        "nvflare_register": lambda: client.nvflare_register("site-1", NONCE, SERVER_CERT, "server1", SIGNATURE,
                                                            SERVER_NONCE),
        "nvflare_verify_token": lambda: client.nvflare_verify_token(SESSION, "site-1", "tok", "c2ln"),
    }[op]
    with pytest.raises(errors.ProtocolError):
        call()


@pytest.mark.parametrize("args, name", [
    (("site-1", NONCE, "PEM text", "server1", SIGNATURE, SERVER_NONCE), "server_cert"),
    (("site-1", NONCE, SERVER_CERT, "server1", "c2ln", SERVER_NONCE), "server_signature"),
    (("site-1", None, SERVER_CERT, "server1", SIGNATURE, SERVER_NONCE), "client_nonce"),
    (("site-1", NONCE, SERVER_CERT, b"server1", SIGNATURE, SERVER_NONCE), "server_cn"),
])
def test_register_arguments_of_the_wrong_type_are_refused_before_anything_is_sent(fake, args, name):
    agent = fake(scripted(GOOD))
    with pytest.raises(TypeError, match=f"`{name}`"):
        KeywardClient(agent.path).nvflare_register(*args)
    with pytest.raises(TypeError, match="`token_signature`"):
        KeywardClient(agent.path).nvflare_verify_token(SESSION, "site-1", "tok", SIGNATURE)  # type: ignore[arg-type]
    assert agent.seen == []
