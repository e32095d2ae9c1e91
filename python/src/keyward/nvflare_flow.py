"""NVFlare's client authentication through the agent's NVFlare flow (peer-bound signing).

nvflare 2.9 authenticates a client in ``nvflare/private/fed/authenticator.py``:
``Authenticator._challenge_server`` makes the client nonce, sends the challenge and checks the
server's reply; ``Authenticator.authenticate`` then builds an ``IdentityAsserter`` (a name it looks
up in that module) that signs ``client_cn + server_nonce``, and checks the token the server
returns with the ``TokenVerifier`` that ``_challenge_server`` returned. For a site key held by
keyward the agent refuses that signature as a plain ``sign`` (``policy_denied``); it signs a
registration only in ``nvflare_register``, after verifying the server itself
(docs/protocol.md §7). This module patches exactly those three points, for ``Authenticator``
instances whose ``private_key_file`` is a keyward key reference, and leaves every other
instance on NVFlare's own code:

1. ``Authenticator._challenge_server``: the client nonce comes from ``nvflare_challenge``; the
   server's reply goes unchanged to ``nvflare_register``, which verifies it and returns the
   registration (CN, certificate, signature); NVFlare's own checks then run as well.
2. ``authenticator.IdentityAsserter``: for a reference, ``sign_common_name(server_nonce)``
   returns the signature ``nvflare_register`` made for that server nonce, never a plain ``sign``.
3. The returned ``TokenVerifier`` asks ``nvflare_verify_token`` for the registration token,
   then runs NVFlare's own check.

The admin API (``nvflare.fuel.hci.client.api.AdminAPI.connect``) logs the admin in with the same
``Authenticator``, so an admin key held by keyward is routed the same way (docs/nvflare-plugin.md
§4b). The start-up hook (``_hook.py``) activates this the first time a process parses a key
reference (``activate``), after ``nvflare_compat`` found every NVFlare name, attribute and call
path used here; if one is missing, or the NVFlare version is untested, the process logs why and
exits instead of patching anything. Every refusal is logged under the ``keyward`` logger (so it
lands in NVFlare's log) and raised, which ends the client's start instead of a retry loop. The
design, its limits and the NVFlare call paths it depends on: docs/nvflare-plugin.md §4a, §6.
"""

from __future__ import annotations

import base64
import functools
import threading
from collections import OrderedDict
from typing import Any, NoReturn

from . import _hook, keyref, nvflare_compat
from .client import KeywardClient
from .errors import AgentError, IncompatibleNvflare, KeywardError, RegistrationNotVerified
from .nvflare import _timeout, logger
from .protocol import Registration

#: The module patched (the versions it was tested with: ``nvflare_compat.TESTED_NVFLARE``).
AUTHENTICATOR_MODULE = nvflare_compat.AUTHENTICATOR_MODULE
_FLAG = "__keyward_flow__"
#: Registrations waiting for ``sign_common_name``, keyed by (socket, key, server nonce). A
#: registration is taken once; the map is bounded in case an authentication dies half-way.
_MAX_PENDING = 64
_pending: OrderedDict[tuple[str, str, str], Registration] = OrderedDict()
_pending_lock = threading.Lock()


def activate() -> None:
    """Patches NVFlare's authenticator now if it is imported, else as soon as it is. Called by
    the hook when this process parses a key reference. Idempotent. Where NVFlare is installed,
    first checks it (``nvflare_compat.require``, once per process) and ends the process on a
    mismatch, so a client stops at start rather than at registration."""
    nvflare_compat.require_or_stop()
    _hook.when_imported(AUTHENTICATOR_MODULE, patch_authenticator)


