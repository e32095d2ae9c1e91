"""`keyward-nvflare sign-csr` (keyward/enroll.py): the certificate is shaped like the client
certificates of `nvflare provision` (nvflare 2.9.0's own `generate_cert` is the reference), the
CSR's signature and subject are checked first, and the root CA is read from provisioning's
state folder. Also `keyward-nvflare write-reference`."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from keyward import enroll, keyref
from keyward.nvflare import main

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def site_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _root(cn: str = "example_project", days: float = 360,
          start: datetime.datetime | None = None) -> enroll.RootCa:
    """A root as `nvflare provision` makes it (its own generate_cert, ca=True)."""
    from nvflare.lighter.utils import Identity, generate_cert

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = start or datetime.datetime.now(UTC)
    cert = generate_cert(Identity(cn), Identity(cn), key, key.public_key(), ca=True, not_valid_before=start,
                         not_valid_after=start + datetime.timedelta(days=days))
    return enroll.RootCa(cert, key, "test")


@pytest.fixture(scope="module")
def root() -> enroll.RootCa:
    return _root()


def _csr(key, *attrs: tuple) -> x509.CertificateSigningRequest:
    # _validate=False: cryptography itself refuses a CN of 0 or more than 64 characters.
    name = x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in attrs])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def _site_csr(key, cn: str = "site-1", org: str | None = "nvidia") -> x509.CertificateSigningRequest:
    attrs = [(NameOID.COMMON_NAME, cn)] + ([(NameOID.ORGANIZATION_NAME, org)] if org else [])
    return _csr(key, *attrs)


def _shape(cert: x509.Certificate) -> list[tuple[str, bool]]:
    return [(ext.oid.dotted_string, ext.critical) for ext in cert.extensions]


def test_the_certificate_has_the_shape_of_nvflare_provisions(root, site_key):
    from nvflare.lighter.utils import Identity, generate_cert

    csr = _site_csr(site_key)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    cert = enroll.sign_csr(root, csr, now=now)
    # What CertBuilder.get_pri_key_cert does for a client: subject (CN, O), issuer the root's CN.
    reference = generate_cert(Identity("site-1", "nvidia"), Identity("example_project"), root.key,
                              site_key.public_key(), not_valid_before=now)
    assert cert.subject == reference.subject == csr.subject
    assert cert.issuer == reference.issuer == root.cert.subject
    assert _shape(cert) == _shape(reference) == [
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string, False),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string, False),
        (ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string, False),
    ]
    for oid in (ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME):
        assert cert.extensions.get_extension_for_oid(oid).value == reference.extensions.get_extension_for_oid(oid).value
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["site-1"]
    assert cert.not_valid_before_utc == reference.not_valid_before_utc == now
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=360)
    # NVFlare counts the validity from its own clock, read after `now`: a second may have passed.
    assert datetime.timedelta(0) <= reference.not_valid_after_utc - cert.not_valid_after_utc <= datetime.timedelta(seconds=2)
    assert cert.signature_hash_algorithm.name == "sha256" and cert.version == x509.Version.v3
    assert cert.public_key().public_numbers() == site_key.public_key().public_numbers()
    cert.verify_directly_issued_by(root.cert)
    assert cert.serial_number != enroll.sign_csr(root, csr, now=now).serial_number


def test_nvflare_accepts_the_certificate_for_the_sites_registration(root, site_key, tmp_path):
    """NVFlare's own server-side check of a registration (IdentityVerifier, clientAuth)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from nvflare.lighter.utils import sign_content
    from nvflare.private.fed.utils.identity_utils import IdentityVerifier

    cert = enroll.sign_csr(root, _site_csr(site_key))
    root_file = tmp_path / "rootCA.pem"
    root_file.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    nonce = "5f0d5a2e-1b7e-4c55-8f0a-3a1c5f2f9e10"
    IdentityVerifier(root_cert_file=str(root_file)).verify_common_name(
        asserted_cn="site-1", nonce=nonce, asserter_cert=cert,
        signature=sign_content("site-1" + nonce, site_key, return_str=False),
        expected_eku=ExtendedKeyUsageOID.CLIENT_AUTH)


