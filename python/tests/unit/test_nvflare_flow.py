"""The pieces of nvflare_flow.py that need no agent: which key files it takes over, the
registration hand-over from `nvflare_register` to `sign_common_name` (once, never a plain sign),
log-safe refusals, and patching (idempotent; an nvflare that lacks the names stops the process).
tests/e2e/test_nvflare_flow_e2e.py runs it with the real agent and the real nvflare."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import types

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyward import errors, keyref, nvflare_compat, nvflare_flow
from keyward.protocol import Registration

REF = keyref.KeyReference(socket="/run/keyward/agent.sock", key="site-1")


def registration(cn: str = "site-1", cert: bytes = b"CERT") -> Registration:
    return Registration(cn=cn, cert=cert, signature=b"\x01" * 256, session="s")


def test_reference_for_takes_only_key_references(short_tmp):
    ref_file = short_tmp / "client.key"
    keyref.write(ref_file, REF)
    assert nvflare_flow.reference_for(str(ref_file)) == REF

    pem = short_tmp / "plain.key"
    pem.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    assert nvflare_flow.reference_for(str(pem)) is None
    assert nvflare_flow.reference_for(str(short_tmp / "missing.key")) is None
    assert nvflare_flow.reference_for(None) is None and nvflare_flow.reference_for("") is None


def test_a_broken_reference_is_refused_and_logged(short_tmp, caplog):
    bad = short_tmp / "client.key"
    bad.write_text("-----BEGIN KEYWARD KEY REFERENCE-----\nnot base64!\n-----END KEYWARD KEY REFERENCE-----\n")
    with caplog.at_level(logging.ERROR, logger="keyward"), pytest.raises(errors.InvalidKeyReference):
        nvflare_flow.reference_for(str(bad))
    assert f"cannot use the key reference `{bad}`" in caplog.text


def test_a_registration_is_handed_over_once_for_its_server_nonce():
    reg = registration()
    nvflare_flow._put_registration(REF, "nonce-1", reg)
    assert nvflare_flow.take_registration(REF, "nonce-2") is None
    other_key = keyref.KeyReference(socket=REF.socket, key="site-2")
    assert nvflare_flow.take_registration(other_key, "nonce-1") is None
    assert nvflare_flow.take_registration(REF, "nonce-1") is reg
    assert nvflare_flow.take_registration(REF, "nonce-1") is None


def test_waiting_registrations_are_bounded():
    for i in range(nvflare_flow._MAX_PENDING + 10):
        nvflare_flow._put_registration(REF, f"n{i}", registration())
    assert len(nvflare_flow._pending) == nvflare_flow._MAX_PENDING
    assert nvflare_flow.take_registration(REF, "n0") is None
    assert nvflare_flow.take_registration(REF, f"n{nvflare_flow._MAX_PENDING + 9}") is not None
    nvflare_flow._pending.clear()


class FakeAsserter:
    """What nvflare's IdentityAsserter sets up, without nvflare."""

    def __init__(self, private_key_file: str, cert_file: str) -> None:
        self.private_key_file = private_key_file
        self.cert_file = cert_file
        self.cert_data = b"KIT CERT"
        self.cn = "site-1"

    def sign_common_name(self, nonce: str) -> bytes:
        return b"plain signature over " + nonce.encode()


def test_the_asserter_returns_the_agents_signature_and_never_signs_itself(short_tmp, caplog, monkeypatch):
    ref_file = short_tmp / "client.key"
    keyref.write(ref_file, REF)
    monkeypatch.setattr(nvflare_flow, "_first_cert", lambda pem: ("parsed", pem))
    asserter_class = nvflare_flow._asserter_class(FakeAsserter)

    asserter = asserter_class(private_key_file=str(ref_file), cert_file="client.crt")
    with caplog.at_level(logging.ERROR, logger="keyward"), pytest.raises(errors.RegistrationNotVerified) as info:
        asserter.sign_common_name("server-nonce")
    assert "only through `nvflare_register`" in str(info.value) and "NVFlare registration stopped" in caplog.text

    nvflare_flow._put_registration(REF, "server-nonce", registration(cert=b"KIT CERT"))
    assert asserter.sign_common_name("server-nonce") == b"\x01" * 256
    assert (asserter.cn, asserter.cert_data) == ("site-1", b"KIT CERT")

    # The agent's certificate differs from the kit's: send the agent's, which the signature is bound to.
    nvflare_flow._put_registration(REF, "n2", registration(cert=b"AGENT CERT"))
    with caplog.at_level(logging.WARNING, logger="keyward"):
        asserter.sign_common_name("n2")
    assert asserter.cert_data == b"AGENT CERT" and asserter.cert == ("parsed", b"AGENT CERT")
    assert "differs from `client.crt`" in caplog.text

    plain = asserter_class(private_key_file=str(short_tmp / "plain.key"), cert_file="client.crt")
    assert plain.sign_common_name("x") == b"plain signature over x"  # not a reference: nvflare's own code


def test_a_refusal_quoting_server_text_cannot_forge_log_lines(caplog):
    exc = errors.ServerIdentityMismatch("expected `server1`, the reply claims `evil\n2026-01-01 - root - INFO - ok`",
                                        socket_path=REF.socket, op="nvflare_register", key="site-1")
    with caplog.at_level(logging.ERROR, logger="keyward"), pytest.raises(errors.ServerIdentityMismatch) as info:
        nvflare_flow._refuse(exc, "stopped")
    assert "\n" not in str(info.value) and "\\n2026-01-01" in str(info.value)
    assert info.value.code == "server_identity_mismatch" and info.value.key == "site-1"
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()


def test_an_nvflare_without_the_patched_names_is_left_alone_and_the_process_stopped(monkeypatch):
    module = types.ModuleType("nvflare.private.fed.authenticator")
    module.Authenticator = type("Authenticator", (), {})
    stopped: list[errors.IncompatibleNvflare] = []

    def refuse_start(exc):
        stopped.append(exc)
        raise SystemExit(78)

    monkeypatch.setattr(nvflare_compat, "refuse_start", refuse_start)
    with pytest.raises(SystemExit):
        nvflare_flow.patch_authenticator(module)
    assert len(stopped) == 1
    assert "`nvflare.private.fed.authenticator.Authenticator._challenge_server` is missing" in str(stopped[0])
    assert "`nvflare.private.fed.authenticator.IdentityAsserter` is missing" in str(stopped[0])
    assert not hasattr(module, "IdentityAsserter")


def test_patching_the_real_nvflare_is_idempotent_and_keeps_its_classes():
    code = """
        from nvflare.private.fed import authenticator as a
        from nvflare.private.fed.utils import identity_utils
        from keyward import nvflare_flow
        original = a.Authenticator._challenge_server
        nvflare_flow.patch_authenticator(a)
        patched, asserter = a.Authenticator._challenge_server, a.IdentityAsserter
        nvflare_flow.patch_authenticator(a)
        assert a.Authenticator._challenge_server is patched and a.IdentityAsserter is asserter
        assert patched.__wrapped__ is original
        assert issubclass(asserter, identity_utils.IdentityAsserter)
        assert identity_utils.IdentityAsserter is not asserter  # only the authenticator's name
        print("ok")
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
