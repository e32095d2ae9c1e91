"""One exception class per wire error code, checked against the error-code table of the golden
vectors (protocol/vectors/error_codes.json, which the Rust ErrorCode and docs/protocol.md are
checked against too)."""

from __future__ import annotations

import pickle

import pytest

import wire_vectors
from keyward import errors


def test_the_vector_table_is_what_we_think_it_is():
    codes = wire_vectors.error_codes()
    assert "unknown_key" in codes and "decryption_failed" in codes and "internal" in codes
    assert len(codes) == len(set(codes)) >= 20


@pytest.mark.parametrize("code", wire_vectors.error_codes())
def test_every_wire_code_has_its_own_class(code):
    cls = errors.ERROR_CLASSES[code]
    assert cls.code == code
    assert issubclass(cls, errors.AgentError) and issubclass(cls, errors.KeywardError)
    exc = errors.error_from_reply(code, "why", socket_path="/run/k.sock", op="sign", key="site-1", request_id=3)
    assert type(exc) is cls
    assert exc.code == code and exc.reason == "why" and exc.request_id == 3


def test_the_classes_cover_exactly_the_wire_codes_and_are_distinct():
    assert set(errors.ERROR_CLASSES) == set(wire_vectors.error_codes())
    assert len(set(errors.ERROR_CLASSES.values())) == len(errors.ERROR_CLASSES)
    assert set(errors.__all__) >= {cls.__name__ for cls in errors.ERROR_CLASSES.values()}


def test_message_names_keyward_the_operation_the_key_the_socket_and_the_reason():
    exc = errors.error_from_reply("unknown_key", "no key named `site-9`", socket_path="/run/keyward/agent.sock",
                                  op="sign", key="site-9")
    assert str(exc).startswith("keyward: `sign` with key `site-9` via the agent at `/run/keyward/agent.sock` failed: "
                               "unknown_key: no key named `site-9`")
    assert "keyward key list" in str(exc)  # the hint


def test_unreachable_agent_message_says_what_to_check():
    exc = errors.AgentUnreachable("cannot connect: No such file or directory (ENOENT)", socket_path="/x.sock")
    assert str(exc) == ("keyward: via the agent at `/x.sock` failed: cannot connect: No such file or directory (ENOENT) "
                        "(is `keyward serve` running, and is this the socket in its keyward.toml?)")
    assert exc.code == "agent_unreachable"
    assert not isinstance(exc, errors.AgentError)


def test_unknown_codes_become_the_base_agent_error_with_the_code_kept():
    exc = errors.error_from_reply("quota_exhausted", "slow down", op="sign")
    assert type(exc) is errors.AgentError
    assert exc.code == "quota_exhausted"
    assert "quota_exhausted: slow down" in str(exc)
    assert errors.AgentError.code == "agent_error"  # the class attribute is untouched


def test_value_error_compatibility_where_cryptography_raises_value_error():
    assert issubclass(errors.DecryptionFailed, ValueError)
    assert issubclass(errors.InvalidKeyReference, ValueError)
    assert issubclass(errors.UnsupportedPadding, ValueError)
    assert issubclass(errors.KeyNotExportable, TypeError)


def test_errors_survive_pickling_with_their_fields():
    exc = errors.error_from_reply("busy", "queue full", socket_path="/s", op="sign", key="k", request_id=9)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is errors.Busy and str(back) == str(exc) and back.request_id == 9
    odd = pickle.loads(pickle.dumps(errors.error_from_reply("new_code", "m")))
    assert odd.code == "new_code"
    local = pickle.loads(pickle.dumps(errors.ReplyTimeout("no reply", socket_path="/s")))
    assert type(local) is errors.ReplyTimeout and str(local).startswith("keyward:")


def test_the_class_definitions_are_the_only_list():
    """A subclass registers its code; a second class for a code fails at definition; __all__
    names every error class of the module."""
    assert all(errors.ERROR_CLASSES[cls.code] is cls for cls in errors.ERROR_CLASSES.values())
    with pytest.raises(TypeError, match="wire code `busy` has two classes"):
        type("Busy2", (errors.AgentError,), {"code": "busy"})
    assert errors.ERROR_CLASSES["busy"] is errors.Busy
    defined = {n for n, o in vars(errors).items() if isinstance(o, type) and issubclass(o, errors.KeywardError)}
    assert set(errors.__all__) == defined | {"ERROR_CLASSES", "error_from_reply"}
    assert "IncompatibleNvflare" in errors.__all__ and "incompatible_nvflare" not in errors.ERROR_CLASSES
