"""The HTTP side of the service: webhooks, ``POST /reconcile``, health, readiness and metrics.

Served by **Tornado** (``tornado.httpserver``) on an event loop of its own in one daemon thread::

    POST /hooks/github|gitlab|gitea   202 + one tick requested ("webhook:<provider>"); GitHub ping 200;
                                      a delivery ID seen before 200 "duplicate" (nothing requested);
                                      401 bad/missing proof, 411 no Content-Length (or chunked),
                                      413 body over the limit (never read), 404 when not configured
    POST /reconcile                   202 + a "manual" tick; Authorization: Bearer <reconcile token>
    GET  /healthz                     200 "ok" while the process serves (never authenticated)
    GET  /readyz                      200/503 and a fixed reason class (never the text of a failure);
                                      a second line names the sets held back, if any
    GET  /metrics                     Prometheus text exposition
                                      (both: Bearer <metrics token> when one is configured, else open)
    anything else                     404 unknown path, 405 wrong method (with Allow), 400 malformed

Why Tornado (README, "The HTTP side"): one thread serves every connection, so slow clients cost a
socket and a small buffer, never a thread; it has deadlines for a whole request head
(``idle_connection_timeout``) and body (``body_timeout``), header and body size limits, and a body
handler that can refuse by ``Content-Length`` before reading a byte; it runs inside our process next
to the loop without touching signals. uvicorn and hypercorn have no deadline for a request that
trickles in (slowloris); waitress has an inactivity timeout only; cheroot and ``http.server`` spend a
thread per connection; gunicorn wants to own the process.

The bounds, all here: at most ``max_connections`` open connections (more get 503 at once); one request
per connection (no keep-alive, so a connection lives one request); the head within ``deadline``
seconds of the connection, the body within what is left of it; headers at most
:data:`MAX_HEADER_BYTES`; a body at most ``max_body`` and all bodies being received at most
:data:`BODY_BUDGET` bytes together (more get 503). Malformed requests get 400 from Tornado, logged at
debug without a traceback.

It talks to the loop only through :class:`App`. It must not parse or log webhook bodies, signatures,
tokens or secrets, and must not decide when a tick runs (``loop.py`` does).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from http import HTTPStatus
from typing import Any, Final, Protocol, cast

from tornado import netutil, web
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.types import Reason, Trigger, readiness_text_ok
from reconciler.daemon.webhooks import (
    EVENT_HEADERS,
    PROOF_HEADERS,
    PROVIDERS,
    BadDeliveryId,
    DeliveryLog,
    Secrets,
    delivery_id,
    is_ping,
    parse_listen,
    verify,
    verify_bearer,
)
from reconciler.errors import ConfigError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES: Final = 16 * 1024
"""Request line plus headers; a forge's delivery needs a few KiB."""
BODY_BUDGET: Final = 16 * 1024 * 1024
"""Bytes of request bodies being received at once, across all connections."""
LINGER: Final = 1.0
"""Seconds a refused request's unread body is discarded for before its connection is closed."""
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"


class App(Protocol):
    """What the listener needs from the loop (``loop.Loop`` implements it)."""

    metrics: Metrics
    secrets: Secrets
    """Which endpoints are enabled, and their secrets."""

    def request(self, reason: Reason | Trigger) -> bool: ...

    def readiness(self) -> tuple[bool, str]: ...


class _State:
    """What every handler shares (one per listener; touched only on the server's thread)."""

    def __init__(self, app: App, *, max_body: int, deadline: float) -> None:
        self.app, self.max_body, self.deadline = app, max_body, deadline
        self.deliveries = DeliveryLog()
        self.body_bytes = 0  # reserved by bodies being received
        self.accepted: weakref.WeakKeyDictionary[IOStream, float] = weakref.WeakKeyDictionary()
        """When each connection was accepted: its request's deadline runs from there."""


class _Server(HTTPServer):
    """Tornado's HTTP server with a cap on open connections and the time each was accepted."""

    def initialize(  # type: ignore[override]
        self, *args: Any, state: _State, max_connections: int = 512, **kwargs: Any
    ) -> None:
        super().initialize(*args, **kwargs)
        self.state = state
        self.max_connections = max_connections
        self.live = 0

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if self.live >= self.max_connections:
            stream.write(_BUSY).add_done_callback(lambda _: stream.close())
            return
        self.live += 1
        self.state.accepted[stream] = time.monotonic()
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.live -= 1
        super().on_close(server_conn)


