"""Errors of the keyward client: one class per wire error code, plus local failures.

The wire codes and their meanings are in docs/protocol.md §4 ("Error codes"); ``ERROR_CLASSES``
holds exactly the codes of protocol/vectors/error_codes.json (tests/unit/test_errors.py). Branch on the
class (or on ``code``), never on the message text. Every message starts with ``keyward:`` and,
where a socket is involved, names it, so that a line in someone else's log (NVFlare's) says
which component failed, where, and why.

The class definitions below are the only list: defining an ``AgentError`` subclass registers
its ``code`` in ``ERROR_CLASSES`` (a code defined twice fails at import), and ``__all__`` is
every ``KeywardError`` class defined here plus ``ERROR_CLASSES`` and ``error_from_reply``.
"""

from __future__ import annotations

from typing import ClassVar


class KeywardError(Exception):
    """Base class of every error this package raises.

    ``code`` is the agent's wire code for errors the agent reported, and a local name
    (``agent_unreachable``, ``protocol_error``, ...) for failures found on this side.
    """

    code: ClassVar[str] = "keyward_error"
    #: What the operator can do about it; appended to the message when set.
    hint: ClassVar[str] = ""
    #: Whether the message names the operation and socket (False for local refusals, where
    #: the agent was never asked; the fields are still set).
    contextual: ClassVar[bool] = True

    def __init__(
        self,
        reason: str,
        *,
        socket_path: str | None = None,
        op: str | None = None,
        key: str | None = None,
        request_id: int | None = None,
    ) -> None:
        self.reason = reason
        self.socket_path = socket_path
        self.op = op
        self.key = key
        self.request_id = request_id
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.contextual:
            return f"keyward: {self._reason_text()}" + (f" ({self.hint})" if self.hint else "")
        what = ""
        if self.op:
            what = f"`{self.op}`"
            if self.key:
                what += f" with key `{self.key}`"
            what += " "
        where = f"via the agent at `{self.socket_path}` " if self.socket_path else ""
        reason = self._reason_text()
        if what or where:
            text = f"keyward: {what}{where}failed: {reason}"
        else:
            text = f"keyward: {reason}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def _reason_text(self) -> str:
        return self.reason

    def __reduce__(self):  # keep the keyword fields across pickling (multiprocessing)
        return (
            _rebuild,
            (type(self), self.reason, self.socket_path, self.op, self.key, self.request_id),
        )


def _rebuild(cls, reason, socket_path, op, key, request_id):
    return cls(reason, socket_path=socket_path, op=op, key=key, request_id=request_id)


# --- failures found on this side -------------------------------------------------------------


class AgentUnreachable(KeywardError):
    """The agent's socket could not be connected to (missing, refused, not a socket, no access)."""

    code = "agent_unreachable"
    hint = "is `keyward serve` running, and is this the socket in its keyward.toml?"


class ProtocolError(KeywardError):
    """The agent's reply broke the protocol: not a frame, too large, wrong id or kind, cut short."""

    code = "protocol_error"


class ReplyTimeout(KeywardError):
    """No complete reply arrived within the client's timeout."""

    code = "reply_timeout"


class InvalidKeyReference(KeywardError, ValueError):
    """A key reference file (``KEYWARD KEY REFERENCE`` PEM) is malformed. Also a ``ValueError``,
    as ``cryptography`` raises for a key file it cannot parse."""

    code = "invalid_key_reference"
    contextual = False


class UnsupportedPadding(KeywardError, ValueError):
    """The delegating key was asked for a padding or hash the agent does not offer for it."""

    code = "unsupported_padding"
    contextual = False


class KeyNotExportable(KeywardError, TypeError):
    """Someone asked the delegating key for its private bytes or numbers."""

    code = "key_not_exportable"
    contextual = False


class RegistrationNotVerified(KeywardError):
    """The NVFlare plug-in was asked for a registration signature it has no agent-verified
    registration for (``nvflare_register`` did not run for this server nonce). It never falls
    back to a plain ``sign``."""

    code = "registration_not_verified"
    contextual = False


