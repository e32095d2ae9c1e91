"""Mutual TLS for NVFlare's gRPC client with the key in the agent, no tunnel.

nvflare 2.9.0's gRPC drivers (``fuel/f3/drivers/grpc_driver.py``, ``aio_grpc_driver.py``) get
their channel credentials from ``get_grpc_client_credentials(params)``
(``fuel/f3/drivers/grpc/utils.py``, imported by name into both drivers), which for ``mtls``
reads ``client.key`` as PEM bytes into ``grpc.ssl_channel_credentials``. When that file is a
keyward key reference, this module answers instead with
``grpc.experimental.ssl_channel_credentials_with_custom_signer`` (grpcio >= 1.75, gRPC proposal
A107): the TLS handshake's CertificateVerify is signed by the agent, with the ``tls-*`` profile
that matches the algorithm gRPC negotiated (``SIGNATURE_PROFILES``). ``tls`` (one-way) and every
other key go to NVFlare's function unchanged; ``http``/``tcp`` still need ``keyward tunnel``
(Python's ``ssl`` takes only key files). Activated by the start-up hook when a process parses a
key reference. docs/nvflare-plugin.md §11.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any, Callable

from . import _hook, keyref, nvflare_compat
from .client import KeywardClient
from .errors import KeywardError, Unsupported
from .nvflare import _timeout, logger
from .nvflare_flow import reference_for

UTILS_MODULE = nvflare_compat.GRPC_UTILS_MODULE
DRIVER_MODULES = nvflare_compat.GRPC_DRIVER_MODULES
FUNCTION = nvflare_compat.GRPC_CREDENTIALS
_FLAG = "__keyward_grpc__"

#: gRPC's ``PrivateKeySignatureAlgorithm`` names -> the agent's signing profile (docs/protocol.md §5).
SIGNATURE_PROFILES = {
    "RSA_PKCS1_SHA256": "tls-rsa-pkcs1-sha256",
    "RSA_PKCS1_SHA384": "tls-rsa-pkcs1-sha384",
    "RSA_PSS_RSAE_SHA256": "tls-rsa-pss-sha256",
    "RSA_PSS_RSAE_SHA384": "tls-rsa-pss-sha384",
    "ECDSA_SECP256R1_SHA256": "tls-ecdsa-p256-sha256",
}


def activate() -> None:
    """Patches NVFlare's gRPC credentials function (and the drivers' copies of its name) now if
    imported, else as soon as they are. Idempotent. Every name it uses is checked first
    (``nvflare_compat.require_or_stop``), so a changed NVFlare or grpcio stops the process here
    rather than at its first TLS handshake."""
    nvflare_compat.require_or_stop()
    _hook.when_imported(UTILS_MODULE, patch_module)
    for name in DRIVER_MODULES:
        _hook.when_imported(name, patch_module)


def algorithm_name(algorithm: Any) -> str:
    """The ``PrivateKeySignatureAlgorithm`` member name of ``algorithm``: grpcio 1.85 passes the
    signer a plain int (``6`` for ``RSA_PSS_RSAE_SHA256``), not the enum member."""
    name = getattr(algorithm, "name", None)
    if isinstance(name, str):
        return name
    import grpc.experimental

    members = grpc.experimental.PrivateKeySignatureAlgorithm
    for candidate in dir(members):
        if candidate.isupper() and isinstance(algorithm, int) and int(getattr(members, candidate)) == algorithm:
            return candidate
    return str(algorithm)


def tls_signer(client: KeywardClient, key: str) -> Callable[[bytes, Any, Any], bytes]:
    """The ``private_key_sign_fn`` for gRPC: signs the handshake message with ``key`` and the
    profile for the algorithm gRPC asks for (synchronously). An algorithm without a profile, or
    a refusal by the agent, raises, and gRPC fails the handshake."""

    def sign(data: bytes, algorithm: Any, on_complete: Any) -> bytes:
        name = algorithm_name(algorithm)
        profile = SIGNATURE_PROFILES.get(name)
        if profile is None:
            exc = Unsupported(f"gRPC asked for signature algorithm {name}, which keyward does not sign",
                              socket_path=client.socket_path, key=key)
            logger.error("keyward: %s; the TLS handshake fails", exc)
            raise exc
        try:
            return client.sign(key, profile, bytes(data)).signature
        except KeywardError as exc:
            logger.error("keyward: the agent did not sign the TLS handshake with `%s` (%s): %s", key, profile, exc)
            raise

    return sign


def _read(path: Any) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def credentials(ref: keyref.KeyReference, ca_cert: Any, client_cert: Any) -> Any:
    """Channel credentials whose TLS client key is ``ref``'s, in the agent."""
    import grpc.experimental

    client = KeywardClient(ref.socket, timeout=_timeout())
    logger.info("keyward: gRPC mutual TLS with key `%s` held by the agent (custom signer)", ref.key)
    with warnings.catch_warnings():  # experimental in grpcio 1.85; the plug-in pins what it tested
        warnings.simplefilter("ignore", grpc.experimental.ExperimentalApiWarning)
        return grpc.experimental.ssl_channel_credentials_with_custom_signer(
            private_key_sign_fn=tls_signer(client, ref.key),
            root_certificates=_read(ca_cert),
            certificate_chain=_read(client_cert) or b"",
        )


def patch_module(module: Any) -> None:
    """Replaces ``get_grpc_client_credentials`` in ``module``. Idempotent."""
    original = getattr(module, FUNCTION, None)
    if original is None or getattr(original, _FLAG, False):
        return
    utils = sys.modules.get(UTILS_MODULE)
    params_enum = getattr(utils, "DriverParams", None) or getattr(module, "DriverParams", None)
    security_enum = getattr(utils, "ConnectionSecurity", None)

    @functools.wraps(original)
    def get_grpc_client_credentials(params: dict) -> Any:
        security = params.get(params_enum.CONNECTION_SECURITY.value, security_enum.MTLS)
        if security != security_enum.TLS:
            ref = reference_for(params.get(params_enum.CLIENT_KEY))
            if ref is not None:
                params[params_enum.IMPLEMENTED_CONN_SEC] = "Client mTLS: keyward custom signer"
                return credentials(ref, params.get(params_enum.CA_CERT.value), params.get(params_enum.CLIENT_CERT))
        return original(params)

    setattr(get_grpc_client_credentials, _FLAG, True)
    setattr(module, FUNCTION, get_grpc_client_credentials)
