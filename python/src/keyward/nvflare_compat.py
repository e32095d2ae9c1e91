"""Every NVFlare name, attribute and call path the plug-in relies on, checked before it patches.

``nvflare_flow.py`` re-implements NVFlare's private ``Authenticator._challenge_server`` and
replaces names in ``nvflare.private.fed.authenticator``. A NVFlare release that renamed one of
them would otherwise fail at a site's first registration, or run it on NVFlare's own code (the
agent then refuses the plain signature) in a retry loop. So ``problems`` checks, without
creating any NVFlare object: the version (``TESTED_NVFLARE``), each module-level name and the
attributes used on it (``NAMES``), the parameters of every call made with keywords
(``PARAMETERS``), the instance attributes read, found as ``self.<name> =`` in ``__init__``'s
source (``INSTANCE_ATTRIBUTES``), the call path the patch depends on, found as calls in
``Authenticator.authenticate``'s source (``CALLS``), the cell's ``send_request`` and the reply
``Message``; for the server's patches (nvflare_server.py) and the gRPC custom signer
(nvflare_grpc.py) the names of their modules (``MODULE_NAMES``), their parameters and instance
attributes (``OTHER``) and grpcio's custom-signer API; and cryptography's private padding
attributes (padding_params.py). One check for every process: a site's client, the server, an
admin.

``keyward-nvflare install`` and ``check`` refuse on any problem (``IncompatibleNvflare``), and
a client that parses a key reference logs it under "keyward" and exits with
``EXIT_INCOMPATIBLE`` (``refuse_start``) instead of registering unprotected or hanging. The
lists are the ones nvflare_flow.py uses; docs/nvflare-plugin.md §6 explains them.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import textwrap
from typing import Any, NoReturn

from .errors import IncompatibleNvflare

logger = logging.getLogger("keyward")

#: The NVFlare releases the plug-in was tested with; any other is refused.
TESTED_NVFLARE = ("2.9.0",)
#: The module nvflare_flow.py patches.
AUTHENTICATOR_MODULE = "nvflare.private.fed.authenticator"
#: Exit status of a client refused at start (sysexits.h EX_CONFIG).
EXIT_INCOMPATIBLE = 78

#: Module-level names of the authenticator module -> attributes used on each.
NAMES: dict[str, tuple[str, ...]] = {
    "Authenticator": ("_challenge_server", "authenticate"),
    "IdentityAsserter": ("sign_common_name",),
    "TokenVerifier": ("verify",),
    "IdentityVerifier": ("verify_common_name",),
    "IdentityChallengeKey": ("COMMON_NAME", "NONCE", "CERT", "SIGNATURE"),
    "FQCN": ("ROOT_SERVER",),
    "CellChannel": ("SERVER_MAIN",),
    "CellChannelTopic": ("Challenge",),
    "MessageHeaderKey": ("RETURN_CODE", "ERROR"),
    "ReturnCode": ("OK", "TARGET_UNREACHABLE", "COMM_ERROR"),
    "ExtendedKeyUsageOID": ("SERVER_AUTH",),
    "FLCommunicationError": (),
    "new_cell_message": (),
    "load_crt_chain_bytes": (),
}
#: (name, method) -> parameters the plug-in passes (by keyword, or overrides with this signature).
PARAMETERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("IdentityAsserter", "__init__"): ("private_key_file", "cert_file"),
    ("IdentityAsserter", "sign_common_name"): ("nonce",),
    ("TokenVerifier", "__init__"): ("cert",),
    ("TokenVerifier", "verify"): ("client_name", "token", "signature"),
    ("IdentityVerifier", "__init__"): ("root_cert_file",),
    ("IdentityVerifier", "verify_common_name"): (
        "asserter_cert", "asserted_cn", "nonce", "signature", "intermediate_certs", "expected_eku"),
}
#: Class -> instance attributes the plug-in reads or sets (assigned in the class's ``__init__``).
INSTANCE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Authenticator": ("private_key_file", "client_name", "cell", "msg_timeout", "expected_sp_identity",
                      "root_cert_file", "logger"),
    "IdentityAsserter": ("cert_data", "cert", "cn", "cert_file"),
}
#: (name, method) -> calls its source must make: the patched names must be the ones it uses.
CALLS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Authenticator", "authenticate"): ("self._challenge_server", "IdentityAsserter", "sign_common_name", "verify"),
}
#: The server modules nvflare_server.py patches.
CRED_KEEPER_MODULE = "nvflare.private.fed.server.cred_keeper"
FED_SERVER_MODULE = "nvflare.private.fed.server.fed_server"
CLIENT_MANAGER_MODULE = "nvflare.private.fed.server.client_manager"
#: The gRPC credentials function nvflare_grpc.py replaces, and the drivers that import it by name.
GRPC_UTILS_MODULE = "nvflare.fuel.f3.drivers.grpc.utils"
GRPC_DRIVER_MODULES = ("nvflare.fuel.f3.drivers.grpc_driver", "nvflare.fuel.f3.drivers.aio_grpc_driver")
GRPC_CREDENTIALS = "get_grpc_client_credentials"

#: Outside the authenticator module: module -> its names the server patches (nvflare_server.py)
#: and the gRPC custom signer (nvflare_grpc.py) use -> the attributes used on each.
MODULE_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    CRED_KEEPER_MODULE: {"CredKeeper": ("get_id_asserter", "_get_server_config")},
    FED_SERVER_MODULE: {
        "FederatedServer": ("client_challenge", "register_client", "sign_auth_token"),
        "MessageHeaderKey": ("ORIGIN",),
        "IdentityChallengeKey": ("NONCE",),
    },
    CLIENT_MANAGER_MODULE: {
        "ClientManager": ("authenticated_client",),
        "CellMessageHeaderKeys": ("CLIENT_NAME",),
        "IdentityChallengeKey": ("CERT", "SIGNATURE"),
        "InternalFLContextKey": ("CLIENT_REG_SESSION",),
        "FLContextKey": ("SECURE_MODE",),
    },
    "nvflare.apis.client": {"Client": ("set_token", "name")},
    GRPC_UTILS_MODULE: {
        GRPC_CREDENTIALS: (),
        "DriverParams": ("CONNECTION_SECURITY", "CLIENT_KEY", "IMPLEMENTED_CONN_SEC", "CA_CERT", "CLIENT_CERT"),
        "ConnectionSecurity": ("TLS", "MTLS"),
    },
    **{driver: {GRPC_CREDENTIALS: ()} for driver in GRPC_DRIVER_MODULES},
}
#: Outside the authenticator module: (module, class or "" for a module-level function, method,
#: parameters, instance attributes).
OTHER: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("nvflare.fuel.f3.cellnet.core_cell", "CoreCell", "send_request",
     ("channel", "topic", "target", "request", "timeout", "optional"), ()),
    ("nvflare.fuel.f3.message", "Message", "get_header", ("key", "default"), ("payload",)),
    (CRED_KEEPER_MODULE, "CredKeeper", "get_id_asserter", ("fl_ctx",), ()),
    (FED_SERVER_MODULE, "FederatedServer", "client_challenge", ("request",), ("reg_lock", "name_to_reg")),
    (FED_SERVER_MODULE, "ClientRegSession", "__init__", (), ("nonce",)),
    (CLIENT_MANAGER_MODULE, "ClientManager", "authenticated_client", ("request", "fl_ctx", "client_type"),
     ("cred_keeper",)),
    (AUTHENTICATOR_MODULE, "IdentityAsserter", "sign", ("content", "return_str"), ("private_key_file",)),
    (GRPC_UTILS_MODULE, "", GRPC_CREDENTIALS, ("params",), ()),
)
#: grpcio's custom-signer API (gRPC proposal A107, grpcio >= 1.75) that nvflare_grpc.py uses.
GRPC_EXPERIMENTAL = "grpc.experimental"
GRPC_SIGNER_NAMES = ("ssl_channel_credentials_with_custom_signer", "PrivateKeySignatureAlgorithm")


def nvflare_installed() -> bool:
    """Whether this interpreter can import ``nvflare`` (without importing it)."""
    return importlib.util.find_spec("nvflare") is not None


def _parameters(func: Any) -> set[str] | None:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _method_ast(func: Any) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None


def _self_assignments(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    found.add(sub.attr)
    return found


def _calls(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            found.add(func.id)
        elif isinstance(func, ast.Attribute):
            found.add(func.attr)
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                found.add(f"self.{func.attr}")
    return found


def _check_class(where: str, cls: Any, method: str, params: tuple[str, ...], attrs: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    func = getattr(cls, method, None)
    if func is None:
        return [f"`{where}.{method}` is missing"]
    have = _parameters(func)
    missing = [p for p in params if have is not None and p not in have]
    if have is None:
        problems.append(f"cannot read the parameters of `{where}.{method}`")
    elif missing:
        problems.append(f"`{where}.{method}` has no parameter {', '.join(f'`{p}`' for p in missing)}")
    if attrs:
        problems += _check_instance_attributes(where, cls, attrs)
    return problems


def _check_instance_attributes(where: str, cls: Any, attrs: tuple[str, ...]) -> list[str]:
    tree = _method_ast(getattr(cls, "__init__", None))
    if tree is None:
        return [f"cannot read the source of `{where}.__init__` to check its attributes {', '.join(attrs)}"]
    assigned = _self_assignments(tree)
    missing = [a for a in attrs if a not in assigned]
    return [f"`{where}` instances have no attribute `{a}` (not set in `__init__`)" for a in missing]


def _nvflares(obj: Any) -> Any:
    """NVFlare's own class where nvflare_flow.py put its subclass in place (flag ``__keyward_flow__``)."""
    if isinstance(obj, type) and obj.__dict__.get("__keyward_flow__"):
        return obj.__mro__[1]
    return obj


