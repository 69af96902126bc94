"""Run ``docker stack deploy`` for a stack, with the override that pins its managed secrets.

The docker CLI is the authority on compose: it reads the user's compose files, merges them with the
override (``core/stacks.override_document``, written to a private temporary file and removed after),
interpolates, converts and writes every service of the stack, each once. This module only runs it:

* **Which CLI.** ``--docker-cli PATH``, else ``docker`` on ``PATH`` (the image ships Debian's at
  ``/usr/bin/docker``); a missing one is a :class:`~reconciler.errors.ConfigError` before anything
  changes (:func:`find_docker_cli`).
* **Which engine.** The one swarm-secrets itself talks to: the child gets ``DOCKER_HOST`` set to it
  (and the TLS variables), whatever a docker context says.
* **Its environment** is built, never inherited whole: the compose files are interpolated from the
  stack's variables (a Stack manifest's ``spec.env``; for ``stack deploy``, the caller's environment
  without the reserved variables: the tool's keys and the credentials of the programs it runs), plus
  what the CLI needs to run and reach the engine. No value of a managed secret is ever handed to
  it: the override names versions that exist in the swarm already.
* **Its output is filtered, never echoed.** docker does not print secret values, and it never sees
  ours, but its messages can quote the compose files and their variables (an interpolation or
  ``env_file`` error quotes the line). Lines of a known, names-only shape (``Creating service
  shop_db``, ``Updating service shop_db (id: …)``) are passed on; the rest is counted, and a failure
  is one line naming the stack, the exit code and, for a few known shapes, what went wrong.
* **Exactly what was planned.** The compose files are read again just before the deploy and their
  digest compared with the plan's; if they changed, nothing is run (:class:`ComposeChanged`).

Nothing here decides anything: the executor calls :meth:`DockerCli.deploy` for an approved
:class:`~reconciler.core.plan.DeployStack` and watches the rollouts itself.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.guard import reserved_env
from reconciler.core.stacks import StackSpec
from reconciler.display import count
from reconciler.errors import ConfigError, SwarmSecretsError

log = logging.getLogger(__name__)

__all__ = ["ComposeChanged", "DeployReport", "DockerCli", "cli_environment", "find_docker_cli"]

CLI_VARIABLES = (
    "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "SSH_AUTH_SOCK", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH", "DOCKER_API_VERSION",
)  # fmt: skip
"""What the docker CLI needs from this process to run and to reach the engine (ssh hosts need the
agent and ``~/.ssh``; TLS hosts the certificates); nothing else of this process reaches it."""

DEPLOY_TIMEOUT = 600.0
"""Seconds ``docker stack deploy`` may take (it only writes specs: seconds even for large stacks)."""

_SHOWN = tuple(
    re.compile(pattern)
    for pattern in (
        r"Creating (network|secret|config|service) [\w.-]+",
        r"Updating service [\w.-]+ \(id: \w+\)",
        r"Removing (service|network|secret|config) [\w.-]+",
        r"Ignoring unsupported options: [\w, .-]+",
        r"Since --detach=false was not specified, tasks will be (created|updated) in the background\.",
        r"In a future release, --detach=false will become the default\.",
    )
)
"""Lines of docker's output that name objects only: passed on as they are."""

_KNOWN_ERRORS = tuple(
    re.compile(pattern)
    for pattern in (
        r"failed to (create|update|remove) (service|network|secret|config) [\w.-]+",
        r"(service \"?[\w.-]+\"?:? )?undefined (secret|config|network|volume) \"?[\w.-]+\"?",
        r"(secret|config|network) not found: [\w.-]+",
        r"network \"?[\w.-]+\"? is declared as external, but (could not be found|is not in the right scope)",
        r"unsupported Compose file version: [\w.]+",
        r"version mismatched between two composefiles : [\w.]+ and [\w.]+",
        r"this node is not a swarm manager\.?[^:]*",
        r"Cannot connect to the Docker daemon at [\w:/.+-]+\.?",
    )
)
"""What of a failure's message is shown: its start up to the names (an engine's reason, or an
interpolation's, can quote the compose files)."""


class ComposeChanged(SwarmSecretsError):
    """The compose files of a stack changed between the plan and its deploy: nothing was deployed."""

    transient = True


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployReport:
    shown: tuple[str, ...] = ()
    """docker's lines that were passed on (names only)."""
    hidden: int = 0
    """docker's other lines: not shown, as they can quote the compose files."""