class _Base(web.RequestHandler):
    """Plain-text answers, no caching, no server banner, method checks with ``Allow``."""

    ALLOWED = "GET"

    def initialize(self, state: _State) -> None:
        self.state = state

    @property
    def app(self) -> App:
        return self.state.app

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        self.method_allowed()

    def method_allowed(self) -> bool:
        """False (after answering 405 with ``Allow``) for a method this path does not take."""
        allowed = (self.ALLOWED, "HEAD") if self.ALLOWED == "GET" else (self.ALLOWED,)
        if self.request.method in allowed:
            return True
        self.set_header("Allow", self.ALLOWED)
        self.reply(HTTPStatus.METHOD_NOT_ALLOWED, f"use {self.ALLOWED}")
        return False

    def reply(self, code: HTTPStatus, text: str | bytes, content_type: str | None = None) -> None:
        self.set_status(code)
        if content_type is not None:
            self.set_header("Content-Type", content_type)
        self.finish(text if isinstance(text, bytes) else text + "\n")

    def authorized(self, token: bytes | None) -> bool:
        """True when no token is configured or the request carries it as a bearer token."""
        return token is None or verify_bearer(self.request.headers.get("Authorization"), token)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback, whatever `debug` says: the reason phrase only.
        try:
            phrase = HTTPStatus(status_code).phrase
        except ValueError:
            phrase = "error"
        self.finish(phrase + "\n")

    def head(self) -> None:
        self.get()

    def get(self) -> None:
        raise web.HTTPError(HTTPStatus.METHOD_NOT_ALLOWED)


class _Health(_Base):
    def get(self) -> None:
        self.reply(HTTPStatus.OK, "ok")


class _Ready(_Base):
    def get(self) -> None:
        if not self.authorized(self.app.secrets.metrics):
            return self.reply(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <metrics token> required")
        ready, reason = self.app.readiness()
        if not readiness_text_ok(reason):  # a second line of defence: never a failure's own text
            reason = "ready" if ready else "not ready"
        self.reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, reason)