def _check_authenticator_module(module: Any) -> list[str]:
    problems = _missing_names(module, AUTHENTICATOR_MODULE, NAMES)
    for (name, method), params in PARAMETERS.items():
        obj = _nvflares(getattr(module, name, None))
        if obj is not None and hasattr(obj, method):
            problems += _check_class(f"{AUTHENTICATOR_MODULE}.{name}", obj, method, params, ())
    for name, attrs in INSTANCE_ATTRIBUTES.items():
        obj = _nvflares(getattr(module, name, None))
        if obj is not None:
            problems += _check_instance_attributes(f"{AUTHENTICATOR_MODULE}.{name}", obj, attrs)
    for (name, method), calls in CALLS.items():
        func = getattr(getattr(module, name, None), method, None)
        if func is None:
            continue
        tree = _method_ast(getattr(func, "__wrapped__", func))
        if tree is None:
            problems.append(f"cannot read the source of `{AUTHENTICATOR_MODULE}.{name}.{method}`")
            continue
        made = _calls(tree)
        problems += [f"`{AUTHENTICATOR_MODULE}.{name}.{method}` no longer calls `{c}`" for c in calls if c not in made]
    return problems


def problems(module: Any = None) -> list[str]:
    """Everything the plug-in needs that this NVFlare (and cryptography) lacks; empty when all
    is there. ``module`` is the authenticator module (imported when not given).

    Never raises for a missing name: an import that fails is a problem like any other."""
    found: list[str] = []
    try:
        import nvflare

        version = str(getattr(nvflare, "__version__", "?"))
    except Exception as exc:
        return [f"`import nvflare` fails: {exc!r}"]
    if version not in TESTED_NVFLARE:
        found.append(f"nvflare {version} is not a version the plug-in was tested with "
                     f"({', '.join(TESTED_NVFLARE)})")
    if module is None:
        try:
            module = importlib.import_module(AUTHENTICATOR_MODULE)
        except Exception as exc:
            return found + [f"`import {AUTHENTICATOR_MODULE}` fails: {exc!r}"]
    found += _check_authenticator_module(module)
    found += _check_module_names()
    for mod_name, cls_name, method, params, attrs in OTHER:
        imported = _import(mod_name, found)
        if imported is None:
            continue
        cls = getattr(imported, cls_name, None) if cls_name else imported
        where = f"{mod_name}.{cls_name}" if cls_name else mod_name
        if cls is None:
            found.append(f"`{where}` is missing")
        else:
            found += _check_class(where, _nvflares(cls), method, params, attrs)
    found += _check_grpc_signer()
    from .padding_params import check_cryptography

    return found + check_cryptography()


