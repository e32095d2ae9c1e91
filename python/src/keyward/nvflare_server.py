"""The NVFlare server's key through the agent: challenge replies and client tokens it binds.

nvflare 2.9.0's server uses ``server.key`` (read by ``CredKeeper.get_id_asserter`` into an
``IdentityAsserter``, ``private/fed/server/cred_keeper.py``) for:

1. ``FederatedServer.client_challenge`` (``private/fed/server/fed_server.py``): makes a
   ``ClientRegSession`` (its ``nonce`` a uuid4) for the message's origin, signs
   ``server_cn + client_nonce`` (``id_asserter.sign_common_name``) and replies with the session
   nonce;
2. ``FederatedServer.register_client``: ``ClientManager.authenticated_client``
   (``client_manager.py``) verifies the client (chain, CN, signature over ``cn + session
   nonce``) and makes its token; ``sign_auth_token(client.name, client.token)`` signs
   ``client_name + token`` (``id_asserter.sign(..., return_str=True)``);
3. ``sign_auth_token`` also for the server's own messages (``"server" + "server"``) and each
   job process (``"server_job" + job_id``, ``server_engine.py``); the admin server's session
   tokens (``fuel/hci/server/sess.py``, a JSON text); and the cell cipher (``CredentialManager``).

For a server whose ``ssl_private_key`` is a keyward key reference this module routes (1) through
``nvflare_server_challenge`` — the agent signs and issues the session nonce, which replaces
NVFlare's — and (2) through ``nvflare_server_register``: before NVFlare's own check, the agent
verifies the registration itself against the nonce it issued and signs a fresh token, which
becomes the client's; its signature is what ``sign_auth_token`` returns for that client and
token. A refusal leaves the client without a token (NVFlare's reply for a failed check: no
payload). (3) stays
on the delegating key's plain ``sign``/``decrypt``, which the agent refuses for anything shaped
like (1) or (2). Activated by the start-up hook when a process parses a key reference
(``activate``). Design and limits: docs/nvflare-plugin.md §10.
"""

from __future__ import annotations

import base64
import functools
import threading
import uuid
from typing import Any

from . import _hook, keyref, nvflare_compat
from .client import KeywardClient
from .errors import KeywardError
from .nvflare import _timeout, logger
from .nvflare_flow import _shown, reference_for

FED_SERVER_MODULE = nvflare_compat.FED_SERVER_MODULE
CLIENT_MANAGER_MODULE = nvflare_compat.CLIENT_MANAGER_MODULE
CRED_KEEPER_MODULE = nvflare_compat.CRED_KEEPER_MODULE
_FLAG = "__keyward_server__"
#: Most token signatures kept between the agent's reply and NVFlare's ``sign_auth_token``.
_MAX_TOKENS = 256

#: The server nonce the agent issued in this thread's current ``client_challenge``.
_issued = threading.local()
#: ``client_name + token`` -> the agent's base64 signature, taken once by ``sign_auth_token``.
_token_signatures: dict[str, str] = {}
_tokens_lock = threading.Lock()


def activate() -> None:
    """Patches NVFlare's server modules now if they are imported, else as soon as they are.
    Idempotent; harmless in a client process (the patched code only runs in a server). Every
    name the patches use is checked first (``nvflare_compat.require_or_stop``)."""
    nvflare_compat.require_or_stop()
    _hook.when_imported(CRED_KEEPER_MODULE, patch_cred_keeper)
    _hook.when_imported(FED_SERVER_MODULE, patch_fed_server)
    _hook.when_imported(CLIENT_MANAGER_MODULE, patch_client_manager)


def _client(ref: keyref.KeyReference) -> KeywardClient:
    return KeywardClient(ref.socket, timeout=_timeout())


def patch_cred_keeper(module: Any) -> None:
    """``CredKeeper.get_id_asserter``: an asserter whose key is a reference becomes a
    ``KeywardServerAsserter`` (same object, subclass)."""
    cls = module.CredKeeper
    original = cls.get_id_asserter
    if getattr(original, _FLAG, False):
        return

    @functools.wraps(original)
    def get_id_asserter(self: Any, fl_ctx: Any) -> Any:
        asserter = original(self, fl_ctx)
        if asserter is None or getattr(asserter, "_keyward_ref", None) is not None:
            return asserter
        ref = reference_for(getattr(asserter, "private_key_file", None))
        if ref is not None:
            asserter.__class__ = _asserter_class(type(asserter))
            asserter._keyward_ref = ref
        return asserter

    setattr(get_id_asserter, _FLAG, True)
    cls.get_id_asserter = get_id_asserter


