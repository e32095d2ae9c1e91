"""The NVFlare plug-in: a delegating RSA key for keyward references, and ``keyward-nvflare``.

NVFlare 2.9 reads ``startup/client.key`` with ``serialization.load_pem_private_key`` and then only
calls ``sign`` (RSA-PSS, SHA-256, MGF1-SHA-256, maximum salt) and ``decrypt`` (RSA-OAEP, SHA-256)
on the key object (spec: shared/nvflare-protocol.md §2, §3, §5 option 1). When ``client.key`` is
a keyward key reference, the start-up hook (``_hook.py``, run from ``keyward_nvflare.pth``) makes
that call return a ``RemoteRSAPrivateKey``, which sends exactly those two operations to the agent
and refuses every other padding, hash, and any export. Design, reference format and limits:
docs/nvflare-plugin.md. The ``nvflare`` package itself is never imported here.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import sysconfig
import tempfile
from typing import Any, NoReturn, Protocol, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as apadding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from . import files, keyref, nvflare_compat
from .client import KeywardClient
from .errors import (
    AgentUnreachable,
    IncompatibleNvflare,
    KeyNotExportable,
    KeywardError,
    PermissionDenied,
    ProtocolError,
    Unsupported,
    UnsupportedPadding,
)
from .padding_params import mgf1_hash, oaep_label, pss_salt_length
from .protocol import Signature

#: Logger of the plug-in. NVFlare's logging config sends the root logger's records to its log
#: files and console, so these records appear next to NVFlare's own.
logger = logging.getLogger("keyward")

#: The agent profile for NVFlare's signatures (docs/protocol.md §5).
NVFLARE_PROFILE = "nvflare"
#: Name of the hook file that ``keyward-nvflare install`` writes into site-packages.
PTH_NAME = "keyward_nvflare.pth"
#: Its content: one ``import`` line (the only kind of .pth line Python executes). It does
#: nothing when the keyward package is gone, so a stale .pth cannot break the venv.
PTH_LINE = (
    'import importlib.util; importlib.util.find_spec("keyward") is None or '
    '__import__("keyward._hook", fromlist=["install"]).install()'
)
#: Seconds the delegating key waits for the agent (connect, and each reply).
TIMEOUT_ENV = "KEYWARD_TIMEOUT"

EXPORT_REFUSED = "the private key is inside the token and cannot be exported"


class AgentOps(Protocol):
    """What the delegating key needs from a client (``KeywardClient``, or a fake in tests)."""

    socket_path: str

    def sign(self, key: str, profile: str, data: bytes) -> Signature: ...

    def decrypt(self, key: str, data: bytes) -> bytes: ...


def max_pss_salt(key_size: int, digest_size: int = 32) -> int:
    """The PSS ``MAX_LENGTH`` salt for a key: emLen - hLen - 2, emLen = ceil((modBits-1)/8)."""
    return (key_size - 1 + 7) // 8 - digest_size - 2


def _fail(exc: KeywardError) -> NoReturn:
    logger.error("%s", exc)
    raise exc


def _describe(obj: object) -> str:
    name = type(obj).__name__
    if isinstance(obj, apadding.PSS):
        return f"PSS(mgf={_describe(obj.mgf)}, salt_length={_salt_text(obj)})"
    if isinstance(obj, apadding.OAEP):
        return f"OAEP(mgf={_describe(obj.mgf)}, algorithm={_describe(obj.algorithm)}, label={oaep_label(obj)!r})"
    if isinstance(obj, apadding.MGF1):
        return f"MGF1({_describe(mgf1_hash(obj))})"
    if isinstance(obj, hashes.HashAlgorithm):
        return obj.name.upper()
    return name


def _salt_text(pad: apadding.PSS) -> str:
    salt = pss_salt_length(pad)
    if isinstance(salt, int):
        return str(salt)
    for name in ("MAX_LENGTH", "DIGEST_LENGTH", "AUTO"):
        if isinstance(salt, type(getattr(apadding.PSS, name, None))):
            return f"PSS.{name}"
    return repr(salt)


def _is_mgf1_sha256(mgf: object) -> bool:
    return isinstance(mgf1_hash(mgf), hashes.SHA256)


class RemoteRSAPrivateKey(rsa.RSAPrivateKey):
    """An RSA private key that stays in the keyward agent's token.

    ``sign`` accepts only what NVFlare uses: PSS with MGF1-SHA-256 and the maximum salt
    (``PSS.MAX_LENGTH``, or that number), over SHA-256; the agent's ``nvflare`` profile produces
    exactly that. ``decrypt`` accepts only OAEP with SHA-256 and MGF1-SHA-256 and no label.
    The public key is the agent's (``public_key`` reply), fetched once when the key is loaded.
    Copies are the same object; the private key cannot be exported.
    """

    def __init__(self, client: AgentOps, key: str, public_key: rsa.RSAPublicKey) -> None:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("keyward: RemoteRSAPrivateKey needs an RSA public key")
        self._client = client
        self._key = key
        self._public_key = public_key

    @property
    def key_name(self) -> str:
        """The key's name in the agent."""
        return self._key

    @property
    def socket_path(self) -> str:
        """The agent socket."""
        return self._client.socket_path

    def __repr__(self) -> str:
        return f"<RemoteRSAPrivateKey key={self._key!r} socket={self.socket_path!r} bits={self.key_size}>"

    # --- the public half -------------------------------------------------------------------

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    # --- the two private operations NVFlare uses -------------------------------------------

    def _refuse(self, what: str) -> NoReturn:
        _fail(UnsupportedPadding(f"{what}; keyward's delegating key for `{self._key}` only offers "
                                 "sign(PSS(MGF1(SHA256), MAX_LENGTH), SHA256) and "
                                 "decrypt(OAEP(MGF1(SHA256), SHA256, label=None))",
                                 socket_path=self.socket_path))

    def sign(self, data: bytes, padding: apadding.AsymmetricPadding, algorithm: Any) -> bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"keyward: data to sign must be bytes-like, not {type(data).__name__}")
        if isinstance(algorithm, Prehashed):
            self._refuse("a Prehashed digest cannot be signed (the agent hashes the message itself)")
        if not isinstance(algorithm, hashes.SHA256):
            self._refuse(f"unsupported hash {_describe(algorithm)} for sign")
        if not isinstance(padding, apadding.PSS):
            self._refuse(f"unsupported padding {_describe(padding)} for sign")
        if not _is_mgf1_sha256(padding.mgf):
            self._refuse(f"unsupported PSS mask function {_describe(padding.mgf)}")
        salt = pss_salt_length(padding)
        max_salt = max_pss_salt(self.key_size)
        is_max = isinstance(salt, type(apadding.PSS.MAX_LENGTH)) or (type(salt) is int and salt == max_salt)
        if not is_max:
            self._refuse(f"unsupported PSS salt length {_salt_text(padding)} (the agent uses the maximum, {max_salt})")
        try:
            reply = self._client.sign(self._key, NVFLARE_PROFILE, bytes(data))
        except KeywardError as exc:
            _fail(exc)
        signature = reply.signature if isinstance(reply, Signature) else bytes(reply)
        if len(signature) != (self.key_size + 7) // 8:
            _fail(ProtocolError(f"the agent returned a {len(signature)}-byte signature for a {self.key_size}-bit key",
                                socket_path=self.socket_path, op="sign", key=self._key))
        return signature

    def decrypt(self, ciphertext: bytes, padding: apadding.AsymmetricPadding) -> bytes:
        if not isinstance(ciphertext, (bytes, bytearray, memoryview)):
            raise TypeError(f"keyward: ciphertext must be bytes-like, not {type(ciphertext).__name__}")
        if not isinstance(padding, apadding.OAEP):
            self._refuse(f"unsupported padding {_describe(padding)} for decrypt")
        if not isinstance(padding.algorithm, hashes.SHA256) or not _is_mgf1_sha256(padding.mgf):
            self._refuse(f"unsupported OAEP parameters {_describe(padding)}")
        if oaep_label(padding) not in (None, b""):
            self._refuse("an OAEP label is not supported (the agent decrypts with an empty label)")
        try:
            return self._client.decrypt(self._key, bytes(ciphertext))
        except KeywardError as exc:
            _fail(exc)

    # --- what the token never gives out ----------------------------------------------------

    def private_numbers(self) -> NoReturn:
        _fail(KeyNotExportable(EXPORT_REFUSED, socket_path=self.socket_path, key=self._key))

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> NoReturn:
        _fail(KeyNotExportable(EXPORT_REFUSED, socket_path=self.socket_path, key=self._key))

    def __copy__(self) -> "RemoteRSAPrivateKey":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "RemoteRSAPrivateKey":
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("keyward: a delegating key cannot be pickled; pickle its key reference instead")


