"""Where ``--out`` writes (keyward/files.py), on real symlinks, FIFOs, device nodes and sockets
made in a temp folder (never the machine's own ``/dev/null``). Device nodes and ``chown`` need
root; the tests run as root (CI does)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from keyward import files


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _require_root() -> None:
    assert os.geteuid() == 0, "this test needs root (mknod, chown); CI runs as root"


def test_a_symlink_is_refused_and_its_target_left_alone(short_tmp):
    target = short_tmp / "shadow"
    target.write_text("precious")
    link = short_tmp / "site-1.crt"
    link.symlink_to(target)
    with pytest.raises(files.OutputRefused, match=r"`.*site-1.crt` is a symbolic link"):
        files.write_output(link, b"evil")
    assert target.read_text() == "precious" and link.is_symlink()
    dangling = short_tmp / "client.key"
    dangling.symlink_to(short_tmp / "nowhere")
    with pytest.raises(files.OutputRefused, match="is a symbolic link"):
        files.write_output(dangling, b"evil")
    assert not (short_tmp / "nowhere").exists()
    assert _only(short_tmp) == ["client.key", "shadow", "site-1.crt"]


def test_a_fifo_is_written_through_and_stays_a_fifo(short_tmp):
    fifo = short_tmp / "fifo"
    os.mkfifo(fifo, 0o600)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    files.write_output(fifo, b"through the fifo")
    reader.join(timeout=10)
    assert got == [b"through the fifo"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _only(short_tmp) == ["fifo"]


def test_a_character_device_is_written_through_not_replaced(short_tmp):
    _require_root()
    null = short_tmp / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
    files.write_output(null, b"certificate")
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), "the device was replaced"
    assert _only(short_tmp) == ["null"], "a temp file was left behind"


def test_a_folder_a_socket_and_a_block_device_are_refused(short_tmp):
    _require_root()
    folder = short_tmp / "folder"
    folder.mkdir()
    with pytest.raises(files.OutputRefused, match="is a folder, not a regular file"):
        files.write_output(folder, b"x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(short_tmp / "sock"))
        with pytest.raises(files.OutputRefused, match="is a socket, not a regular file"):
            files.write_output(short_tmp / "sock", b"x")
    os.mknod(short_tmp / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    with pytest.raises(files.OutputRefused, match="is a block device, not a regular file"):
        files.write_output(short_tmp / "blk", b"x")
    assert stat.S_ISDIR(os.lstat(folder).st_mode) and list(folder.iterdir()) == []
    assert stat.S_ISBLK(os.lstat(short_tmp / "blk").st_mode)
    assert _only(short_tmp) == ["blk", "folder", "sock"]


def test_a_missing_parent_folder_is_refused_and_not_created(short_tmp):
    with pytest.raises(files.OutputRefused, match=r"folder `.*/missing` does not exist"):
        files.write_output(short_tmp / "missing" / "site-1.crt", b"x")
    assert _only(short_tmp) == []


def test_a_new_file_is_0644_even_under_umask_077(short_tmp):
    out = short_tmp / "site-1.crt"
    old_umask = os.umask(0o077)
    try:
        files.write_output(out, b"certificate")
    finally:
        os.umask(old_umask)
    assert out.read_bytes() == b"certificate"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert _only(short_tmp) == ["site-1.crt"]


def test_a_replaced_file_keeps_its_owner_group_and_mode(short_tmp):
    _require_root()
    out = short_tmp / "client.key"
    out.write_bytes(b"old")
    os.chown(out, 65534, 65534)
    os.chmod(out, 0o640)
    before = os.lstat(out)
    files.write_output(out, b"new")
    after = os.lstat(out)
    assert out.read_bytes() == b"new"
    assert after.st_ino != before.st_ino, "not replaced by rename"
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (65534, 65534, 0o640)
    assert _only(short_tmp) == ["client.key"]


def test_check_existing_reads_the_opened_file_and_may_refuse(short_tmp):
    out = short_tmp / "client.key"
    out.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\n")
    seen: list[bytes] = []

    def refuse(existing: bytes) -> None:
        seen.append(existing)
        raise files.OutputRefused("not a key reference")

    with pytest.raises(files.OutputRefused, match="not a key reference"):
        files.write_output(out, b"reference", check_existing=refuse)
    assert seen == [b"-----BEGIN RSA PRIVATE KEY-----\n"]
    assert out.read_bytes() == b"-----BEGIN RSA PRIVATE KEY-----\n"
    files.write_output(out, b"reference", check_existing=seen.append)
    assert out.read_bytes() == b"reference" and len(seen) == 2
    assert _only(short_tmp) == ["client.key"]


def test_a_name_swapped_between_open_and_rename_is_not_replaced(short_tmp, monkeypatch):
    out = short_tmp / "site-1.crt"
    out.write_bytes(b"opened")
    planted = short_tmp / "planted"
    planted.write_bytes(b"someone else's")
    write_temp = files._write_temp

    def swap_after_writing(fd: int, data: bytes) -> None:
        write_temp(fd, data)
        os.rename(planted, out)  # the name now holds another file

    monkeypatch.setattr(files, "_write_temp", swap_after_writing)
    with pytest.raises(files.OutputRefused, match="was replaced or removed while keyward wrote it"):
        files.write_output(out, b"certificate")
    assert out.read_bytes() == b"someone else's"
    assert _only(short_tmp) == ["site-1.crt"], "the temp file was left behind"


def test_a_file_created_meanwhile_is_never_replaced(short_tmp, monkeypatch):
    out = short_tmp / "site-1.crt"
    write_temp = files._write_temp

    def create_after_writing(fd: int, data: bytes) -> None:
        write_temp(fd, data)
        out.write_bytes(b"created meanwhile")

    monkeypatch.setattr(files, "_write_temp", create_after_writing)
    with pytest.raises(files.OutputRefused, match="was created by someone else"):
        files.write_output(out, b"certificate")
    assert out.read_bytes() == b"created meanwhile"
    assert _only(short_tmp) == ["site-1.crt"]


def test_dash_is_standard_output_and_a_proc_self_fd_name_is_that_descriptor(capfdbinary):
    files.write_output("-", b"to stdout")
    assert capfdbinary.readouterr().out == b"to stdout"
    read_end, write_end = os.pipe()
    try:
        files.write_output(f"/proc/self/fd/{write_end}", b"via the pipe")
    finally:
        os.close(write_end)
    with open(read_end, "rb") as pipe:
        assert pipe.read() == b"via the pipe"