class _Metrics(_Base):
    def get(self) -> None:
        if not self.authorized(self.app.secrets.metrics):
            return self.reply(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <metrics token> required")
        body, content_type = self.app.metrics.render()
        self.reply(HTTPStatus.OK, body, content_type)


@web.stream_request_body
class _Post(_Base):
    """A POST whose body is refused by its announced length before a byte of it is read."""

    ALLOWED = "POST"
    provider = ""  # for the metrics of /hooks/*

    async def prepare(self) -> None:  # type: ignore[override]
        self.body = bytearray()
        self.reserved = 0
        if not self.method_allowed() or not self.enabled():
            return
        headers = self.request.headers
        raw = headers.get("Content-Length")
        if "Transfer-Encoding" in headers or raw is None:
            return await self.refuse_unread(
                HTTPStatus.LENGTH_REQUIRED, "Content-Length required", "length_required"
            )
        if not raw.strip().isdigit():  # Tornado checks it only after this point
            return await self.refuse_unread(HTTPStatus.BAD_REQUEST, "bad Content-Length", "bad_request")
        length = int(raw)
        if length > self.state.max_body:
            too_large = f"body larger than {self.state.max_body} bytes"
            return await self.refuse_unread(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large, "too_large")
        if self.state.body_bytes + length > BODY_BUDGET:
            return await self.refuse_unread(HTTPStatus.SERVICE_UNAVAILABLE, "busy: try again", "busy")
        self.reserved = length
        self.state.body_bytes += length
        # The body must arrive within what is left of the whole request's deadline.
        connection = cast(HTTP1Connection, self.request.connection)
        accepted = self.state.accepted.get(connection.stream, time.monotonic())
        connection.set_body_timeout(max(0.1, self.state.deadline - (time.monotonic() - accepted)))

    def enabled(self) -> bool:
        return True

    def refuse(self, code: HTTPStatus, text: str, outcome: str) -> None:
        if self.provider:
            self.app.metrics.observe_webhook(self.provider, outcome)
        self.reply(code, text)

    async def refuse_unread(self, code: HTTPStatus, text: str, outcome: str) -> None:
        """Answer before the body is read, then discard what the client still sends (at most
        ``max_body`` bytes, for at most :data:`LINGER` seconds) before closing: closing on unread
        data would reset the connection, and a client still sending would never see the answer."""
        if self.provider:
            self.app.metrics.observe_webhook(self.provider, outcome)
        stream = self.detach()  # Tornado would close at once after the answer
        body = (text + "\n").encode()
        head = (
            f"HTTP/1.1 {code.value} {code.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        log.debug("%s %s -> %d", self.request.method, self.request.path, code.value)
        try:
            await stream.write(head.encode("latin-1") + body)
            left, until = self.state.max_body, time.monotonic() + LINGER
            while left > 0 and (remaining := until - time.monotonic()) > 0:
                chunk = await asyncio.wait_for(stream.read_bytes(min(left, 65536), partial=True), remaining)
                left -= len(chunk)
        except (StreamClosedError, TimeoutError):
            pass
        finally:
            stream.close()

    def data_received(self, chunk: bytes) -> None:
        if self.reserved:  # else the answer is out already and the rest is discarded
            self.body += chunk

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._release()

    def _release(self) -> None:
        self.state.body_bytes -= self.reserved
        self.reserved = 0


class _Hook(_Post):
    def initialize(self, state: _State, provider: str = "") -> None:
        super().initialize(state)
        self.provider = provider

    def enabled(self) -> bool:
        if self.app.secrets.hook(self.provider) is None:
            self.refuse(HTTPStatus.NOT_FOUND, f"/hooks/{self.provider} is not configured", "disabled")
            return False
        return True

    def post(self) -> None:
        provider, headers = self.provider, self.request.headers
        secret = self.app.secrets.hook(provider)
        assert secret is not None  # enabled() said so
        proof = headers.get(PROOF_HEADERS[provider])
        if not verify(provider, bytes(self.body), proof, secret):
            log.warning(
                "webhook %s from %s rejected: %s proof",
                *(provider, self.request.remote_ip, "bad" if proof else "missing"),
            )
            return self.refuse(HTTPStatus.UNAUTHORIZED, "signature or token missing or wrong", "unauthorized")
        try:
            delivery = delivery_id(provider, headers.get)
        except BadDeliveryId as exc:
            return self.refuse(HTTPStatus.BAD_REQUEST, str(exc), "bad_request")
        if delivery is not None and not self.state.deliveries.first_time(provider, delivery):
            log.info("webhook %s delivery %s seen before: nothing requested", provider, delivery)
            return self.refuse(HTTPStatus.OK, "duplicate delivery: already accepted", "duplicate")
        if is_ping(provider, headers.get(EVENT_HEADERS[provider])):
            return self.refuse(HTTPStatus.OK, "pong", "ping")
        self.app.metrics.observe_webhook(provider, "accepted")
        self.app.request(Reason(Trigger.WEBHOOK, provider))
        log.info("webhook %s accepted (delivery %s): tick requested", provider, delivery or "-")
        self.reply(HTTPStatus.ACCEPTED, "accepted")


class _Reconcile(_Post):
    def enabled(self) -> bool:
        if self.app.secrets.reconcile is None:
            self.reply(HTTPStatus.NOT_FOUND, "POST /reconcile is not configured (--reconcile-token-file)")
            return False
        return True

    def post(self) -> None:
        token = self.app.secrets.reconcile
        if token is None or not verify_bearer(self.request.headers.get("Authorization"), token):
            log.warning("POST /reconcile from %s rejected: bad or missing token", self.request.remote_ip)
            return self.reply(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <reconcile token> required")
        self.app.request(Trigger.MANUAL)
        self.reply(HTTPStatus.ACCEPTED, "accepted")


class _NotFound(_Base):
    def prepare(self) -> None:
        self.reply(HTTPStatus.NOT_FOUND, "not found")


def _log_request(handler: web.RequestHandler) -> None:
    # The path only: a query string could carry a token some client put there.
    request = handler.request
    log.debug("%s %s -> %d", request.method, request.path, handler.get_status())


class HttpListener:
    """The HTTP server on its own event loop in a daemon thread; :meth:`close` stops it."""

    def __init__(
        self,
        app: App,
        listen: str,
        *,
        max_body: int = 1024 * 1024,
        timeout: float = 10.0,
        max_connections: int = 512,
    ) -> None:
        host, port = parse_listen(listen)
        # Tornado logs every malformed request ("Malformed HTTP message", "Unsatisfiable read") at INFO
        # on its own loggers: a client's mistake, routine on the internet, not news for the operator.
        # Its errors (a bug in a handler: "Uncaught exception" with a traceback) still come through.
        logging.getLogger("tornado.general").setLevel(logging.WARNING)
        logging.getLogger("tornado.access").setLevel(logging.WARNING)
        try:
            # Bound here, in the caller's thread, so a port in use is a ConfigError at startup.
            self._sockets = netutil.bind_sockets(port, host or None, backlog=128)
        except OSError as exc:
            raise ConfigError(f"--listen {listen}: cannot listen: {exc.strerror}") from exc
        self._settings = (app, max_body, timeout, max_connections)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reconciler-http", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            raise ConfigError(f"--listen {listen}: cannot serve: {self._failure}")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sockets[0].getsockname()[:2]
        return str(host), int(port)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor or logged
            self._failure = exc
            self._ready.set()
            log.exception("the HTTP listener stopped")

    async def _serve(self) -> None:
        app, max_body, deadline, max_connections = self._settings
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        state = _State(app, max_body=max_body, deadline=deadline)
        routes: list[Any] = [
            ("/healthz", _Health, {"state": state}),
            ("/readyz", _Ready, {"state": state}),
            ("/metrics", _Metrics, {"state": state}),
            ("/reconcile", _Reconcile, {"state": state}),
            *((f"/hooks/{p}", _Hook, {"state": state, "provider": p}) for p in PROVIDERS),
        ]
        application = web.Application(
            routes,
            default_handler_class=_NotFound,
            default_handler_args={"state": state},
            log_function=_log_request,
            compress_response=False,
        )
        server = _Server(
            application,
            state=state,
            no_keep_alive=True,
            max_header_size=MAX_HEADER_BYTES,
            idle_connection_timeout=deadline,
            body_timeout=deadline,
            max_body_size=max_body,
            # Enough for the head or one read of the body; what a connection may buffer.
            max_buffer_size=2 * max(MAX_HEADER_BYTES, 64 * 1024),
            max_connections=max_connections,
        )
        server.add_sockets(self._sockets)
        self._ready.set()
        await self._stopping.wait()
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
        except TimeoutError:
            pass

    def close(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
