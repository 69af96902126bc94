"""The HTTP side (Tornado) with real HTTP on 127.0.0.1: routes, one secret per purpose, de-duplicated
deliveries, limits, malformed requests, and many slow clients (the server in a process of its own)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon.loop import Loop, LoopSettings
from reconciler.daemon.types import NOT_STARTED, READY, SETS_FAILING, TickRequest, TickResult, with_class
from reconciler.daemon.webhooks import SecretFiles

ROOT = Path(__file__).resolve().parents[2]
GITHUB = b"github-hmac-key"
GITLAB = b"gitlab-token"
GITEA = b"gitea-hmac-key"
RECONCILE = b"reconcile-token"
METRICS = b"metrics-token"
BODY = b'{"ref": "refs/heads/main"}'
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an env proxy


def github_sig(body: bytes, secret: bytes = GITHUB) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def ok_tick(request: TickRequest) -> TickResult:
    return TickResult(ok=True, changed=False)


def secret_files(tmp_path: Path, **which: bytes) -> SecretFiles:
    paths = {}
    for purpose, value in which.items():
        path = tmp_path / purpose
        path.write_bytes(value + b"\n")
        paths[purpose] = path
    return SecretFiles(**paths)


def make(files: SecretFiles, **kw: object) -> tuple[Loop, str]:
    settings = LoopSettings(listen="127.0.0.1:0", secrets=files, debounce=60, **kw)  # type: ignore[arg-type]
    rec = Loop(settings, ok_tick)
    address = rec.start_http()
    assert address is not None
    return rec, f"http://127.0.0.1:{address[1]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Loop, str]]:
    files = secret_files(tmp_path, github=GITHUB, gitlab=GITLAB, gitea=GITEA, reconcile=RECONCILE)
    rec, base = make(files)
    yield rec, base
    assert rec.http is not None
    rec.http.close()


def call(
    url: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(), dict(err.headers)


def hook_count(rec: Loop, provider: str, result: str) -> float:
    value = rec.metrics.registry.get_sample_value(
        "swarm_secrets_webhook_requests_total", {"provider": provider, "result": result}
    )
    return value or 0.0


def raw(base: str, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are; return all the server answers until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


# --- webhooks ------------------------------------------------------------------------------------


def test_github_good_signature_requests_a_tick(server: tuple[Loop, str]) -> None:
    rec, base = server
    headers = {"X-Hub-Signature-256": github_sig(BODY), "X-GitHub-Event": "push"}
    code, text, response_headers = call(base + "/hooks/github", method="POST", body=BODY, headers=headers)
    assert (code, text) == (202, "accepted\n")
    assert rec.status().pending == ("webhook:github",)
    assert hook_count(rec, "github", "accepted") == 1
    assert "Server" not in response_headers and response_headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "garbage", github_sig(BODY, GITEA)])
def test_github_bad_or_missing_signature_is_401(
    server: tuple[Loop, str], signature: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    rec, base = server
    headers = {"X-Hub-Signature-256": signature} if signature else {}
    code, _, _ = call(base + "/hooks/github", method="POST", body=BODY, headers=headers)
    assert code == 401
    assert rec.status().pending == ()
    assert hook_count(rec, "github", "unauthorized") == 1
    assert all(BODY.decode() not in r.getMessage() and "0" * 64 not in r.getMessage() for r in caplog.records)


def test_github_ping_answers_without_a_tick(server: tuple[Loop, str]) -> None:
    rec, base = server
    headers = {"X-Hub-Signature-256": github_sig(BODY), "X-GitHub-Event": "ping"}
    code, text, _ = call(base + "/hooks/github", method="POST", body=BODY, headers=headers)
    assert (code, text) == (200, "pong\n") and rec.status().pending == ()


def test_each_forge_has_its_own_secret(server: tuple[Loop, str]) -> None:
    rec, base = server
    gitlab = base + "/hooks/gitlab"
    assert call(gitlab, method="POST", body=BODY, headers={"X-Gitlab-Token": "x"})[0] == 401
    # the GitHub HMAC key is not GitLab's token (nor the other way round)
    assert call(gitlab, method="POST", body=BODY, headers={"X-Gitlab-Token": GITHUB.decode()})[0] == 401
    assert call(gitlab, method="POST", body=BODY, headers={"X-Gitlab-Token": GITLAB.decode()})[0] == 202
    gitea_with_github_key = hmac.new(GITHUB, BODY, hashlib.sha256).hexdigest()
    gitea = base + "/hooks/gitea"
    assert (
        call(gitea, method="POST", body=BODY, headers={"X-Gitea-Signature": gitea_with_github_key})[0] == 401
    )
    hexsig = hmac.new(GITEA, BODY, hashlib.sha256).hexdigest()
    assert call(gitea, method="POST", body=BODY, headers={"X-Gitea-Signature": hexsig})[0] == 202
    assert rec.status().pending == ("webhook:gitlab", "webhook:gitea")


def test_a_replayed_delivery_does_not_tick_twice(tmp_path: Path) -> None:
    ticks: list[TickRequest] = []

    def tick(request: TickRequest) -> TickResult:
        ticks.append(request)
        return TickResult(ok=True, changed=False)

    files = secret_files(tmp_path, github=GITHUB, gitlab=GITLAB)
    rec = Loop(LoopSettings(listen="127.0.0.1:0", secrets=files, debounce=0.05, jitter=0), tick)
    address = rec.start_http()
    assert address is not None
    base = f"http://127.0.0.1:{address[1]}"
    thread = threading.Thread(target=rec.run, daemon=True)
    thread.start()

    def wait_ticks(count: int) -> None:
        deadline = time.monotonic() + 5
        while (len(ticks) < count or rec.status().ticking) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ticks) == count

    try:
        wait_ticks(1)  # startup
        delivery = {
            "X-Hub-Signature-256": github_sig(BODY),
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        }
        assert call(base + "/hooks/github", method="POST", body=BODY, headers=delivery)[0] == 202
        wait_ticks(2)
        # GitHub's "Redeliver", or someone replaying a captured request: answered, nothing requested
        for _ in range(3):
            code, text, _ = call(base + "/hooks/github", method="POST", body=BODY, headers=delivery)
            assert (code, text) == (200, "duplicate delivery: already accepted\n")
        time.sleep(0.3)
        assert len(ticks) == 2 and rec.status().pending == ()
        assert hook_count(rec, "github", "duplicate") == 3
        # a replay with a forged ID is not authentic: the signature covers only the body, but an
        # unauthenticated request is refused before its ID is even looked at
        forged = dict(delivery, **{"X-Hub-Signature-256": "sha256=" + "1" * 64, "X-GitHub-Delivery": "new"})
        assert call(base + "/hooks/github", method="POST", body=BODY, headers=forged)[0] == 401
        # a new delivery ticks again; GitLab's Idempotency-Key works the same way
        fresh = dict(delivery, **{"X-GitHub-Delivery": "another-one"})
        assert call(base + "/hooks/github", method="POST", body=BODY, headers=fresh)[0] == 202
        wait_ticks(3)
        gitlab = {"X-Gitlab-Token": GITLAB.decode(), "Idempotency-Key": "gl-1"}
        assert call(base + "/hooks/gitlab", method="POST", body=BODY, headers=gitlab)[0] == 202
        assert call(base + "/hooks/gitlab", method="POST", body=BODY, headers=gitlab)[0] == 200
        wait_ticks(4)
        assert call(base + "/hooks/github", method="POST", body=BODY, headers=dict(fresh, **{
            "X-GitHub-Delivery": "not an id!"}))[0] == 400  # fmt: skip
    finally:
        rec.stop()
        thread.join(5)
    assert [r.reason for r in ticks] == ["startup", "webhook:github", "webhook:github", "webhook:gitlab"]


# --- limits --------------------------------------------------------------------------------------


def test_oversized_body_is_413_without_reading_it(server: tuple[Loop, str]) -> None:
    rec, base = server
    # Only the head is sent: the server must answer from Content-Length alone.
    head = f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {1024 * 1024 + 1}\r\n"
    answer = raw(base, (head + f"X-Hub-Signature-256: {github_sig(b'')}\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert rec.status().pending == () and hook_count(rec, "github", "too_large") == 1


def test_oversized_body_sent_in_full_still_gets_413(server: tuple[Loop, str]) -> None:
    body = b"x" * (1024 * 1024 + 10)
    code, _, _ = call(
        server[1] + "/hooks/gitea", method="POST", body=body, headers={"X-Gitea-Signature": "0"}
    )
    assert code == 413


@pytest.mark.parametrize(
    "head",
    [
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
)
def test_a_body_without_content_length_is_411(server: tuple[Loop, str], head: str) -> None:
    assert raw(server[1], head.encode()).startswith(b"HTTP/1.1 411 ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # no Host
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\n{}",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\x00\r\n\r\n",
    ],
)
def test_malformed_requests_get_a_4xx_and_no_traceback(
    server: tuple[Loop, str], request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = raw(server[1], request_bytes)
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer
    assert b"Traceback" not in answer
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert call(server[1] + "/healthz")[0] == 200  # still serving


def test_oversized_headers_are_refused(server: tuple[Loop, str], caplog: pytest.LogCaptureFixture) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n"
    with caplog.at_level(logging.DEBUG):
        answer = raw(server[1], huge)
    # Tornado closes the connection once the head passes its limit, without an answer
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    assert not [r for r in caplog.records if r.exc_info]


def test_connections_beyond_the_cap_get_503_at_once(tmp_path: Path) -> None:
    rec, base = make(SecretFiles(), http_max_connections=4)
    host, port = base.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert raw(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while call(base + "/healthz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rec.http is not None
    rec.http.close()


# --- the other endpoints ---------------------------------------------------------------------------


def test_health_metrics_and_routing(server: tuple[Loop, str]) -> None:
    _, base = server
    assert call(base + "/healthz")[:2] == (200, "ok\n")
    code, text, headers = call(base + "/metrics")
    assert code == 200 and "swarm_secrets_ticks_total" in text
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert call(base + "/nope")[0] == 404
    code, _, headers = call(base + "/hooks/github")
    assert code == 405 and headers["Allow"] == "POST"
    code, _, headers = call(base + "/healthz", method="POST", body=b"")
    assert code == 405 and headers["Allow"] == "GET"
    assert call(base + "/healthz", method="HEAD")[:2] == (200, "")
    assert call(base + "/healthz", method="DELETE")[0] == 405


def test_reconcile_now_needs_its_own_bearer_token(server: tuple[Loop, str]) -> None:
    rec, base = server
    assert call(base + "/reconcile", method="POST", body=b"")[0] == 401
    for wrong in (GITHUB, GITLAB, b"nope"):
        auth = {"Authorization": f"Bearer {wrong.decode()}"}
        assert call(base + "/reconcile", method="POST", body=b"", headers=auth)[0] == 401
    auth = {"Authorization": f"Bearer {RECONCILE.decode()}"}
    assert call(base + "/reconcile", method="POST", body=b"", headers=auth)[0] == 202
    assert rec.status().pending == ("manual",)


def test_without_secrets_hooks_and_reconcile_are_disabled() -> None:
    rec, base = make(SecretFiles())
    try:
        for provider in ("github", "gitlab", "gitea"):
            code, text, _ = call(base + f"/hooks/{provider}", method="POST", body=BODY, headers={})
            assert code == 404 and "not configured" in text
        assert rec.status().pending == ()
        assert call(base + "/reconcile", method="POST", body=b"")[0] == 404
        assert call(base + "/metrics")[0] == 200  # open without a metrics token
    finally:
        assert rec.http is not None
        rec.http.close()


def test_a_metrics_token_guards_metrics_and_readyz_but_not_healthz(tmp_path: Path) -> None:
    rec, base = make(secret_files(tmp_path, metrics=METRICS))
    try:
        assert call(base + "/healthz")[0] == 200
        assert call(base + "/metrics")[0] == 401 and call(base + "/readyz")[0] == 401
        auth = {"Authorization": f"Bearer {METRICS.decode()}"}
        assert call(base + "/metrics", headers=auth)[0] == 200
        assert call(base + "/readyz", headers=auth)[:2] == (503, NOT_STARTED + "\n")
    finally:
        assert rec.http is not None
        rec.http.close()


def test_readyz_before_and_after_the_first_success(tmp_path: Path) -> None:
    gate = threading.Event()

    def tick(request: TickRequest) -> TickResult:
        assert gate.wait(5)
        return TickResult(ok=True, changed=False)

    rec = Loop(LoopSettings(listen="127.0.0.1:0"), tick)
    address = rec.start_http()
    assert address is not None
    base = f"http://127.0.0.1:{address[1]}"
    thread = threading.Thread(target=rec.run, daemon=True)
    thread.start()
    try:
        assert call(base + "/readyz")[:2] == (503, NOT_STARTED + "\n")
        gate.set()
        deadline = time.monotonic() + 3
        while rec.status().ticks == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert call(base + "/readyz")[:2] == (200, READY + "\n")
        assert 'swarm_secrets_ticks_total{result="success"} 1.0' in call(base + "/metrics")[1]
    finally:
        rec.stop()
        thread.join(5)
    assert not thread.is_alive() and rec.http is not None


def test_readyz_names_held_back_sets_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec, base = make(secret_files(tmp_path))
    try:
        reason = with_class(SETS_FAILING, "manifest") + "\nfailing sets: books (manifest)"
        monkeypatch.setattr(rec, "readiness", lambda: (False, reason))
        assert call(base + "/readyz")[:2] == (503, reason + "\n")
        # anything else (a failure's own text, a set name no set may have) never gets out
        leaky = with_class(SETS_FAILING, "manifest") + "\nfailing sets: books.yaml:3 token=abc (manifest)"
        monkeypatch.setattr(rec, "readiness", lambda: (False, leaky))
        assert call(base + "/readyz")[:2] == (503, "not ready\n")
    finally:
        assert rec.http is not None
        rec.http.close()


# --- many slow clients, against the service in a process of its own ------------------------------

SERVER = textwrap.dedent(
    """
    import sys
    from reconciler.daemon.loop import Loop, LoopSettings
    from reconciler.daemon.types import TickResult
    settings = LoopSettings(listen="127.0.0.1:0", http_timeout=float(sys.argv[1]), interval=3600)
    loop = Loop(settings, lambda request: TickResult(ok=True, changed=False))
    print(loop.start_http()[1], flush=True)
    sys.exit(loop.run())
    """
)


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_300_slow_clients_do_not_starve_healthz_nor_grow_threads_or_memory() -> None:
    deadline = 4.0
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(deadline)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        proc.stdout.close()
        base = f"http://127.0.0.1:{port}"
        assert call(base + "/healthz")[0] == 200
        before = _proc_status(proc.pid)

        # 300 clients that each send a request head a few bytes at a time and never finish it
        started = time.monotonic()
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
            clients.append(sock)
        for _ in range(3):
            for sock in clients:
                sock.sendall(b"X-Slow: 1\r\n")
            t0 = time.monotonic()
            assert call(base + "/healthz")[:2] == (200, "ok\n")
            assert time.monotonic() - t0 < 1.0, "/healthz took longer than 1 s beside 300 slow clients"
            time.sleep(0.3)
        during = _proc_status(proc.pid)
        assert int(during["Threads"]) <= int(before["Threads"])  # no thread per connection
        grown_kib = int(during["VmRSS"].split()[0]) - int(before["VmRSS"].split()[0])
        print(f"threads {before['Threads']} -> {during['Threads']}, RSS +{grown_kib} KiB")
        assert grown_kib < 32 * 1024, f"RSS grew by {grown_kib} KiB for 300 connections"

        # the whole-request deadline: every slow client is cut off, however busy it keeps itself
        for sock in clients:
            sock.settimeout(max(0.1, started + deadline + 5 - time.monotonic()))
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                assert sock.recv(1024) == b""
            except (ConnectionResetError, BrokenPipeError):
                pass
        assert call(base + "/healthz")[0] == 200
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        assert proc.wait(10) == 0
