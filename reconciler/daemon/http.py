"""The HTTP side of the service: webhook authenticity checks and the listener that serves them.

Each forge proves a delivery differently:

* GitHub: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed with the secret.
* Gitea (and Forgejo): ``X-Gitea-Signature: <hex>``, the same HMAC without the prefix.
* GitLab: ``X-Gitlab-Token: <secret>``, the secret itself.

The ``verify*`` and :func:`is_ping` functions are pure (no I/O, no clock, no logging) and
constant-time (:func:`hmac.compare_digest`); a missing or malformed proof is simply "not verified".

:class:`HttpListener` serves, in a daemon thread (stdlib ``ThreadingHTTPServer``)::

    POST /hooks/github|gitlab|gitea   202 + one tick requested ("webhook:<provider>"); GitHub ping → 200
                                      401 bad/missing proof, 411 no Content-Length, 413 body > limit,
                                      404 when no secret is configured
    POST /reconcile                   202 "reconcile now", Authorization: Bearer <webhook secret>
    GET  /healthz                     200 "ok" while the process runs
    GET  /readyz                      200 or 503 with the last error (one line) from App.readiness()
    GET  /metrics                     Prometheus text exposition
    anything else                     404 unknown path, 405 wrong method

It talks to the loop only through the small :class:`App` protocol. This module must not parse
webhook bodies, log them, or log a signature, a token or the secret; and must not decide when a tick
runs (``loop.py`` does: a request here is only a request).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.types import Reason, Trigger
from reconciler.errors import ConfigError

log = logging.getLogger(__name__)

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

MAX_SECRET_BYTES: Final = 4096
"""A webhook secret is a short token; anything bigger is the wrong file."""


def load_secret(path: Path) -> bytes:
    """The webhook secret stored in ``path``, without trailing newline characters.

    Raises :class:`ConfigError` (naming the file, never its content) when the file cannot be read,
    is empty or is implausibly large: an empty secret would make every GitLab delivery without a
    token header look valid.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"webhook secret file {path}: cannot read it: {exc.strerror}") from exc
    secret = raw.rstrip(b"\r\n")
    if not secret:
        raise ConfigError(f"webhook secret file {path} is empty: write the shared secret into it")
    if len(secret) > MAX_SECRET_BYTES:
        raise ConfigError(f"webhook secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    return secret


def _wire(text: str) -> bytes | None:
    # http.server decodes header values as ISO-8859-1, so encoding back gives the bytes the client
    # sent; a str that does not encode cannot have come from the wire and cannot match.
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
    """True when an ``Authorization`` header is ``Bearer <secret>`` (used by ``POST /reconcile``)."""
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


# --- HTTP: webhooks, health, metrics -------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``":8080"`` → ``("", 8080)``; ``"127.0.0.1:0"``, ``"[::]:8080"``; ConfigError otherwise."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r}: expected host:port, e.g. :8080 or 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class App(Protocol):
    """What the listener needs from the loop (``loop.Loop`` implements it)."""

    metrics: Metrics
    webhook_secret: bytes | None
    """The shared secret of ``/hooks/*`` and ``/reconcile``; None disables those endpoints."""

    def request(self, reason: Reason | Trigger) -> bool: ...

    def readiness(self) -> tuple[bool, str]: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive after run() returns

    def __init__(self, app: App, address: tuple[str, int], *, max_body: int, timeout: float) -> None:
        self.app, self.max_body, self.request_timeout = app, max_body, timeout
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up or stalling mid-request are routine; anything else is a bug worth a
        # traceback (the default handler would print it to stderr, bypassing logging).
        exc = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(exc, OSError) else logging.ERROR
        log.log(level, "http request from %s failed", client_address[0], exc_info=True)


class HttpListener:
    """The HTTP server in a daemon thread; :meth:`close` stops it."""

    def __init__(self, app: App, listen: str, *, max_body: int = 1024 * 1024, timeout: float = 10.0) -> None:
        try:
            self._server = _Server(app, parse_listen(listen), max_body=max_body, timeout=timeout)
        except OSError as exc:
            raise ConfigError(f"--listen {listen}: cannot listen: {exc.strerror}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="reconciler-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    """Routes: POST /hooks/{github,gitlab,gitea}, POST /reconcile, GET /healthz, /readyz, /metrics."""

    server_version = "swarm-secrets"
    sys_version = ""

    @property
    def _srv(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    @property
    def app(self) -> App:
        return self._srv.app

    def setup(self) -> None:
        super().setup()
        # A stalled client must not hold a thread (and its buffers) for ever.
        self.connection.settimeout(self._srv.request_timeout)

    def _dispatch(self) -> None:
        route = _ROUTES.get(urlsplit(self.path).path)
        if route is None:
            self._reply(HTTPStatus.NOT_FOUND, "not found")
        elif self.command != route[0] and not (self.command == "HEAD" and route[0] == "GET"):
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, f"use {route[0]}", allow=route[0])
        else:
            route[1](self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def _reply(
        self,
        code: HTTPStatus,
        text: str | bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        allow: str | None = None,
    ) -> None:
        body = text if isinstance(text, bytes) else (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self, *, required: bool) -> tuple[bytes | None, str]:
        """The request body, or (None, outcome) after answering 400/411/413. Never reads past the
        limit, and never reads at all when the announced length is too big."""
        limit = self._srv.max_body
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (raw is None and required):
            self._reply(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None, "length_required"
        length = int(raw) if raw is not None and raw.strip().isdigit() else (0 if raw is None else -1)
        if length < 0:
            self._reply(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return None, "bad_request"
        if length > limit:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
            self._drain(limit)
            return None, "too_large"
        body = self.rfile.read(length)
        if len(body) != length:
            self._reply(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
            return None, "bad_request"
        return body, "ok"

    def _drain(self, limit: int) -> None:
        # Discard what the client already sent (at most `limit` bytes, for at most a second) so it
        # reads our 413 instead of a connection reset from closing on unread data.
        self.close_connection = True
        try:
            self.connection.settimeout(1.0)
            while limit > 0 and (chunk := self.rfile.read(min(limit, 65536))):
                limit -= len(chunk)
        except OSError:
            pass

    def _hook(self, provider: str) -> None:
        app = self.app
        if app.webhook_secret is None:
            app.metrics.observe_webhook(provider, "disabled")
            self._reply(HTTPStatus.NOT_FOUND, "webhooks are disabled: no webhook secret file is configured")
            return
        body, outcome = self._body(required=True)
        if body is None:
            app.metrics.observe_webhook(provider, outcome)
            return
        proof = self.headers.get(PROOF_HEADERS[provider])
        if not verify(provider, body, proof, app.webhook_secret):
            app.metrics.observe_webhook(provider, "unauthorized")
            log.warning(
                "webhook %s from %s rejected: %s signature",
                provider,
                self.client_address[0],
                "bad" if proof else "missing",
            )
            self._reply(HTTPStatus.UNAUTHORIZED, "signature missing or wrong")
            return
        if is_ping(provider, self.headers.get(EVENT_HEADERS[provider])):
            app.metrics.observe_webhook(provider, "ping")
            self._reply(HTTPStatus.OK, "pong")
            return
        app.metrics.observe_webhook(provider, "accepted")
        app.request(Reason(Trigger.WEBHOOK, provider))
        log.info("webhook %s accepted: tick requested", provider)
        self._reply(HTTPStatus.ACCEPTED, "accepted")

    def _reconcile(self) -> None:
        app = self.app
        if app.webhook_secret is None:
            self._reply(HTTPStatus.NOT_FOUND, "disabled: no webhook secret file is configured")
            return
        body, _ = self._body(required=False)
        if body is None:
            return
        if not verify_bearer(self.headers.get("Authorization"), app.webhook_secret):
            log.warning("POST /reconcile from %s rejected: bad or missing token", self.client_address[0])
            self._reply(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <webhook secret> required")
            return
        app.request(Trigger.MANUAL)
        self._reply(HTTPStatus.ACCEPTED, "accepted")

    def _readyz(self) -> None:
        ready, why = self.app.readiness()
        self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, why)

    def _metrics(self) -> None:
        body, content_type = self.app.metrics.render()
        self._reply(HTTPStatus.OK, body, content_type=content_type)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only: a query string could carry a token some client put there.
        log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _hook_route(provider: str) -> Callable[[_Handler], None]:
    return lambda handler: handler._hook(provider)


_ROUTES: dict[str, tuple[str, Callable[[_Handler], None]]] = {
    "/healthz": ("GET", lambda h: h._reply(HTTPStatus.OK, "ok")),
    "/readyz": ("GET", _Handler._readyz),
    "/metrics": ("GET", _Handler._metrics),
    "/reconcile": ("POST", _Handler._reconcile),
    **{f"/hooks/{p}": ("POST", _hook_route(p)) for p in PROVIDERS},
}
