"""Runs nvflare 2.9's own client authentication (`Authenticator.authenticate`) against a fake
server cell, in a fresh interpreter of a venv where keyward_nvflare.pth is installed, as the
NVFlare client parent does. The fake server does what `fed_server.py` does (its challenge reply
signed with nvflare's `sign_content` through its own `IdentityAsserter`; the register message
checked with nvflare's `IdentityVerifier`; a token signed with `sign_content`), and can forge
its replies. Usage: `python flow_driver.py '<json scenario>'`; prints one JSON object.

Scenario keys: ref, crt, root (the site kit), logs (a folder for NVFlare's log files),
server_key, server_crt, server_cn (what the reply claims), sign_nonce ("client", or any other
text to sign instead of the client nonce), token_key (the key that signs the token), comm_errors
(challenge replies with COMM_ERROR before the real one), parse_first (parse the reference with
CredentialManager before authenticating, as the client's Cell does), also_parse (load this
reference first, e.g. to activate the plug-in for a kit with a plain key file).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import uuid


def main() -> None:
    cfg = json.loads(sys.argv[1])
    from nvflare.fuel.utils.log_utils import apply_log_config, default_log_dict

    apply_log_config(copy.deepcopy(default_log_dict), cfg["logs"])

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.apis.signal import Signal
    from nvflare.fuel.f3.cellnet.defs import IdentityChallengeKey, ReturnCode
    from nvflare.fuel.f3.cellnet.utils import make_reply
    from nvflare.lighter.utils import load_private_key_file, sign_content
    from nvflare.private.defs import CellChannelTopic, CellMessageHeaderKeys
    from nvflare.private.fed import authenticator
    from nvflare.private.fed.utils.identity_utils import IdentityAsserter, IdentityVerifier

    out: dict = {"nonces": [], "server_verified_client": False}
    original_challenge = authenticator.Authenticator._challenge_server
    if cfg.get("parse_first", True):
        from nvflare.fuel.f3.cellnet.credential_manager import CredentialManager
        from nvflare.fuel.f3.drivers.driver_params import DriverParams
        from nvflare.fuel.f3.endpoint import Endpoint

        CredentialManager(Endpoint("site-1", conn_props={
            DriverParams.CA_CERT.value: cfg["root"], DriverParams.CLIENT_CERT.value: cfg["crt"],
            DriverParams.CLIENT_KEY.value: cfg["ref"]}))
    if cfg.get("also_parse"):
        load_private_key_file(cfg["also_parse"])  # another reference: the plug-in is active
    out["patched"] = authenticator.Authenticator._challenge_server is not original_challenge

    server = IdentityAsserter(private_key_file=cfg["server_key"], cert_file=cfg["server_crt"])
    token_key = load_private_key_file(cfg.get("token_key") or cfg["server_key"])
    state = {"comm_errors": cfg.get("comm_errors", 0), "server_nonce": None}

    class FakeServerCell:
        def send_request(self, target, channel, topic, request, timeout, optional=False):
            if topic == CellChannelTopic.Challenge:
                client_nonce = request.get_header(IdentityChallengeKey.NONCE)
                out["nonces"].append(client_nonce)
                if state["comm_errors"] > 0:
                    state["comm_errors"] -= 1
                    return make_reply(ReturnCode.COMM_ERROR, error="not ready")
                state["server_nonce"] = str(uuid.uuid4())
                signed = client_nonce if cfg.get("sign_nonce", "client") == "client" else cfg["sign_nonce"]
                reply = Shareable()
                reply[IdentityChallengeKey.NONCE] = state["server_nonce"]
                reply[IdentityChallengeKey.SIGNATURE] = sign_content(cfg["server_cn"] + signed, server.pri_key,
                                                                     return_str=False)
                reply[IdentityChallengeKey.COMMON_NAME] = cfg["server_cn"]
                reply[IdentityChallengeKey.CERT] = server.cert_data
                return make_reply(ReturnCode.OK, body=reply)
            assert topic == CellChannelTopic.Register, topic
            payload = request.payload
            client_name = request.get_header(CellMessageHeaderKeys.CLIENT_NAME)
            chain = x509.load_pem_x509_certificates(payload[IdentityChallengeKey.CERT])
            IdentityVerifier(root_cert_file=cfg["root"]).verify_common_name(
                asserted_cn=client_name, nonce=state["server_nonce"], asserter_cert=chain[0],
                signature=payload[IdentityChallengeKey.SIGNATURE], intermediate_certs=chain[1:],
                expected_eku=ExtendedKeyUsageOID.CLIENT_AUTH)
            out["server_verified_client"] = True
            out["registered_cn"] = payload[IdentityChallengeKey.COMMON_NAME]
            token = str(uuid.uuid4())
            return make_reply(ReturnCode.OK, body={
                CellMessageHeaderKeys.TOKEN: token,
                CellMessageHeaderKeys.TOKEN_SIGNATURE: sign_content(client_name + token, token_key, return_str=True),
                CellMessageHeaderKeys.SSID: "ssid-1",
            })

    auth = authenticator.Authenticator(
        cell=FakeServerCell(), project_name="example_project", client_name="site-1", client_type="regular",
        expected_sp_identity=cfg.get("expected_identity", "server1"), secure_mode=True, root_cert_file=cfg["root"],
        private_key_file=cfg["ref"], cert_file=cfg["crt"], msg_timeout=5.0, retry_interval=0.05, timeout=30.0)
    start = time.monotonic()
    try:
        token, token_signature, ssid, verifier = auth.authenticate(FLContext(), Signal())
        out.update(token=token, ssid=ssid, verifier=type(verifier).__name__)
    except Exception as exc:
        out.update(raised=type(exc).__name__, code=getattr(exc, "code", None), message=str(exc))
    out["seconds"] = time.monotonic() - start
    out["logs"] = {name: open(os.path.join(cfg["logs"], name)).read()
                   for name in sorted(os.listdir(cfg["logs"])) if name.endswith(".txt")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
