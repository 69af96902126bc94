"""Keep a local checkout of the manifests' git repository at a branch or tag, one fetch a tick.

:meth:`GitSync.sync` brings ``checkout_dir`` to the newest commit of ``ref`` and returns the commit
sha and the manifests folder in it::

    first run   git init; git remote add origin <url>
    every run   git fetch --no-tags origin <ref>     (+ --unshallow once for a shallow older checkout)
                git checkout --force --detach FETCH_HEAD; git clean -ffdx
                git rev-parse HEAD

The fetch brings the ref's whole history (the first time; later fetches only what is new), not one
commit: the revision check (``manifests/revision.py``) must be able to tell whether the commit the
swarm records is newer than the one fetched, which needs the commits between them.

The checkout is disposable and level-based like everything else: local edits and untracked files are
thrown away on every sync, so the manifests are exactly the commit's.

git's output is never echoed or logged: a failure becomes a fixed message chosen by recognised
patterns (:data:`_GIT_FAILURES`). Credentials never reach argv (visible to every user in ``ps``), the
remote URL written to ``.git/config`` or an error message:

* **https token** (``token_file``): sent as ``Authorization: Basic base64(<username>:<token>)`` through
  ``http.extraHeader`` set in the *environment* of the git child (``GIT_CONFIG_COUNT`` /
  ``GIT_CONFIG_KEY_0`` / ``GIT_CONFIG_VALUE_0``, git ≥ 2.31). The file is re-read on every sync so a
  rotated token is picked up. Refused over plain http except to a loopback address.
* **ssh**: no trust on first use. An ssh URL needs ``known_hosts_file``: ssh then accepts exactly the
  host keys listed there (``StrictHostKeyChecking=yes``, no global known_hosts, no learning). The only
  alternative is the explicit, unsafe ``accept_new_host_key`` (whoever answers first is trusted; the key
  learned is kept in ``learned_hosts_file`` and pinned from then on). A deploy key (``ssh_key_file``) is
  passed with ``-i KEY -o IdentitiesOnly=yes``; ``BatchMode=yes`` always.
* **URLs**: user info in an http(s) URL (``https://token@host/…``, ``https://user:pw@…``) is refused
  outright: git would keep it in ``.git/config`` and put it in argv. Every message shows URLs through
  :func:`mask_url`.

**The checkout folder** is private: created with mode 0700, and at start and at every sync it must be
a real folder (no symlink) owned by this process's user that nobody else may enter
(:func:`ensure_private_dir`); anything else is refused, never "fixed", since someone else may have
planted hooks or configuration in it. By default it lives in a state directory
(:func:`default_state_dir`), not at a guessable path under ``/tmp``.

This module and ``sources/sops.py`` are the only users of :mod:`subprocess` in the package. It must not
read or parse manifests (the tick does) and must not decide anything about the swarm.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from reconciler.errors import ConfigError, GitError

_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]*")
# Inherited variables that would redirect git to another repository or inject configuration next to
# (or instead of) ours.
_STRIP_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_CONFIG_PARAMETERS",
    "GIT_SSH_COMMAND",
    "GIT_SSH",
    "GIT_ASKPASS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_NAMESPACE",
)


_GIT_FAILURES: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    # (patterns in git's output, lower case) -> (fixed reason, transient?); first match wins
    (("couldn't find remote ref",), "ref {ref!r} not found in the repository", False),
    (
        ("host key verification failed", "remote host identification has changed"),
        "the server's ssh host key is unknown or changed: check --git-known-hosts-file",
        False,
    ),
    (
        ("permission denied (publickey", "permission denied, please try again"),
        "the server refused the ssh key: give the deploy key read access to the repository",
        False,
    ),
    (
        ("authentication failed", "could not read username", "invalid username or password", "access denied"),
        "the server refused the credentials: check --git-token-file and the token's access",
        False,
    ),
    (
        ("repository not found", "does not appear to be a git repository", "not found"),
        "repository not found, or no read access: check --git-url and the credentials",
        False,
    ),
    (
        ("could not resolve host", "name or service not known", "temporary failure in name resolution"),
        "cannot resolve the git server's host name",
        True,
    ),
    (
        ("connection refused", "connection timed out", "network is unreachable", "failed to connect",
         "couldn't connect", "operation timed out", "connection reset", "early eof", "remote end hung up"),
        "cannot reach the git server (network)",
        True,
    ),
    (("certificate", "ssl"), "TLS failed with the git server: check its certificate and CA bundle", False),
)  # fmt: skip
"""How a failed git command is reported: git's own output is never echoed or logged."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GitSettings:
    """Where the manifests live in git and how to reach them (``--git-*`` options)."""

    url: str
    """Remote repository: ``https://host/org/repo.git``, ``ssh://git@host/org/repo.git``,
    ``git@host:org/repo.git`` or ``file:///path``. Must not embed a password or token."""
    checkout_dir: Path
    """Local working copy the tool owns; created when missing, must be empty or a previous checkout."""
    ref: str = "main"
    """Branch, tag or full ref (``refs/heads/x``) to follow; the newest commit is used each sync."""
    path: str = "."
    """Folder with the manifests, relative to the repository root."""
    token_file: Path | None = None
    """File holding an https access token (GitHub/Gitea token, GitLab PAT or deploy token)."""
    token_username: str = "x-access-token"
    """User name paired with the token in Basic auth; GitHub wants ``x-access-token``, GitLab accepts
    any non-empty name for a PAT (``oauth2`` for OAuth tokens), Gitea any name."""
    ssh_key_file: Path | None = None
    """Private deploy key for ssh URLs. ssh refuses a key its owner shares with others: when the
    process runs as the key's owner, mount it with mode 0400."""
    known_hosts_file: Path | None = None
    """known_hosts file for ssh: the only host keys accepted. Required for ssh URLs unless
    ``accept_new_host_key``."""
    accept_new_host_key: bool = False
    """Unsafe: trust whatever host key the ssh server shows first, then pin it in
    ``learned_hosts_file``. For trying things out, never for production."""
    learned_hosts_file: Path | None = None
    """Where ``accept_new_host_key`` keeps the keys it learned; None: ssh's own ~/.ssh/known_hosts."""
    timeout: float = 120.0
    """Seconds one git command may take before it is killed and the sync fails (transient)."""
    git: str = "git"
    """The git executable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkout:
    """The result of one sync."""

    revision: str
    """Full commit sha now checked out."""
    manifests_dir: Path
    """``checkout_dir / path``: the folder to load manifests from."""
    root: Path
    """The checkout's work tree (resolved): every source a manifest names must stay inside it."""


