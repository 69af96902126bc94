"""The ``swarm-secrets`` click group and what every command shares.

* :func:`handle_errors` is the one place errors become output and exit codes (see ``errors.ExitCode``):
  a ``ProblemsError`` prints one line per problem, another ``SwarmSecretsError`` one ``error:`` line,
  Ctrl-C exits 130, and anything else is a bug: traceback plus a request to report it;
* :data:`manifest_paths` is the ``[PATH]...`` argument (default ``manifests/``);
* the shared option decorators (engine, keys, rollouts, and the trust boundary: ``--policy`` and
  friends, gathered into one :class:`TrustOptions` argument);
* ``--log-level``/``--log-format`` configure logging, here and nowhere else (formatters: ``logs.py``).

Options can also come from the environment: ``SWARM_SECRETS_<OPTION>`` for group options,
``SWARM_SECRETS_<COMMAND>_<OPTION>`` for command options (click's ``auto_envvar_prefix``).

Each command lives in a module of its own in this folder (``validate.py``, ``plan.py``, …) and is a
few lines that call the library: ``@main.command()``, the shared decorators, ``@handle_errors`` last
(closest to the function). ``cli/__init__.py`` imports them all so they register.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from reconciler import __version__, manifests
from reconciler.core.guard import Boundary
from reconciler.engine.lease import LeaseSettings
from reconciler.errors import ExitCode, ProblemsError, SwarmSecretsError
from reconciler.logs import JsonFormatter, TextFormatter

P = ParamSpec("P")
R = TypeVar("R")

BUG_HINT = "this is a bug in swarm-secrets; please report it with the traceback above"
LOG_LEVELS = ("debug", "info", "warning", "error")


# --- shared pieces for every command -----------------------------------------------------------------


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map exceptions from a command body to output and an exit code; the only place that does so."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own control flow and usage errors
        except ProblemsError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            raise click.exceptions.Exit(ExitCode.ERROR) from None
        except SwarmSecretsError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(ExitCode.ERROR) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
        except Exception:
            click.echo(traceback.format_exc().rstrip(), err=True)
            click.echo(BUG_HINT, err=True)
            raise click.exceptions.Exit(ExitCode.ERROR) from None

    return wrapper


def _default_paths(ctx: click.Context, param: click.Parameter, value: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(value) or (manifests.DEFAULT_PATH,)


manifest_paths = click.argument(
    "paths",
    nargs=-1,
    metavar="[PATH]...",
    type=click.Path(path_type=Path),
    callback=_default_paths,
)
"""The manifest files or folders a command reads (folders are searched recursively); default manifests/."""


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str, fmt: str) -> None:
    """Send log records at ``level`` and above to stderr, as text or JSON lines; safe to call again
    (in-process callers such as tests invoke the CLI many times: every earlier handler of ours goes)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


# --- the group and its commands ----------------------------------------------------------------------


