"""Framing and reply parsing against the golden vectors (protocol/vectors/, which the Rust types
and docs/protocol.md are checked against too), plus the client-side checks of odd replies."""

from __future__ import annotations

import json

import pytest

import wire_vectors
from keyward import errors, protocol
from keyward.errors import InvalidRequest, ProtocolError, PermissionDenied


def test_the_client_knows_exactly_the_operations_of_the_vectors():
    assert sorted(protocol.OPERATIONS) == wire_vectors.operations()
    assert sorted(protocol.REPLY_KINDS) == wire_vectors.operations()


@pytest.mark.parametrize("op", wire_vectors.operations())
def test_each_request_vector_is_the_frame_the_client_encodes(op):
    vector = wire_vectors.load(op)
    wire = vector["request_wire"]
    fields = {name: value for name, value in wire.items() if name not in ("v", "id", "op")}
    assert protocol.encode_request(wire["id"], op, fields) == vector["request_frame"]


@pytest.mark.parametrize("op", wire_vectors.operations())
def test_each_reply_vector_parses_as_its_operations_reply(op):
    vector = wire_vectors.load(op)
    frame = vector["reply_frame"]
    assert protocol.decode_length(frame[:4]) == len(frame) - 4
    body = protocol.check_reply(protocol.decode_reply(frame[4:]), request_id=vector["request_wire"]["id"], op=op)
    assert body == vector["reply"]["body"]
    assert body["kind"] == protocol.REPLY_KINDS[op]


def test_the_error_vector_raises_its_class_with_the_agents_message():
    example = wire_vectors.error_example()
    frame, wire = example["reply_frame"], example["reply"]
    assert protocol.decode_length(frame[:4]) == len(frame) - 4
    with pytest.raises(errors.ERROR_CLASSES[wire["body"]["code"]]) as info:
        protocol.check_reply(protocol.decode_reply(frame[4:]), request_id=wire["id"], op="sign", key="x")
    assert info.value.reason == wire["body"]["message"]
    assert info.value.request_id == wire["id"]


def test_replies_with_fields_this_version_does_not_know_still_parse():
    keys = protocol.decode_reply(
        b'{"v":1,"id":2,"status":"ok","body":{"kind":"keys","keys":[{"key":"site-1","algorithm":"rsa-2048",'
        b'"generated_on_device":true,"has_certificate":true}]}}'
    )
    assert protocol.parse_keys(protocol.check_reply(keys, request_id=2, op="list_keys")) == [
        protocol.KeyInfo("site-1", "rsa-2048", True, True)
    ]
    status = protocol.decode_reply(
        b'{"v":1,"id":9,"status":"ok","body":{"kind":"status","backend_health":"ok","backend":"pkcs11",'
        b'"device":"token `fl-site` (SoftHSM project SoftHSM v2 serial 12bdb46c7f9405e2)","uptime_seconds":10,'
        b'"connections":1,"requests_ok":8,"requests_failed":6,"signatures":3,"decryptions":0,"workers":2,'
        b'"future_field":[1]}}'
    )
    st = protocol.Status.from_body(protocol.check_reply(status, request_id=9, op="status"))
    assert (st.requests_ok, st.requests_failed, st.signatures, st.workers) == (8, 6, 3, 2)
    assert st.raw["future_field"] == [1]
    assert (st.backend_error, st.backend_recovery_attempts) == (None, 0)
    down = protocol.Status.from_body(
        {**status.body, "backend_health": "down", "backend_error": "C_GetTokenInfo returned GeneralError",
         "backend_recovery_attempts": 3}
    )
    assert (down.backend_health, down.backend_error, down.backend_recovery_attempts) == (
        "down", "C_GetTokenInfo returned GeneralError", 3
    )
    pk = protocol.decode_reply(
        b'{"v":1,"id":3,"status":"ok","body":{"kind":"public_key","key":"ec-1","algorithm":"p-256",'
        b'"spki_der":"AQID","certificate_pem":null,"extra":"ignored"}}'
    )
    info = protocol.PublicKeyInfo.from_body(protocol.check_reply(pk, request_id=3, op="public_key"))
    assert info == protocol.PublicKeyInfo("ec-1", "p-256", b"\x01\x02\x03", None)


def test_stream_level_error_with_id_zero_is_the_answer_to_any_request():
    reply = protocol.decode_reply(
        b'{"v":1,"id":0,"status":"error","body":{"code":"permission_denied","message":"uid 1000 is not allowed"}}'
    )
    with pytest.raises(PermissionDenied):
        protocol.check_reply(reply, request_id=42, op="hello")


