"""The client against the real agent: every operation, signatures checked with cryptography
(maximum salt, and exactly 222), OAEP made by cryptography decrypted, and the typed errors."""

from __future__ import annotations

import os
import threading

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keyward import KeywardClient, errors

MGF = padding.MGF1(hashes.SHA256())
OAEP = padding.OAEP(mgf=MGF, algorithm=hashes.SHA256(), label=None)
CHALLENGE = b"site-1" + b"0f8fad5b-d9cb-469f-a165-70867728950e"  # CN + server nonce, 42 bytes


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def site_public(agent) -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(agent.client().public_key("site-1").spki_der)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def test_hello(agent):
    hello = agent.client().hello()
    assert hello.agent.startswith("keyward ") and hello.protocol == 1 and hello.backend == "pkcs11"


def test_list_keys(agent):
    keys = {k.key: k for k in agent.client().list_keys()}
    assert keys["site-1"].algorithm == "rsa-2048"
    assert keys["site-1"].generated_on_device and keys["site-1"].has_certificate
    assert keys["ec-1"].algorithm == "p-256" and not keys["ec-1"].has_certificate


def test_public_key_matches_the_installed_certificate(agent, site_public):
    info = agent.client().public_key("site-1")
    assert info.key == "site-1" and info.algorithm == "rsa-2048"
    assert info.spki_der == spki(agent.site_cert.public_key())
    cert = x509.load_pem_x509_certificate(info.certificate_pem.encode())
    assert cert == agent.site_cert
    assert agent.client().public_key("ec-1").certificate_pem is None


def test_nvflare_signature_verifies_with_max_length_and_with_exactly_222(agent, site_public):
    sig = agent.client().sign("site-1", "nvflare", CHALLENGE)
    assert sig.profile == "nvflare" and len(sig.signature) == 256
    site_public.verify(sig.signature, CHALLENGE, padding.PSS(MGF, padding.PSS.MAX_LENGTH), hashes.SHA256())
    site_public.verify(sig.signature, CHALLENGE, padding.PSS(MGF, 222), hashes.SHA256())
    with pytest.raises(InvalidSignature):  # so the salt really is 222, not 32
        site_public.verify(sig.signature, CHALLENGE, padding.PSS(MGF, 32), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        site_public.verify(sig.signature, CHALLENGE + b"x", padding.PSS(MGF, 222), hashes.SHA256())


def test_tls_profile_resolves_to_pss_sha256_with_salt_32(agent, site_public):
    sig = agent.client().sign("site-1", "tls", b"handshake transcript")
    assert sig.profile == "tls-rsa-pss-sha256"
    site_public.verify(sig.signature, b"handshake transcript", padding.PSS(MGF, 32), hashes.SHA256())


def test_oaep_ciphertext_made_by_cryptography_decrypts(agent, site_public):
    client = agent.client()
    for plaintext in (os.urandom(32), b"", os.urandom(190)):
        assert client.decrypt("site-1", site_public.encrypt(plaintext, OAEP)) == plaintext


def test_status_counts_signatures_and_decryptions(agent, site_public):
    client = agent.client()
    before = client.status()
    assert before.backend_health == "ok" and before.backend == "pkcs11" and "fl-site" in before.device
    client.sign("site-1", "nvflare", b"count me")
    client.decrypt("site-1", site_public.encrypt(b"k", OAEP))
    after = client.status()
    assert after.signatures == before.signatures + 1
    assert after.decryptions == before.decryptions + 1
    assert after.requests_ok >= before.requests_ok + 3


def test_one_connection_carries_many_requests(agent, site_public):
    with agent.client().connect() as conn:
        assert conn.hello().protocol == 1
        with pytest.raises(errors.UnknownKey):
            conn.sign("no-such-key", "nvflare", b"x")
        sig = conn.sign("site-1", "nvflare", b"after an error")
        site_public.verify(sig.signature, b"after an error", padding.PSS(MGF, 222), hashes.SHA256())
        assert conn.status().backend_health == "ok"


@pytest.mark.parametrize(
    "call, exc, code",
    [
        (lambda c: c.sign("no-such-key", "nvflare", b"x"), errors.UnknownKey, "unknown_key"),
        (lambda c: c.public_key("no-such-key"), errors.UnknownKey, "unknown_key"),
        (lambda c: c.sign("site-1", "rsa-md5", b"x"), errors.InvalidRequest, "invalid_request"),
        (lambda c: c.sign("../etc", "nvflare", b"x"), errors.InvalidRequest, "invalid_request"),
        (lambda c: c.decrypt("site-1", b"\x00" * 100), errors.InvalidRequest, "invalid_request"),
        (lambda c: c.decrypt("site-1", b"\x01" * 256), errors.DecryptionFailed, "decryption_failed"),
        (lambda c: c.sign("ec-1", "nvflare", b"x"), errors.Unsupported, "unsupported"),
        (lambda c: c.decrypt("ec-1", b"\x00" * 64), errors.Unsupported, "unsupported"),
        (lambda c: c.call("format_disk"), errors.UnknownOperation, "unknown_operation"),
        (lambda c: c.sign("site-1", "nvflare", b"x" * 1_100_000), errors.FrameTooLarge, "frame_too_large"),
    ],
)
def test_agent_errors_arrive_as_typed_exceptions(agent, call, exc, code):
    with pytest.raises(exc) as info:
        call(agent.client())
    assert info.value.code == code
    assert str(info.value).startswith("keyward: ") and agent.socket in str(info.value)
    assert agent.client().hello().protocol == 1  # and the agent still serves


def test_decryption_failed_is_also_a_value_error(agent):
    with pytest.raises(ValueError):
        agent.client().decrypt("site-1", b"\x02" * 256)


def test_wrong_socket_is_agent_unreachable(agent):
    wrong = os.path.join(os.path.dirname(agent.socket), "other.sock")
    with pytest.raises(errors.AgentUnreachable, match="ENOENT"):
        KeywardClient(wrong).hello()


def test_concurrent_signers_share_one_client(agent, site_public):
    client = agent.client()
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                msg = f"site-1 thread {n} message {i}".encode()
                sig = client.sign("site-1", "nvflare", msg).signature
                site_public.verify(sig, msg, padding.PSS(MGF, 222), hashes.SHA256())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