# --- loading a reference ---------------------------------------------------------------------


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
        logger.warning("keyward: ignoring %s=%r (not a positive number of seconds)", TIMEOUT_ENV, raw)
    from .client import DEFAULT_TIMEOUT

    return DEFAULT_TIMEOUT


_announced: set[tuple[str, str]] = set()


def open_reference(ref: keyref.KeyReference, *, client: AgentOps | None = None) -> RemoteRSAPrivateKey:
    """The delegating key for ``ref``, after checking that the agent answers (``hello``) and
    holds an RSA key by that name (``public_key``), so that a wrong reference fails here, at
    parse time, with a clear error, rather than later inside NVFlare (spec §2.3).

    Raises:
        AgentUnreachable, UnknownKey, PermissionDenied, ...: (``KeywardError``) logged under the
            ``keyward`` logger as well.
    """
    client = client if client is not None else KeywardClient(ref.socket, timeout=_timeout())
    try:
        hello = client.hello()  # type: ignore[attr-defined]
        if hello.protocol != 1:
            raise ProtocolError(f"the agent speaks protocol {hello.protocol}, this plug-in 1",
                                socket_path=ref.socket, op="hello")
        info = client.public_key(ref.key)  # type: ignore[attr-defined]
    except AgentUnreachable as exc:
        _fail(AgentUnreachable(f"{exc.reason}; the key reference for `{ref.key}` names this socket",
                               socket_path=exc.socket_path))
    except KeywardError as exc:
        _fail(exc)
    if not info.algorithm.startswith("rsa-"):
        _fail(Unsupported(f"key `{ref.key}` is {info.algorithm}; NVFlare needs an RSA key",
                          socket_path=ref.socket, op="public_key", key=ref.key))
    try:
        public = serialization.load_der_public_key(info.spki_der)
    except ValueError as exc:
        _fail(ProtocolError(f"the agent's SubjectPublicKeyInfo does not parse: {exc}",
                            socket_path=ref.socket, op="public_key", key=ref.key))
    if not isinstance(public, rsa.RSAPublicKey):
        _fail(ProtocolError("the agent's SubjectPublicKeyInfo is not an RSA key",
                            socket_path=ref.socket, op="public_key", key=ref.key))
    if (ref.socket, ref.key) not in _announced:
        _announced.add((ref.socket, ref.key))
        logger.info("keyward: using key `%s` (%s) held by %s at `%s`", ref.key, info.algorithm, hello.agent, ref.socket)
        _warn_if_renewal_due(client, ref)
    return RemoteRSAPrivateKey(client, ref.key, public)


