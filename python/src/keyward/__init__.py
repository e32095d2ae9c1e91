"""keyward: a client of the keyward agent, which keeps a site's private key in a token.

``KeywardClient`` speaks the agent's socket protocol v1 (docs/protocol.md) with the standard
library only; errors are ``KeywardError`` subclasses (``keyward.errors``). ``keyward.keyref``
reads and writes key reference files. The NVFlare plug-in is ``keyward.nvflare`` (needs
``cryptography``; install with the ``nvflare`` extra) with ``keyward.nvflare_flow`` (NVFlare's
registration through the agent's NVFlare flow); neither is imported here.
"""

from .client import Connection, KeywardClient
from .errors import (
    ERROR_CLASSES,
    AgentError,
    AgentUnreachable,
    DecryptionFailed,
    InvalidKeyReference,
    KeywardError,
    PermissionDenied,
    ProtocolError,
    ReplyTimeout,
    UnknownKey,
)
from .keyref import KeyReference
from .protocol import Hello, KeyInfo, PublicKeyInfo, Registration, Signature, Status

__version__ = "0.1.0"

__all__ = [
    "ERROR_CLASSES",
    "AgentError",
    "AgentUnreachable",
    "Connection",
    "DecryptionFailed",
    "Hello",
    "InvalidKeyReference",
    "KeyInfo",
    "KeyReference",
    "KeywardClient",
    "KeywardError",
    "PermissionDenied",
    "ProtocolError",
    "PublicKeyInfo",
    "Registration",
    "ReplyTimeout",
    "Signature",
    "Status",
    "UnknownKey",
    "__version__",
]
