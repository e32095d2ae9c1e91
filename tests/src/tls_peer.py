"""A TLS server with Python's `ssl` module (OpenSSL underneath) that demands and verifies a
client certificate (`CERT_REQUIRED`), for the `keyward tunnel` tests (fixture
`PythonTlsServer` in tests/src/tls.rs), and a plain client that streams data through the
tunnel and checks it.

Server: `tls_peer.py serve PORT CERT KEY CLIENT_CA [--tls12]`. Prints `listening` once
bound; one line per connection on stdout (`served ...` or `handshake failed: REASON`); a
failed connection never stops it. Per connection the client sends a header line
`N_IN N_OUT\n`, then N_IN bytes; the server replies with one line

    cn=<client CN> version=<TLS version> cipher=<suite> received=<N_IN> sha256=<of them>

then N_OUT random bytes, then the 64 hex digits of their SHA-256, and closes (close_notify).

Client: `tls_peer.py stream PORT N_IN N_OUT` connects in the clear (to the tunnel), sends
N_IN random bytes, reads the reply, and prints one JSON object: the SHA-256 of what it sent
and of what it received, the server's line and the server's trailer.
"""

import hashlib
import json
import os
import socket
import ssl
import sys
import threading

CHUNK = 1 << 20


def peer_cn(conn):
    cert = conn.getpeercert()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "-"


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise EOFError("no header line")
        line += byte
    return line


def serve_one(conn):
    try:
        n_in, n_out = (int(x) for x in read_line(conn).split())
        digest, received = hashlib.sha256(), 0
        while received < n_in:
            data = conn.recv(min(CHUNK, n_in - received))
            if not data:
                break
            digest.update(data)
            received += len(data)
        line = "cn=%s version=%s cipher=%s received=%d sha256=%s\n" % (
            peer_cn(conn),
            conn.version(),
            conn.cipher()[0],
            received,
            digest.hexdigest(),
        )
        conn.sendall(line.encode())
        out, sent = hashlib.sha256(), 0
        while sent < n_out:
            data = os.urandom(min(CHUNK, n_out - sent))
            out.update(data)
            conn.sendall(data)
            sent += len(data)
        conn.sendall(out.hexdigest().encode())
        print("served " + line.strip(), flush=True)
        conn.unwrap().close()
    except Exception as e:  # noqa: BLE001 - one connection's failure is logged, not fatal
        print("connection failed: %r" % (e,), flush=True)
        conn.close()


def serve(port, cert, key, client_ca, tls12):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    ctx.load_cert_chain(cert, key)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    listener = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        raw, _ = listener.accept()
        raw.settimeout(60)
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print("handshake failed: %s" % (e,), flush=True)
            raw.close()
            continue
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def stream(port, n_in, n_out):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"%d %d\n" % (n_in, n_out))
    sent_digest, sent = hashlib.sha256(), 0
    while sent < n_in:
        data = os.urandom(min(CHUNK, n_in - sent))
        sent_digest.update(data)
        sock.sendall(data)
        sent += len(data)
    reply = bytearray()
    while True:
        data = sock.recv(CHUNK)
        if not data:
            break
        reply += data
    line, _, rest = bytes(reply).partition(b"\n")
    body, trailer = rest[:-64], rest[-64:]
    print(
        json.dumps(
            {
                "sent_sha256": sent_digest.hexdigest(),
                "server_line": line.decode(errors="replace"),
                "received_bytes": len(body),
                "received_sha256": hashlib.sha256(body).hexdigest(),
                "trailer": trailer.decode(errors="replace"),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], "--tls12" in sys.argv[6:])
    elif sys.argv[1] == "stream":
        stream(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: tls_peer.py serve|stream ...")