def find_docker_cli(given: str | None = None) -> str:
    """The docker CLI to run: ``given`` (``--docker-cli``), else ``docker`` on ``PATH``."""
    if given:
        path = shutil.which(given)
        if path is None:
            raise ConfigError(f"--docker-cli {given}: no such executable; give the path of the docker CLI")
        return path
    found = shutil.which("docker")
    if found is None:
        raise ConfigError(
            "the docker CLI was not found on PATH, and deploying a stack runs `docker stack deploy`: install "
            "it (Debian: docker.io or docker-ce-cli) or give its path with --docker-cli (the image has it)"
        )
    return found


def cli_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """For ``stack deploy``: the caller's environment without the reserved variables (the tool's keys
    and the credentials of the programs it runs), which a compose file could otherwise interpolate
    into a service's spec."""
    return {k: v for k, v in environ.items() if reserved_env(k) is None}


class DockerCli:
    """``docker stack deploy`` against one engine (the one swarm-secrets is connected to)."""

    def __init__(self, cli: str, *, host: str | None, environ: Mapping[str, str] | None = None) -> None:
        self.cli = cli
        self.host = host
        self._environ = dict(os.environ if environ is None else environ)

    def _environment(self, stack: StackSpec) -> dict[str, str]:
        env = {k: self._environ[k] for k in CLI_VARIABLES if k in self._environ}
        env.update(stack.environment)
        if self.host:
            env["DOCKER_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        return env

    def argv(self, stack: StackSpec, override: Path) -> list[str]:
        argv = [self.cli, "stack", "deploy"]
        for file in stack.files:
            argv += ["-c", str(file)]
        argv += ["-c", str(override)]
        if stack.prune:
            argv.append("--prune")
        if stack.resolve_image:
            argv += ["--resolve-image", stack.resolve_image]
        return [*argv, *stack.docker_args, stack.name]

    def deploy(
        self, stack: StackSpec, override: Mapping[str, Any], *, timeout: float = DEPLOY_TIMEOUT
    ) -> DeployReport:
        """Deploy ``stack`` with ``override``; :class:`ComposeChanged` when its files changed since the
        plan, another :class:`SwarmSecretsError` when docker failed (one line, names only)."""
        self._check_unchanged(stack)
        folder = tempfile.mkdtemp(prefix="swarm-secrets-stack-")  # mode 0700
        try:
            path = Path(folder) / f"{stack.name}.override.yml"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write("# written by swarm-secrets for this deploy: version names only\n")
                yaml.safe_dump(dict(override), stream, sort_keys=False, default_flow_style=False)
            argv = self.argv(stack, path)
            log.info("docker stack deploy of %s (%s)", stack.name, " ".join(argv[3:]))
            try:
                done = subprocess.run(
                    argv,
                    env=self._environment(stack),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except FileNotFoundError:
                raise ConfigError(f"cannot run the docker CLI {self.cli}: it is not there any more") from None
            except subprocess.TimeoutExpired:
                raise SwarmSecretsError(
                    f"docker stack deploy of stack '{stack.name}' did not finish within {timeout:.0f} s"
                ) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        lines = [
            line.strip()
            for line in (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace").splitlines()
        ]
        lines = [line for line in lines if line]
        shown = tuple(line for line in lines if any(p.fullmatch(line) for p in _SHOWN))
        hidden = len(lines) - len(shown)
        for line in shown:
            log.info("docker: %s", line)
        if done.returncode != 0:
            raise SwarmSecretsError(_failure(stack, done.returncode, lines))
        if hidden:
            log.info(
                "docker stack deploy of %s: %s of output not shown (it can quote the compose files)",
                stack.name,
                count(hidden, "more line"),
            )
        return DeployReport(shown=shown, hidden=hidden)

    @staticmethod
    def _check_unchanged(stack: StackSpec) -> None:
        """The files as they are now must have the digest the plan was made with."""
        try:
            raws = [(str(f), f.read_bytes()) for f in stack.files]
        except OSError as exc:
            raise ComposeChanged(
                f"the compose files of stack '{stack.name}' cannot be read again ({exc.strerror or exc}); "
                "plan again"
            ) from None
        if stack.digest(raws) != stack.content:
            raise ComposeChanged(
                f"the compose files of stack '{stack.name}' changed since the plan; nothing was deployed: "
                "plan again"
            )


def _failure(stack: StackSpec, code: int, lines: list[str]) -> str:
    known = []
    for line in lines:
        text = line.removeprefix("Error response from daemon: ").removeprefix("error: ")
        for pattern in _KNOWN_ERRORS:
            found = pattern.match(text)
            if found:
                known.append(found.group(0))
                break
    what = f": {'; '.join(dict.fromkeys(known))}" if known else ""
    return (
        f"docker stack deploy of stack '{stack.name}' failed (exit {code}){what}; the rest of docker's "
        "message is not shown, as it can quote the compose files and their variables: run `docker stack "
        "deploy` with the same files to see it"
    )