def _warn_if_renewal_due(client: AgentOps, ref: keyref.KeyReference) -> None:
    """Logs a warning (once, when the key is first loaded: at the NVFlare client's start) when the
    agent's ``status`` says the key's certificate is inside its renewal threshold or expired, or
    the key is past its ``max_key_age``. A ``status`` that fails only costs the warning."""
    status = getattr(client, "status", None)
    if status is None:
        return
    try:
        keys = status().raw.get("keys") or []
    except KeywardError as exc:
        logger.debug("keyward: no renewal check for `%s`: %s", ref.key, exc)
        return
    entry = next((k for k in keys if isinstance(k, dict) and k.get("key") == ref.key), None)
    if entry is None:
        return
    renewal = entry.get("renewal")
    left = entry.get("certificate_seconds_to_expiry")
    days = f"{left / 86400:.1f} days" if isinstance(left, (int, float)) else "an unknown time"
    if renewal == "renewal_due":
        logger.warning("keyward: the certificate of key `%s` is due for renewal (it expires in %s): "
                       "`keyward nvflare request --renew` (docs/nvflare-plugin.md)", ref.key, days)
    elif renewal == "expired":
        logger.warning("keyward: the certificate of key `%s` has EXPIRED: the server will refuse this site; "
                       "renew it (`keyward nvflare request --renew`)", ref.key)
    if entry.get("key_age_exceeded"):
        logger.warning("keyward: key `%s` is older than its max_key_age: rotate it (a new key in the token, "
                       "then `keyward key retire`)", ref.key)