def _shown(text: object, limit: int = 80) -> str:
    """Server-supplied text for a log line: control characters escaped (no line breaks that
    could forge log lines), cut at ``limit``."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def _refuse(exc: KeywardError, consequence: str) -> NoReturn:
    """Logs ``exc`` under "keyward" (NVFlare's log) and raises it. The agent's message may quote
    the server's CN; control characters in it are escaped first, in the log and the exception."""
    if not exc.reason.isprintable():
        context = {"socket_path": exc.socket_path, "op": exc.op, "key": exc.key, "request_id": exc.request_id}
        reason = _shown(exc.reason, 1000)
        if isinstance(exc, AgentError):
            clean: KeywardError = type(exc)(reason, code=exc.code, **context)
        else:
            clean = type(exc)(reason, **context)
        logger.error("%s; %s", clean, consequence)
        raise clean from None
    logger.error("%s; %s", exc, consequence)
    raise exc


def reference_for(private_key_file: Any) -> keyref.KeyReference | None:
    """The key reference in ``private_key_file``, or None if the file is something else (a
    real key, missing: NVFlare's own code then handles it as it always did).

    Raises:
        InvalidKeyReference: the file starts like a reference but does not parse (logged).
    """
    if not isinstance(private_key_file, str) or not private_key_file:
        return None
    try:
        with open(private_key_file, "rb") as f:
            data = f.read(keyref.MAX_REFERENCE_BYTES + 1)
    except OSError:
        return None
    if not _hook.looks_like_reference(data):
        return None
    try:
        return keyref.parse(data)
    except KeywardError as exc:
        _refuse(exc, f"cannot use the key reference `{private_key_file}`")


def _put_registration(ref: keyref.KeyReference, server_nonce: str, registration: Registration) -> None:
    with _pending_lock:
        _pending[(ref.socket, ref.key, server_nonce)] = registration
        while len(_pending) > _MAX_PENDING:
            _pending.popitem(last=False)


def take_registration(ref: keyref.KeyReference, server_nonce: str) -> Registration | None:
    """The registration ``nvflare_register`` returned for ``server_nonce``, once."""
    with _pending_lock:
        return _pending.pop((ref.socket, ref.key, server_nonce), None)


def patch_authenticator(module: Any) -> None:
    """Installs the three patches in ``nvflare.private.fed.authenticator``. Idempotent. If the
    module lacks a name, attribute or call path the patch needs (``nvflare_compat.require``), it
    patches nothing and ends the process (``nvflare_compat.refuse_start``): registration on
    NVFlare's own code would only be refused by the agent, in a retry loop."""
    cls = getattr(module, "Authenticator", None)
    original_challenge = getattr(cls, "_challenge_server", None)
    if getattr(original_challenge, _FLAG, False):
        return
    try:
        nvflare_compat.require(module)
    except IncompatibleNvflare as exc:
        nvflare_compat.refuse_start(exc)
    base_asserter = module.IdentityAsserter

    @functools.wraps(original_challenge)
    def _challenge_server(self: Any) -> Any:
        ref = reference_for(self.private_key_file)
        if ref is None:
            return original_challenge(self)
        return challenge_server(self, ref, module)

    setattr(_challenge_server, _FLAG, True)
    cls._challenge_server = _challenge_server
    module.IdentityAsserter = _asserter_class(base_asserter)


def _agent_client(ref: keyref.KeyReference) -> KeywardClient:
    return KeywardClient(ref.socket, timeout=_timeout())


def _as_signature_bytes(value: Any) -> bytes | None:
    # NVFlare 2.9 sends raw bytes; its verify_content also takes base64 text.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
    return None


def challenge_server(auth: Any, ref: keyref.KeyReference, nv: Any) -> tuple[Any, Any]:
    """``Authenticator._challenge_server`` for a site key held by keyward. ``nv`` is the
    authenticator module (its names are NVFlare's own). Returns ``(None, None)`` for NVFlare to
    retry on the same return codes as the original; otherwise ``(server_nonce, token verifier)``
    after the agent verified the server and signed the registration."""
    client = _agent_client(ref)
    try:
        my_nonce = client.nvflare_challenge(ref.key)
    except KeywardError as exc:
        _refuse(exc, "NVFlare registration stopped before the challenge: the agent issued no client nonce")

    headers = {nv.IdentityChallengeKey.COMMON_NAME: auth.client_name, nv.IdentityChallengeKey.NONCE: my_nonce}
    result = auth.cell.send_request(
        target=nv.FQCN.ROOT_SERVER,
        channel=nv.CellChannel.SERVER_MAIN,
        topic=nv.CellChannelTopic.Challenge,
        request=nv.new_cell_message(headers, None),
        timeout=auth.msg_timeout,
        optional=True,
    )
    return_code = result.get_header(nv.MessageHeaderKey.RETURN_CODE)
    if return_code != nv.ReturnCode.OK:
        if return_code in [nv.ReturnCode.TARGET_UNREACHABLE, nv.ReturnCode.COMM_ERROR]:
            return None, None  # NVFlare retries; the next attempt gets a new nonce from the agent
        err = result.get_header(nv.MessageHeaderKey.ERROR, "")
        raise nv.FLCommunicationError(f"failed to challenge server: {return_code}: {err}")

    reply = result.payload if isinstance(result.payload, dict) else {}  # a Shareable is a dict
    server_nonce = reply.get(nv.IdentityChallengeKey.NONCE)
    server_cn = reply.get(nv.IdentityChallengeKey.COMMON_NAME)
    cert = reply.get(nv.IdentityChallengeKey.CERT)
    signature = _as_signature_bytes(reply.get(nv.IdentityChallengeKey.SIGNATURE))
    if isinstance(cert, str):
        cert = cert.encode("utf-8")
    if not (isinstance(server_nonce, str) and isinstance(server_cn, str) and isinstance(cert, (bytes, bytearray))
            and signature is not None):
        text = "keyward: the server's challenge reply lacks a nonce, CN, certificate or signature of the right type"
        logger.error("%s; NVFlare registration stopped", text)
        raise nv.FLCommunicationError(text)

    try:
        registration = client.nvflare_register(ref.key, my_nonce, bytes(cert), server_cn, signature, server_nonce)
    except KeywardError as exc:
        _refuse(exc, f"the agent did not sign a registration for server `{_shown(server_cn)}`; "
                     "NVFlare registration stopped")

    # NVFlare's own checks of the same reply, as the original runs them (defence in depth). They
    # can only disagree with the agent if keyward.toml's root_ca or server_identity differ from
    # the kit's rootCA.pem or fed_client.json; the registration is then not sent.
    try:
        if server_cn != auth.expected_sp_identity:
            raise nv.FLCommunicationError(
                f"expected server identity is '{auth.expected_sp_identity}' but got '{server_cn}'"
            )
        chain = nv.load_crt_chain_bytes(bytes(cert))
        nv.IdentityVerifier(root_cert_file=auth.root_cert_file).verify_common_name(
            asserter_cert=chain[0],
            asserted_cn=server_cn,
            nonce=my_nonce,
            signature=signature,
            intermediate_certs=chain[1:],
            expected_eku=nv.ExtendedKeyUsageOID.SERVER_AUTH,
        )
    except Exception as exc:
        logger.error("keyward: the agent verified server `%s`, but NVFlare's own check refused it (%s: %s); check "
                     "that root_ca and server_identity in keyward.toml match the kit's rootCA.pem and "
                     "fed_client.json; the registration is not sent", _shown(server_cn), type(exc).__name__,
                     _shown(exc, 300))
        raise

    auth.logger.info(f"verified server identity '{auth.expected_sp_identity}'")
    logger.info("keyward: the agent verified server `%s` and signed the registration of `%s` with key `%s`",
                _shown(server_cn), registration.cn, ref.key)
    _put_registration(ref, server_nonce, registration)
    return server_nonce, _token_verifier_class(nv.TokenVerifier)(chain[0], client, registration.session)


@functools.lru_cache(maxsize=None)
def _asserter_class(base: type) -> type:
    class KeywardIdentityAsserter(base):  # type: ignore[misc, valid-type]
        """NVFlare's ``IdentityAsserter``; for a key reference, ``sign_common_name`` returns the
        signature the agent made in ``nvflare_register`` for that server nonce, and the CN and
        certificate sent with it are the agent's (the ones the signature is bound to)."""

        def __init__(self, private_key_file: str, cert_file: str) -> None:
            super().__init__(private_key_file=private_key_file, cert_file=cert_file)
            self._keyward_ref = reference_for(private_key_file)

        def sign_common_name(self, nonce: str) -> Any:
            ref = self._keyward_ref
            if ref is None:
                return super().sign_common_name(nonce)
            registration = take_registration(ref, nonce) if isinstance(nonce, str) else None
            if registration is None:
                _refuse(RegistrationNotVerified(
                    f"no registration verified by the agent for this server nonce (key `{ref.key}`): keyward signs "
                    "an NVFlare registration only through `nvflare_register`, after the agent verified the server",
                    socket_path=ref.socket, key=ref.key), "NVFlare registration stopped")
            if registration.cert != self.cert_data or registration.cn != self.cn:
                logger.warning("keyward: the certificate installed in the agent for `%s` (CN `%s`) differs from "
                               "`%s` (CN `%s`); sending the agent's, which the signature is bound to",
                               ref.key, registration.cn, self.cert_file, self.cn)
                self.cert_data = registration.cert
                self.cert = _first_cert(registration.cert)
                self.cn = registration.cn
            return registration.signature

    KeywardIdentityAsserter.__qualname__ = KeywardIdentityAsserter.__name__
    setattr(KeywardIdentityAsserter, _FLAG, True)  # nvflare_compat checks NVFlare's class, its base
    return KeywardIdentityAsserter


def _first_cert(pem: bytes) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem)[0]