@functools.lru_cache(maxsize=None)
def _asserter_class(base: type) -> type:
    class KeywardServerAsserter(base):  # type: ignore[misc, valid-type]
        """NVFlare's server ``IdentityAsserter`` for a key held by keyward: the challenge reply
        comes from ``nvflare_server_challenge``; a client's token signature is the one
        ``nvflare_server_register`` made; anything else is the delegating key's plain sign."""

        _keyward_ref: keyref.KeyReference

        def sign_common_name(self, nonce: str) -> Any:
            ref = self._keyward_ref
            try:
                reply = _client(ref).nvflare_server_challenge(ref.key, nonce)
            except KeywardError as exc:
                logger.error("keyward: the agent did not sign the challenge reply: %s", exc)
                raise
            if reply.cn != self.cn:
                logger.warning("keyward: the certificate installed in the agent for `%s` has CN `%s`, `%s` has `%s`",
                               ref.key, _shown(reply.cn), self.cert_file, _shown(self.cn))
            _issued.nonce = reply.nonce
            return reply.signature

        def sign(self, content: Any, return_str: bool) -> Any:
            if isinstance(content, str):
                with _tokens_lock:
                    verified = _token_signatures.pop(content, None)
                if verified is not None:
                    return verified if return_str else base64.b64decode(verified)
            return super().sign(content, return_str=return_str)

    KeywardServerAsserter.__qualname__ = KeywardServerAsserter.__name__
    return KeywardServerAsserter


def patch_fed_server(module: Any) -> None:
    """``FederatedServer.client_challenge``: the session nonce becomes the agent's."""
    cls = module.FederatedServer
    original = cls.client_challenge
    if getattr(original, _FLAG, False):
        return
    header_origin = module.MessageHeaderKey.ORIGIN
    nonce_key = module.IdentityChallengeKey.NONCE

    @functools.wraps(original)
    def client_challenge(self: Any, request: Any) -> Any:
        _issued.nonce = None
        reply = original(self, request)
        issued, _issued.nonce = getattr(_issued, "nonce", None), None
        if issued is None:
            return reply  # not a keyward key, or no signature was made (not ready, not secure)
        origin = request.get_header(header_origin)
        with self.reg_lock:
            reg = self.name_to_reg.get(origin)
            if reg is not None:
                reg.nonce = issued
        if isinstance(reply.payload, dict):
            reply.payload[nonce_key] = issued
        return reply

    setattr(client_challenge, _FLAG, True)
    cls.client_challenge = client_challenge


def _server_reference(manager: Any, fl_ctx: Any) -> keyref.KeyReference | None:
    keeper = getattr(manager, "cred_keeper", None)
    config = keeper._get_server_config(fl_ctx) if keeper is not None else {}
    return reference_for(config.get("ssl_private_key")) if isinstance(config, dict) else None


def patch_client_manager(module: Any) -> None:
    """``ClientManager.authenticated_client``: the agent verifies the registration first and signs
    a token it was given; only then does NVFlare's own check run, and the client it makes gets
    that token. A refusal by either leaves the client unregistered (and no earlier registration
    of the same name is evicted when the agent refuses)."""
    cls = module.ClientManager
    original = cls.authenticated_client
    if getattr(original, _FLAG, False):
        return
    names = module.CellMessageHeaderKeys
    keys = module.IdentityChallengeKey
    session_key = module.InternalFLContextKey.CLIENT_REG_SESSION
    secure_key = module.FLContextKey.SECURE_MODE

    @functools.wraps(original)
    def authenticated_client(self: Any, request: Any, fl_ctx: Any, client_type: Any) -> Any:
        ref = _server_reference(self, fl_ctx) if fl_ctx.get_prop(secure_key, False) else None
        if ref is None:
            return original(self, request, fl_ctx, client_type)
        name = request.get_header(names.CLIENT_NAME)
        token = str(uuid.uuid4())  # what NVFlare makes; the agent signs it for this client only
        try:
            signature = _agent_registration(ref, request, fl_ctx.get_prop(session_key), name, token, keys)
        except KeywardError as exc:
            logger.error("keyward: the agent refused the registration of `%s`: %s; it gets no token",
                         _shown(name), exc)
            return None
        client = original(self, request, fl_ctx, client_type)
        if client is None:
            return None
        client.set_token(token)
        with _tokens_lock:
            _token_signatures[client.name + token] = signature
            while len(_token_signatures) > _MAX_TOKENS:
                _token_signatures.pop(next(iter(_token_signatures)))
        logger.info("keyward: the agent verified the registration of `%s` and signed its token", _shown(name))
        return client

    setattr(authenticated_client, _FLAG, True)
    cls.authenticated_client = authenticated_client


def _agent_registration(ref: keyref.KeyReference, request: Any, reg: Any, name: Any, token: str, keys: Any) -> str:
    """``nvflare_server_register`` for a register message; the token signature as NVFlare sends it
    (base64 text). Raises the agent's refusal (``KeywardError``)."""
    payload = request.payload if isinstance(request.payload, dict) else {}
    cert, signature = payload.get(keys.CERT), payload.get(keys.SIGNATURE)
    if isinstance(cert, str):
        cert = cert.encode("utf-8")
    if isinstance(signature, str):  # NVFlare's verify_content takes base64 text too
        signature = base64.b64decode(signature)
    registered = _client(ref).nvflare_server_register(
        ref.key, str(getattr(reg, "nonce", "")), str(name or ""), bytes(cert or b""), bytes(signature or b""), token)
    return base64.b64encode(registered.token_signature).decode("ascii")
