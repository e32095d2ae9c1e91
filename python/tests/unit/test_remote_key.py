"""The delegating key with a fake agent client (a local RSA key): only NVFlare's PSS and OAEP
parameters pass, every other padding/hash and any export is refused, agent errors are logged
under the "keyward" logger and raised."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from keyward import errors, keyref
from keyward.nvflare import RemoteRSAPrivateKey, load_reference_key, max_pss_salt, open_reference
from keyward.protocol import Hello, PublicKeyInfo, Signature, Status

PSS_MAX = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@pytest.fixture(scope="module")
def local_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeClient:
    """Does what the agent does, with a key in memory."""

    socket_path = "/run/fake/agent.sock"

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fail: Exception | None = None) -> None:
        self.key = key
        self.fail = fail
        self.calls: list[tuple] = []

    def hello(self) -> Hello:
        self.calls.append(("hello",))
        if self.fail:
            raise self.fail
        return Hello("fake 0", 1, "memory")

    def public_key(self, key: str) -> PublicKeyInfo:
        self.calls.append(("public_key", key))
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        alg = "rsa-2048" if isinstance(self.key, rsa.RSAPrivateKey) else "p-256"
        return PublicKeyInfo(key, alg, der, None)

    def sign(self, key: str, profile: str, data: bytes) -> Signature:
        self.calls.append(("sign", key, profile, data))
        if self.fail:
            raise self.fail
        assert profile == "nvflare"
        return Signature(profile, self.key.sign(data, PSS_MAX, hashes.SHA256()))

    def decrypt(self, key: str, data: bytes) -> bytes:
        self.calls.append(("decrypt", key, data))
        if self.fail:
            raise self.fail
        return self.key.decrypt(data, OAEP)


@pytest.fixture
def remote(local_key):
    client = FakeClient(local_key)
    return RemoteRSAPrivateKey(client, "site-1", local_key.public_key()), client


def test_is_an_rsa_private_key_with_the_agents_public_half(remote, local_key):
    key, _ = remote
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers() == local_key.public_key().public_numbers()
    assert "site-1" in repr(key) and key.socket_path == FakeClient.socket_path


def test_max_salt_is_222_for_rsa_2048():
    assert max_pss_salt(2048) == 222 and max_pss_salt(3072) == 350
    assert max_pss_salt(2049) == 222 and max_pss_salt(2050) == 223  # emLen = ceil((modBits - 1) / 8)


@pytest.mark.parametrize("salt", [padding.PSS.MAX_LENGTH, padding.MGF1.MAX_LENGTH, 222])
def test_sign_accepts_nvflares_pss_and_sends_the_message_with_the_nvflare_profile(remote, salt):
    key, client = remote
    msg = b"site-1" + b"0f8fad5b-d9cb-469f-a165-70867728950e"
    sig = key.sign(msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt), hashes.SHA256())
    key.public_key().verify(sig, msg, PSS_MAX, hashes.SHA256())
    key.public_key().verify(sig, msg, padding.PSS(padding.MGF1(hashes.SHA256()), 222), hashes.SHA256())
    assert client.calls == [("sign", "site-1", "nvflare", msg)]
    assert isinstance(key.sign(bytearray(msg), PSS_MAX, hashes.SHA256()), bytes)


@pytest.mark.parametrize(
    "pad, alg, why",
    [
        (padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256(), "salt length 32"),
        (padding.PSS(padding.MGF1(hashes.SHA256()), 0), hashes.SHA256(), "salt length 0"),
        (padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256(), "salt length PSS.DIGEST_LENGTH"),
        (padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256(), "salt length PSS.AUTO"),
        (padding.PSS(padding.MGF1(hashes.SHA1()), padding.PSS.MAX_LENGTH), hashes.SHA256(), "mask function MGF1(SHA1)"),
        (padding.PKCS1v15(), hashes.SHA256(), "padding PKCS1v15"),
        (PSS_MAX, hashes.SHA384(), "hash SHA384"),
        (PSS_MAX, hashes.SHA1(), "hash SHA1"),
        (PSS_MAX, Prehashed(hashes.SHA256()), "Prehashed"),
        (OAEP, hashes.SHA256(), "padding OAEP"),
    ],
)
def test_sign_refuses_everything_else_without_asking_the_agent(remote, pad, alg, why, caplog):
    key, client = remote
    with caplog.at_level(logging.ERROR, logger="keyward"):
        with pytest.raises(errors.UnsupportedPadding) as info:
            key.sign(b"data", pad, alg)
    assert why in str(info.value)
    assert str(info.value).startswith("keyward: ")
    assert "keyward" in caplog.text and why in caplog.text
    assert isinstance(info.value, ValueError)
    assert client.calls == []


def test_sign_refuses_non_bytes(remote):
    key, _ = remote
    with pytest.raises(TypeError, match="keyward"):
        key.sign("text", PSS_MAX, hashes.SHA256())  # type: ignore[arg-type]


def test_decrypt_accepts_nvflares_oaep(remote, local_key):
    key, client = remote
    aes_key = bytes(range(32))
    ct = local_key.public_key().encrypt(aes_key, OAEP)
    assert key.decrypt(ct, OAEP) == aes_key
    empty_label = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"")
    assert key.decrypt(ct, empty_label) == aes_key  # an empty label is the same as none (RFC 8017)
    assert client.calls[0] == ("decrypt", "site-1", ct)


@pytest.mark.parametrize(
    "pad, why",
    [
        (padding.PKCS1v15(), "padding PKCS1v15"),
        (padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None), "OAEP parameters"),
        (padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA256(), None), "MGF1(SHA1)"),
        (padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA384(), None), "SHA384"),
        (padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"label"), "OAEP label"),
        (PSS_MAX, "padding PSS"),
    ],
)
def test_decrypt_refuses_other_paddings(remote, pad, why):
    key, client = remote
    with pytest.raises(errors.UnsupportedPadding, match="keyward") as info:
        key.decrypt(b"\x00" * 256, pad)
    assert why in str(info.value)
    assert client.calls == []


@pytest.mark.parametrize("call", [
    lambda k: k.private_numbers(),
    lambda k: k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    lambda k: k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()),
])
def test_the_private_key_cannot_be_exported(remote, call):
    key, client = remote
    with pytest.raises(errors.KeyNotExportable) as info:
        call(key)
    assert "keyward: the private key is inside the token and cannot be exported" in str(info.value)
    assert client.calls == []


def test_copies_are_the_same_object_and_pickling_is_refused(remote):
    key, _ = remote
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key
    assert copy.deepcopy({"k": key})["k"] is key
    with pytest.raises(TypeError, match="keyward"):
        pickle.dumps(key)


@pytest.mark.parametrize("failure", [
    errors.UnknownKey("no key named `site-1`", code="unknown_key", socket_path="/run/fake/agent.sock", op="sign", key="site-1"),
    errors.AgentUnreachable("cannot connect: Connection refused (ECONNREFUSED)", socket_path="/run/fake/agent.sock"),
    errors.BackendUnavailable("token removed", code="backend_unavailable", socket_path="/run/fake/agent.sock", op="sign"),
])
def test_agent_errors_are_raised_and_logged_under_keyward(local_key, failure, caplog):
    key = RemoteRSAPrivateKey(FakeClient(local_key, fail=failure), "site-1", local_key.public_key())
    with caplog.at_level(logging.ERROR, logger="keyward"):
        with pytest.raises(type(failure)) as info:
            key.sign(b"m", PSS_MAX, hashes.SHA256())
    assert info.value is failure
    assert caplog.records[-1].name == "keyward" and caplog.records[-1].levelno == logging.ERROR
    assert "/run/fake/agent.sock" in caplog.text and failure.reason in caplog.text
    with pytest.raises(type(failure)):
        key.decrypt(b"\x00" * 256, OAEP)


def test_a_wrong_length_signature_from_the_agent_is_refused(local_key):
    class Short(FakeClient):
        def sign(self, key, profile, data):
            return Signature(profile, b"\x01" * 255)

    key = RemoteRSAPrivateKey(Short(local_key), "site-1", local_key.public_key())
    with pytest.raises(errors.ProtocolError, match="255-byte signature for a 2048-bit key"):
        key.sign(b"m", PSS_MAX, hashes.SHA256())


def test_open_reference_checks_the_agent_and_the_key_at_load_time(local_key):
    ref = keyref.KeyReference(socket="/run/fake/agent.sock", key="site-1")
    client = FakeClient(local_key)
    key = open_reference(ref, client=client)
    assert client.calls == [("hello",), ("public_key", "site-1")]
    sig = key.sign(b"m", PSS_MAX, hashes.SHA256())
    local_key.public_key().verify(sig, b"m", PSS_MAX, hashes.SHA256())
    with pytest.raises(InvalidSignature):
        local_key.public_key().verify(sig, b"n", PSS_MAX, hashes.SHA256())


def test_open_reference_refuses_a_non_rsa_key(caplog):
    ref = keyref.KeyReference(socket="/run/fake/agent.sock", key="ec-1")
    with caplog.at_level(logging.ERROR, logger="keyward"):
        with pytest.raises(errors.Unsupported, match="key `ec-1` is p-256; NVFlare needs an RSA key"):
            open_reference(ref, client=FakeClient(ec.generate_private_key(ec.SECP256R1())))
    assert "NVFlare needs an RSA key" in caplog.text


def test_open_reference_reports_an_unreachable_agent_with_the_reference(local_key, caplog):
    ref = keyref.KeyReference(socket="/run/fake/agent.sock", key="site-1")
    down = errors.AgentUnreachable("cannot connect: No such file or directory (ENOENT)", socket_path=ref.socket)
    with caplog.at_level(logging.ERROR, logger="keyward"):
        with pytest.raises(errors.AgentUnreachable) as info:
            open_reference(ref, client=FakeClient(local_key, fail=down))
    text = str(info.value)
    assert text.startswith("keyward: ") and ref.socket in text and "key reference for `site-1`" in text
    assert "keyward serve" in text and text in caplog.text


def test_load_reference_key_refuses_a_password_and_bad_references(caplog):
    with pytest.raises(TypeError, match="keyward: a key reference is not encrypted"):
        load_reference_key(keyref.dumps(keyref.KeyReference("/s", "k")), b"secret")
    bad = b"-----BEGIN KEYWARD KEY REFERENCE-----\n!!\n-----END KEYWARD KEY REFERENCE-----\n"
    with caplog.at_level(logging.ERROR, logger="keyward"):
        with pytest.raises(errors.InvalidKeyReference):
            load_reference_key(bad, None)
    assert "not valid base64" in caplog.text


class StatusClient(FakeClient):
    """A fake agent whose ``status`` reports ``entry`` for its one key."""

    def __init__(self, key: rsa.RSAPrivateKey, entry: dict) -> None:
        super().__init__(key)
        self.entry = entry

    def status(self) -> Status:
        self.calls.append(("status",))
        body = {"backend_health": "ok", "backend": "memory", "device": "fake", "uptime_seconds": 1,
                "connections": 1, "requests_ok": 0, "requests_failed": 0, "signatures": 0, "decryptions": 0,
                "workers": 1, "keys": [self.entry]}
        return Status.from_body(body)


@pytest.mark.parametrize("entry, warning", [
    ({"key": "site-1", "renewal": "renewal_due", "certificate_seconds_to_expiry": 86400 * 3},
     "the certificate of key `site-1` is due for renewal (it expires in 3.0 days)"),
    ({"key": "site-1", "renewal": "expired", "certificate_seconds_to_expiry": -5},
     "the certificate of key `site-1` has EXPIRED"),
    ({"key": "site-1", "renewal": "valid", "key_age_exceeded": True},
     "key `site-1` is older than its max_key_age: rotate it"),
    ({"key": "site-1", "renewal": "valid", "certificate_seconds_to_expiry": 86400 * 300}, None),
])
def test_the_client_warns_at_start_when_its_certificate_is_due(local_key, caplog, entry, warning):
    ref = keyref.KeyReference(socket=f"/run/fake/{len(caplog.records)}-{id(entry)}.sock", key="site-1")
    with caplog.at_level(logging.WARNING, logger="keyward"):
        open_reference(ref, client=StatusClient(local_key, entry))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0], warnings