@functools.lru_cache(maxsize=None)
def _token_verifier_class(base: type) -> type:
    class KeywardTokenVerifier(base):  # type: ignore[misc, valid-type]
        """NVFlare's ``TokenVerifier`` for the server the agent verified. Its first ``verify``
        (``authenticate``'s check of the registration token) goes to ``nvflare_verify_token``
        first; every call also runs NVFlare's own check. Later calls (the admin API and relay
        use the verifier for incoming messages) are NVFlare's check alone."""

        def __init__(self, cert: Any, client: KeywardClient, session: str) -> None:
            super().__init__(cert)
            self._keyward = (client, session)
            self._agent_checked = False

        def verify(self, client_name: Any, token: Any, signature: Any) -> bool:
            if not self._agent_checked:
                client, session = self._keyward
                text = signature if isinstance(signature, str) else base64.b64encode(bytes(signature)).decode()
                try:
                    server_cn = client.nvflare_verify_token(session, client_name, token, text)
                except KeywardError as exc:
                    _refuse(exc, "the registration token is not accepted; NVFlare registration stopped")
                self._agent_checked = True
                logger.info("keyward: the agent verified the registration token signed by server `%s`",
                            _shown(server_cn))
            return super().verify(client_name, token, signature)

    KeywardTokenVerifier.__qualname__ = KeywardTokenVerifier.__name__
    return KeywardTokenVerifier
