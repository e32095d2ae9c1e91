"""nvflare_compat.py and padding_params.py against the real nvflare 2.9.0 and cryptography, and
against copies with one name, attribute, call or version changed: every change is named.
tests/e2e/test_nvflare_compat_e2e.py refuses a changed NVFlare at install and at client start."""

from __future__ import annotations

import importlib
import types

import pytest
from cryptography.hazmat.primitives.asymmetric import padding as apadding

from keyward import nvflare_compat, padding_params
from keyward.errors import IncompatibleNvflare

AUTH = nvflare_compat.AUTHENTICATOR_MODULE


@pytest.fixture(scope="module")
def real():
    return importlib.import_module(AUTH)


def copy_of(module: types.ModuleType, **changes) -> types.ModuleType:
    """A module with the real one's names, ``changes`` applied (None removes a name)."""
    copy = types.ModuleType(AUTH)
    copy.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    for name, value in changes.items():
        if value is None:
            delattr(copy, name)
        else:
            setattr(copy, name, value)
    return copy


def test_the_tested_nvflare_and_cryptography_have_everything(real):
    assert nvflare_compat.problems(real) == []
    assert padding_params.check_cryptography() == []
    nvflare_compat.require()


def test_a_renamed_method_is_named(real):
    class Authenticator(real.Authenticator):
        pass

    Authenticator._challenge_server_v2 = real.Authenticator._challenge_server
    renamed = type("Authenticator", (), {k: v for k, v in vars(real.Authenticator).items() if k != "_challenge_server"})
    found = nvflare_compat.problems(copy_of(real, Authenticator=renamed))
    assert f"`{AUTH}.Authenticator._challenge_server` is missing" in found


@pytest.mark.parametrize("name", sorted(nvflare_compat.NAMES))
def test_every_module_level_name_is_checked(real, name):
    found = nvflare_compat.problems(copy_of(real, **{name: None}))
    assert f"`{AUTH}.{name}` is missing" in found


def test_an_instance_attribute_no_longer_set_in_init_is_named(real):
    class Authenticator(real.Authenticator):
        def __init__(self, cell, client_name, private_key_file, root_cert_file, expected_sp_identity):
            self.cell = cell
            self.client_name = client_name
            self.private_key_file = private_key_file
            self.root_cert_file = root_cert_file
            self.expected_sp_identity = expected_sp_identity
            self.message_timeout = 10.0
            self.logger = None

    found = nvflare_compat.problems(copy_of(real, Authenticator=Authenticator))
    assert found == [f"`{AUTH}.Authenticator` instances have no attribute `msg_timeout` (not set in `__init__`)"]


def test_a_changed_keyword_parameter_is_named(real):
    class IdentityVerifier(real.IdentityVerifier):
        def verify_common_name(self, asserter_cert, asserted_cn, nonce, signature, intermediates, expected_eku):
            raise NotImplementedError

    found = nvflare_compat.problems(copy_of(real, IdentityVerifier=IdentityVerifier))
    assert found == [f"`{AUTH}.IdentityVerifier.verify_common_name` has no parameter `intermediate_certs`"]


def test_an_authenticate_that_no_longer_calls_the_patched_names_is_named(real):
    class Authenticator(real.Authenticator):
        def authenticate(self, shared_fl_ctx, abort_signal):
            nonce, verifier = self._challenge_server_once()
            return real.IdentityAsserter(private_key_file="k", cert_file="c").sign_common_name(nonce=nonce), verifier

    found = nvflare_compat.problems(copy_of(real, Authenticator=Authenticator))
    assert f"`{AUTH}.Authenticator.authenticate` no longer calls `self._challenge_server`" in found
    assert f"`{AUTH}.Authenticator.authenticate` no longer calls `verify`" in found


def test_an_untested_version_is_refused_even_with_every_name(real, monkeypatch):
    import nvflare

    monkeypatch.setattr(nvflare, "__version__", "2.10.0")
    found = nvflare_compat.problems(real)
    assert found == ["nvflare 2.10.0 is not a version the plug-in was tested with (2.9.0)"]
    with pytest.raises(IncompatibleNvflare) as info:
        nvflare_compat.require(real)
    assert "install that version" in str(info.value) and str(info.value).startswith("keyward: ")


def test_a_cryptography_without_the_private_padding_attributes_is_refused(monkeypatch):
    original = apadding.MGF1.__init__

    def renamed(self, algorithm):
        original(self, algorithm)
        self._hash = self.__dict__.pop("_algorithm")

    monkeypatch.setattr(apadding.MGF1, "__init__", renamed)
    found = padding_params.check_cryptography()
    assert any("`MGF1._algorithm` does not hold the MGF1 hash" in p for p in found), found
    assert padding_params.mgf1_hash(apadding.MGF1(apadding.hashes.SHA256())) is None


def test_the_readers_return_what_the_objects_were_made_with():
    mgf = apadding.MGF1(apadding.hashes.SHA256())
    assert isinstance(padding_params.mgf1_hash(mgf), apadding.hashes.SHA256)
    assert padding_params.mgf1_hash(object()) is None
    assert padding_params.pss_salt_length(apadding.PSS(mgf=mgf, salt_length=222)) == 222
    oaep = apadding.OAEP(mgf=mgf, algorithm=apadding.hashes.SHA256(), label=None)
    assert padding_params.oaep_label(oaep) is None


SERVER_AND_GRPC_NAMES = [(m, n) for m, names in nvflare_compat.MODULE_NAMES.items() for n in names]


@pytest.mark.parametrize("module_name,name", SERVER_AND_GRPC_NAMES)
def test_every_name_of_the_server_and_grpc_patches_is_checked(real, monkeypatch, module_name, name):
    monkeypatch.delattr(importlib.import_module(module_name), name)
    assert f"`{module_name}.{name}` is missing" in nvflare_compat.problems(real)


@pytest.mark.parametrize("module_name,name,attr", [
    (m, n, a) for m, names in nvflare_compat.MODULE_NAMES.items() for n, attrs in names.items() for a in attrs
    if not (n, a) == ("Client", "name")])
def test_every_attribute_the_server_and_grpc_patches_use_is_checked(real, monkeypatch, module_name, name, attr):
    module = importlib.import_module(module_name)
    real_obj = getattr(module, name)
    kept = {a: getattr(real_obj, a) for a in nvflare_compat.MODULE_NAMES[module_name][name]
            if a != attr and hasattr(real_obj, a)}
    monkeypatch.setattr(module, name, type(name, (), kept))  # enums cannot lose a member: a stand-in
    assert f"`{module_name}.{name}.{attr}` is missing" in nvflare_compat.problems(real)


def test_a_changed_server_method_parameter_is_named(real, monkeypatch):
    manager = importlib.import_module(nvflare_compat.CLIENT_MANAGER_MODULE).ClientManager

    def authenticated_client(self, request, context, client_type):
        raise NotImplementedError

    monkeypatch.setattr(manager, "authenticated_client", authenticated_client)
    assert nvflare_compat.problems(real) == [
        f"`{nvflare_compat.CLIENT_MANAGER_MODULE}.ClientManager.authenticated_client` has no parameter `fl_ctx`"]


def test_a_grpcio_without_the_custom_signer_is_named(real, monkeypatch):
    import grpc.experimental

    monkeypatch.delattr(grpc.experimental, "ssl_channel_credentials_with_custom_signer")
    assert nvflare_compat.problems(real) == [
        "`grpc.experimental.ssl_channel_credentials_with_custom_signer` is missing (grpcio >= 1.75 has it)"]
