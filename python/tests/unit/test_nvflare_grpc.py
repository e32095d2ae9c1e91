"""The gRPC custom signer's pure parts (nvflare_grpc.py): which agent profile each algorithm gRPC
negotiates maps to, and what the signer sends; against a fake agent client. The signer against
the real gRPC and agent: e2e/test_server_key_federation.py."""

from __future__ import annotations

import grpc.experimental
import pytest

from keyward import protocol
from keyward.errors import PolicyDenied, Unsupported
from keyward.nvflare_grpc import SIGNATURE_PROFILES, algorithm_name, tls_signer
from keyward.protocol import Signature


class FakeClient:
    socket_path = "/tmp/fake.sock"

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[str, str, bytes]] = []
        self.refuse = refuse

    def sign(self, key: str, profile: str, data: bytes) -> Signature:
        self.calls.append((key, profile, data))
        if self.refuse:
            raise PolicyDenied("no", socket_path=self.socket_path, key=key)
        return Signature(profile=profile, signature=b"sig")


def test_every_algorithm_maps_to_an_agent_tls_profile_and_grpcs_ints_are_named():
    members = grpc.experimental.PrivateKeySignatureAlgorithm
    for name, profile in SIGNATURE_PROFILES.items():
        assert profile in protocol.PROFILES, profile
        assert algorithm_name(int(getattr(members, name))) == name
    assert algorithm_name(99) == "99"


def test_the_signer_asks_the_agent_with_the_negotiated_profile():
    client = FakeClient()
    sign = tls_signer(client, "site-1")  # type: ignore[arg-type]
    assert sign(b"handshake", 6, None) == b"sig"
    assert client.calls == [("site-1", "tls-rsa-pss-sha256", b"handshake")]


def test_an_algorithm_without_a_profile_or_a_refusal_fails_the_handshake():
    client = FakeClient()
    with pytest.raises(Unsupported):
        tls_signer(client, "site-1")(b"x", int(grpc.experimental.PrivateKeySignatureAlgorithm.RSA_PSS_RSAE_SHA512),
                                     None)
    assert client.calls == []
    with pytest.raises(PolicyDenied):
        tls_signer(FakeClient(refuse=True), "site-1")(b"x", 0, None)
