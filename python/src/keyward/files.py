"""Where ``keyward-nvflare``'s ``--out`` files go (``sign-csr``, ``write-reference``), decided on
one handle opened with ``O_NOFOLLOW | O_NOCTTY``, never by a check followed by a separate open.
The same rules as the ``keyward`` CLI's writer (agent/src/output.rs, agent/src/files.rs):

- ``-``: standard output.
- ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``, ``/proc/thread-self/fd/N``:
  the process's own descriptor, opened for appending (like ``-``; nothing is truncated).
- a character device or a FIFO: written through, never replaced (``/dev/null`` stays a device).
- an existing regular file: replaced atomically (a temporary file in the same folder, fsynced,
  renamed over it, the folder fsynced), keeping its owner, group and mode; right before the
  rename the name must still be the file that was opened (device and inode), else nothing is
  replaced. A caller's ``check_existing`` sees its bytes first (read through the opened handle)
  and may refuse.
- nothing: a new file, mode 0644 whatever the umask (certificates and key references hold no
  secret), linked into place so that something created there meanwhile is never replaced.
- refused (``OutputRefused``): a symbolic link at the last component (a link in a folder
  another user can write could point a root-run command anywhere), a folder, a block device,
  a socket, and a missing parent folder (never created).

Docs: docs/nvflare-plugin.md, "Where --out writes".
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import tempfile
from typing import Callable

#: Mode of a file this module creates: the files it writes are public.
NEW_FILE_MODE = 0o644
#: How much of an existing file ``check_existing`` is shown.
MAX_EXISTING_BYTES = 1 << 20

_OWN_DESCRIPTOR = re.compile(r"(/dev/stdout|/dev/stderr|(/dev/fd|/proc/self/fd|/proc/thread-self/fd)/[0-9]{1,9})")


class OutputRefused(OSError):
    """An ``--out`` target that is not written, with the reason (the message names the path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def write_output(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    check_existing: Callable[[bytes], None] | None = None,
) -> None:
    """Writes ``data`` to ``path`` as the module doc says. ``check_existing`` is called with
    (up to 1 MiB of) an existing regular file's content before it is replaced; it raises
    ``OutputRefused`` to keep the file.

    Raises:
        OutputRefused: a refused target, a missing folder, a name that changed under the
            write, or an owner that cannot be kept.
        OSError: other I/O errors.
    """
    path = os.fspath(path)
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if is_own_descriptor(path):
        # These names resolve, through links in root-owned /dev and /proc, to this process's own
        # descriptors: following them cannot be turned against the caller.
        _write_through(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC), data)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        _create_new(path, data)
        return
    except OSError as exc:
        refusal = _refusal(path, exc)
        if refusal is None:
            raise
        raise refusal from exc
    try:
        opened = os.fstat(fd)
        if stat.S_ISCHR(opened.st_mode) or stat.S_ISFIFO(opened.st_mode):
            fd, through = -1, fd  # _write_through closes it
            _write_through(through, data)
            return
        if not stat.S_ISREG(opened.st_mode):
            raise OutputRefused(f"`{path}` is a {_kind_name(opened.st_mode)}, not a regular file; not replacing it")
        if check_existing is not None:
            check_existing(_read_existing(fd, opened, path))
    finally:
        if fd >= 0:
            os.close(fd)
    _replace(path, data, opened)


def is_own_descriptor(path: str) -> bool:
    """Whether ``path`` names one of this process's own descriptors (``/dev/stdout``, ``/dev/fd/N``, ...)."""
    return _OWN_DESCRIPTOR.fullmatch(path) is not None


def _refusal(path: str, exc: OSError) -> OutputRefused | None:
    """The refusal an ``open`` of the target that failed stands for, if any."""
    if exc.errno == errno.ELOOP:
        return OutputRefused(f"`{path}` is a symbolic link; keyward does not write through links "
                             "(give the file's own path)")
    if exc.errno == errno.EISDIR:
        return OutputRefused(f"`{path}` is a folder, not a regular file; not replacing it")
    if exc.errno == errno.ENXIO:  # a socket, or a device without its driver
        try:
            kind = _kind_name(os.lstat(path).st_mode)
        except OSError:
            kind = "socket"
        return OutputRefused(f"`{path}` is a {kind}, not a regular file; not replacing it")
    return None


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISFIFO, "FIFO")):
        if test(mode):
            return name
    return "special file"


def _write_through(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to ``fd`` (a device, FIFO or own descriptor) and closes it."""
    with open(fd, "wb", closefd=True) as f:
        f.write(data)


def _read_existing(fd: int, opened: os.stat_result, path: str) -> bytes:
    """An existing regular file's content, read through the opened (write-only) handle: its
    ``/proc/self/fd`` entry reopens that very file, checked by device and inode."""
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputRefused(f"cannot read the existing `{path}` through its handle ({exc.strerror or exc}); "
                            "not replacing it") from exc
    with open(rfd, "rb", closefd=True) as f:
        if not _same_file(os.fstat(f.fileno()), opened):
            raise OutputRefused(f"`{path}` changed while it was read; not replacing it")
        return f.read(MAX_EXISTING_BYTES)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _folder(path: str) -> str:
    return os.path.dirname(path) or "."


def _temp_file(path: str) -> tuple[int, str]:
    """A new temporary file next to ``path`` (``O_EXCL``, mode 0600 until set)."""
    folder = _folder(path)
    try:
        return tempfile.mkstemp(prefix=".keyward-", dir=folder)
    except FileNotFoundError:
        raise OutputRefused(f"folder `{folder}` does not exist (keyward does not create it)") from None


def _write_temp(fd: int, data: bytes) -> None:
    """Writes ``data`` into the temporary file and fsyncs it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _sync_folder(path: str) -> None:
    dir_fd = os.open(_folder(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_new(path: str, data: bytes) -> None:
    """A new file at ``path``, 0644; linked into place, so whatever appeared there meanwhile stays."""
    fd, tmp = _temp_file(path)
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        _write_temp(fd, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OutputRefused(f"`{path}` was created by someone else while keyward wrote it; "
                                "not replacing it") from None
    finally:
        os.close(fd)
        os.unlink(tmp)
    _sync_folder(path)


def _replace(path: str, data: bytes, opened: os.stat_result) -> None:
    """Replaces the regular file ``opened`` (its ``fstat``) at ``path``, keeping owner, group, mode."""
    fd, tmp = _temp_file(path)
    renamed = False
    try:
        now = os.fstat(fd)
        if (now.st_uid, now.st_gid) != (opened.st_uid, opened.st_gid):
            try:
                os.fchown(fd, opened.st_uid, opened.st_gid)
            except OSError as exc:
                raise OutputRefused(f"cannot give the new `{path}` the old file's owner {opened.st_uid} and group "
                                    f"{opened.st_gid} ({exc.strerror or exc})") from exc
        os.fchmod(fd, stat.S_IMODE(opened.st_mode) & 0o777)
        _write_temp(fd, data)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        if current is None or not stat.S_ISREG(current.st_mode) or not _same_file(current, opened):
            raise OutputRefused(f"`{path}` was replaced or removed while keyward wrote it; not replacing it")
        os.rename(tmp, path)
        renamed = True
    finally:
        os.close(fd)
        if not renamed:
            os.unlink(tmp)
    _sync_folder(path)
