"""Webhook authenticity, the secrets of the HTTP side, and de-duplication of deliveries (pure).

Each forge proves a delivery differently:

* GitHub: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed with its secret.
* Gitea (and Forgejo): ``X-Gitea-Signature: <hex>``, the same HMAC without the prefix.
* GitLab: ``X-Gitlab-Token: <token>``, the token itself, sent with every delivery.

**One secret per purpose** (:class:`SecretFiles`): the GitHub HMAC key, the GitLab token, the Gitea
HMAC key, the bearer token of ``POST /reconcile`` and an optional bearer token for ``/metrics`` and
``/readyz``. An HMAC key never travels; a token travels with every request (through proxies and their
logs), so :func:`load_secrets` refuses a token that equals any other configured secret: one leaked
token must not forge signatures or reach another endpoint. The deprecated ``--webhook-secret-file``
sets only the two HMAC keys (GitHub, Gitea), which is safe; it no longer enables GitLab or
``/reconcile``, whose tokens need files of their own.

**Deliveries** carry an ID (:data:`DELIVERY_HEADERS`); :class:`DeliveryLog` remembers the IDs of
authenticated deliveries for a window, so a forge's redelivery, or a replay of a captured request,
triggers nothing a second time. A delivery without an ID is accepted (older GitLab sends none); a replay
of one then costs one harmless, level-based tick and never lifts a hold (``tick.clears_held``).

Everything here is pure (no I/O apart from reading the secret files, no logging) and constant-time
where a secret is compared (:func:`hmac.compare_digest`); a missing or malformed proof is simply "not
verified". It must not parse webhook bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from reconciler.errors import ConfigError

PROVIDERS: Final = ("github", "gitlab", "gitea")
"""The forges with a ``POST /hooks/<provider>`` endpoint."""

PROOF_HEADERS: Final = {
    "github": "X-Hub-Signature-256",
    "gitlab": "X-Gitlab-Token",
    "gitea": "X-Gitea-Signature",
}
"""The request header that carries each forge's proof of knowing the secret."""

EVENT_HEADERS: Final = {
    "github": "X-GitHub-Event",
    "gitlab": "X-Gitlab-Event",
    "gitea": "X-Gitea-Event",
}
"""The request header that names the event (``push``, ``ping``, …)."""

DELIVERY_HEADERS: Final = {
    "github": ("X-GitHub-Delivery",),
    "gitlab": ("Idempotency-Key", "X-Gitlab-Event-UUID"),
    "gitea": ("X-Gitea-Delivery",),
}
"""Headers naming a delivery, first found wins; a forge's redelivery repeats the same value."""

MAX_SECRET_BYTES: Final = 4096
"""A webhook secret is a short token; anything bigger is the wrong file."""

_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


# --- the secrets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretFiles:
    """Where each secret of the HTTP side is read from; None leaves that endpoint disabled."""

    github: Path | None = None
    """HMAC key of GitHub deliveries (``--github-webhook-secret-file``)."""
    gitlab: Path | None = None
    """Token GitLab sends in ``X-Gitlab-Token`` (``--gitlab-webhook-token-file``)."""
    gitea: Path | None = None
    """HMAC key of Gitea/Forgejo deliveries (``--gitea-webhook-secret-file``)."""
    reconcile: Path | None = None
    """Bearer token of ``POST /reconcile`` (``--reconcile-token-file``)."""
    metrics: Path | None = None
    """Bearer token for ``/metrics`` and ``/readyz``; None leaves them open (``--metrics-token-file``)."""


OPTION_NAMES: Final = {
    "github": "--github-webhook-secret-file",
    "gitlab": "--gitlab-webhook-token-file",
    "gitea": "--gitea-webhook-secret-file",
    "reconcile": "--reconcile-token-file",
    "metrics": "--metrics-token-file",
}
HMAC_KEYS: Final = frozenset({"github", "gitea"})
"""Secrets that never leave this process (the others are sent by clients with every request)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Secrets:
    """The loaded secrets; ``repr`` shows which are set, never a byte of them."""

    github: bytes | None = field(default=None, repr=False)
    gitlab: bytes | None = field(default=None, repr=False)
    gitea: bytes | None = field(default=None, repr=False)
    reconcile: bytes | None = field(default=None, repr=False)
    metrics: bytes | None = field(default=None, repr=False)

    def hook(self, provider: str) -> bytes | None:
        """The secret of ``/hooks/<provider>``, or None when that endpoint is disabled."""
        return getattr(self, provider, None) if provider in PROVIDERS else None

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def __repr__(self) -> str:
        return f"Secrets(configured={self.configured!r})"


def load_secret(path: Path, what: str = "webhook secret") -> bytes:
    """The secret stored in ``path``, without trailing newline characters.

    Raises :class:`ConfigError` (naming the file, never its content) when the file cannot be read,
    is empty or is implausibly large: an empty secret would make every delivery without a proof
    header look valid.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: cannot read it: {exc.strerror}") from exc
    secret = raw.rstrip(b"\r\n")
    if not secret:
        raise ConfigError(f"{what} file {path} is empty: write the secret into it")
    if len(secret) > MAX_SECRET_BYTES:
        raise ConfigError(f"{what} file {path} is larger than {MAX_SECRET_BYTES} bytes")
    return secret


