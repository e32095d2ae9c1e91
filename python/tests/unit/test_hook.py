"""The start-up hook, each case in a fresh interpreter (it patches cryptography process-wide):
lazy until cryptography is imported, pass-through for real keys, idempotent, switchable off,
and the .pth install/uninstall commands. No agent here; tests/e2e has the ones that talk to it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keyward import keyref
from keyward.nvflare import PTH_NAME, install_pth, pth_content, uninstall_pth, default_site_packages, main

PRELUDE = "import keyward._hook as hook\n"


def run(code: str, env: dict | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "KEYWARD_NVFLARE_DISABLE"}
    full_env.update(env or {})
    if code.startswith(PRELUDE):
        code = PRELUDE + textwrap.dedent(code[len(PRELUDE):])
    proc = subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=60)
    return proc


def ok(code: str, **kw) -> str:
    proc = run(code, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_install_is_lazy_and_patches_when_cryptography_is_imported():
    out = ok(PRELUDE + """
        import sys
        assert hook.install() is True
        assert "cryptography" not in sys.modules, "the hook must not import cryptography"
        assert hook.installed()
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import base
        assert hook.is_patched(serialization) and hook.is_patched(base)
        assert serialization.__spec__.loader.__class__.__name__ != "_PatchingLoader"
        assert serialization.__loader__.__class__.__name__ != "_PatchingLoader"
        print(serialization.load_pem_private_key.__wrapped__.__module__ != __name__)
    """)
    assert out.strip() == "True"


def test_names_imported_from_serialization_after_install_are_the_wrapper():
    ok(PRELUDE + """
        hook.install()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        assert getattr(load_pem_private_key, "__keyward_hook__", False)
    """)


def test_install_after_cryptography_was_imported_patches_at_once_and_only_once():
    ok(PRELUDE + """
        from cryptography.hazmat.primitives import serialization
        original = serialization.load_pem_private_key
        hook.install(); hook.install()
        wrapped = serialization.load_pem_private_key
        assert wrapped is not original and wrapped.__wrapped__ is original
        hook.patch_module(serialization)
        assert serialization.load_pem_private_key is wrapped
    """)


def test_real_pem_keys_pass_through_unchanged():
    ok(PRELUDE + """
        hook.install()
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
            pem = k.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
            loaded = serialization.load_pem_private_key(pem, None)
            assert type(loaded).__module__.startswith("cryptography"), type(loaded)
            assert loaded.private_numbers() == k.private_numbers()
            loaded = serialization.load_pem_private_key(data=pem, password=None, backend=None)
        enc = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.BestAvailableEncryption(b"pw"))
        assert serialization.load_pem_private_key(enc, b"pw").private_numbers() == k.private_numbers()
        try:
            serialization.load_pem_private_key(b"not a key", None)
        except ValueError:
            pass
        else:
            raise AssertionError("garbage must still fail as cryptography fails")
    """)


def test_a_reference_to_a_missing_agent_fails_at_parse_time_with_a_logged_keyward_error(short_tmp):
    sock = str(short_tmp / "none.sock")
    ref = keyref.dumps(keyref.KeyReference(socket=sock, key="site-1")).decode()
    proc = run(PRELUDE + f"""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        hook.install()
        from cryptography.hazmat.primitives import serialization
        from keyward.errors import AgentUnreachable
        try:
            serialization.load_pem_private_key({ref!r}.encode(), password=None)
        except AgentUnreachable as exc:
            print("RAISED", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert f"RAISED keyward: via the agent at `{sock}` failed: cannot connect" in proc.stdout
    assert "key reference for `site-1`" in proc.stdout
    assert f"ERROR keyward keyward: via the agent at `{sock}`" in proc.stderr


def test_the_hook_can_be_switched_off_for_one_process():
    ok(PRELUDE + """
        assert hook.install() is False
        assert not hook.installed()
        from cryptography.hazmat.primitives import serialization
        assert not hook.is_patched(serialization)
    """, env={"KEYWARD_NVFLARE_DISABLE": "1"})


def test_pth_install_is_idempotent_and_uninstall_removes_it(short_tmp, capsys):
    assert main(["install", "--site-packages", str(short_tmp)]) == 0
    assert "installed: " in capsys.readouterr().out
    pth = short_tmp / PTH_NAME
    assert pth.read_bytes() == pth_content()
    assert oct(pth.stat().st_mode & 0o777) == "0o644"
    assert main(["install", "--site-packages", str(short_tmp)]) == 0
    assert "already installed: " in capsys.readouterr().out
    pth.write_text("import stale\n")
    assert install_pth(str(short_tmp)) == (str(pth), True)  # a changed file is rewritten
    assert sorted(p.name for p in short_tmp.iterdir()) == [PTH_NAME]
    assert main(["uninstall", "--site-packages", str(short_tmp)]) == 0
    assert "removed: " in capsys.readouterr().out
    assert uninstall_pth(str(short_tmp)) == (str(pth), False)
    assert main(["uninstall", "--site-packages", str(short_tmp)]) == 0
    assert "not installed: " in capsys.readouterr().out


def test_the_pth_line_runs_at_site_processing_and_activates_the_hook(short_tmp):
    install_pth(str(short_tmp))
    ok(f"""
        import site, sys
        site.addsitedir({str(short_tmp)!r})  # processes .pth files as interpreter start does
        import keyward._hook as hook
        assert hook.installed() and "cryptography" not in sys.modules
    """)


def test_a_stale_pth_is_harmless_where_keyward_is_not_installed(short_tmp):
    install_pth(str(short_tmp))
    base_python = str(Path(sys.base_prefix) / "bin" / "python3")
    proc = run(f"""
        import site
        site.addsitedir({str(short_tmp)!r})
        print("fine")
    """, python=base_python, env={"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "fine"
    assert proc.stderr == ""


def test_install_refuses_outside_a_venv_without_an_explicit_folder(monkeypatch):
    import keyward.nvflare as plugin

    monkeypatch.setattr(plugin, "_in_venv", lambda: False)
    with pytest.raises(SystemExit, match="not in a virtual environment"):
        main(["install"])


def test_default_target_is_this_interpreters_purelib():
    import sysconfig

    assert default_site_packages() == sysconfig.get_paths()["purelib"]


def test_when_imported_runs_a_callback_after_the_module_executes_and_only_once():
    out = ok(PRELUDE + """
        import sys
        assert "colorsys" not in sys.modules
        seen = []
        def callback(module):
            seen.append((module.__name__, hasattr(module, "rgb_to_hsv")))
        hook.when_imported("colorsys", callback)
        hook.when_imported("colorsys", callback)  # the same callback twice is registered once
        import colorsys
        assert colorsys.__loader__.__class__.__name__ != "_PatchingLoader"
        import importlib; importlib.reload(colorsys)  # ran once: not again
        hook.when_imported("colorsys", lambda m: seen.append("at once"))  # already imported: now
        print(seen)
    """)
    assert out.strip() == "[('colorsys', True), 'at once']"


def test_a_failing_callback_never_breaks_the_import():
    proc = run(PRELUDE + """
        hook.when_imported("colorsys", lambda m: 1 / 0)
        import colorsys
        print(colorsys.rgb_to_hsv(0, 0, 0))
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "(0.0, 0.0, 0)"
    assert "keyward: NVFlare hook: " in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_when_imported_alone_does_not_wrap_cryptography_when_the_hook_is_off():
    ok(PRELUDE + """
        assert hook.install() is False
        hook.when_imported("colorsys", lambda m: None)
        from cryptography.hazmat.primitives import serialization
        assert not hook.is_patched(serialization) and not hook.installed()
    """, env={"KEYWARD_NVFLARE_DISABLE": "1"})
