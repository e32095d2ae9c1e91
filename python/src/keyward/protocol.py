"""The keyward socket protocol v1, without I/O: frames, request bodies, reply parsing.

Spec: docs/protocol.md. A frame is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON (one object). Requests are ``{"v":1,"id":N,"op":...,<op fields>}``; replies are
``{"v":1,"id":N,"status":"ok"|"error","body":{...}}``. Binary fields are standard base64 with
padding. The socket, timeouts and request ids live in ``client.py``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ProtocolError, error_from_reply

PROTOCOL_VERSION = 1
#: The length prefix: u32, big-endian, not counting itself.
HEADER = struct.Struct(">I")
#: Largest reply frame the client accepts by default (the Rust client's limit).
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
#: Largest request id the agent accepts (2^64 - 1).
MAX_REQUEST_ID = 2**64 - 1
#: Key names the agent accepts: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

#: Every operation; tests/unit check this and ``REPLY_KINDS`` against the golden vectors
#: (protocol/vectors/ops/<op>.json), and that each has its ``KeywardClient`` method.
OPERATIONS = (
    "hello",
    "list_keys",
    "public_key",
    "sign",
    "decrypt",
    "status",
    "nvflare_challenge",
    "nvflare_register",
    "nvflare_verify_token",
    "retire_key",
    "nvflare_server_challenge",
    "nvflare_server_register",
)
#: The signing profiles of docs/protocol.md §5.
PROFILES = (
    "nvflare",
    "tls-rsa-pss-sha256",
    "tls-rsa-pss-sha384",
    "tls-rsa-pkcs1-sha256",
    "tls-rsa-pkcs1-sha384",
    "tls-ecdsa-p256-sha256",
    "tls",
)
#: Reply ``kind`` expected for each operation.
REPLY_KINDS = {
    "hello": "hello",
    "list_keys": "keys",
    "public_key": "public_key",
    "sign": "signature",
    "decrypt": "plaintext",
    "status": "status",
    "nvflare_challenge": "nvflare_challenge",
    "nvflare_register": "nvflare_registration",
    "nvflare_verify_token": "token_verified",
    "retire_key": "key_retired",
    "nvflare_server_challenge": "nvflare_server_challenge",
    "nvflare_server_register": "nvflare_client_registered",
}


def is_valid_key_name(name: object) -> bool:
    """Whether ``name`` is a key name the agent accepts."""
    return isinstance(name, str) and KEY_NAME_RE.match(name) is not None


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, no line breaks."""
    return base64.b64encode(bytes(data)).decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Strict standard base64 (padding required, no whitespace) from a reply field.

    Raises:
        ProtocolError: ``text`` is not a string of valid base64.
    """
    if not isinstance(text, str):
        raise ProtocolError(f"reply field `{what}` is not a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError(f"reply field `{what}` is not valid base64: {exc}") from None
    return raw


def encode_frame(body: bytes) -> bytes:
    """``body`` with its 4-byte length prefix."""
    if len(body) > 0xFFFFFFFF:
        raise ValueError("frame body longer than 2^32 - 1 bytes")
    return HEADER.pack(len(body)) + body


def request_body(request_id: int, op: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """The JSON body of a request, compact, with ``v``, ``id``, ``op`` first (the documented
    shape, e.g. ``{"v":1,"id":7,"op":"sign","key":"site-1","profile":"nvflare","data":"aGk="}``).
    Bytes values in ``fields`` are base64-encoded."""
    if isinstance(request_id, bool) or not isinstance(request_id, int) or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id must be an integer in 0..2^64-1, not {request_id!r}")
    obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op}
    for name, value in (fields or {}).items():
        if name in obj:
            raise ValueError(f"field `{name}` is reserved")
        obj[name] = b64encode(value) if isinstance(value, (bytes, bytearray, memoryview)) else value
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_request(request_id: int, op: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """A whole request frame (prefix + body)."""
    return encode_frame(request_body(request_id, op, fields))


def decode_length(prefix: bytes, max_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> int:
    """The body length from a 4-byte prefix, checked against ``max_bytes`` before anything
    is read or allocated.

    Raises:
        ProtocolError: the prefix is not 4 bytes, or announces more than ``max_bytes``.
    """
    if len(prefix) != HEADER.size:
        raise ProtocolError(f"frame prefix must be {HEADER.size} bytes, got {len(prefix)}")
    (length,) = HEADER.unpack(prefix)
    if length > max_bytes:
        raise ProtocolError(f"reply frame of {length} bytes exceeds the client's limit of {max_bytes} bytes")
    return length


@dataclass(frozen=True)
class Reply:
    """A parsed reply frame."""

    id: int
    status: str
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def decode_reply(body: bytes) -> Reply:
    """Parses a reply frame body. Unknown fields are ignored, as the spec requires.

    Raises:
        ProtocolError: not a JSON object, ``v`` is not 1, or ``id``/``status``/``body`` is
            missing or of the wrong type.
    """
    try:
        obj = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"reply is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("reply is not a JSON object")
    v = obj.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(f"reply has protocol version {v!r}; this client speaks {PROTOCOL_VERSION}")
    rid = obj.get("id")
    if type(rid) is not int or rid < 0:
        raise ProtocolError(f"reply has no valid `id` ({rid!r})")
    status = obj.get("status")
    if status not in ("ok", "error"):
        raise ProtocolError(f"reply has an unknown `status` ({status!r})")
    rbody = obj.get("body")
    if not isinstance(rbody, dict):
        raise ProtocolError("reply has no `body` object")
    if status == "error":
        if not isinstance(rbody.get("code"), str) or not isinstance(rbody.get("message"), str):
            raise ProtocolError("error reply lacks a string `code` and `message`")
    elif not isinstance(rbody.get("kind"), str):
        raise ProtocolError("ok reply lacks a string `kind`")
    return Reply(id=rid, status=status, body=rbody)


def check_reply(reply: Reply, *, request_id: int, op: str, **context: Any) -> dict[str, Any]:
    """The body of a successful reply to request ``request_id`` (an ``op``), or the typed error.

    An error reply with ``id`` 0 is accepted for any request: the agent uses 0 for stream-level
    errors (``permission_denied``, ``busy`` at the connection limit, ``frame_too_large``, ...).

    Raises:
        AgentError: (a subclass for each code) the agent answered with an error.
        ProtocolError: the reply is for another request, or of the wrong kind.
    """
    ctx = {"op": op, "request_id": request_id, **context}
    if reply.id != request_id and not (reply.status == "error" and reply.id == 0):
        raise ProtocolError(f"reply id {reply.id} does not match request id {request_id}", **ctx)
    if reply.status == "error":
        raise error_from_reply(reply.body["code"], reply.body["message"], **ctx)
    want = REPLY_KINDS.get(op)
    if want is not None and reply.body["kind"] != want:
        raise ProtocolError(f"expected a `{want}` reply, got `{reply.body['kind']}`", **ctx)
    return reply.body


# --- typed reply bodies ----------------------------------------------------------------------


def _field(body: Mapping[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError(f"reply field `{name}` is missing or not of the expected type")
    return value


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int:
        raise ProtocolError(f"reply field `{name}` is missing or not an integer")
    return value


@dataclass(frozen=True)
class Hello:
    """``hello`` reply: agent name, protocol version, backend."""

    agent: str
    protocol: int
    backend: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Hello":
        return cls(
            agent=_field(body, "agent", str), protocol=_int(body, "protocol"), backend=_field(body, "backend", str)
        )


@dataclass(frozen=True)
class KeyInfo:
    """One entry of a ``keys`` reply."""

    key: str
    algorithm: str
    generated_on_device: bool
    has_certificate: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "KeyInfo":
        if not isinstance(body, Mapping):
            raise ProtocolError("`keys` entry is not an object")
        return cls(
            key=_field(body, "key", str),
            algorithm=_field(body, "algorithm", str),
            generated_on_device=_field(body, "generated_on_device", bool),
            has_certificate=_field(body, "has_certificate", bool),
        )


def parse_keys(body: Mapping[str, Any]) -> list[KeyInfo]:
    """The entries of a ``keys`` reply."""
    return [KeyInfo.from_body(k) for k in _field(body, "keys", list)]


@dataclass(frozen=True)
class PublicKeyInfo:
    """``public_key`` reply: the key's DER SubjectPublicKeyInfo and its installed certificate."""

    key: str
    algorithm: str
    spki_der: bytes
    certificate_pem: str | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "PublicKeyInfo":
        cert = body.get("certificate_pem")
        if cert is not None and not isinstance(cert, str):
            raise ProtocolError("reply field `certificate_pem` is neither a string nor null")
        return cls(
            key=_field(body, "key", str),
            algorithm=_field(body, "algorithm", str),
            spki_der=b64decode(body.get("spki_der"), "spki_der"),
            certificate_pem=cert,
        )