def test_validity_is_capped_at_the_roots_and_days_is_honoured(site_key):
    now = datetime.datetime.now(UTC)
    short = _root(days=30, start=now - datetime.timedelta(days=1))
    cert = enroll.sign_csr(short, _site_csr(site_key), now=now)
    assert cert.not_valid_after_utc == short.cert.not_valid_after_utc
    cert = enroll.sign_csr(short, _site_csr(site_key), days=7, now=now.replace(microsecond=0))
    assert cert.not_valid_after_utc == now.replace(microsecond=0) + datetime.timedelta(days=7)
    for days in (0, -1, True, 1.5):
        with pytest.raises(enroll.EnrollError, match="days"):
            enroll.sign_csr(short, _site_csr(site_key), days=days)


def test_an_expired_root_issues_nothing(site_key):
    old = _root(days=2, start=datetime.datetime.now(UTC) - datetime.timedelta(days=10))
    with pytest.raises(enroll.EnrollError, match="root CA expired"):
        enroll.sign_csr(old, _site_csr(site_key))


def test_a_csr_whose_signature_does_not_verify_is_refused(root, site_key):
    der = bytearray(_site_csr(site_key).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(enroll.EnrollError, match="signature does not verify"):
        enroll.sign_csr(root, forged)


@pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")
@pytest.mark.parametrize("cn", ["site 1", "site.1", "site/1", "", "a" * 65, "admin@nvidia.com", "sïte"])
def test_a_cn_that_is_not_a_valid_site_name_is_refused(root, site_key, cn):
    with pytest.raises(enroll.EnrollError, match="not a valid NVFlare site name"):
        enroll.sign_csr(root, _site_csr(site_key, cn=cn))


def test_a_64_character_site_name_and_no_org_are_accepted(root, site_key):
    cert = enroll.sign_csr(root, _site_csr(site_key, cn="s" * 64, org=None))
    assert cert.subject.rfc4514_string() == "CN=" + "s" * 64


@pytest.mark.parametrize("attrs, match", [
    ([(NameOID.ORGANIZATION_NAME, "nvidia")], "exactly one CN"),
    ([(NameOID.COMMON_NAME, "site-1"), (NameOID.COMMON_NAME, "site-2")], "exactly one CN"),
    ([(NameOID.COMMON_NAME, "site-1"), (NameOID.ORGANIZATION_NAME, "a-b")], "not a valid NVFlare org"),
    ([(NameOID.COMMON_NAME, "site-1"), (NameOID.ORGANIZATION_NAME, "a"), (NameOID.ORGANIZATION_NAME, "b")],
     "more than one O"),
    ([(NameOID.COMMON_NAME, "site-1"), (NameOID.UNSTRUCTURED_NAME, "project_admin")], "only CN and O"),
    ([(NameOID.COMMON_NAME, "site-1"), (NameOID.COUNTRY_NAME, "US")], "only CN and O"),
])
def test_a_subject_provisioning_would_not_make_for_a_site_is_refused(root, site_key, attrs, match):
    with pytest.raises(enroll.EnrollError, match=match):
        enroll.sign_csr(root, _csr(site_key, *attrs))


def test_a_key_nvflare_cannot_use_is_refused(root):
    for key in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(public_exponent=65537, key_size=1024)):
        with pytest.raises(enroll.EnrollError, match="RSA of at least 2048"):
            enroll.sign_csr(root, _site_csr(key))


def test_extensions_the_csr_asks_for_are_not_copied(root, site_key):
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(_site_csr(site_key).subject)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("server1")]), critical=False)
           .sign(site_key, hashes.SHA256()))
    cert = enroll.sign_csr(root, csr)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["site-1"]


