"""The start-up hook with the real agent: a reference parsed by cryptography's own
load_pem_private_key becomes a working delegating key, both when the hook is installed by hand
and when keyward_nvflare.pth (written by `keyward-nvflare install`) runs at interpreter start."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from keyward import keyref
from keyward.nvflare import PTH_NAME

from kwharness import run_python

USE_REFERENCE = """
    import sys
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from keyward.nvflare import RemoteRSAPrivateKey
    data = open(sys.argv[1] if len(sys.argv) > 1 else {ref!r}, "rb").read()
    k1 = serialization.load_pem_private_key(data, None)
    k2 = serialization.load_pem_private_key(data, password=None)
    assert isinstance(k1, RemoteRSAPrivateKey) and isinstance(k1, rsa.RSAPrivateKey), type(k1)
    assert k1.key_size == 2048 and k2.public_key() == k1.public_key()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    sig = k1.sign(b"site-1nonce", pss, hashes.SHA256())
    k2.public_key().verify(sig, b"site-1nonce", padding.PSS(padding.MGF1(hashes.SHA256()), 222), hashes.SHA256())
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert k2.decrypt(k1.public_key().encrypt(b"wrapped aes key", oaep), oaep) == b"wrapped aes key"
    print("OK", type(k1).__name__)
"""


def test_hook_installed_in_process_turns_a_reference_into_a_delegating_key(agent):
    proc = run_python("import keyward._hook; keyward._hook.install()\n"
                      + textwrap.dedent(USE_REFERENCE.format(ref=str(agent.reference))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK RemoteRSAPrivateKey"


def test_pth_installed_by_the_console_command_runs_at_interpreter_start(agent, hook_venv):
    py = str(hook_venv / "bin" / "python")
    first = subprocess.run([py, "-m", "keyward.nvflare", "install"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("installed: ") and PTH_NAME in first.stdout
    again = subprocess.run([py, "-m", "keyward.nvflare", "install"], capture_output=True, text=True, timeout=60)
    assert again.stdout.startswith("already installed: ")
    try:
        # No explicit install here: only the .pth can have wrapped load_pem_private_key.
        proc = run_python(USE_REFERENCE.format(ref=str(agent.reference)), python=py)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "OK RemoteRSAPrivateKey"
        check = subprocess.run([py, "-m", "keyward.nvflare", "check", str(agent.reference), "--cert", str(agent.cert_file)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "key         site-1" in check.stdout and "matches the key" in check.stdout
        assert "hook        installed: " in check.stdout and check.stdout.rstrip().endswith("ok")
    finally:
        gone = subprocess.run([py, "-m", "keyward.nvflare", "uninstall"], capture_output=True, text=True, timeout=60)
    assert gone.stdout.startswith("removed: ")
    proc = run_python("""
        from cryptography.hazmat.primitives import serialization
        print(getattr(serialization.load_pem_private_key, "__keyward_hook__", False))
    """, python=py)
    assert proc.stdout.strip() == "False"


def test_unreachable_agent_fails_at_parse_time_naming_keyward_and_the_socket(agent, short_tmp):
    ref = short_tmp / "client.key"
    dead = str(short_tmp / "stopped.sock")
    keyref.write(ref, keyref.KeyReference(socket=dead, key="site-1"))
    proc = run_python(f"""
        import logging, keyward._hook
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        keyward._hook.install()
        from cryptography.hazmat.primitives import serialization
        serialization.load_pem_private_key(open({str(ref)!r}, "rb").read(), password=None)
    """)
    assert proc.returncode == 1
    assert f"keyward.errors.AgentUnreachable: keyward: via the agent at `{dead}` failed: cannot connect" in proc.stderr
    assert f"ERROR keyward: keyward: via the agent at `{dead}`" in proc.stderr  # the log line, too


@pytest.mark.parametrize("key, code", [("site-9", "UnknownKey"), ("ec-1", "Unsupported")])
def test_a_reference_to_an_unusable_key_fails_at_parse_time(agent, short_tmp, key, code):
    ref = short_tmp / "client.key"
    keyref.write(ref, keyref.KeyReference(socket=agent.socket, key=key))
    proc = run_python(f"""
        import keyward._hook
        keyward._hook.install()
        from cryptography.hazmat.primitives import serialization
        serialization.load_pem_private_key(open({str(ref)!r}, "rb").read(), password=None)
    """)
    assert proc.returncode == 1
    assert f"keyward.errors.{code}: keyward: " in proc.stderr and agent.socket in proc.stderr and key in proc.stderr


def test_check_command_exit_codes(agent, short_tmp):
    good = subprocess.run([sys.executable, "-m", "keyward.nvflare", "check", str(agent.reference)],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "agent       keyward " in good.stdout and "spki sha256 " in good.stdout
    ref = short_tmp / "client.key"
    keyref.write(ref, keyref.KeyReference(socket=str(short_tmp / "none.sock"), key="site-1"))
    down = subprocess.run([sys.executable, "-m", "keyward.nvflare", "check", str(ref)],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "keyward serve" in down.stderr
    other = short_tmp / "other.crt"
    other.write_bytes(agent.root_ca_file.read_bytes())  # a certificate for another key
    mismatch = subprocess.run([sys.executable, "-m", "keyward.nvflare", "check", str(agent.reference), "--cert", str(other)],
                              capture_output=True, text=True, timeout=60)
    assert mismatch.returncode == 1 and "does NOT match" in mismatch.stderr
