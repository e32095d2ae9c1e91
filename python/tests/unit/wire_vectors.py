"""The golden vectors of the wire (protocol/vectors/, written and checked by the Rust
protocol crate): one request and one reply per operation, and the error-code table. The
Python client is checked against these files, not against prose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[3] / "protocol" / "vectors"


def operations() -> list[str]:
    """Every operation that has a vector, sorted."""
    return sorted(p.stem for p in (VECTORS / "ops").glob("*.json"))


def load(op: str) -> dict[str, Any]:
    """``vectors/ops/<op>.json``, with ``request_frame``/``reply_frame`` as bytes and
    ``request_wire``/``reply_wire`` as the frame bodies parsed in wire order."""
    vector = json.loads((VECTORS / "ops" / f"{op}.json").read_text())
    for name in ("request", "reply"):
        frame = bytes.fromhex(vector[f"{name}_frame"])
        vector[f"{name}_frame"] = frame
        vector[f"{name}_wire"] = json.loads(frame[4:])
    return vector


def error_codes() -> list[str]:
    """The wire error codes, in the Rust declaration order."""
    return json.loads((VECTORS / "error_codes.json").read_text())["codes"]


def error_example() -> dict[str, Any]:
    """An error reply: ``reply`` (JSON) and ``reply_frame`` (bytes)."""
    example = json.loads((VECTORS / "error_codes.json").read_text())["example"]
    return {"reply": example["reply"], "reply_frame": bytes.fromhex(example["reply_frame"])}
