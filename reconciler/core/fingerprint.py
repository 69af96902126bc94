"""Keyed fingerprints of secret values, for change detection without disclosure.

A fingerprint is ``hmac-sha256:<key id>:<hex digest>``: an HMAC-SHA256 of the value under a key that
never leaves the operators' side. Whoever reads labels, plans or logs (a pull-request reader, a
monitoring export) cannot confirm a guessed value without the key; a plain or truncated hash, as
other tools store, would let them.

The key id is itself an HMAC (of a fixed label, under the key), so it identifies the key without
revealing anything about it. When the key changes, fingerprints made with the old one cannot be
compared and the planner treats those values as changed.

Where the key comes from is decided by the caller (``keysource.py``): a file given by the operator,
or a random key kept in a Docker config so every reconciler of one swarm agrees without set-up.

This module is pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

from reconciler.core.model import SecretValue
from reconciler.errors import ConfigError

SCHEME = "hmac-sha256"
MIN_KEY_BYTES = 16


def check_key(key: bytes) -> bytes:
    """Return ``key`` if it is long enough to be a key, else raise ConfigError."""
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the fingerprint key has {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
            "(e.g. `head -c 32 /dev/urandom > key`)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public identifier of ``key`` (12 hex characters)."""
    return hmac.new(key, b"swarm-secrets/key-id", hashlib.sha256).hexdigest()[:12]


def fingerprint(key: bytes, value: SecretValue) -> str:
    """The keyed fingerprint label value of ``value``. Many values under one key:
    :class:`Fingerprinter`, which this is one use of."""
    return Fingerprinter(key)(value)


class Fingerprinter:
    """:func:`fingerprint` for many values under one key (a run fingerprints every value it loaded).

    ``hmac-sha256:<key id>:<HMAC-SHA256 of the value under the key>``. The keyed HMAC state is made
    once and copied for each value: ``hmac.digest`` sets the key up again on every call, and with
    OpenSSL 3 fetches the digest implementation each time, which made 1,000 values cost 1.5 ms instead
    of 1.1 (tests/unit/test_fingerprint.py checks the result against ``hmac.new``).
    """

    __slots__ = ("_keyed", "kid")

    def __init__(self, key: bytes) -> None:
        self.kid = key_id(key)
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, value: SecretValue) -> str:
        mac = self._keyed.copy()
        mac.update(value.reveal())
        return f"{SCHEME}:{self.kid}:{mac.hexdigest()}"


def fingerprint_key_id(label: str | None) -> str | None:
    """The key id of ``hmac-sha256:<key id>:<hex>``; None when the text has another shape."""
    if not label or not label.startswith(SCHEME + ":"):
        return None
    key, sep, digest = label[len(SCHEME) + 1 :].rpartition(":")
    return key if sep and key and digest else None