def _pem(obj) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def test_the_root_is_read_from_provisionings_cert_json_or_from_pem_files(root, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "cert.json").write_text(json.dumps({"root_cert": _pem(root.cert), "root_pri_key": _pem(root.key),
                                                 "site-1": {}}))
    loaded = enroll.load_root_ca(state)
    assert loaded.cert == root.cert and loaded.source.endswith("cert.json")
    pems = tmp_path / "pems"
    pems.mkdir()
    (pems / "rootCA.pem").write_text(_pem(root.cert))
    (pems / "rootCA.key").write_text(_pem(root.key))
    assert enroll.load_root_ca(pems).cert == root.cert
    (pems / "rootCA.key").write_text(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(enroll.EnrollError, match="does not belong"):
        enroll.load_root_ca(pems)
    with pytest.raises(enroll.EnrollError, match="neither cert.json"):
        enroll.load_root_ca(tmp_path / "empty")


def _sign_csr_args(root, site_key, tmp_path) -> list[str]:
    """``sign-csr`` with a provisioning state folder and a site CSR in ``tmp_path``, up to ``--out``."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "cert.json").write_text(json.dumps({"root_cert": _pem(root.cert), "root_pri_key": _pem(root.key)}))
    csr_file = tmp_path / "site-1.csr"
    csr_file.write_bytes(_site_csr(site_key).public_bytes(serialization.Encoding.PEM))
    return ["sign-csr", "--ca-dir", str(state), "--csr", str(csr_file), "--out"]


def test_sign_csr_command(root, site_key, tmp_path, capsys):
    out = tmp_path / "site-1.crt"
    args = [*_sign_csr_args(root, site_key, tmp_path), str(out)]
    state = tmp_path / "state"
    assert main(args) == 0
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    cert.verify_directly_issued_by(root.cert)
    assert out.stat().st_mode & 0o777 == 0o644
    assert "san         DNS:site-1" in capsys.readouterr().out
    assert main(args) == 1 and "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force", "--days", "10"]) == 0
    bad = tmp_path / "bad.csr"
    bad.write_bytes(_site_csr(site_key, cn="bad name").public_bytes(serialization.Encoding.PEM))
    assert main(["sign-csr", "--ca-dir", str(state), "--csr", str(bad), "--out", str(tmp_path / "bad.crt")]) == 1
    assert "refused" in capsys.readouterr().err and not (tmp_path / "bad.crt").exists()


def test_sign_csr_to_standard_output_or_through_a_link(root, site_key, tmp_path, capsys):
    args = _sign_csr_args(root, site_key, tmp_path)
    assert main([*args, "-"]) == 0
    printed = capsys.readouterr()
    x509.load_pem_x509_certificate(printed.out.encode()).verify_directly_issued_by(root.cert)
    assert printed.out.startswith("-----BEGIN CERTIFICATE-----") and "issued      -" in printed.err
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "link.crt").symlink_to(victim)
    assert main([*args, str(tmp_path / "link.crt"), "--force"]) == 1
    assert "is a symbolic link" in capsys.readouterr().err and victim.read_text() == "precious"


def test_write_reference_command(site_key, tmp_path, capsys):
    out = tmp_path / "client.key"
    assert main(["write-reference", "--socket", "/run/keyward/agent.sock", "--key", "site-1", "--out", str(out)]) == 0
    assert out.read_bytes() == keyref.dumps(keyref.KeyReference(socket="/run/keyward/agent.sock", key="site-1"))
    assert out.stat().st_mode & 0o777 == 0o644
    # Replacing a reference is fine; replacing a private key needs --force (migrate it instead).
    assert main(["write-reference", "--socket", "/run/kw.sock", "--key", "site-1", "--out", str(out)]) == 0
    assert keyref.load(out).socket == "/run/kw.sock"
    out.write_text(_pem(site_key))
    capsys.readouterr()
    assert main(["write-reference", "--socket", "/run/kw.sock", "--key", "site-1", "--out", str(out)]) == 1
    assert "not a key reference" in capsys.readouterr().err and b"PRIVATE KEY" in out.read_bytes()
    assert main(["write-reference", "--socket", "relative.sock", "--key", "site-1", "--out", str(out)]) == 2
    assert main(["write-reference", "--socket", "/run/kw.sock", "--key=-bad", "--out", str(tmp_path / "x")]) == 2


def test_the_enroll_steps_are_documented():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "nvflare-plugin.md").read_text()
    section = doc.split("Enroll a new site\n", 1)[1].split("\n## ", 1)[0]
    for step in ("keyward key generate", "keyward csr", "keyward-nvflare sign-csr", "keyward cert install",
                 "keyward-nvflare write-reference", "[keys.site-1.nvflare]", "keyward-nvflare check"):
        assert step in section, step