def load_reference_key(data: Any, password: Any = None, backend: Any = None, **kwargs: Any) -> RemoteRSAPrivateKey:
    """``load_pem_private_key`` for a keyward key reference (the hook calls this).

    Raises:
        TypeError: a password was given (a reference is not encrypted).
        InvalidKeyReference: (a ``ValueError``) the reference is malformed.
        KeywardError: the agent is unreachable or refuses (see ``open_reference``).
    """
    if password is not None:
        raise TypeError("keyward: a key reference is not encrypted; password must be None")
    try:
        ref = keyref.parse(data)
    except KeywardError as exc:
        _fail(exc)
    # This process uses a key held by keyward: route NVFlare's registration through the agent's
    # NVFlare flow too (nvflare_flow.py), whether or not the agent answers below.
    from . import nvflare_flow, nvflare_grpc, nvflare_server

    nvflare_flow.activate()
    nvflare_server.activate()  # a server's key (docs/nvflare-plugin.md §10)
    nvflare_grpc.activate()  # gRPC mutual TLS with the custom signer (§11)
    return open_reference(ref)


# --- keyward-nvflare: install / uninstall / check --------------------------------------------


def default_site_packages() -> str:
    """This interpreter's pure-Python site-packages (``sysconfig.get_paths()["purelib"]``)."""
    return sysconfig.get_paths()["purelib"]


def pth_content() -> bytes:
    return (PTH_LINE + "  # keyward NVFlare hook: docs/nvflare-plugin.md\n").encode("ascii")


def install_pth(site_packages: str) -> tuple[str, bool]:
    """Writes ``keyward_nvflare.pth`` into ``site_packages`` (atomically, 0644). Returns the path
    and whether anything changed (False: it was already there with this content)."""
    path = os.path.join(site_packages, PTH_NAME)
    content = pth_content()
    try:
        with open(path, "rb") as f:
            if f.read() == content:
                return path, False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{PTH_NAME}.", dir=site_packages)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, True


def uninstall_pth(site_packages: str) -> tuple[str, bool]:
    """Removes ``keyward_nvflare.pth``; returns the path and whether it was there."""
    path = os.path.join(site_packages, PTH_NAME)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return path, False
    return path, True


def _in_venv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _target_dir(args: argparse.Namespace) -> str:
    if args.site_packages:
        return os.path.abspath(args.site_packages)
    if not _in_venv():
        raise SystemExit(
            "keyward-nvflare: this Python is not in a virtual environment; run the NVFlare venv's "
            "`keyward-nvflare` (or `<venv>/bin/python -m keyward.nvflare`), or pass --site-packages DIR"
        )
    return default_site_packages()


def _compatible(command: str) -> str | None:
    """Runs the plug-in's compatibility check (nvflare_compat.py) in this interpreter. Returns
    the line to print when it passes; prints why ``command`` is refused and returns None."""
    try:
        nvflare_compat.require()
    except IncompatibleNvflare as exc:
        print(f"keyward-nvflare: {command} refused: {exc}", file=sys.stderr)
        return None
    import nvflare

    return f"nvflare     {nvflare.__version__}: every name, attribute and call path the plug-in uses is present"


def _writable_folder(target: str) -> str | None:
    """Why ``install`` could not write its hook into ``target``, or None when it could."""
    if not os.path.isdir(target):
        return f"site-packages folder `{target}` does not exist"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"site-packages folder `{target}` is not writable by this user"
    return None


