"""A blocking client of the keyward agent's Unix socket (protocol v1, docs/protocol.md).

Standard library only. ``KeywardClient`` opens one connection per call, so it never meets the
agent's idle timeout and can be shared between threads. ``Connection`` keeps one socket open for
several requests in a row (one thread at a time). Framing and reply parsing are in
``protocol.py``; the exception classes in ``errors.py``.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from typing import Any

from . import protocol
from .errors import AgentError, AgentUnreachable, KeywardError, ProtocolError, ReplyTimeout
from .protocol import Hello, KeyInfo, PublicKeyInfo, Registration, Signature, Status

#: Seconds to wait for a connection and for each whole reply. Longer than the agent's default
#: ``request_timeout_ms`` (10 s), so that a slow token yields the agent's own ``timeout`` error.
DEFAULT_TIMEOUT = 30.0

#: Error codes after which the agent closes the connection (docs/protocol.md §4).
_CLOSING_CODES = frozenset({"frame_too_large", "truncated_frame", "read_timeout", "permission_denied"})

_ids = itertools.count(1)
_ids_lock = threading.Lock()


def next_request_id() -> int:
    """A process-wide increasing request id (1, 2, ...), thread-safe."""
    with _ids_lock:
        return next(_ids) % protocol.MAX_REQUEST_ID or 1


class Connection:
    """One open connection to the agent. Requests are answered one at a time, in order.

    Use as a context manager, or call ``close()``. Not safe for concurrent use by threads.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_reply_bytes: int = protocol.DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
            sock.close()
            reason = "connect timed out" if isinstance(exc, socket.timeout) else _os_reason(exc)
            raise AgentUnreachable(f"cannot connect: {reason}", socket_path=self.socket_path) from exc
        self._sock: socket.socket | None = sock

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def request(self, op: str, fields: dict[str, Any] | None = None, *, key: str | None = None) -> dict[str, Any]:
        """Sends one request and returns the body of its successful reply.

        Raises:
            AgentError: (a subclass per wire code) the agent answered with an error.
            ProtocolError: the reply broke the protocol, or the agent closed without one.
            ReplyTimeout: no whole reply within ``timeout``.
        """
        if self._sock is None:
            raise ProtocolError("the connection is closed", socket_path=self.socket_path, op=op, key=key)
        request_id = next_request_id()
        ctx = {"socket_path": self.socket_path, "op": op, "key": key, "request_id": request_id}
        frame = protocol.encode_request(request_id, op, fields)
        deadline = time.monotonic() + self.timeout
        send_error: OSError | None = None
        try:
            self._sock.sendall(frame)
        except socket.timeout:
            self.close()
            raise ReplyTimeout(f"sending the request timed out after {self.timeout:g} s", **ctx) from None
        except OSError as exc:
            # The agent may refuse a peer (permission_denied) or a frame (frame_too_large) and close
            # before reading everything: the write fails, but its reply is still there to read.
            send_error = exc
        try:
            reply = self._read_reply(deadline, ctx)
        except ProtocolError as exc:
            self.close()
            if send_error is not None:
                raise ProtocolError(f"sending the request failed: {_os_reason(send_error)}", **ctx) from exc
            raise
        except KeywardError:
            self.close()
            raise
        if send_error is not None:
            self.close()
        try:
            return protocol.check_reply(reply, request_id=request_id, op=op, socket_path=self.socket_path, key=key)
        except ProtocolError:
            self.close()
            raise
        except AgentError as exc:
            # Stream-level errors (id 0) are followed by the agent closing the connection.
            if reply.id == 0 or exc.code in _CLOSING_CODES:
                self.close()
            raise

    def _read_reply(self, deadline: float, ctx: dict[str, Any]) -> protocol.Reply:
        prefix = self._recv_exact(protocol.HEADER.size, deadline, ctx, first=True)
        try:
            length = protocol.decode_length(prefix, self.max_reply_bytes)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, **ctx) from None
        body = self._recv_exact(length, deadline, ctx, first=False)
        try:
            return protocol.decode_reply(body)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, **ctx) from None

    def _recv_exact(self, n: int, deadline: float, ctx: dict[str, Any], *, first: bool) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(f"no complete reply within {self.timeout:g} s", **ctx)
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise ReplyTimeout(f"no complete reply within {self.timeout:g} s", **ctx) from None
            except OSError as exc:
                raise ProtocolError(f"reading the reply failed: {_os_reason(exc)}", **ctx) from exc
            if not chunk:
                if first and not buf:
                    raise ProtocolError("the agent closed the connection without a reply", **ctx)
                raise ProtocolError(f"the agent closed the connection inside a reply ({len(buf)} of {n} bytes)", **ctx)
            buf += chunk
        return bytes(buf)

    # The operations, as on KeywardClient.

    def hello(self) -> Hello:
        return Hello.from_body(self.request("hello"))

    def list_keys(self) -> list[KeyInfo]:
        return protocol.parse_keys(self.request("list_keys"))

    def public_key(self, key: str) -> PublicKeyInfo:
        return PublicKeyInfo.from_body(self.request("public_key", {"key": key}, key=key))

    def sign(self, key: str, profile: str, data: bytes) -> Signature:
        _check_bytes(data, "data")
        return Signature.from_body(self.request("sign", {"key": key, "profile": profile, "data": bytes(data)}, key=key))

    def decrypt(self, key: str, data: bytes) -> bytes:
        _check_bytes(data, "data")
        return protocol.parse_plaintext(self.request("decrypt", {"key": key, "data": bytes(data)}, key=key))

    def status(self) -> Status:
        return Status.from_body(self.request("status"))

    def nvflare_challenge(self, key: str) -> str:
        _check_str(key, "key")
        return protocol.parse_challenge(self.request("nvflare_challenge", {"key": key}, key=key))

    def nvflare_register(
        self,
        key: str,
        client_nonce: str,
        server_cert: bytes,
        server_cn: str,
        server_signature: bytes,
        server_nonce: str,
    ) -> Registration:
        for value, name in ((key, "key"), (client_nonce, "client_nonce"), (server_cn, "server_cn"),
                            (server_nonce, "server_nonce")):
            _check_str(value, name)
        _check_bytes(server_cert, "server_cert")
        _check_bytes(server_signature, "server_signature")
        fields = {
            "key": key,
            "client_nonce": client_nonce,
            "server_cert": bytes(server_cert),
            "server_cn": server_cn,
            "server_signature": bytes(server_signature),
            "server_nonce": server_nonce,
        }
        return Registration.from_body(self.request("nvflare_register", fields, key=key))

    def nvflare_verify_token(self, session: str, client_name: str, token: str, token_signature: str) -> str:
        for value, name in ((session, "session"), (client_name, "client_name"), (token, "token"),
                            (token_signature, "token_signature")):
            _check_str(value, name)
        fields = {"session": session, "client_name": client_name, "token": token, "token_signature": token_signature}
        return protocol.parse_token_verified(self.request("nvflare_verify_token", fields))

    def retire_key(self, key: str, replaced_by: str) -> int:
        _check_str(replaced_by, "replaced_by")
        fields = {"key": key, "replaced_by": replaced_by}
        return protocol.parse_key_retired(self.request("retire_key", fields, key=key))

    def nvflare_server_challenge(self, key: str, client_nonce: str) -> protocol.ServerChallenge:
        _check_str(key, "key")
        _check_str(client_nonce, "client_nonce")
        fields = {"key": key, "client_nonce": client_nonce}
        return protocol.ServerChallenge.from_body(self.request("nvflare_server_challenge", fields, key=key))

    def nvflare_server_register(
        self,
        key: str,
        server_nonce: str,
        client_name: str,
        client_cert: bytes,
        client_signature: bytes,
        token: str,
    ) -> protocol.ClientRegistered:
        for value, name in ((key, "key"), (server_nonce, "server_nonce"), (client_name, "client_name"),
                            (token, "token")):
            _check_str(value, name)
        _check_bytes(client_cert, "client_cert")
        _check_bytes(client_signature, "client_signature")
        fields = {
            "key": key,
            "server_nonce": server_nonce,
            "client_name": client_name,
            "client_cert": bytes(client_cert),
            "client_signature": bytes(client_signature),
            "token": token,
        }
        return protocol.ClientRegistered.from_body(self.request("nvflare_server_register", fields, key=key))