@click.group(context_settings={"auto_envvar_prefix": "SWARM_SECRETS", "help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    help="Least severe log messages to show (on stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="Log as text, or as JSON lines for a log collector.",
)
@click.version_option(__version__, prog_name="swarm-secrets", message="%(prog)s %(version)s")
def main(log_level: str, log_format: str) -> None:
    """Declarative GitOps reconciler for Docker Swarm secrets."""
    configure_logging(log_level, log_format)


# --- engine commands: plan, apply, status -------------------------------------------------------------


def engine_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Options of every command that talks to the swarm."""
    fn = click.option(
        "--docker-host",
        envvar=["SWARM_SECRETS_DOCKER_HOST", "DOCKER_HOST"],
        default=None,
        metavar="URL",
        help="Engine of a swarm manager (unix://, tcp:// with the DOCKER_TLS_* "
        "variables, ssh:// with the [ssh] extra). Default: DOCKER_HOST, the docker context, "
        "the local socket.",
    )(fn)
    return fn


fingerprint_key_option = click.option(
    "--fingerprint-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File with the HMAC key for value fingerprints. Default: a random key kept in the "
    "swarm's Docker config 'swarm-secrets-fingerprint-key' (created on first apply).",
)


def key_options(fn: Callable[P, R]) -> Callable[P, R]:
    """The fingerprint key and the revision recorded on new versions (plan, apply)."""
    fn = fingerprint_key_option(fn)
    fn = click.option(
        "--revision",
        default=None,
        metavar="REV",
        help="Manifest revision recorded on new versions. Default: the CI's commit variable "
        "or `git rev-parse HEAD` of the manifests.",
    )(fn)
    return fn


def rollout_options(fn: Callable[P, R]) -> Callable[P, R]:
    """How changes are rolled out (apply, run)."""
    for option in reversed(
        (
            click.option(
                "--timeout",
                type=click.FloatRange(min=1),
                default=300,
                show_default=True,
                help="Seconds to wait for each service's rollout.",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(1, 64),
                default=4,
                show_default=True,
                help="Service rollouts run and watched at the same time.",
            ),
            click.option(
                "--prune-orphans",
                is_flag=True,
                help="Also revoke and collect sets that have managed secrets but no loaded manifest.",
            ),
        )
    ):
        fn = option(fn)
    return fn


def revision_check_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Never the past over the present (apply, run): what to do when the swarm records a newer commit."""
    fn = click.option(
        "--revision-check",
        type=click.Choice(("error", "warn")),
        default="error",
        show_default=True,
        help="When it cannot be decided whether the manifests' commit is older than the one the swarm "
        "records (shallow clone, unrelated history): refuse (error) or warn and apply.",
    )(fn)
    fn = click.option(
        "--allow-older-revision",
        is_flag=True,
        help="Apply even when the swarm records, for the same set, a commit that descends from the "
        "manifests' commit (moves the set back to older values).",
    )(fn)
    return fn


# --- the trust boundary: validate, plan, apply, status, run --------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustOptions:
    """The operator's trust settings as given (``--policy``, ``--source-root``, ``--self-service``,
    ``--sops-env``); :meth:`boundary` loads the policy (inside the command, so its errors are
    reported like any other)."""

    policy: Path | None = None
    source_root: Path | None = None
    self_service: str | None = None
    sops_env: tuple[str, ...] = ()

    def boundary(self, paths: Sequence[Path] = (), *, daemon: bool = False) -> Boundary:
        """The :class:`~reconciler.core.guard.Boundary`; ``paths`` are the manifest paths (to warn
        when the policy lies among them), ``daemon`` is True for ``run``."""
        from reconciler.manifests.policy import load_policy
        from reconciler.manifests.roots import source_root

        policy = None
        if self.policy is not None:
            roots = [source_root(p, self.source_root) for p in paths if p.exists()]
            policy = load_policy(self.policy, source_roots=roots)
        return Boundary(
            policy=policy,
            self_service=self.self_service or None,
            source_root=self.source_root,
            daemon=daemon,
            sops_env=self.sops_env,
        )


_VARIABLE_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!]+")


def _variable_globs(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    for glob in value:
        if not _VARIABLE_GLOB.fullmatch(glob):
            raise click.BadParameter(f"{glob!r} is not a variable-name glob (letters, digits, '_', '*', '?')")
    return tuple(value)


def trust_options(fn: Callable[..., R]) -> Callable[..., R]:
    """``--policy``, ``--source-root``, ``--self-service`` and ``--sops-env``, handed to the command as
    one ``trust: TrustOptions`` argument. Use it above ``@handle_errors``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        policy: Path | None,
        source_root: Path | None,
        self_service: str | None,
        sops_env: tuple[str, ...],
        **kwargs: Any,
    ) -> R:
        trust = TrustOptions(
            policy=policy, source_root=source_root, self_service=self_service, sops_env=sops_env
        )
        return fn(*args, trust=trust, **kwargs)

    options = (
        click.option(
            "--policy",
            envvar="SWARM_SECRETS_POLICY",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            metavar="FILE",
            help="The operator's policy (kind: Policy): which services, stacks, targets and variables "
            "each set may reach; sets no rule covers may do nothing. Never read from the manifest paths.",
        ),
        click.option(
            "--source-root",
            envvar="SWARM_SECRETS_SOURCE_ROOT",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            default=None,
            metavar="DIR",
            help="Folder every file and sops.file source must resolve inside (symlinks followed). "
            "Default: the git work tree holding the manifests, else the folder given.",
        ),
        click.option(
            "--self-service",
            envvar="SWARM_SECRETS_SELF_SERVICE",
            default=None,
            metavar="NAME",
            help="The reconciler's own service, never granted a managed secret (deploy/stack.yml "
            "passes {{.Service.Name}}).",
        ),
        click.option(
            "--sops-env",
            envvar="SWARM_SECRETS_SOPS_ENV",
            multiple=True,
            callback=_variable_globs,
            metavar="GLOB",
            help="Extra variables sops may see (cloud KMS, Vault: 'AWS_*'); repeatable. sops always "
            "gets SOPS_*, GNUPGHOME, HOME, PATH, TMPDIR and nothing else.",
        ),
    )
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


# --- the swarm's lease: apply and run take it before changing anything ------------------------------


def lock_options(fn: Callable[P, R]) -> Callable[P, R]:
    """``--lock/--no-lock``, ``--lock-timeout``, ``--lock-ttl`` (apply, run); see engine/lease.py."""
    for option in reversed(
        (
            click.option(
                "--lock/--no-lock",
                default=True,
                show_default=True,
                help="Take the swarm's lease (one applier at a time) before changing anything. "
                "--no-lock is unsafe while another apply or run changes the same swarm.",
            ),
            click.option(
                "--lock-timeout",
                type=click.FloatRange(min=0),
                default=300,
                show_default=True,
                metavar="SECONDS",
                help="How long to wait for a lease another applier holds (0: do not wait), then exit 1 "
                "naming it.",
            ),
            click.option(
                "--lock-ttl",
                type=click.FloatRange(min=2),
                default=60,
                show_default=True,
                metavar="SECONDS",
                help="How long the lease outlives a holder that stopped renewing it (killed, cut off).",
            ),
        )
    ):
        fn = option(fn)
    return fn


def lease_settings(lock: bool, lock_timeout: float, lock_ttl: float) -> LeaseSettings | None:
    """The lease settings of :func:`lock_options`, or None for ``--no-lock``."""
    return LeaseSettings(ttl=lock_ttl, wait=lock_timeout) if lock else None