def _import(mod_name: str, found: list[str]) -> Any:
    """The module, or None with the failure added to ``found`` (each failing import named once)."""
    try:
        return importlib.import_module(mod_name)
    except Exception as exc:
        problem = f"`import {mod_name}` fails: {exc!r}"
        if problem not in found:
            found.append(problem)
        return None


def _check_module_names() -> list[str]:
    found: list[str] = []
    for mod_name, names in MODULE_NAMES.items():
        imported = _import(mod_name, found)
        if imported is None:
            continue
        found += _missing_names(imported, mod_name, names)
    return found


def _missing_names(module: Any, mod_name: str, names: dict[str, tuple[str, ...]]) -> list[str]:
    """Each of ``names`` that ``module`` lacks, and each attribute its object lacks."""
    found: list[str] = []
    for name, attrs in names.items():
        obj = getattr(module, name, None)
        if obj is None:
            found.append(f"`{mod_name}.{name}` is missing")
            continue
        found += [f"`{mod_name}.{name}.{a}` is missing" for a in attrs if not _has(obj, a)]
    return found


def _has(obj: Any, attr: str) -> bool:
    """``hasattr``, or an instance attribute set in the class's ``__init__`` (``Client.name``)."""
    if hasattr(obj, attr):
        return True
    tree = _method_ast(getattr(obj, "__init__", None)) if isinstance(obj, type) else None
    return tree is not None and attr in _self_assignments(tree)