def test_reply_for_another_request_is_a_protocol_error():
    reply = protocol.decode_reply(b'{"v":1,"id":8,"status":"ok","body":{"kind":"hello","agent":"a","protocol":1,"backend":"b"}}')
    with pytest.raises(ProtocolError, match="reply id 8 does not match request id 7"):
        protocol.check_reply(reply, request_id=7, op="hello")


def test_reply_of_the_wrong_kind_is_a_protocol_error():
    reply = protocol.decode_reply(b'{"v":1,"id":7,"status":"ok","body":{"kind":"plaintext","plaintext":""}}')
    with pytest.raises(ProtocolError, match="expected a `signature` reply"):
        protocol.check_reply(reply, request_id=7, op="sign")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"\x01garbage", "not UTF-8 JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v":2,"id":1,"status":"ok","body":{"kind":"hello"}}', "protocol version 2"),
        (b'{"v":1.0,"id":1,"status":"ok","body":{"kind":"hello"}}', "protocol version 1.0"),
        (b'{"v":true,"id":1,"status":"ok","body":{"kind":"hello"}}', "protocol version True"),
        (b'{"v":1,"status":"ok","body":{"kind":"hello"}}', "no valid `id`"),
        (b'{"v":1,"id":-1,"status":"ok","body":{"kind":"hello"}}', "no valid `id`"),
        (b'{"v":1,"id":"1","status":"ok","body":{"kind":"hello"}}', "no valid `id`"),
        (b'{"v":1,"id":1,"status":"maybe","body":{}}', "unknown `status`"),
        (b'{"v":1,"id":1,"status":"ok"}', "no `body`"),
        (b'{"v":1,"id":1,"status":"ok","body":{}}', "lacks a string `kind`"),
        (b'{"v":1,"id":1,"status":"error","body":{"code":3}}', "lacks a string `code`"),
    ],
)
def test_malformed_replies_are_protocol_errors(body, reason):
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(")):
        protocol.decode_reply(body)


def test_length_prefix_is_checked_before_the_body_is_read():
    assert protocol.decode_length(bytes.fromhex("00000010"), max_bytes=16) == 16
    with pytest.raises(ProtocolError, match="17 bytes exceeds the client's limit of 16 bytes"):
        protocol.decode_length(bytes.fromhex("00000011"), max_bytes=16)
    with pytest.raises(ProtocolError, match="must be 4 bytes"):
        protocol.decode_length(b"\x00\x00")
    assert protocol.DEFAULT_MAX_REPLY_BYTES == 16 * 1024 * 1024
    assert protocol.decode_length(protocol.HEADER.pack(1 << 20)) == 1 << 20  # the agent's default cap


@pytest.mark.parametrize("text", ["aGk", "aG k=", "aGk=\n", "-_8=", 5, None])
def test_reply_base64_must_be_strict_standard_base64(text):
    with pytest.raises(ProtocolError):
        protocol.b64decode(text, "signature")
    assert protocol.b64decode("+/8=", "x") == b"\xfb\xff"


@pytest.mark.parametrize("bad_id", [-1, 2**64, True, 1.0, "1"])
def test_request_ids_are_unsigned_64_bit_integers(bad_id):
    with pytest.raises(ValueError):
        protocol.request_body(bad_id, "hello")
    assert json.loads(protocol.request_body(2**64 - 1, "hello"))["id"] == 2**64 - 1


def test_binary_request_fields_are_base64_and_others_verbatim():
    body = json.loads(protocol.request_body(3, "decrypt", {"key": "k", "data": bytearray(b"\xff\x00")}))
    assert body == {"v": 1, "id": 3, "op": "decrypt", "key": "k", "data": "/wA="}
    with pytest.raises(ValueError, match="reserved"):
        protocol.request_body(3, "hello", {"id": 4})


@pytest.mark.parametrize("name, ok", [
    ("site-1", True), ("a", True), ("A.b_c-9", True), ("x" * 64, True),
    ("", False), ("-a", False), (".a", False), ("x" * 65, False), ("../k", False), ("a b", False), ("é", False), (3, False),
])
def test_key_names_follow_the_agent_rule(name, ok):
    assert protocol.is_valid_key_name(name) is ok


def test_an_error_code_the_client_does_not_know_is_kept():
    reply = protocol.decode_reply(b'{"v":1,"id":5,"status":"error","body":{"code":"quota_exceeded","message":"later"}}')
    with pytest.raises(Exception) as info:
        protocol.check_reply(reply, request_id=5, op="sign")
    assert type(info.value).__name__ == "AgentError"
    assert info.value.code == "quota_exceeded"
    assert not isinstance(info.value, InvalidRequest)
