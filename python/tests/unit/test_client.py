"""The socket client against a scripted fake agent (a thread on a Unix socket): framing, request
ids, pipelining, timeouts, the reply size limit, closed connections and unreachable sockets."""

from __future__ import annotations

import base64
import inspect
import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import wire_vectors
from keyward import KeywardClient, errors


def recv_frame(conn: socket.socket) -> dict:
    (n,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
    return json.loads(conn.recv(n, socket.MSG_WAITALL))


def send_json(conn: socket.socket, obj: dict) -> None:
    body = json.dumps(obj).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)


def ok(rid: int, **body) -> dict:
    return {"v": 1, "id": rid, "status": "ok", "body": body}


def err(rid: int, code: str, message: str) -> dict:
    return {"v": 1, "id": rid, "status": "error", "body": {"code": code, "message": message}}


class FakeAgent:
    """Serves each accepted connection with ``handler(conn, seen)`` in a thread."""

    def __init__(self, path: Path, handler: Callable[[socket.socket, list], None]) -> None:
        self.path = str(path)
        self.seen: list[dict] = []
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.handler(conn, self.seen)
                except (OSError, struct.error, ValueError):
                    pass  # the client went away; the next test's assertions tell the story

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake(short_tmp):
    agents: list[FakeAgent] = []

    def start(handler):
        agent = FakeAgent(short_tmp / "agent.sock", handler)
        agents.append(agent)
        return agent

    yield start
    for a in agents:
        a.close()


def echo_hello(conn, seen):
    while True:
        try:
            req = recv_frame(conn)
        except (struct.error, json.JSONDecodeError):
            return
        seen.append(req)
        send_json(conn, ok(req["id"], kind="hello", agent="fake 1", protocol=1, backend="none"))


def test_hello_frames_a_request_and_parses_the_reply(fake):
    agent = fake(echo_hello)
    hello = KeywardClient(agent.path).hello()
    assert hello.agent == "fake 1" and hello.protocol == 1
    assert agent.seen[0]["op"] == "hello" and agent.seen[0]["v"] == 1


def test_request_ids_increase_and_replies_are_matched_on_one_connection(fake):
    agent = fake(echo_hello)
    with KeywardClient(agent.path).connect() as conn:
        for _ in range(3):
            conn.hello()
    ids = [r["id"] for r in agent.seen]
    assert len(ids) == 3 and ids == sorted(set(ids)) and ids[0] >= 1


def test_sign_and_decrypt_send_the_documented_fields(fake):
    def handler(conn, seen):
        req = recv_frame(conn)
        seen.append(req)
        if req["op"] == "sign":
            send_json(conn, ok(req["id"], kind="signature", profile="nvflare", signature="AQI="))
        else:
            send_json(conn, ok(req["id"], kind="plaintext", plaintext="aGk="))

    agent = fake(handler)
    client = KeywardClient(agent.path)
    sig = client.sign("site-1", "nvflare", b"hi")
    assert (sig.profile, sig.signature) == ("nvflare", b"\x01\x02")
    assert client.decrypt("site-1", memoryview(b"\x00" * 4)) == b"hi"
    sign_req, dec_req = agent.seen
    assert {k: sign_req[k] for k in ("op", "key", "profile", "data")} == {
        "op": "sign", "key": "site-1", "profile": "nvflare", "data": "aGk="}
    assert dec_req["data"] == "AAAAAA==" and set(dec_req) == {"v", "id", "op", "key", "data"}
    with pytest.raises(TypeError, match="keyward"):
        client.sign("site-1", "nvflare", "text")  # type: ignore[arg-type]


@pytest.mark.parametrize("op", wire_vectors.operations())
def test_each_operation_has_a_method_that_sends_its_vector_request_and_parses_its_vector_reply(fake, op):
    vector = wire_vectors.load(op)
    wire = vector["request_wire"]

    def handler(conn, seen):
        req = recv_frame(conn)
        seen.append(req)
        send_json(conn, {**vector["reply_wire"], "id": req["id"]})

    agent = fake(handler)
    method = getattr(KeywardClient(agent.path), op)
    params = inspect.signature(method).parameters
    fields = [name for name in wire if name not in ("v", "id", "op")]
    assert sorted(params) == sorted(fields), f"`{op}` method parameters against the vector's fields"
    args = {name: base64.b64decode(wire[name]) if params[name].annotation == "bytes" else wire[name] for name in params}
    assert method(**args) is not None
    (sent,) = agent.seen
    assert list(sent) == list(wire), "the same fields in the same order"
    assert {**sent, "id": wire["id"]} == wire