@dataclass(frozen=True)
class Signature:
    """``signature`` reply: the profile used (``tls`` resolved to its scheme) and the bytes."""

    profile: str
    signature: bytes

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Signature":
        return cls(profile=_field(body, "profile", str), signature=b64decode(body.get("signature"), "signature"))


def parse_plaintext(body: Mapping[str, Any]) -> bytes:
    """The plaintext of a ``plaintext`` reply."""
    return b64decode(body.get("plaintext"), "plaintext")


@dataclass(frozen=True)
class Status:
    """``status`` reply: backend health and counters since the agent started."""

    backend_health: str
    backend: str
    device: str
    uptime_seconds: int
    connections: int
    requests_ok: int
    requests_failed: int
    signatures: int
    decryptions: int
    workers: int
    #: Why the backend is down (``None`` while ``backend_health`` is ``"ok"``).
    backend_error: str | None = None
    #: PKCS#11 module re-initialisations since the agent started.
    backend_recovery_attempts: int = 0
    #: The whole reply body, including fields this version does not know.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Status":
        return cls(
            backend_health=_field(body, "backend_health", str),
            backend=_field(body, "backend", str),
            device=_field(body, "device", str),
            uptime_seconds=_int(body, "uptime_seconds"),
            connections=_int(body, "connections"),
            requests_ok=_int(body, "requests_ok"),
            requests_failed=_int(body, "requests_failed"),
            signatures=_int(body, "signatures"),
            decryptions=_int(body, "decryptions"),
            workers=_int(body, "workers"),
            backend_error=_field(body, "backend_error", str) if "backend_error" in body else None,
            backend_recovery_attempts=(
                _int(body, "backend_recovery_attempts") if "backend_recovery_attempts" in body else 0
            ),
            raw=dict(body),
        )