class IncompatibleNvflare(KeywardError):
    """The installed NVFlare (or cryptography) lacks a name, attribute or call path the NVFlare
    plug-in relies on, or is a version it was not tested with (nvflare_compat.py). The plug-in
    then refuses to install, and a client refuses to start."""

    code = "incompatible_nvflare"
    contextual = False


# --- errors the agent reported (docs/protocol.md §4) -----------------------------------------


#: Wire code → class, for every code docs/protocol.md §4 lists: filled by ``AgentError``'s
#: subclasses as they are defined.
ERROR_CLASSES: dict[str, type[AgentError]] = {}


class AgentError(KeywardError):
    """An error reply from the agent. Subclasses exist for every documented code; a code this
    version does not know (the protocol allows new ones) is raised as ``AgentError`` itself with
    the agent's ``code``."""

    code = "agent_error"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code in ERROR_CLASSES:
            raise TypeError(f"wire code `{cls.code}` has two classes: {ERROR_CLASSES[cls.code].__name__}, {cls.__name__}")
        ERROR_CLASSES[cls.code] = cls

    def __init__(self, reason: str, *, code: str | None = None, **context) -> None:
        if code is not None and code != type(self).code:
            self.code = code  # type: ignore[misc]  # instance value for unknown codes
        super().__init__(reason, **context)

    def _reason_text(self) -> str:
        # The wire code next to the agent's own text: "... failed: unknown_key: no key named ..."
        return f"{self.code}: {self.reason}"

    def __reduce__(self):
        fields = (self.reason, self.code, self.socket_path, self.op, self.key, self.request_id)
        return (_rebuild_agent, (type(self), *fields))


def _rebuild_agent(cls, reason, code, socket_path, op, key, request_id):
    return cls(reason, code=code, socket_path=socket_path, op=op, key=key, request_id=request_id)


class MalformedRequest(AgentError):
    """``malformed_request``: the frame body was not a JSON object."""

    code = "malformed_request"


class FrameTooLarge(AgentError):
    """``frame_too_large``: the request exceeded the agent's ``max_frame_bytes``; it closed."""

    code = "frame_too_large"


class TruncatedFrame(AgentError):
    """``truncated_frame``: the agent saw the stream end inside a frame; it closed."""

    code = "truncated_frame"


class ReadTimeout(AgentError):
    """``read_timeout``: the agent got no complete frame within ``read_timeout_ms``; it closed."""

    code = "read_timeout"


class PermissionDenied(AgentError):
    """``permission_denied``: this process's uid/gid is not allowed to use the agent."""

    code = "permission_denied"
    hint = "add this uid to access.allowed_uids in keyward.toml"


class UnsupportedVersion(AgentError):
    """``unsupported_version``: the agent does not speak this protocol version."""

    code = "unsupported_version"


class UnknownOperation(AgentError):
    """``unknown_operation``: the agent does not know the requested ``op``."""

    code = "unknown_operation"


class InvalidRequest(AgentError):
    """``invalid_request``: a field was missing, unknown, of the wrong type, or invalid."""

    code = "invalid_request"


class UnknownKey(AgentError):
    """``unknown_key``: the token holds no key with that name."""

    code = "unknown_key"
    hint = "`keyward key list` shows the keys in the token"


class PolicyDenied(AgentError):
    """``policy_denied``: the key's ``[keys.<name>]`` policy refuses this operation (for example a
    plain ``sign`` of an NVFlare registration message, which must go through ``nvflare_register``)."""

    code = "policy_denied"


class RateLimited(AgentError):
    """``rate_limited``: the key's ``rate_limit`` or ``profile_rate_limits`` bucket is empty; the
    message says when a token is back. A burst of identity signatures is unusual for an FL client."""

    code = "rate_limited"


class AuditFailed(AgentError):
    """``audit_failed``: the agent could not write the audit record of a signature, decryption or
    registration (for example its file system is full), so it withheld the result. Nothing was
    returned; retry once the agent's audit log is writable again."""

    code = "audit_failed"
    hint = "the agent's audit log cannot be written (is its file system full?); see the agent's log"