def _cmd_install(args: argparse.Namespace) -> int:
    target = _target_dir(args)
    compatible = _compatible("install")
    if compatible is None:
        return 1
    unwritable = _writable_folder(target)
    if unwritable is not None:
        print(f"keyward-nvflare: install refused: {unwritable}", file=sys.stderr)
        return 1
    if args.dry_run:
        path = os.path.join(target, PTH_NAME)
        print(f"dry run: install would write {path} ({len(pth_content())} bytes, mode 0644); nothing written")
        print(compatible)
        return 0
    path, changed = install_pth(target)
    print(f"{'installed' if changed else 'already installed'}: {path}")
    print(compatible)
    print("every new Python process of this environment now answers keyward key references; "
          "undo with `keyward-nvflare uninstall`")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    path, removed = uninstall_pth(_target_dir(args))
    print(f"{'removed' if removed else 'not installed'}: {path}")
    return 0


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _cmd_check(args: argparse.Namespace) -> int:
    from . import _hook

    try:
        ref = keyref.load(args.reference)
    except OSError as exc:
        print(f"keyward-nvflare: cannot read `{args.reference}`: {exc.strerror or exc}", file=sys.stderr)
        return 1
    compatible = _compatible("check")
    if compatible is None:
        return 1
    print(f"reference   {os.path.abspath(args.reference)}")
    print(f"socket      {ref.socket}")
    print(f"key         {ref.key}")
    print(compatible)
    client = KeywardClient(ref.socket, timeout=args.timeout)
    hello = client.hello()
    print(f"agent       {hello.agent} (protocol {hello.protocol}, backend {hello.backend})")
    info = client.public_key(ref.key)
    spki_fp = _fingerprint(info.spki_der)
    print(f"algorithm   {info.algorithm}")
    print(f"spki sha256 {spki_fp}")
    print(f"agent cert  {'installed' if info.certificate_pem else 'none'}")
    status = 0
    if args.cert:
        from cryptography import x509

        with open(args.cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        cert_spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if _fingerprint(cert_spki) == spki_fp:
            print(f"certificate {args.cert}: matches the key ({cert.subject.rfc4514_string()})")
        else:
            print(f"certificate {args.cert}: does NOT match the key in the agent", file=sys.stderr)
            status = 1
    pth = os.path.join(default_site_packages(), PTH_NAME)
    print(f"hook        {'installed: ' + pth if os.path.exists(pth) else 'not installed in ' + default_site_packages()}"
          f"{' (active in this process)' if _hook.installed() else ''}")
    print("ok" if status == 0 else "failed")
    return status


def _out_name(out: str) -> str:
    """``--out`` as given (``-`` and descriptor names), else absolute (for messages)."""
    return out if out == "-" or files.is_own_descriptor(out) else os.path.abspath(out)


def _cmd_sign_csr(args: argparse.Namespace) -> int:
    from cryptography import x509

    from . import enroll

    out = _out_name(args.out)
    try:
        root = enroll.load_root_ca(args.ca_dir)
        with open(args.csr, "rb") as f:
            csr = x509.load_pem_x509_csr(f.read())
        cert = enroll.sign_csr(root, csr, days=args.days)
    except (enroll.EnrollError, ValueError, TypeError) as exc:
        print(f"keyward-nvflare: sign-csr refused `{args.csr}`: {exc}", file=sys.stderr)
        return 1
    pem = cert.public_bytes(serialization.Encoding.PEM)

    def refuse_existing(_: bytes) -> None:
        raise files.OutputRefused(f"`{out}` exists; pass --force to replace it")

    files.write_output(out, pem, check_existing=None if args.force else refuse_existing)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    report = [
        f"issued      {out}",
        f"subject     {cert.subject.rfc4514_string()}",
        f"issuer      {cert.issuer.rfc4514_string()} ({root.source})",
        f"serial      {cert.serial_number:x}",
        f"valid       {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()}",
        f"san         DNS:{enroll.site_name_of(csr)}",
        f"spki sha256 {_fingerprint(spki)}",
        "next (site admin): `keyward cert install <key> <cert>`, and put it in the kit as startup/client.crt",
    ]
    # With `--out -` standard output holds the certificate, so the report goes to stderr.
    print("\n".join(report), file=sys.stderr if out == "-" else sys.stdout)
    return 0


def _cmd_write_reference(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    try:
        ref = keyref.KeyReference(socket=args.socket, key=args.key)  # validates both
    except keyref.InvalidKeyReference as exc:
        print(f"keyward-nvflare: write-reference: {exc}", file=sys.stderr)
        return 2

    def refuse_unless_reference(existing: bytes) -> None:
        if b"PRIVATE KEY" in existing or not keyref.is_reference(existing):
            raise files.OutputRefused(f"`{out}` exists and is not a key reference (a private key?): move it into "
                                      "the token with `keyward nvflare migrate`, or pass --force to replace it")

    keyref.write(out, ref, check_existing=None if args.force else refuse_unless_reference)
    print(f"wrote       {out} (key reference, no secret)")
    print(f"socket      {ref.socket}")
    print(f"key         {ref.key}")
    print(f"check with: keyward-nvflare check {out} --cert {os.path.join(os.path.dirname(out), 'client.crt')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyward-nvflare",
        description="Let an unmodified NVFlare use a key held by the keyward agent (docs/nvflare-plugin.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("install", "check this venv's nvflare, then write keyward_nvflare.pth into its site-packages (idempotent)"),
        ("uninstall", "remove keyward_nvflare.pth from this venv's site-packages"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--site-packages", metavar="DIR", help="another site-packages folder (default: this venv's purelib)"
        )
    sub.choices["install"].add_argument(
        "--dry-run", action="store_true",
        help="make every check install makes (this NVFlare, the folder) and write nothing",
    )
    p = sub.add_parser("check", help="load a key reference and ask the agent for hello and the public key")
    p.add_argument("reference", help="the key reference file (e.g. startup/client.key)")
    p.add_argument("--cert", help="also check that this certificate (e.g. startup/client.crt) matches the key")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent (default 10)")
    p = sub.add_parser(
        "sign-csr",
        help="(project admin) issue a site certificate from a CSR with the provisioning root CA, as nvflare "
        "provision shapes it",
    )
    p.add_argument("--ca-dir", required=True, metavar="DIR",
                   help="the provisioning workspace's state folder (<workspace>/<project>/state: cert.json), or a "
                   "folder with rootCA.pem and rootCA.key")
    p.add_argument("--csr", required=True, metavar="FILE", help="the site's CSR (PEM), e.g. from `keyward csr`")
    p.add_argument("--out", required=True, metavar="CERT",
                   help="where to write the certificate (PEM; `-`: standard output; docs/nvflare-plugin.md, "
                   "\"Where --out writes\")")
    p.add_argument("--days", type=int, default=360, help="validity in days (default 360, capped at the root's)")
    p.add_argument("--force", action="store_true", help="replace CERT if it exists")
    p = sub.add_parser("write-reference", help="write a key reference (e.g. startup/client.key) for a key in the agent")
    p.add_argument("--socket", required=True, help="the agent's socket (absolute path, as in keyward.toml)")
    p.add_argument("--key", required=True, help="the key name in the agent")
    p.add_argument("--out", required=True, metavar="FILE", help="the reference file to write (e.g. startup/client.key)")
    p.add_argument("--force", action="store_true", help="replace FILE even if it is not a key reference")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``keyward-nvflare``. Exit codes as ``keyward``'s: 0 ok, 1 failure,
    2 usage, 3 agent unreachable, 4 refused."""
    args = build_parser().parse_args(argv)
    handlers = {"install": _cmd_install, "uninstall": _cmd_uninstall, "check": _cmd_check,
                "sign-csr": _cmd_sign_csr, "write-reference": _cmd_write_reference}
    try:
        return handlers[args.command](args)
    except AgentUnreachable as exc:
        print(exc, file=sys.stderr)
        return 3
    except PermissionDenied as exc:
        print(exc, file=sys.stderr)
        return 4
    except KeywardError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"keyward-nvflare: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
