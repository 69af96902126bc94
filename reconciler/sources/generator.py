"""The ``generate`` source: a value nobody ever sees, made when its version is created.

:func:`generate` draws the value from the operating system's CSPRNG (Python's :mod:`secrets`) and
returns it as a :class:`~reconciler.core.model.SecretValue`. It is called by the executor (through
``converge``) at the one moment the value is needed: right before the approved plan's create sends it
to the swarm. Nothing here keeps, logs, fingerprints or writes it; the Swarm secret is the only copy.

Alphabets (``charset``; ``length`` counts characters, each drawn uniformly and independently):

=============  ========================================================  ==================
``alnum``      ``A-Z a-z 0-9``                                           5.95 bits a character
``hex``        ``0-9 a-f``                                               4 bits
``base64``     ``A-Z a-z 0-9 + /`` (standard base64's alphabet, no ``=``)  6 bits
``urlsafe``    ``A-Z a-z 0-9 - _`` (RFC 4648 section 5)                  6 bits
``printable``  the 94 printable ASCII characters ``!`` to ``~`` (no space)  6.55 bits
=============  ========================================================  ==================

``{bytes: N}`` gives N raw random bytes (binary, for keys read as bytes).
"""

from __future__ import annotations

import secrets
import string

from reconciler.core.model import CHARSETS, RAW_BYTES, GenerateSource, SecretValue

__all__ = ["ALPHABETS", "generate"]

ALPHABETS: dict[str, str] = {
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "base64": string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/",
    "urlsafe": string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_",
    "printable": "".join(chr(c) for c in range(33, 127)),
}
assert tuple(ALPHABETS) == CHARSETS


def generate(source: GenerateSource) -> SecretValue:
    """A fresh random value as ``source`` describes it."""
    if source.charset == RAW_BYTES:
        return SecretValue(secrets.token_bytes(source.length))
    alphabet = ALPHABETS[source.charset]
    return SecretValue("".join(secrets.choice(alphabet) for _ in range(source.length)).encode("ascii"))