class NonceUnknown(AgentError):
    """``nonce_unknown``: ``nvflare_register`` with a client nonce this agent did not issue or forgot."""

    code = "nonce_unknown"


class NonceExpired(AgentError):
    """``nonce_expired``: the client nonce is more than 60 s old."""

    code = "nonce_expired"


class NonceReplayed(AgentError):
    """``nonce_replayed``: the client nonce was already used."""

    code = "nonce_replayed"


class NonceNotYours(AgentError):
    """``nonce_not_yours``: the client nonce was issued to another uid or for another key."""

    code = "nonce_not_yours"


class ServerIdentityMismatch(AgentError):
    """``server_identity_mismatch``: the server CN is not the configured one, or not the cert's."""

    code = "server_identity_mismatch"


class ServerUntrusted(AgentError):
    """``server_untrusted``: the server chain does not lead to the pinned root CA."""

    code = "server_untrusted"


class ServerCertExpired(AgentError):
    """``server_cert_expired``: a certificate of the server chain is outside its validity period."""

    code = "server_cert_expired"


class ServerCertUsage(AgentError):
    """``server_cert_usage``: an EKU without serverAuth, or a KeyUsage without digitalSignature."""

    code = "server_cert_usage"


class ServerSignatureInvalid(AgentError):
    """``server_signature_invalid``: the server's challenge signature does not verify."""

    code = "server_signature_invalid"


class TokenSignatureInvalid(AgentError):
    """``token_signature_invalid``: the server's token signature does not verify."""

    code = "token_signature_invalid"


class ClientUntrusted(AgentError):
    """``client_untrusted``: a registering client's certificate does not chain to the server's
    pinned root CA, is expired, or its key usage forbids client use."""

    code = "client_untrusted"


class ClientIdentityMismatch(AgentError):
    """``client_identity_mismatch``: the client's certificate CN is not the name it registers under."""

    code = "client_identity_mismatch"


class ClientSignatureInvalid(AgentError):
    """``client_signature_invalid``: the client's signature over its CN and the server nonce is wrong."""

    code = "client_signature_invalid"


class Unsupported(AgentError):
    """``unsupported``: the key cannot do this profile or operation."""

    code = "unsupported"


class DecryptionFailed(AgentError, ValueError):
    """``decryption_failed``: the ciphertext did not decrypt. Also a ``ValueError``, which is
    what ``cryptography`` raises for a bad ciphertext."""

    code = "decryption_failed"


class Busy(AgentError):
    """``busy``: the agent's queue or connection limit is full; retry later."""

    code = "busy"


class RequestTimeout(AgentError):
    """``timeout``: the backend did not answer within the agent's ``request_timeout_ms``."""

    code = "timeout"


class BackendUnavailable(AgentError):
    """``backend_unavailable``: the token is gone or unreachable."""

    code = "backend_unavailable"


class BackendError(AgentError):
    """``backend_error``: the backend failed; the agent's log has the cause."""

    code = "backend_error"


class KeyExists(AgentError):
    """``key_exists``: defined for the CLI; no v1 socket operation sends it."""

    code = "key_exists"


class PinIncorrect(AgentError):
    """``pin_incorrect``: defined for the CLI; no v1 socket operation sends it."""

    code = "pin_incorrect"


class PinLocked(AgentError):
    """``pin_locked``: defined for the CLI; no v1 socket operation sends it."""

    code = "pin_locked"


class ShuttingDown(AgentError):
    """``shutting_down``: reserved; not sent by protocol v1 agents."""

    code = "shutting_down"


class InternalError(AgentError):
    """``internal``: a bug in the agent, or an unusable installed certificate."""

    code = "internal"


def error_from_reply(code: str, message: str, **context) -> AgentError:
    """The exception for an error reply ``{"code": code, "message": message}``.

    ``context`` takes ``socket_path``, ``op``, ``key`` and ``request_id``.
    """
    cls = ERROR_CLASSES.get(code, AgentError)
    return cls(message, code=code, **context)


__all__ = sorted(
    [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, KeywardError)]
    + ["ERROR_CLASSES", "error_from_reply"]
)