def _check_grpc_signer() -> list[str]:
    """grpcio's custom-signer API and each algorithm nvflare_grpc.py maps to a profile."""
    found: list[str] = []
    experimental = _import(GRPC_EXPERIMENTAL, found)
    if experimental is None:
        return found
    missing = [n for n in GRPC_SIGNER_NAMES if not hasattr(experimental, n)]
    if missing:
        return [f"`{GRPC_EXPERIMENTAL}.{n}` is missing (grpcio >= 1.75 has it)" for n in missing]
    from .nvflare_grpc import SIGNATURE_PROFILES

    algorithms = experimental.PrivateKeySignatureAlgorithm
    return [f"`{GRPC_EXPERIMENTAL}.PrivateKeySignatureAlgorithm.{a}` is missing" for a in SIGNATURE_PROFILES
            if not hasattr(algorithms, a)]


def describe(found: list[str]) -> str:
    """One message for ``found`` (non-empty): what is missing, and what to do."""
    return ("the NVFlare plug-in does not support this NVFlare: " + "; ".join(found)
            + f" (tested with nvflare {', '.join(TESTED_NVFLARE)}: install that version, or a keyward "
            "plug-in tested with yours)")


@functools.lru_cache(maxsize=1)
def _checked_once() -> tuple[str, ...]:
    return tuple(problems())


def require(module: Any = None) -> None:
    """Raises ``IncompatibleNvflare`` naming every problem; the check of the imported module
    runs once per process (``module``: check that one instead, uncached)."""
    found = list(_checked_once()) if module is None else problems(module)
    if found:
        raise IncompatibleNvflare(describe(found))


def require_or_stop() -> None:
    """Where NVFlare is installed, ``require()``; on a problem the process ends (``refuse_start``).
    Each patch module's ``activate`` calls this before it patches anything."""
    if nvflare_installed():
        try:
            require()
        except IncompatibleNvflare as exc:
            refuse_start(exc)


def refuse_start(exc: IncompatibleNvflare) -> NoReturn:
    """Ends this process: ``exc`` logged under "keyward" (NVFlare's log files), on stderr, and
    exit status ``EXIT_INCOMPATIBLE``. ``os._exit``: NVFlare's start code catches exceptions and
    retries; an NVFlare client that cannot register through the agent must not run at all."""
    logger.critical("%s; this process stops (exit %d)", exc, EXIT_INCOMPATIBLE)
    try:
        sys.stderr.write(f"{exc}; this process stops (exit {EXIT_INCOMPATIBLE})\n")
        sys.stderr.flush()
    except Exception:
        pass
    logging.shutdown()
    os._exit(EXIT_INCOMPATIBLE)