# --- the NVFlare authenticator flow (docs/protocol.md §7) ------------------------------------


def parse_challenge(body: Mapping[str, Any]) -> str:
    """The client nonce of an ``nvflare_challenge`` reply (a uuid4 string)."""
    nonce = _field(body, "nonce", str)
    if not nonce:
        raise ProtocolError("reply field `nonce` is empty")
    return nonce


@dataclass(frozen=True)
class Registration:
    """``nvflare_registration`` reply: what the client sends in NVFlare's register message.

    ``cn`` is the site CN from the certificate installed in the agent, ``cert`` that certificate
    file (PEM bytes, leaf first), ``signature`` the raw RSA-PSS signature over ``cn +
    server_nonce``, and ``session`` the handle for ``nvflare_verify_token``.
    """

    cn: str
    cert: bytes
    signature: bytes
    session: str = field(repr=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Registration":
        return cls(
            cn=_field(body, "cn", str),
            cert=b64decode(body.get("cert"), "cert"),
            signature=b64decode(body.get("signature"), "signature"),
            session=_field(body, "session", str),
        )


def parse_token_verified(body: Mapping[str, Any]) -> str:
    """The server CN of a ``token_verified`` reply (the server verified at registration)."""
    return _field(body, "server_cn", str)


def parse_key_retired(body: Mapping[str, Any]) -> int:
    """The ``seq`` of the audit record written before the key was destroyed (``key_retired``)."""
    return _int(body, "audit_seq")


# --- the server side of the NVFlare flow (docs/protocol.md §7a) -------------------------------


@dataclass(frozen=True)
class ServerChallenge:
    """``nvflare_server_challenge`` reply: what the server sends in its challenge reply.

    ``cn`` is the server CN from the certificate installed in the agent, ``nonce`` the server
    nonce the agent issued (the client's registration must sign ``client_cn + nonce``), and
    ``signature`` the raw RSA-PSS signature over ``cn + client_nonce``.
    """

    cn: str
    nonce: str
    signature: bytes

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "ServerChallenge":
        return cls(
            cn=_field(body, "cn", str),
            nonce=_field(body, "nonce", str),
            signature=b64decode(body.get("signature"), "signature"),
        )


@dataclass(frozen=True)
class ClientRegistered:
    """``nvflare_client_registered`` reply: the verified client's CN and the raw RSA-PSS
    signature over ``client_cn + token`` (NVFlare sends it base64-encoded)."""

    client_cn: str
    token_signature: bytes

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "ClientRegistered":
        return cls(
            client_cn=_field(body, "client_cn", str),
            token_signature=b64decode(body.get("token_signature"), "token_signature"),
        )
