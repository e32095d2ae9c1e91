"""The three padding parameters cryptography keeps in private attributes, read in one place.

The delegating key (nvflare.py) must know a PSS salt length, an OAEP label and an MGF1 hash to
refuse anything but what NVFlare uses. cryptography has public properties for
``PSS.mgf``, ``OAEP.mgf`` and ``OAEP.algorithm``, which the key uses, but none for these three:
``PSS._salt_length``, ``OAEP._label`` and ``MGF1._algorithm``. ``check_cryptography`` builds
known objects and reads them back through these functions; the plug-in refuses to install or
start when it fails (nvflare_compat.py), so a cryptography that renamed one of them stops the
plug-in at install, not at the first signature. Standard library plus cryptography only.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as apadding

#: The cryptography release these readers were tested with (python-venv.sh pins it). Other
#: releases are checked by behaviour (``check_cryptography``), not refused by version.
TESTED_CRYPTOGRAPHY = "45.0.7"
_MISSING = object()


def pss_salt_length(pad: apadding.PSS) -> Any:
    """The salt length a ``PSS`` was made with: an int, or one of ``PSS.MAX_LENGTH``,
    ``PSS.DIGEST_LENGTH``, ``PSS.AUTO``; None when it cannot be read."""
    return getattr(pad, "_salt_length", None)


def oaep_label(pad: apadding.OAEP) -> bytes | None:
    """The label an ``OAEP`` was made with (None for none)."""
    return getattr(pad, "_label", None)


def mgf1_hash(mgf: object) -> hashes.HashAlgorithm | None:
    """The hash of an ``MGF1`` mask function; None for another mask function or when unreadable."""
    if not isinstance(mgf, apadding.MGF1):
        return None
    value = getattr(mgf, "_algorithm", None)
    return value if isinstance(value, hashes.HashAlgorithm) else None


def check_cryptography() -> list[str]:
    """What the readers cannot read in this cryptography (empty: all three work)."""
    import cryptography

    problems: list[str] = []
    version = getattr(cryptography, "__version__", "?")
    mgf = apadding.MGF1(hashes.SHA384())
    if not isinstance(mgf1_hash(mgf), hashes.SHA384):
        problems.append(f"cryptography {version}: `MGF1._algorithm` does not hold the MGF1 hash")
    pss = apadding.PSS(mgf=mgf, salt_length=apadding.PSS.MAX_LENGTH)
    if pss_salt_length(pss) is not apadding.PSS.MAX_LENGTH or pss_salt_length(
        apadding.PSS(mgf=mgf, salt_length=17)
    ) != 17:
        problems.append(f"cryptography {version}: `PSS._salt_length` does not hold the salt length")
    oaep = apadding.OAEP(mgf=mgf, algorithm=hashes.SHA256(), label=b"kw")
    if getattr(oaep, "_label", _MISSING) is _MISSING or oaep_label(oaep) != b"kw":
        problems.append(f"cryptography {version}: `OAEP._label` does not hold the OAEP label")
    if problems:
        problems.append(f"the delegating key reads these private attributes (tested with cryptography "
                        f"{TESTED_CRYPTOGRAPHY}); install that release")
    return problems