def load_secrets(files: SecretFiles) -> Secrets:
    """Read every configured file; refuse a token that equals another secret (module docstring)."""
    loaded: dict[str, bytes] = {}
    for purpose in OPTION_NAMES:
        path: Path | None = getattr(files, purpose)
        if path is not None:
            loaded[purpose] = load_secret(
                path, OPTION_NAMES[purpose].removeprefix("--").removesuffix("-file")
            )
    for purpose, secret in loaded.items():
        if purpose in HMAC_KEYS:
            continue
        for other, other_secret in loaded.items():
            if other != purpose and hmac.compare_digest(secret, other_secret):
                raise ConfigError(
                    f"{OPTION_NAMES[purpose]} and {OPTION_NAMES[other]} hold the same secret: a token "
                    "is sent with every request, so it must not double as an HMAC key or another "
                    "endpoint's token; give each purpose a secret of its own"
                )
    return Secrets(**loaded)


# --- proofs --------------------------------------------------------------------------------------


def _wire(text: str) -> bytes | None:
    # HTTP header values are ISO-8859-1 on the wire, so encoding back gives the bytes the client sent;
    # a str that does not encode cannot have come from the wire and cannot match.
    try:
        return text.strip().encode("latin-1")
    except UnicodeEncodeError:
        return None


def _hmac_hex(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")


def verify_github(body: bytes, signature: str | None, secret: bytes) -> bool:
    """True when ``signature`` is ``sha256=`` followed by the hex HMAC-SHA256 of ``body``."""
    if not signature or not secret:
        return False
    given = _wire(signature)
    if given is None or not given.startswith(b"sha256="):
        return False
    return hmac.compare_digest(_hmac_hex(secret, body), given[len(b"sha256=") :].lower())


def verify_gitea(body: bytes, signature: str | None, secret: bytes) -> bool:
    """True when ``signature`` is the hex HMAC-SHA256 of ``body`` (no prefix)."""
    if not signature or not secret:
        return False
    given = _wire(signature)
    return given is not None and hmac.compare_digest(_hmac_hex(secret, body), given.lower())


def verify_gitlab(token: str | None, secret: bytes) -> bool:
    """True when the ``X-Gitlab-Token`` value equals the secret."""
    if not token or not secret:
        return False
    given = _wire(token)
    return given is not None and hmac.compare_digest(given, secret)


def verify(provider: str, body: bytes, proof: str | None, secret: bytes) -> bool:
    """Check one delivery: ``proof`` is the value of ``PROOF_HEADERS[provider]`` (None if absent).

    An unknown provider never verifies.
    """
    if provider == "github":
        return verify_github(body, proof, secret)
    if provider == "gitea":
        return verify_gitea(body, proof, secret)
    if provider == "gitlab":
        return verify_gitlab(proof, secret)
    return False


def verify_bearer(authorization: str | None, secret: bytes) -> bool:
    """True when an ``Authorization`` header is ``Bearer <secret>``."""
    if not authorization or not secret:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = _wire(token)
    return given is not None and hmac.compare_digest(given, secret)


def is_ping(provider: str, event: str | None) -> bool:
    """True for a forge's "the hook works" delivery, which is answered but triggers nothing.

    Only GitHub sends a distinct ``ping`` event when a hook is created; GitLab's and Gitea's test
    deliveries are ordinary push events, and a tick for them is harmless.
    """
    return provider == "github" and (event or "").strip().lower() == "ping"


# --- deliveries ----------------------------------------------------------------------------------


class BadDeliveryId(ValueError):
    """A delivery header is present but is not a plausible ID (answered 400)."""


def delivery_id(provider: str, header: Callable[[str], str | None]) -> str | None:
    """The delivery ID from the first of ``DELIVERY_HEADERS[provider]`` present, or None.

    ``header(name)`` returns a request header's value. Raises :class:`BadDeliveryId` for a value that
    is not a short token (it would only be stored, never trusted, but there is no reason to keep junk).
    """
    for name in DELIVERY_HEADERS.get(provider, ()):
        value = header(name)
        if value is not None:
            value = value.strip()
            if not _DELIVERY_ID.fullmatch(value):
                raise BadDeliveryId(f"{name} is not a delivery ID")
            return value
    return None


class DeliveryLog:
    """Delivery IDs seen within ``window`` seconds, at most ``capacity`` of them (oldest go first).

    Thread-safe. Only IDs of authenticated deliveries are recorded, so nobody without the secret can
    fill it up or make a genuine delivery look like a replay.
    """

    def __init__(
        self,
        *,
        window: float = 24 * 3600.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window, self.capacity, self._clock = window, capacity, clock
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, provider: str, delivery: str) -> bool:
        """Record a delivery; False when the same one was recorded within the window."""
        now = self._clock()
        key = (provider, delivery)
        with self._lock:
            while self._seen and (len(self._seen) >= self.capacity or next(iter(self._seen.values())) < now):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now + self.window
            return True


# --- where to listen -----------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``":8080"`` → ``("", 8080)``; ``"127.0.0.1:0"``, ``"[::]:8080"``; ConfigError otherwise."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r}: expected host:port, e.g. :8080 or 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