class KeywardClient:
    """The agent at ``socket_path``. Each call opens its own connection; thread-safe.

    >>> c = KeywardClient("/run/keyward/agent.sock")
    >>> sig = c.sign("site-1", "nvflare", b"site-1" + nonce.encode()).signature  # doctest: +SKIP
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_reply_bytes: int = protocol.DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes

    def __repr__(self) -> str:
        return f"KeywardClient({self.socket_path!r})"

    def connect(self) -> Connection:
        """A connection for several requests in a row.

        Raises:
            AgentUnreachable: the socket cannot be connected to.
        """
        return Connection(self.socket_path, timeout=self.timeout, max_reply_bytes=self.max_reply_bytes)

    def call(self, op: str, fields: dict[str, Any] | None = None, *, key: str | None = None) -> dict[str, Any]:
        """One request on a fresh connection; the body of the successful reply."""
        with self.connect() as conn:
            return conn.request(op, fields, key=key)

    def hello(self) -> Hello:
        """Agent name, protocol version and backend."""
        with self.connect() as conn:
            return conn.hello()

    def list_keys(self) -> list[KeyInfo]:
        """The keys in the token, sorted by name."""
        with self.connect() as conn:
            return conn.list_keys()

    def public_key(self, key: str) -> PublicKeyInfo:
        """The key's SubjectPublicKeyInfo (DER) and its installed certificate, if any."""
        with self.connect() as conn:
            return conn.public_key(key)

    def sign(self, key: str, profile: str, data: bytes) -> Signature:
        """Signs the message ``data`` (not a digest) as ``profile`` prescribes (docs/protocol.md §5)."""
        with self.connect() as conn:
            return conn.sign(key, profile, data)

    def decrypt(self, key: str, data: bytes) -> bytes:
        """RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption of ``data``."""
        with self.connect() as conn:
            return conn.decrypt(key, data)

    def status(self) -> Status:
        """Backend health and counters."""
        with self.connect() as conn:
            return conn.status()

    # The NVFlare authenticator flow (docs/protocol.md §7). The agent binds a client nonce to
    # the caller's uid, not to a connection: each call may use its own connection.

    def nvflare_challenge(self, key: str) -> str:
        """A fresh client nonce (uuid4 text) for NVFlare's challenge message, issued by the agent
        to this uid for ``key``; valid for 60 s and one ``nvflare_register``.

        Raises:
            PolicyDenied: the key has no ``[keys.<name>.nvflare]`` section.
        """
        with self.connect() as conn:
            return conn.nvflare_challenge(key)

    def nvflare_register(
        self,
        key: str,
        client_nonce: str,
        server_cert: bytes,
        server_cn: str,
        server_signature: bytes,
        server_nonce: str,
    ) -> Registration:
        """Hands the server's challenge reply to the agent, which verifies it (chain to the pinned
        root, CN, key usage, PSS signature over ``server_cn + client_nonce``, the nonce it issued)
        and only then signs ``<site CN> + server_nonce``, a message it builds itself.

        ``server_cert`` is the reply's ``cert`` (the server's PEM bytes, maybe a chain),
        ``server_signature`` its ``signature`` (raw bytes).

        Raises:
            NonceUnknown, NonceExpired, NonceReplayed, NonceNotYours, ServerIdentityMismatch,
            ServerUntrusted, ServerCertExpired, ServerCertUsage, ServerSignatureInvalid,
            PolicyDenied, InvalidRequest: the agent refused; nothing was signed.
        """
        with self.connect() as conn:
            return conn.nvflare_register(key, client_nonce, server_cert, server_cn, server_signature, server_nonce)

    def nvflare_verify_token(self, session: str, client_name: str, token: str, token_signature: str) -> str:
        """Verifies the token the server returned at registration (``__token_signature__``, base64
        text as NVFlare sends it) with the server key verified in ``session``. Returns that
        server's CN.

        Raises:
            TokenSignatureInvalid: the signature does not verify over ``client_name + token``.
            InvalidRequest: the session is unknown or expired (5 minutes).
        """
        with self.connect() as conn:
            return conn.nvflare_verify_token(session, client_name, token, token_signature)

    def retire_key(self, key: str, replaced_by: str) -> int:
        """Destroys ``key`` in the token once ``replaced_by`` serves in its place (the end of a
        rotation): the agent proves the successor (its installed certificate, a signature verified
        against it), writes the audit record, then destroys. Returns that record's ``seq``.

        Raises:
            PolicyDenied: the caller is not root or the agent's user, or the successor is not proven.
            AuditFailed: the record could not be written; nothing was destroyed.
        """
        with self.connect() as conn:
            return conn.retire_key(key, replaced_by)

    # The server side of the flow (docs/protocol.md §7a), for an NVFlare server's key.

    def nvflare_server_challenge(self, key: str, client_nonce: str) -> protocol.ServerChallenge:
        """Answers a client's challenge: the agent signs ``<server CN> + client_nonce`` and
        issues the server nonce (bound to this uid and ``key``, 60 s, one registration).

        Raises:
            PolicyDenied: the key has no ``[keys.<name>.nvflare_server]`` section.
            InvalidRequest: ``client_nonce`` is not a uuid4 string.
        """
        with self.connect() as conn:
            return conn.nvflare_server_challenge(key, client_nonce)

    def nvflare_server_register(
        self,
        key: str,
        server_nonce: str,
        client_name: str,
        client_cert: bytes,
        client_signature: bytes,
        token: str,
    ) -> protocol.ClientRegistered:
        """Hands a client's register message to the agent, which verifies it (the server nonce
        it issued, once; certificate chain to the pinned root; CN = ``client_name``; PSS
        signature over ``client_cn + server_nonce``) and only then signs ``client_cn + token``.

        Raises:
            NonceUnknown, NonceExpired, NonceReplayed, NonceNotYours, ClientUntrusted,
            ClientIdentityMismatch, ClientSignatureInvalid, PolicyDenied, InvalidRequest:
            the agent refused; nothing was signed.
        """
        with self.connect() as conn:
            return conn.nvflare_server_register(key, server_nonce, client_name, client_cert, client_signature, token)


def _check_bytes(data: object, name: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"keyward: `{name}` must be bytes-like, not {type(data).__name__}")


def _check_str(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"keyward: `{name}` must be a str, not {type(value).__name__}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror}{f' ({name})' if name else ''}"
    return str(exc) or type(exc).__name__
