"""Webhook verification, the secrets of the HTTP side and delivery de-duplication (all pure)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from reconciler.daemon import webhooks
from reconciler.daemon.webhooks import BadDeliveryId, DeliveryLog, SecretFiles, delivery_id, load_secrets
from reconciler.errors import ConfigError

SECRET = b"It's a Secret to Everybody"
BODY = b'{"ref": "refs/heads/main"}'


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


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content + b"\n")
    return path


def test_one_secret_per_purpose(tmp_path: Path) -> None:
    files = SecretFiles(
        github=write(tmp_path, "gh", b"github-hmac-key"),
        gitlab=write(tmp_path, "gl", b"gitlab-token"),
        gitea=write(tmp_path, "gt", b"github-hmac-key"),  # two HMAC keys may be one secret: never sent
        reconcile=write(tmp_path, "rc", b"reconcile-token"),
    )
    secrets = load_secrets(files)
    assert secrets.hook("github") == secrets.hook("gitea") == b"github-hmac-key"
    assert secrets.hook("gitlab") == b"gitlab-token" and secrets.reconcile == b"reconcile-token"
    assert secrets.metrics is None and secrets.hook("bitbucket") is None
    assert "github-hmac-key" not in repr(secrets) and "token" not in repr(secrets).replace("configured", "")
    assert secrets.configured == ("github", "gitlab", "gitea", "reconcile")


@pytest.mark.parametrize(
    ("token", "other"),
    [("gitlab", "github"), ("reconcile", "gitea"), ("metrics", "reconcile"), ("reconcile", "gitlab")],
)
def test_a_token_sent_in_clear_never_doubles_as_another_secret(
    tmp_path: Path, token: str, other: str
) -> None:
    shared = write(tmp_path, "shared", b"the-same-secret")
    with pytest.raises(ConfigError, match="hold the same secret") as info:
        load_secrets(SecretFiles(**{token: shared, other: shared}))
    assert "the-same-secret" not in str(info.value)
    assert webhooks.OPTION_NAMES[token] in str(info.value)


def test_delivery_ids_per_forge() -> None:
    def headers(**values: str) -> dict[str, str]:
        return {k.replace("_", "-"): v for k, v in values.items()}

    gh = headers(X_GitHub_Delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert delivery_id("github", gh.get) == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    gl = headers(Idempotency_Key="f5a5", X_Gitlab_Event_UUID="13792a34")
    assert delivery_id("gitlab", gl.get) == "f5a5"
    assert delivery_id("gitlab", headers(X_Gitlab_Event_UUID="13792a34").get) == "13792a34"
    assert delivery_id("gitea", headers(X_Gitea_Delivery="abc").get) == "abc"
    assert delivery_id("gitea", headers().get) is None
    for bad in ("", "../../etc", "x" * 200, "a b", "é"):
        with pytest.raises(BadDeliveryId):
            delivery_id("github", headers(X_GitHub_Delivery=bad).get)


def test_delivery_log_remembers_for_a_window_and_a_bounded_number() -> None:
    now = [0.0]
    log = DeliveryLog(window=60, capacity=3, clock=lambda: now[0])
    assert log.first_time("github", "a") and not log.first_time("github", "a")
    assert log.first_time("gitea", "a")  # per forge
    now[0] = 61
    assert log.first_time("github", "a")  # the window is over
    for name in ("b", "c", "d"):
        assert log.first_time("github", name)
    assert log.first_time("github", "a") is True  # pushed out by capacity: the oldest go first
