"""Key reference files: what replaces ``client.key`` in an NVFlare startup kit.

A reference names the agent socket and the key; it holds no secret. The format, exactly
(docs/nvflare-plugin.md §2 is the spec; the Rust side writes the same bytes)::

    -----BEGIN KEYWARD KEY REFERENCE-----
    <standard base64 (with padding) of the JSON object, in lines of 64 characters>
    -----END KEYWARD KEY REFERENCE-----

where the JSON object is ``{"v":1,"socket":"<absolute socket path>","key":"<key name>"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from . import files
from .errors import InvalidKeyReference
from .protocol import is_valid_key_name

PEM_LABEL = "KEYWARD KEY REFERENCE"
BEGIN_LINE = f"-----BEGIN {PEM_LABEL}-----"
END_LINE = f"-----END {PEM_LABEL}-----"
BEGIN_MARKER = BEGIN_LINE.encode("ascii")
#: The only version this code reads and writes.
REFERENCE_VERSION = 1
#: Longest socket path, in bytes: ``sun_path`` is 108 bytes on Linux, including the final NUL.
MAX_SOCKET_PATH_BYTES = 107
#: A reference is a few hundred bytes; anything much larger is not one.
MAX_REFERENCE_BYTES = 16 * 1024
_LINE_WIDTH = 64


@dataclass(frozen=True)
class KeyReference:
    """A key ``key`` held by the keyward agent listening on ``socket``."""

    socket: str
    key: str
    v: int = REFERENCE_VERSION

    def __post_init__(self) -> None:
        _validate(self.v, self.socket, self.key)


def _validate(v: object, sock: object, key: object) -> None:
    if type(v) is not int or v != REFERENCE_VERSION:
        raise InvalidKeyReference(f"unsupported key reference version {v!r}; this reader knows {REFERENCE_VERSION}")
    if not isinstance(sock, str) or not sock:
        raise InvalidKeyReference("`socket` must be a non-empty string")
    if not sock.startswith("/"):
        raise InvalidKeyReference(f"`socket` must be an absolute path, not `{sock}`")
    if "\0" in sock:
        raise InvalidKeyReference("`socket` contains a NUL byte")
    if len(sock.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH_BYTES:
        raise InvalidKeyReference(f"`socket` is longer than {MAX_SOCKET_PATH_BYTES} bytes (the Unix socket path limit)")
    if not is_valid_key_name(key):
        raise InvalidKeyReference(
            f"`key` {key!r} is not a key name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
        )


def is_reference(data: object) -> bool:
    """Whether ``data`` (bytes-like or str) contains a key reference's BEGIN line at the start
    of a line. Cheap; used by the ``load_pem_private_key`` hook on every key it sees."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "replace")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        return False
    at = raw.find(BEGIN_MARKER)
    while at != -1:
        if at == 0 or raw[at - 1 : at] in (b"\n", b"\r"):
            return True
        at = raw.find(BEGIN_MARKER, at + 1)
    return False


def dumps(ref: KeyReference) -> bytes:
    """The file content for ``ref``: ASCII, LF line ends, a final LF, nothing outside the block."""
    obj = {"v": ref.v, "socket": ref.socket, "key": ref.key}
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    b64 = base64.b64encode(body).decode("ascii")
    lines = [BEGIN_LINE, *(b64[i : i + _LINE_WIDTH] for i in range(0, len(b64), _LINE_WIDTH)), END_LINE]
    return ("\n".join(lines) + "\n").encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise InvalidKeyReference(f"field `{name}` appears twice")
        out[name] = value
    return out


def parse(data: bytes | bytearray | memoryview | str) -> KeyReference:
    """Parses a reference.

    Text before the BEGIN line and after the END line is ignored (RFC 7468 explanatory text);
    whitespace inside the base64 is ignored; everything else is checked strictly: exactly one
    PEM block of any kind, strict base64, a JSON object with exactly ``v``, ``socket`` and ``key``
    and no duplicate names, ``v`` the integer 1, ``socket`` absolute and at most 107 bytes,
    ``key`` a valid key name.

    Raises:
        InvalidKeyReference: (also a ``ValueError``) with the reason.
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogateescape")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise TypeError(f"keyward: a key reference is bytes or str, not {type(data).__name__}")
    if len(raw) > MAX_REFERENCE_BYTES:
        raise InvalidKeyReference(f"a key reference is at most {MAX_REFERENCE_BYTES} bytes; this is {len(raw)}")
    if BEGIN_MARKER not in raw:
        raise InvalidKeyReference(f"not a key reference: no `{BEGIN_LINE}` line")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidKeyReference("a key reference file is ASCII text") from None
    lines = text.splitlines()
    begins = [i for i, line in enumerate(lines) if line.rstrip() == BEGIN_LINE]
    ends = [i for i, line in enumerate(lines) if line.rstrip() == END_LINE]
    if len(begins) != 1 or len(ends) != 1:
        raise InvalidKeyReference(f"expected exactly one `{BEGIN_LINE}` ... `{END_LINE}` block")
    if text.count("-----BEGIN ") != 1:
        raise InvalidKeyReference("the file holds another PEM block besides the key reference")
    start, end = begins[0], ends[0]
    if end <= start + 1:
        raise InvalidKeyReference("the key reference block is empty")
    b64 = "".join("".join(line.split()) for line in lines[start + 1 : end])
    try:
        body = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyReference("the key reference block is not valid base64") from None
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except InvalidKeyReference:
        raise
    except (UnicodeDecodeError, ValueError):
        raise InvalidKeyReference("the key reference block does not hold UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise InvalidKeyReference("the key reference JSON is not an object")
    unknown = sorted(set(obj) - {"v", "socket", "key"})
    if unknown:
        raise InvalidKeyReference(f"unknown field(s) {', '.join(f'`{u}`' for u in unknown)}")
    for name in ("v", "socket", "key"):
        if name not in obj:
            raise InvalidKeyReference(f"field `{name}` is missing")
    _validate(obj["v"], obj["socket"], obj["key"])
    return KeyReference(socket=obj["socket"], key=obj["key"], v=obj["v"])


def load(path: str | os.PathLike[str]) -> KeyReference:
    """Reads and parses the reference file at ``path``.

    Raises:
        OSError: the file cannot be read.
        InvalidKeyReference: it is not a valid reference.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_REFERENCE_BYTES + 1)
    return parse(data)


def write(
    path: str | os.PathLike[str], ref: KeyReference, *, check_existing: Callable[[bytes], None] | None = None
) -> None:
    """Writes ``ref`` to ``path`` with the ``--out`` rules of ``files.py``: a new file is 0644, an
    existing regular file is replaced atomically keeping its owner, group and mode, a device or
    FIFO is written through, a symbolic link, folder or missing folder is refused.
    ``check_existing`` sees an existing file's bytes first and may refuse (``files.write_output``).

    Raises:
        OutputRefused: (an ``OSError``) the target is refused.
        OSError: other I/O errors.
    """
    files.write_output(path, dumps(ref), check_existing=check_existing)
