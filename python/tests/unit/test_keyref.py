"""Key reference files: the exact bytes (docs/nvflare-plugin.md §2), round trips, strict
parsing, and the atomic 0644 write."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from keyward import files, keyref
from keyward.errors import InvalidKeyReference

GOLDEN = (
    b"-----BEGIN KEYWARD KEY REFERENCE-----\n"
    b"eyJ2IjoxLCJzb2NrZXQiOiIvcnVuL2tleXdhcmQvYWdlbnQuc29jayIsImtleSI6\n"
    b"InNpdGUtMSJ9\n"
    b"-----END KEYWARD KEY REFERENCE-----\n"
)
REF = keyref.KeyReference(socket="/run/keyward/agent.sock", key="site-1")


def block(json_text: str) -> bytes:
    b64 = base64.b64encode(json_text.encode()).decode()
    return f"-----BEGIN KEYWARD KEY REFERENCE-----\n{b64}\n-----END KEYWARD KEY REFERENCE-----\n".encode()


def test_written_bytes_are_the_documented_golden_vector():
    assert keyref.dumps(REF) == GOLDEN
    assert len(GOLDEN) == 152
    assert base64.b64decode(b"".join(GOLDEN.splitlines()[1:3])) == b'{"v":1,"socket":"/run/keyward/agent.sock","key":"site-1"}'
    assert len(b'{"v":1,"socket":"/run/keyward/agent.sock","key":"site-1"}') == 57


def test_golden_vector_is_the_one_in_the_docs():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs/nvflare-plugin.md").read_text()
    assert GOLDEN.decode() in doc


def test_round_trip():
    assert keyref.parse(keyref.dumps(REF)) == REF
    long_ref = keyref.KeyReference(socket="/" + "s" * 106, key="k" * 64)
    data = keyref.dumps(long_ref)
    assert all(len(line) <= 64 for line in data.splitlines()[1:-1])
    assert keyref.parse(data) == long_ref
    unicode_ref = keyref.KeyReference(socket="/srv/sïte/agent.sock", key="site-1")
    assert keyref.parse(keyref.dumps(unicode_ref)) == unicode_ref
    assert keyref.parse(GOLDEN.decode()) == REF  # str works too


def test_lenient_about_layout_outside_the_base64():
    crlf = GOLDEN.replace(b"\n", b"\r\n")
    assert keyref.parse(crlf) == REF
    with_text = b"This is not a key: the key is in a token behind keyward.\n\n" + GOLDEN + b"\ntrailing notes\n"
    assert keyref.parse(with_text) == REF
    one_line = block('{"key":"site-1", "v": 1, "socket":"/run/keyward/agent.sock"}')  # any JSON layout/order
    assert keyref.parse(one_line) == REF
    spaced = GOLDEN.replace(b"eyJ2Ijox", b"  eyJ2Ijox").replace(b"\n-----END", b"  \n-----END")
    assert keyref.parse(spaced) == REF


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not a key reference"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "not a key reference"),
        ("# keyward – not ASCII\n".encode(), "not a key reference"),
        (GOLDEN.replace(b"-----END KEYWARD KEY REFERENCE-----", b""), "exactly one"),
        (GOLDEN + GOLDEN, "exactly one"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n" + GOLDEN, "another PEM block"),
        (b"-----BEGIN KEYWARD KEY REFERENCE-----\n-----END KEYWARD KEY REFERENCE-----\n", "empty"),
        (GOLDEN.replace(b"InNpdGUtMSJ9", b"InNpdGUtMSJ9*"), "not valid base64"),
        (GOLDEN.replace(b"InNpdGUtMSJ9", b"InNpdGUtMSJ"), "not valid base64"),
        (block("[1,2]"), "not an object"),
        (block("not json"), "UTF-8 JSON"),
        (block('{"v":1,"socket":"/s"}'), "`key` is missing"),
        (block('{"v":1,"key":"k"}'), "`socket` is missing"),
        (block('{"socket":"/s","key":"k"}'), "`v` is missing"),
        (block('{"v":2,"socket":"/s","key":"k"}'), "version 2"),
        (block('{"v":1.0,"socket":"/s","key":"k"}'), "version 1.0"),
        (block('{"v":true,"socket":"/s","key":"k"}'), "version True"),
        (block('{"v":"1","socket":"/s","key":"k"}'), "version '1'"),
        (block('{"v":1,"socket":"run/agent.sock","key":"k"}'), "absolute"),
        (block('{"v":1,"socket":"","key":"k"}'), "non-empty"),
        (block('{"v":1,"socket":5,"key":"k"}'), "non-empty string"),
        (block('{"v":1,"socket":"/a\\u0000b","key":"k"}'), "NUL"),
        (block('{"v":1,"socket":"/' + "s" * 107 + '","key":"k"}'), "longer than 107 bytes"),
        (block('{"v":1,"socket":"/s","key":"../k"}'), "not a key name"),
        (block('{"v":1,"socket":"/s","key":""}'), "not a key name"),
        (block('{"v":1,"socket":"/s","key":"k","pin":"1234"}'), "unknown field(s) `pin`"),
        (block('{"v":1,"socket":"/s","key":"k","key":"other"}'), "`key` appears twice"),
        (b"\xff" + GOLDEN, "ASCII"),
        (b" " * (keyref.MAX_REFERENCE_BYTES + 1), "at most"),
    ],
)
def test_malformed_references_are_refused_with_the_reason(data, reason):
    with pytest.raises(InvalidKeyReference) as info:
        keyref.parse(data)
    assert reason in str(info.value)
    assert str(info.value).startswith("keyward: ")
    assert isinstance(info.value, ValueError)


def test_constructor_validates_too():
    with pytest.raises(InvalidKeyReference):
        keyref.KeyReference(socket="relative.sock", key="site-1")
    with pytest.raises(InvalidKeyReference):
        keyref.KeyReference(socket="/s", key="a/b")
    with pytest.raises(TypeError):
        keyref.parse(12)  # type: ignore[arg-type]


def test_is_reference_only_for_a_begin_line_at_a_line_start():
    assert keyref.is_reference(GOLDEN)
    assert keyref.is_reference(b"notes\n" + GOLDEN)
    assert keyref.is_reference(bytearray(GOLDEN)) and keyref.is_reference(memoryview(GOLDEN))
    assert keyref.is_reference(GOLDEN.decode())
    assert not keyref.is_reference(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert not keyref.is_reference(b"x-----BEGIN KEYWARD KEY REFERENCE-----\n")
    assert not keyref.is_reference(None)


def test_write_gives_a_new_file_the_golden_bytes_and_mode_0644_under_umask_077(short_tmp):
    target = short_tmp / "client.key"
    old_umask = os.umask(0o077)
    try:
        keyref.write(target, REF)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == GOLDEN
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in short_tmp.iterdir()) == ["client.key"]  # no temp file left
    assert keyref.load(target) == REF


def test_write_replaces_a_private_key_keeping_its_mode(short_tmp):
    # What else a write does (links, devices, FIFOs, owners, races): test_files.py.
    target = short_tmp / "client.key"
    target.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nsecret\n-----END RSA PRIVATE KEY-----\n")
    os.chmod(target, 0o600)
    keyref.write(target, REF)
    assert target.read_bytes() == GOLDEN
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in short_tmp.iterdir()) == ["client.key"]


def test_write_into_a_missing_folder_fails_and_leaves_nothing(short_tmp):
    with pytest.raises(files.OutputRefused, match="does not exist"):
        keyref.write(short_tmp / "missing" / "client.key", REF)
    assert list(short_tmp.iterdir()) == []
