"""Webhook verification (pure) and the HTTP listener, exercised with real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon import http as webhooks
from reconciler.daemon.loop import Loop, LoopSettings
from reconciler.daemon.types import TickRequest, TickResult
from reconciler.errors import ConfigError

SECRET = b"It's a Secret to Everybody"
BODY = b'{"ref": "refs/heads/main"}'
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an env proxy


def github_sig(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# --- pure verification ---------------------------------------------------------------------------


def test_github_signature() -> None:
    # The example from GitHub's "Validating webhook deliveries" documentation.
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert webhooks.verify_github(b"Hello, World!", expected, SECRET)
    assert webhooks.verify_github(BODY, github_sig(BODY).upper().replace("SHA256=", "sha256="), SECRET)
    assert not webhooks.verify_github(BODY + b" ", github_sig(BODY), SECRET)
    assert not webhooks.verify_github(BODY, github_sig(BODY, b"other"), SECRET)
    assert not webhooks.verify_github(BODY, github_sig(BODY)[7:], SECRET)  # prefix missing
    assert not webhooks.verify_github(BODY, None, SECRET)
    assert not webhooks.verify_github(BODY, "sha256=ü", SECRET)
    assert not webhooks.verify_github(BODY, github_sig(BODY, b""), b"")


def test_gitea_and_gitlab_and_bearer() -> None:
    hexsig = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert webhooks.verify("gitea", BODY, hexsig, SECRET)
    assert not webhooks.verify("gitea", BODY, "sha256=" + hexsig, SECRET)
    assert webhooks.verify("gitlab", BODY, SECRET.decode(), SECRET)
    assert not webhooks.verify("gitlab", BODY, "nope", SECRET)
    assert not webhooks.verify("gitlab", BODY, "", SECRET)
    assert not webhooks.verify("bitbucket", BODY, hexsig, SECRET)
    assert webhooks.verify_bearer(f"Bearer {SECRET.decode()}", SECRET)
    assert not webhooks.verify_bearer(f"Basic {SECRET.decode()}", SECRET)
    assert not webhooks.verify_bearer(None, SECRET)


def test_ping_only_for_github() -> None:
    assert webhooks.is_ping("github", "ping")
    assert not webhooks.is_ping("github", "push")
    assert not webhooks.is_ping("gitea", "ping")


def test_load_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert webhooks.load_secret(path) == SECRET
    path.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        webhooks.load_secret(path)
    with pytest.raises(ConfigError, match="cannot read"):
        webhooks.load_secret(tmp_path / "missing")


def test_parse_listen() -> None:
    assert webhooks.parse_listen(":8080") == ("", 8080)
    assert webhooks.parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert webhooks.parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ConfigError):
        webhooks.parse_listen("localhost")


# --- HTTP ----------------------------------------------------------------------------------------


def ok_tick(request: TickRequest) -> TickResult:
    return TickResult(ok=True, changed=False)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hook-secret"
    path.write_bytes(SECRET + b"\n")
    return path


def make(secret_file: Path | None) -> tuple[Loop, str]:
    settings = LoopSettings(listen="127.0.0.1:0", webhook_secret_file=secret_file, debounce=60)
    rec = Loop(settings, ok_tick)
    address = rec.start_http()
    assert address is not None
    return rec, f"http://127.0.0.1:{address[1]}"


@pytest.fixture
def server(secret_file: Path) -> Iterator[tuple[Loop, str]]:
    rec, base = make(secret_file)
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


def test_github_good_signature_requests_a_tick(server: tuple[Loop, str]) -> None:
    rec, base = server
    headers = {"X-Hub-Signature-256": github_sig(BODY), "X-GitHub-Event": "push"}
    code, text, _ = call(base + "/hooks/github", method="POST", body=BODY, headers=headers)
    assert (code, text) == (202, "accepted\n")
    assert rec.status().pending == ("webhook:github",)
    assert hook_count(rec, "github", "accepted") == 1


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "garbage"])
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


def test_gitlab_token_and_gitea_signature(server: tuple[Loop, str]) -> None:
    rec, base = server
    bad, _, _ = call(base + "/hooks/gitlab", method="POST", body=BODY, headers={"X-Gitlab-Token": "x"})
    good, _, _ = call(
        base + "/hooks/gitlab", method="POST", body=BODY, headers={"X-Gitlab-Token": SECRET.decode()}
    )
    assert (bad, good) == (401, 202)
    hexsig = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    code, _, _ = call(base + "/hooks/gitea", method="POST", body=BODY, headers={"X-Gitea-Signature": hexsig})
    assert code == 202
    assert rec.status().pending == ("webhook:gitlab", "webhook:gitea")


def _raw(base: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.putrequest(method, path)
        for key, val in headers.items():
            conn.putheader(key, val)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_oversized_body_is_413_without_reading_it(server: tuple[Loop, str]) -> None:
    rec, base = server
    # Only the headers are sent: the server must answer from Content-Length alone.
    headers = {"Content-Length": str(1024 * 1024 + 1), "X-Hub-Signature-256": github_sig(b"")}
    code, _ = _raw(base, "POST", "/hooks/github", headers)
    assert code == 413 and rec.status().pending == ()
    deadline = time.monotonic() + 3  # counted once the handler thread is done discarding
    while hook_count(rec, "github", "too_large") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_oversized_body_sent_in_full_still_gets_413(server: tuple[Loop, str]) -> None:
    body = b"x" * (1024 * 1024 + 10)
    code, _, _ = call(
        server[1] + "/hooks/gitea", method="POST", body=body, headers={"X-Gitea-Signature": "0"}
    )
    assert code == 413


def test_missing_content_length_is_411(server: tuple[Loop, str]) -> None:
    code, _ = _raw(server[1], "POST", "/hooks/github", {"X-Hub-Signature-256": github_sig(b"")})
    assert code == 411


def test_health_metrics_and_routing(server: tuple[Loop, str]) -> None:
    _, base = server
    assert call(base + "/healthz")[:2] == (200, "ok\n")
    code, text, headers = call(base + "/metrics")
    assert code == 200 and "swarm_secrets_ticks_total" in text
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert call(base + "/nope")[0] == 404
    code, _, headers = call(base + "/hooks/github")
    assert code == 405 and headers["Allow"] == "POST"
    assert call(base + "/healthz", method="POST", body=b"")[0] == 405
    assert call(base + "/healthz", method="HEAD")[:2] == (200, "")


def test_reconcile_now_needs_the_bearer_token(server: tuple[Loop, str]) -> None:
    rec, base = server
    assert call(base + "/reconcile", method="POST", body=b"")[0] == 401
    auth = {"Authorization": f"Bearer {SECRET.decode()}"}
    assert call(base + "/reconcile", method="POST", body=b"", headers=auth)[0] == 202
    assert rec.status().pending == ("manual",)


def test_without_secret_hooks_are_disabled() -> None:
    rec, base = make(None)
    try:
        code, text, _ = call(base + "/hooks/github", method="POST", body=BODY, headers={})
        assert code == 404 and "no webhook secret file" in text
        assert rec.status().pending == ()
        assert call(base + "/reconcile", method="POST", body=b"")[0] == 404
    finally:
        assert rec.http is not None
        rec.http.close()


def test_readyz_before_and_after_the_first_success(secret_file: Path) -> None:
    gate = threading.Event()

    def tick(request: TickRequest) -> TickResult:
        assert gate.wait(5)
        return TickResult(ok=True, changed=False)

    rec = Loop(LoopSettings(listen="127.0.0.1:0", webhook_secret_file=secret_file), tick)
    address = rec.start_http()
    assert address is not None
    base = f"http://127.0.0.1:{address[1]}"
    thread = threading.Thread(target=rec.run, daemon=True)
    thread.start()
    try:
        assert call(base + "/readyz")[:2] == (503, "not ready: no tick has finished yet\n")
        gate.set()
        deadline = time.monotonic() + 3
        while rec.status().ticks == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert call(base + "/readyz")[:2] == (200, "ready\n")
        assert 'swarm_secrets_ticks_total{result="success"} 1.0' in call(base + "/metrics")[1]
    finally:
        rec.stop()
        thread.join(5)
    assert not thread.is_alive() and rec.http is not None
