"""Enrolling a site whose key never existed as a file (docs/nvflare-plugin.md, "Enroll a new site").

The site admin generates the key in the token (``keyward key generate``) and writes a CSR signed
there (``keyward csr``). The project admin issues the certificate with :func:`sign_csr`
(``keyward-nvflare sign-csr``), from the provisioning workspace's root CA, shaped exactly like the
client certificates ``nvflare provision`` makes (nvflare 2.9.0, ``nvflare/lighter/impl/cert.py``
``CertBuilder.get_pri_key_cert`` and ``nvflare/lighter/utils.py`` ``generate_cert``):

- subject: the CSR's (CN, and O if given); issuer: the root certificate's subject;
- a random serial; SHA-256 signature by the root key;
- NotBefore now, NotAfter now + 360 days, or the root's NotAfter if that is sooner; a root that
  has expired issues nothing;
- extensions: SubjectKeyIdentifier and AuthorityKeyIdentifier (from the public keys) and
  SubjectAlternativeName ``DNS:<CN>``, all non-critical; no BasicConstraints, KeyUsage or
  ExtendedKeyUsage. Extensions the CSR asks for are ignored.

Before anything is signed, the CSR's own signature must verify, and its subject must be what
provisioning accepts for a site: exactly one CN matching NVFlare's client-name pattern
(``^[A-Za-z0-9-_]+$``, at most 64 characters), at most one O matching its org pattern
(``^[A-Za-z0-9_]+$``), nothing else; the key must be RSA of at least 2048 bits (NVFlare signs
with RSA-PSS).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

#: nvflare 2.9 ``nvflare/apis/utils/format_check.py``: the patterns for "client" and "org".
SITE_NAME_RE = re.compile(r"^[A-Za-z0-9\-_]+$")
ORG_RE = re.compile(r"^[A-Za-z0-9_]+$")
#: nvflare 2.9 ``nvflare/lighter/impl/cert.py``: MAX_CN_LENGTH and DEFAULT_CERT_VALID_DAYS.
MAX_CN_LENGTH = 64
DEFAULT_VALID_DAYS = 360
MIN_RSA_BITS = 2048

#: What ``nvflare provision`` leaves in ``<workspace>/<project>/state``: cert.json, with the
#: root certificate and its (unencrypted) key under these names.
CERT_STATE_FILE = "cert.json"
ROOT_CERT_FILE = "rootCA.pem"
ROOT_KEY_FILE = "rootCA.key"


class EnrollError(ValueError):
    """A CSR or CA that ``sign-csr`` refuses, with the reason."""


@dataclass(frozen=True)
class RootCa:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    source: str


def load_root_ca(ca_dir: str | os.PathLike[str]) -> RootCa:
    """The project's root CA from a provisioning state folder: ``cert.json`` as ``nvflare
    provision`` writes it (``root_cert``, ``root_pri_key``), else ``rootCA.pem`` and
    ``rootCA.key``. The key must belong to the certificate."""
    folder = Path(ca_dir)
    state = folder / CERT_STATE_FILE
    if state.is_file():
        content = json.loads(state.read_text())
        try:
            cert_pem, key_pem = content["root_cert"].encode("ascii"), content["root_pri_key"].encode("ascii")
        except (KeyError, AttributeError) as exc:
            raise EnrollError(f"`{state}` has no root_cert/root_pri_key: is it nvflare's provisioning state?") from exc
        source = str(state)
    elif (folder / ROOT_CERT_FILE).is_file() and (folder / ROOT_KEY_FILE).is_file():
        cert_pem = (folder / ROOT_CERT_FILE).read_bytes()
        key_pem = (folder / ROOT_KEY_FILE).read_bytes()
        source = f"{folder / ROOT_CERT_FILE} and {folder / ROOT_KEY_FILE}"
    else:
        raise EnrollError(
            f"`{folder}` holds neither {CERT_STATE_FILE} nor {ROOT_CERT_FILE} + {ROOT_KEY_FILE}: pass the "
            "provisioning workspace's state folder (<workspace>/<project>/state)"
        )
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EnrollError(f"the root CA key in {source} is not RSA")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise EnrollError(f"the root CA key in {source} does not belong to its certificate")
    return RootCa(cert, key, source)


def site_name_of(csr: x509.CertificateSigningRequest) -> str:
    """The CSR's CN, after the checks in the module docstring (signature, subject, key)."""
    if not csr.is_signature_valid:
        raise EnrollError("the CSR's signature does not verify: it was not signed by the key it carries")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrollError(f"the CSR's subject must have exactly one CN, it has {len(cns)}")
    cn = cns[0].value
    if not isinstance(cn, str) or not SITE_NAME_RE.fullmatch(cn) or len(cn) > MAX_CN_LENGTH:
        raise EnrollError(
            f"the CSR's CN {cn!r} is not a valid NVFlare site name (letters, digits, `-` and `_`, "
            f"1 to {MAX_CN_LENGTH} characters)"
        )
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(orgs) > 1:
        raise EnrollError("the CSR's subject has more than one O")
    if orgs and not (isinstance(orgs[0].value, str) and ORG_RE.fullmatch(orgs[0].value)):
        raise EnrollError(f"the CSR's O {orgs[0].value!r} is not a valid NVFlare org (letters, digits and `_`)")
    others = [a.oid.dotted_string for a in csr.subject
              if a.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)]
    if others:
        raise EnrollError(f"the CSR's subject may hold only CN and O, not {', '.join(others)}")
    public = csr.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RSA_BITS:
        raise EnrollError(f"the CSR's key must be RSA of at least {MIN_RSA_BITS} bits (NVFlare signs with RSA-PSS)")
    return cn


def sign_csr(root: RootCa, csr: x509.CertificateSigningRequest, *, days: int = DEFAULT_VALID_DAYS,
             now: datetime.datetime | None = None) -> x509.Certificate:
    """Issues a site certificate for ``csr`` with ``root``, as ``nvflare provision`` would (see the
    module docstring). Raises :class:`EnrollError` with the reason for anything it refuses."""
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise EnrollError(f"days must be a positive integer, not {days!r}")
    cn = site_name_of(csr)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    root_not_after = root.cert.not_valid_after_utc
    if root_not_after <= now:
        raise EnrollError(f"the root CA expired at {root_not_after.isoformat()}: re-provision the project")
    not_after = min(now + datetime.timedelta(days=days), root_not_after)
    public = csr.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(root.key, hashes.SHA256())
    )
