"""The start-up hook behind ``keyward_nvflare.pth``: wraps cryptography's ``load_pem_private_key``.

Standard library only, and cheap: the ``.pth`` line runs in every interpreter of the venv, so
this module imports nothing heavy. If ``cryptography.hazmat.primitives.serialization`` is not
imported yet, a one-name ``sys.meta_path`` finder waits for it and patches it right after it
executes, before any importer sees it; a process that never imports cryptography pays nothing
more. The wrapper recognises a keyward key reference by its PEM BEGIN line and only then imports
``keyward.nvflare`` (and so cryptography's RSA classes); any other input goes to the original
function unchanged. Parsing a reference also activates ``nvflare_flow`` (NVFlare's registration
through the agent), which waits for NVFlare's authenticator module with the same finder
(``when_imported``). The design and its limits: docs/nvflare-plugin.md §3.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

TARGET = "cryptography.hazmat.primitives.serialization"
#: Modules whose ``load_pem_private_key`` attribute is replaced (NVFlare looks it up on the first).
PATCHED_MODULES = (TARGET, TARGET + ".base")
#: Set to 1 to turn the hook off for one process (debugging); the .pth stays installed.
DISABLE_ENV = "KEYWARD_NVFLARE_DISABLE"
_MARKER = b"-----BEGIN KEYWARD KEY REFERENCE-----"
_FLAG = "__keyward_hook__"


def looks_like_reference(data: object) -> bool:
    """Whether ``data`` (bytes) holds a keyward key reference's BEGIN line at the start of a line."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        return False  # cryptography itself rejects str; leave that to it
    at = raw.find(_MARKER)
    while at != -1:
        if at == 0 or raw[at - 1 : at] in (b"\n", b"\r"):
            return True
        at = raw.find(_MARKER, at + 1)
    return False


def make_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (cryptography's ``load_pem_private_key``), answering keyward references
    with a delegating key and passing everything else through."""

    @functools.wraps(original)
    def load_pem_private_key(data: Any, *args: Any, **kwargs: Any) -> Any:
        if looks_like_reference(data):
            from .nvflare import load_reference_key

            return load_reference_key(data, *args, **kwargs)
        return original(data, *args, **kwargs)

    setattr(load_pem_private_key, _FLAG, True)
    return load_pem_private_key


def is_patched(module: Any) -> bool:
    """Whether ``module.load_pem_private_key`` is this hook's wrapper."""
    return bool(getattr(getattr(module, "load_pem_private_key", None), _FLAG, False))


def patch_module(module: Any) -> None:
    """Replaces ``load_pem_private_key`` in ``module`` (and its ``.base``); idempotent."""
    mods = [module]
    base = sys.modules.get(TARGET + ".base")
    if base is not None and base is not module:
        mods.append(base)
    for mod in mods:
        original = getattr(mod, "load_pem_private_key", None)
        if original is None or getattr(original, _FLAG, False):
            continue
        mod.load_pem_private_key = make_wrapper(original)


class _PatchingLoader:
    """Runs the real loader, then ``after(module)``. Puts the real loader back on the module
    and its spec first, so nothing else ever sees this class."""

    def __init__(self, loader: Any, after: Callable[[Any], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _patch_after_import(module: Any) -> None:
    try:
        patch_module(module)
    except Exception as exc:  # never break the import of cryptography
        _warn(f"could not wrap load_pem_private_key: {exc!r}")


#: Whether ``install()`` asked for cryptography's loader to be wrapped (``when_imported`` alone,
#: e.g. with the hook switched off, must not wrap it).
_wrap_requested = False
#: Module name -> callbacks to run once it is imported (``when_imported``).
_pending: dict[str, list[Callable[[Any], None]]] = {}


def _run_pending(name: str, module: Any) -> None:
    for callback in _pending.pop(name, []):
        try:
            callback(module)
        except Exception as exc:  # never break the import of the module
            _warn(f"{getattr(callback, '__qualname__', callback)!s} failed after importing {name}: {exc!r}")


class _Finder:
    """A meta path finder for a few module names: ``TARGET``, and those ``when_imported`` waits for."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == TARGET and _wrap_requested:
            after: Callable[[Any], None] = _patch_after_import
        elif fullname in _pending:
            after = functools.partial(_run_pending, fullname)
        else:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _Finder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, after)
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


def _ensure_finder() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def when_imported(name: str, callback: Callable[[Any], None]) -> None:
    """Calls ``callback(module)`` now if module ``name`` is imported, else right after it is
    executed, before any importer gets it. The NVFlare plug-in uses it to patch NVFlare's
    authenticator (``nvflare_flow.py``) in processes that parsed a key reference."""
    callbacks = _pending.setdefault(name, [])
    if callback not in callbacks:
        callbacks.append(callback)
    module = sys.modules.get(name)
    if module is not None:
        _run_pending(name, module)
        return
    _ensure_finder()


def _warn(message: str) -> None:
    try:
        sys.stderr.write(f"keyward: NVFlare hook: {message}\n")
    except Exception:
        pass


def install() -> bool:
    """Installs the hook in this interpreter: patches cryptography now if it is imported, else
    when it is. Idempotent. Never raises: a failure is written to stderr, because this runs from
    a ``.pth`` file at interpreter start. Returns whether the hook is (now) active."""
    try:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return False
        global _wrap_requested
        _wrap_requested = True
        module = sys.modules.get(TARGET)
        if module is not None:
            patch_module(module)
            return True
        _ensure_finder()
        return True
    except Exception as exc:
        _warn(f"not installed: {exc!r}")
        return False


def installed() -> bool:
    """Whether the hook is active in this interpreter (patched, or waiting for the import)."""
    module = sys.modules.get(TARGET)
    if module is not None:
        return is_patched(module)
    return _wrap_requested and any(isinstance(f, _Finder) for f in sys.meta_path)
