"""gitsync against real git: a bare repository in tmp, and a local HTTP server for the token case; and
``run``'s refusals of ssh without a pinned host key and of URLs with user info."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.daemon.gitsync import GitSettings, GitSync, default_state_dir, ensure_private_dir, mask_url
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
    co.chmod(0o700)  # a checkout folder must be private (the sync refuses anything else)
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
    (tmp_path / "co").mkdir(mode=0o700)
    (tmp_path / "co" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty and not a git checkout"):
        GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co")).sync()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"url": f"https://user:{TOKEN}@github.com/o/r.git"}, "contains user info"),
        ({"url": f"https://{TOKEN}@github.com/o/r.git"}, "contains user info"),
        ({"url": f"HTTP://x-access-token:{TOKEN}@127.0.0.1/o/r.git"}, "contains user info"),
        ({"url": "git@github.com:o/r.git"}, "give the server's host key with --git-known-hosts-file"),
        ({"url": "ssh://git@github.com/o/r.git"}, "--git-accept-new-host-key trusts whoever"),
        ({"url": "https://github.com/o/r.git", "accept_new": True}, "for ssh URLs only"),
        ({"ref": "-uploadpack=evil"}, "not a branch"),
        ({"ref": "main:refs/heads/x"}, "not a branch"),
        ({"ref": "a..b"}, "not a branch"),
        ({"path": "../etc"}, "inside the repository"),
        ({"path": "/etc"}, "inside the repository"),
        ({"url": "git@github.com:o/r.git", "token": True}, "needs an https"),
        ({"url": "http://git.example.com/o/r.git", "token": True}, "plain http"),
        ({"url": "https://github.com/o/r.git", "key_mode": 0o600}, "needs an ssh URL"),
        ({"url": "git@github.com:o/r.git", "key_mode": 0o644, "accept_new": True}, "readable by others"),
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
        accept_new_host_key=kw.get("accept_new", False),
    )
    with pytest.raises(ConfigError, match=message) as info:
        GitSync(settings)
    assert TOKEN not in str(info.value)
    assert not (tmp_path / "co").exists()  # refused before anything was created


def test_ssh_command(tmp_path: Path) -> None:
    key = tmp_path / "deploy key"
    key.write_text("key")
    key.chmod(0o400)
    known = tmp_path / "known_hosts"
    known.write_text("")
    url = "ssh://git@git.example.com/o/r.git"
    strict = GitSettings(url=url, checkout_dir=tmp_path / "co", ssh_key_file=key, known_hosts_file=known)
    assert GitSync(strict).environment()["GIT_SSH_COMMAND"] == (
        f"ssh -o BatchMode=yes -i '{key}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no"
    )
    # no deploy key (an agent, say): still exactly the pinned host keys
    pinned = GitSettings(
        url="git@git.example.com:o/r.git", checkout_dir=tmp_path / "co", known_hosts_file=known
    )
    assert "StrictHostKeyChecking=yes" in GitSync(pinned).environment()["GIT_SSH_COMMAND"]
    learned = tmp_path / "learned"
    unsafe = GitSettings(
        url=url, checkout_dir=tmp_path / "co", accept_new_host_key=True, learned_hosts_file=learned
    )
    assert GitSync(unsafe).environment()["GIT_SSH_COMMAND"] == (
        f"ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={learned}"
    )


def test_mask_url() -> None:
    assert mask_url(f"https://{TOKEN}@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert mask_url(f"https://u:{TOKEN}@h/o/r?x={TOKEN}") == "https://***@h/o/r?***"
    assert mask_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert mask_url("ssh://git@h/o/r.git") == "ssh://git@h/o/r.git"
    assert mask_url(f"ssh://git:{TOKEN}@h/o/r.git") == "ssh://git:***@h/o/r.git"


def test_the_checkout_folder_is_private(tmp_path: Path) -> None:
    created = tmp_path / "state" / "checkout"
    ensure_private_dir(created)
    assert created.is_dir() and created.stat().st_mode & 0o777 == 0o700
    ensure_private_dir(created)  # checked again: fine
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(ConfigError, match="open to other users"):
        ensure_private_dir(loose)
    link = tmp_path / "link"
    link.symlink_to(created)
    with pytest.raises(ConfigError, match="not a folder"):
        ensure_private_dir(link)
    if os.geteuid() == 0:  # someone else's folder (needs root to make one)
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            ensure_private_dir(foreign)


def test_a_checkout_swapped_after_the_start_is_refused(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"a.yaml": "1"})
    sync = GitSync(GitSettings(url=remote.url, checkout_dir=tmp_path / "co"))
    sync.sync()
    (tmp_path / "co").chmod(0o777)
    with pytest.raises(ConfigError, match="open to other users"):
        sync.sync()


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/swarm-secrets")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "swarm-secrets"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "swarm-secrets"


# --- `run` refuses before starting anything ---------------------------------------------------------


def test_run_with_an_ssh_url_and_no_known_hosts_exits_at_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--git-url", "git@git.example.com:ops/manifests.git",
         "--state-dir", str(tmp_path / "state"), "--listen", "off", "--no-events"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--git-known-hosts-file" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1  # one line
    assert not (tmp_path / "state" / "checkout").exists()


def test_run_refuses_a_url_with_a_token_and_the_token_goes_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def spy_run(argv: list[str], *args: Any, **kw: Any) -> Any:
        children.append(list(argv))
        return real_run(argv, *args, **kw)

    def spy_popen(argv: list[str], *args: Any, **kw: Any) -> Any:
        children.append(list(argv))
        return real_popen(argv, *args, **kw)

    monkeypatch.setattr(subprocess, "run", spy_run)
    monkeypatch.setattr(subprocess, "Popen", spy_popen)
    state = tmp_path / "state"
    for url in (f"https://{TOKEN}@github.com/o/r.git", f"https://x-access-token:{TOKEN}@github.com/o/r.git"):
        result = CliRunner().invoke(
            main,
            ["--log-level", "debug", "run", "--git-url", url, "--state-dir", str(state), "--listen", "off"],
            catch_exceptions=False,
        )
        assert result.exit_code == 1
        assert "contains user info" in result.output and "--git-token-file" in result.output
        assert TOKEN not in result.output
    assert not any(TOKEN in arg for argv in children for arg in argv)
    assert not children  # refused before any git ran
    assert not any(TOKEN in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


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
    assert sync.scrub(text) == "fatal: *** https://***@h/o/r"  # all user info of an https URL
