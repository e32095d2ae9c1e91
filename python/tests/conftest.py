"""Fixtures shared by the unit and e2e tests: short temporary folders under /tmp (a Unix
socket path must fit in 107 bytes, and pytest's own tmp_path can be longer than that)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kwt", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
