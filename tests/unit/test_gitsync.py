"""gitsync against real git: a bare repository in tmp, and a local HTTP server for the token case."""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.gitsync import GitSettings, GitSync
from reconciler.errors import ConfigError, GitError

TOKEN = "ghp_s3cr3tT0kenValue1234567890"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Remote:
    """A bare repository plus a working copy that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "origin.git"
        self.work = root / "work"
        self.bare.mkdir(parents=True)
        self.work.mkdir(parents=True)
        git(self.bare, "init", "--quiet", "--bare")
        git(self.work, "init", "--quiet")
        self.url = self.bare.as_uri()

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", self.url, "HEAD:refs/heads/main")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def test_fetch_twice_follows_the_branch(remote: Remote, tmp_path: Path) -> None:
    first = remote.commit({"manifests/app.yaml": "v: 1\n"})
    sync = GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co", path="manifests"))
    checkout = sync.sync()
    assert checkout.revision == first
    assert checkout.manifests_dir == tmp_path / "co" / "manifests"
    assert (checkout.manifests_dir / "app.yaml").read_text() == "v: 1\n"
    (checkout.manifests_dir / "stray.yaml").write_text("local junk")
    (checkout.manifests_dir / "app.yaml").write_text("edited locally")

    second = remote.commit({"manifests/app.yaml": "v: 2\n"})
    again = sync.sync()
    assert again.revision == second != first
    assert (again.manifests_dir / "app.yaml").read_text() == "v: 2\n"
    assert not (again.manifests_dir / "stray.yaml").exists()  # exactly the commit, nothing else
    # the whole history is there, so the revision check can tell older from newer
    assert git(tmp_path / "co", "rev-parse", "--is-shallow-repository") == "false"
    assert git(tmp_path / "co", "merge-base", "--is-ancestor", first, second) == ""


def test_a_shallow_checkout_left_by_an_older_version_is_completed(remote: Remote, tmp_path: Path) -> None:
    first = remote.commit({"a.yaml": "1"})
    second = remote.commit({"a.yaml": "2"})
    co = tmp_path / "co"
    subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", "main", remote.url, str(co)], check=True)
    assert git(co, "rev-parse", "--is-shallow-repository") == "true"
    third = remote.commit({"a.yaml": "3"})
    checkout = GitSync(GitSettings(url=remote.url, checkout_dir=co)).sync()
    assert checkout.revision == third
    assert git(co, "rev-parse", "--is-shallow-repository") == "false"
    assert git(co, "rev-list", "--count", "HEAD") == "3" and first != second


def test_tag_ref(remote: Remote, tmp_path: Path) -> None:
    tagged = remote.commit({"a.yaml": "1"})
    git(remote.work, "tag", "-a", "-m", "release", "v1.0")
    git(remote.work, "push", "--quiet", remote.url, "refs/tags/v1.0")
    remote.commit({"a.yaml": "2"})
    checkout = GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co", ref="v1.0")).sync()
    assert checkout.revision == tagged
    assert (checkout.manifests_dir / "a.yaml").read_text() == "1"


def test_missing_ref_is_a_clear_permanent_error(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "1"})
    sync = GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co", ref="nope"))
    with pytest.raises(GitError, match="ref 'nope' not found") as info:
        sync.sync()
    assert info.value.transient is False and "\n" not in str(info.value)


def test_missing_path_and_changed_url(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "1"})
    with pytest.raises(GitError, match="--git-path 'deploy' is not a folder"):
        GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co", path="deploy")).sync()
    other = Remote(tmp_path / "other")
    rev = other.commit({"b.yaml": "2"})
    checkout = GitSync(GitSettings(url=other.url, checkout_dir=tmp_path / "co")).sync()
    assert checkout.revision == rev and (checkout.manifests_dir / "b.yaml").exists()


def test_refuses_a_non_empty_folder(remote: Remote, tmp_path: Path) -> None:
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty and not a git checkout"):
        GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co")).sync()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"url": f"https://user:{TOKEN}@github.com/o/r.git"}, "contains a password"),
        ({"ref": "-uploadpack=evil"}, "not a branch"),
        ({"ref": "main:refs/heads/x"}, "not a branch"),
        ({"ref": "a..b"}, "not a branch"),
        ({"path": "../etc"}, "inside the repository"),
        ({"path": "/etc"}, "inside the repository"),
        ({"url": "git@github.com:o/r.git", "token": True}, "needs an https"),
        ({"url": "http://git.example.com/o/r.git", "token": True}, "plain http"),
        ({"url": "https://github.com/o/r.git", "key_mode": 0o600}, "needs an ssh URL"),
        ({"url": "git@github.com:o/r.git", "key_mode": 0o644}, "readable by others"),
    ],
)
def test_settings_validation(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    key = tmp_path / "id"
    key.write_text("key")
    key.chmod(kw.get("key_mode", 0o600))
    settings = GitSettings(
        url=kw.get("url", "https://github.com/o/r.git"),
        checkout_dir=tmp_path / "co",
        ref=kw.get("ref", "main"),
        path=kw.get("path", "."),
        token_file=token_file if kw.get("token") else None,
        ssh_key_file=key if "key_mode" in kw else None,
    )
    with pytest.raises(ConfigError, match=message) as info:
        GitSync(settings)
    assert TOKEN not in str(info.value)


def test_ssh_command(tmp_path: Path) -> None:
    key = tmp_path / "deploy key"
    key.write_text("key")
    key.chmod(0o400)
    known = tmp_path / "known_hosts"
    known.write_text("")
    url = "ssh://git@git.example.com/o/r.git"
    env = GitSync(GitSettings(url=url, checkout_dir=tmp_path / "co", ssh_key_file=key)).environment()
    assert env["GIT_SSH_COMMAND"] == (
        f"ssh -i '{key}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
    )
    strict = GitSettings(url=url, checkout_dir=tmp_path / "co", ssh_key_file=key, known_hosts_file=known)
    env = GitSync(strict).environment()
    assert f"-o UserKnownHostsFile={known}" in env["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    _Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/o/r.git"
    server.shutdown()
    server.server_close()


def test_token_goes_in_a_header_never_in_argv_config_or_errors(
    tmp_path: Path, http_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kw: Any) -> Any:
        calls.append((argv, kw["env"]))
        return real_run(argv, **kw)

    monkeypatch.setattr("reconciler.daemon.gitsync.subprocess.run", spy)
    sync = GitSync(GitSettings(url=http_server, checkout_dir=tmp_path / "co", token_file=token_file))
    with pytest.raises(GitError) as info:
        sync.sync()

    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert _Recorder.seen and _Recorder.seen[0] == f"Basic {basic}"  # the server got the token
    assert calls, "git was not run"
    for argv, env in calls:
        assert not any(TOKEN in arg or basic in arg for arg in argv)
        assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    config = (tmp_path / "co" / ".git" / "config").read_text()
    assert TOKEN not in config and basic not in config and http_server in config
    assert TOKEN not in str(info.value) and basic not in str(info.value)
    assert info.value.transient is False  # 404: retrying will not help


def test_scrub(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    sync = GitSync(GitSettings(url="https://h/o/r", checkout_dir=tmp_path, token_file=token_file))
    text = f"fatal: {TOKEN} https://u:pw@h/o/r"
    assert sync.scrub(text) == "fatal: *** https://u:***@h/o/r"