def test_error_replies_raise_typed_errors_and_the_connection_stays_usable(fake):
    def handler(conn, seen):
        req = recv_frame(conn)
        send_json(conn, err(req["id"], "unknown_key", "no key named `x`"))
        req = recv_frame(conn)
        send_json(conn, ok(req["id"], kind="hello", agent="fake", protocol=1, backend="none"))

    agent = fake(handler)
    with KeywardClient(agent.path).connect() as conn:
        with pytest.raises(errors.UnknownKey) as info:
            conn.public_key("x")
        assert info.value.socket_path == agent.path and info.value.key == "x" and info.value.op == "public_key"
        assert conn.hello().agent == "fake"


def test_reply_with_another_id_is_a_protocol_error(fake):
    def handler(conn, seen):
        req = recv_frame(conn)
        send_json(conn, ok(req["id"] + 1, kind="hello", agent="x", protocol=1, backend="y"))

    agent = fake(handler)
    with pytest.raises(errors.ProtocolError, match="does not match request id"):
        KeywardClient(agent.path).hello()


def test_reply_larger_than_the_limit_is_refused_before_it_is_read(fake):
    def handler(conn, seen):
        recv_frame(conn)
        conn.sendall(struct.pack(">I", 5000))  # and no body at all
        time.sleep(3)

    agent = fake(handler)
    start = time.monotonic()
    with pytest.raises(errors.ProtocolError, match="5000 bytes exceeds the client's limit of 4096"):
        KeywardClient(agent.path, max_reply_bytes=4096, timeout=5).hello()
    assert time.monotonic() - start < 2  # did not wait for a body (or for the 5 s timeout)


def test_no_reply_within_the_timeout(fake):
    def handler(conn, seen):
        recv_frame(conn)
        time.sleep(3)

    agent = fake(handler)
    start = time.monotonic()
    with pytest.raises(errors.ReplyTimeout, match="no complete reply within 0.3 s") as info:
        KeywardClient(agent.path, timeout=0.3).status()
    assert 0.25 < time.monotonic() - start < 2.5
    assert info.value.socket_path == agent.path


def test_a_reply_that_trickles_in_too_slowly_still_times_out(fake):
    def handler(conn, seen):
        recv_frame(conn)
        conn.sendall(struct.pack(">I", 100))
        for _ in range(20):
            conn.sendall(b" ")
            time.sleep(0.1)

    agent = fake(handler)
    with pytest.raises(errors.ReplyTimeout):
        KeywardClient(agent.path, timeout=0.5).hello()


def test_connection_closed_without_a_reply(fake):
    def handler(conn, seen):
        recv_frame(conn)

    agent = fake(handler)
    with pytest.raises(errors.ProtocolError, match="closed the connection without a reply"):
        KeywardClient(agent.path).hello()


def test_connection_closed_inside_a_reply(fake):
    def handler(conn, seen):
        recv_frame(conn)
        conn.sendall(struct.pack(">I", 50) + b'{"v":1')

    agent = fake(handler)
    with pytest.raises(errors.ProtocolError, match=r"inside a reply \(6 of 50 bytes\)"):
        KeywardClient(agent.path).hello()


def test_refused_peer_gets_permission_denied_even_when_its_write_fails(fake):
    # Like the agent: one reply with id 0 before reading anything, then close.
    def handler(conn, seen):
        send_json(conn, err(0, "permission_denied", "uid 1234 is not allowed"))
        conn.shutdown(socket.SHUT_RDWR)

    agent = fake(handler)
    client = KeywardClient(agent.path)
    with pytest.raises(errors.PermissionDenied, match="uid 1234 is not allowed"):
        client.sign("site-1", "nvflare", b"x" * 4_000_000)  # big enough to hit EPIPE/ECONNRESET
    with pytest.raises(errors.PermissionDenied):
        client.hello()


def test_missing_socket_is_agent_unreachable(short_tmp):
    path = str(short_tmp / "nobody.sock")
    with pytest.raises(errors.AgentUnreachable) as info:
        KeywardClient(path).hello()
    assert info.value.socket_path == path
    assert "ENOENT" in str(info.value) and path in str(info.value) and "keyward serve" in str(info.value)


def test_socket_without_a_listener_is_agent_unreachable(short_tmp):
    path = str(short_tmp / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: what a crashed agent leaves behind
    with pytest.raises(errors.AgentUnreachable, match="ECONNREFUSED"):
        KeywardClient(path).status()


def test_path_that_is_not_a_socket_is_agent_unreachable(short_tmp):
    path = short_tmp / "plain-file"
    path.write_text("x")
    with pytest.raises(errors.AgentUnreachable):
        KeywardClient(path).hello()


def test_client_is_shared_safely_between_threads(fake):
    agent = fake(echo_hello)
    client = KeywardClient(agent.path)
    failures: list[BaseException] = []

    def work():
        try:
            for _ in range(10):
                client.hello()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len({r["id"] for r in agent.seen}) == 40