def _is_http(url: str) -> bool:
    return url.lower().startswith(("https://", "http://"))


def _is_ssh(url: str) -> bool:
    if url.lower().startswith("ssh://"):
        return True
    # scp-like syntax: [user@]host:path, with no scheme and no path separator before the colon.
    return "://" not in url and ":" in url.split("/", 1)[0]


def mask_url(url: str) -> str:
    """``url`` as messages show it: user info of an http(s) URL (or any password) and any query string
    replaced by ``***``; ssh URLs keep their user name (``git@``), which is not a secret."""
    masked = re.sub(r"(?i)^(https?://)[^/@?#]*@", r"\1***@", url)
    masked = re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:?#]*:)[^/@?#]*@", r"\1***@", masked)
    return re.sub(r"\?.*$", "?***", masked) if "://" in masked else masked


def default_state_dir() -> Path:
    """``/var/lib/swarm-secrets`` for root, else ``$XDG_STATE_HOME/swarm-secrets`` (default
    ``~/.local/state/swarm-secrets``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/swarm-secrets")
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "swarm-secrets"


def ensure_private_dir(path: Path, what: str = "git checkout folder") -> None:
    """Create ``path`` with mode 0700, or check that it is a folder (not a symlink) owned by this
    process's user that no one else may read or enter; :class:`ConfigError` otherwise."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create it: {exc.strerror}") from exc
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {path} is not a folder (a symlink or a file): remove it or choose another")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{what} {path} belongs to uid {info.st_uid}, not to this process (uid {os.geteuid()}): "
            "someone else could have planted git hooks or configuration in it; remove it or choose a "
            "folder of your own (--state-dir)"
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{what} {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}): make sure "
            "nobody changed it, then `chmod 700` it, or remove it and let swarm-secrets create it"
        )


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GitSync:
    """Fetch and check out ``settings.ref`` into ``settings.checkout_dir``; see the module docstring.

    The constructor validates the settings and raises :class:`ConfigError`; :meth:`sync` raises
    :class:`GitError`. Not thread-safe: one sync at a time (the loop runs one tick at a time).
    """

    def __init__(self, settings: GitSettings) -> None:
        self.settings = settings
        self._validate()

    def _validate(self) -> None:
        s = self.settings
        if not s.url or s.url.startswith("-"):
            raise ConfigError("--git-url must be a repository URL")
        if _is_http(s.url) and "@" in urlsplit(s.url).netloc:
            raise ConfigError(
                f"--git-url {mask_url(s.url)} contains user info (a name or token before '@'), which "
                "git would keep in .git/config and pass in argv: remove it and give the token with "
                "--git-token-file"
            )
        if not _REF_RE.fullmatch(s.ref) or ".." in s.ref or s.ref.endswith(("/", ".lock")):
            raise ConfigError(f"--git-ref {s.ref!r} is not a branch, tag or ref name")
        rel = PurePosixPath(s.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise ConfigError(f"--git-path {s.path!r} must be a folder inside the repository")
        if s.token_file is not None and s.ssh_key_file is not None:
            raise ConfigError("give either --git-token-file or --git-ssh-key-file, not both")
        if s.token_file is not None:
            if not _is_http(s.url):
                raise ConfigError("--git-token-file needs an https:// --git-url")
            if s.url.lower().startswith("http://") and not _loopback(s.url):
                raise ConfigError("refusing to send a git token over plain http: use an https:// URL")
            if not s.token_username or ":" in s.token_username:
                raise ConfigError("the git token user name must be non-empty and contain no ':'")
            self._read_token()
        if s.ssh_key_file is not None:
            if not _is_ssh(s.url):
                raise ConfigError("--git-ssh-key-file needs an ssh URL (ssh://… or git@host:path)")
            try:
                info = s.ssh_key_file.stat()
                mode, owner = info.st_mode, info.st_uid
            except OSError as exc:
                raise ConfigError(f"ssh key file {s.ssh_key_file}: {exc.strerror}") from exc
            # ssh refuses a key that others can read, but only when it is the key's owner (a key
            # mounted root-owned 0444 works for a non-root user): mirror that check exactly.
            if mode & 0o077 and owner == os.getuid():
                raise ConfigError(
                    f"ssh key file {s.ssh_key_file} is readable by others (mode {mode & 0o777:o}), "
                    "which ssh refuses: mount it with mode 0400 or chmod 600 it"
                )
        if _is_ssh(s.url):
            if s.known_hosts_file is None and not s.accept_new_host_key:
                raise ConfigError(
                    f"--git-url {mask_url(s.url)} is an ssh URL: give the server's host key with "
                    "--git-known-hosts-file (e.g. from `ssh-keyscan -t ed25519 HOST`, checked against the "
                    "fingerprint the forge publishes); --git-accept-new-host-key trusts whoever answers "
                    "first and is unsafe"
                )
            if s.known_hosts_file is not None and s.accept_new_host_key:
                raise ConfigError("give either --git-known-hosts-file or --git-accept-new-host-key, not both")
        elif s.known_hosts_file is not None or s.accept_new_host_key:
            raise ConfigError("--git-known-hosts-file and --git-accept-new-host-key are for ssh URLs only")
        if s.known_hosts_file is not None and not s.known_hosts_file.is_file():
            raise ConfigError(f"known_hosts file {s.known_hosts_file} does not exist")
        ensure_private_dir(s.checkout_dir)

    def _read_token(self) -> str:
        assert self.settings.token_file is not None
        try:
            token = self.settings.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"git token file {self.settings.token_file}: cannot read it") from exc
        if not token:
            raise ConfigError(f"git token file {self.settings.token_file} is empty")
        return token

    def _secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a message: the token and its encoded header."""
        if self.settings.token_file is None:
            return ()
        try:
            token = self._read_token()
        except ConfigError:
            return ()
        return token, self._basic(token)

    def _basic(self, token: str) -> str:
        pair = f"{self.settings.token_username}:{token}".encode()
        return base64.b64encode(pair).decode("ascii")

    def environment(self) -> dict[str, str]:
        """The environment every git child runs with (credentials included; never log it)."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if k not in _STRIP_ENV and not k.startswith("GIT_CONFIG_")}
        # Never wait for a password prompt nobody will answer; C locale for stable error texts.
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANGUAGE="C")
        if s.token_file is not None:
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {self._basic(self._read_token())}",
            )
        if _is_ssh(s.url):
            ssh = ["ssh", "-o", "BatchMode=yes"]
            if s.ssh_key_file is not None:
                ssh += ["-i", str(s.ssh_key_file), "-o", "IdentitiesOnly=yes"]
            if s.known_hosts_file is not None:
                # Exactly these keys: not the system-wide list, and nothing learned or updated.
                ssh += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={s.known_hosts_file}"]
                ssh += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no"]
            else:
                ssh += ["-o", "StrictHostKeyChecking=accept-new"]
                if s.learned_hosts_file is not None:
                    ssh += ["-o", f"UserKnownHostsFile={s.learned_hosts_file}"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        return env

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``git <args>``; it never carries a credential."""
        # Detached checkouts are the point here, so the advice is noise.
        return [self.settings.git, "-c", "advice.detachedHead=false", *args]

    def scrub(self, text: str) -> str:
        """``text`` with the token, its Basic header and any URL user info or password replaced by
        ``***``."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        text = re.sub(r"(?i)(https?://)[^/@\s]+@", r"\1***@", text)
        return re.sub(r"(://[^/@\s:]*:)[^@/\s]+@", r"\1***@", text)

    def _git(self, *args: str, env: dict[str, str], what: str) -> str:
        s = self.settings
        try:
            done = subprocess.run(
                self.argv(*args),
                cwd=s.checkout_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=s.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ConfigError(f"git executable {s.git!r} not found: install git") from exc
        except subprocess.TimeoutExpired as exc:
            raise GitError(f"{what}: git took longer than {s.timeout:g}s") from exc
        if done.returncode != 0:
            raise self._error(what, done.returncode, done.stderr)
        return done.stdout.strip()

    def _error(self, what: str, code: int, stderr: str) -> GitError:
        """A fixed message chosen by recognised patterns of git's output, which is never quoted: it
        can carry paths, URLs and, from a hostile repository, text of its choosing."""
        lowered = stderr.lower()
        for patterns, reason, transient in _GIT_FAILURES:
            if any(p in lowered for p in patterns):
                return GitError(f"{what}: {reason.format(ref=self.settings.ref)}", transient=transient)
        return GitError(f"{what}: git failed (exit {code})", transient=True)

    def sync(self) -> Checkout:
        """Fetch ``ref`` and check it out; return the commit and the manifests folder."""
        s = self.settings
        ensure_private_dir(s.checkout_dir)  # again: it must not have been swapped since the start
        env = self.environment()
        where = mask_url(s.url)
        self._prepare(env)
        # A checkout made by an older version fetched one commit deep: complete it once.
        deepen = ("--unshallow",) if (s.checkout_dir / ".git" / "shallow").exists() else ()
        self._git(
            "fetch",
            *deepen,
            "--no-tags",
            "--no-recurse-submodules",
            "--quiet",
            "origin",
            s.ref,
            env=env,
            what=f"git fetch {where} {s.ref}",
        )
        self._git("checkout", "--quiet", "--force", "--detach", "FETCH_HEAD", env=env, what="git checkout")
        self._git("clean", "-ffdxq", env=env, what="git clean")
        revision = self._git("rev-parse", "--verify", "HEAD^{commit}", env=env, what="git rev-parse")
        manifests = s.checkout_dir / s.path
        # A symlink committed at --git-path must not point the loader outside the checkout.
        inside = manifests.resolve().is_relative_to(s.checkout_dir.resolve())
        if not inside or not manifests.is_dir():
            raise GitError(
                f"--git-path {s.path!r} is not a folder at revision {revision[:12]} of {where} {s.ref}",
                transient=False,
            )
        return Checkout(revision=revision, manifests_dir=manifests, root=s.checkout_dir.resolve())

    def _prepare(self, env: dict[str, str]) -> None:
        """Make ``checkout_dir`` a repository whose ``origin`` is ``url`` (stored without credentials)."""
        s = self.settings
        if not (s.checkout_dir / ".git").is_dir():
            if s.checkout_dir.exists() and any(s.checkout_dir.iterdir()):
                raise ConfigError(
                    f"git checkout folder {s.checkout_dir} is not empty and not a git "
                    "checkout: point it at an empty or missing folder"
                )
            try:
                s.checkout_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"git checkout folder {s.checkout_dir}: {exc.strerror}") from exc
            self._git("-c", "init.defaultBranch=main", "init", "--quiet", env=env, what="git init")
            self._git("remote", "add", "origin", s.url, env=env, what="git remote add")
            return
        try:
            current = self._git("config", "--get", "remote.origin.url", env=env, what="git config")
        except GitError:
            current = ""
        if current != s.url:  # --git-url changed since the last run: follow it
            verb = "set-url" if current else "add"
            self._git("remote", verb, "origin", s.url, env=env, what=f"git remote {verb}")
