"""The ``swarm-secrets`` click group and what every command shares.

* :func:`handle_errors` is the one place errors become output and exit codes (see ``errors.ExitCode``):
  a ``ProblemsError`` prints one line per problem, another ``SwarmSecretsError`` one ``error:`` line,
  Ctrl-C exits 130, and anything else is a bug: traceback plus a request to report it;
* :data:`manifest_paths` is the ``[PATH]...`` argument (default ``manifests/``);
* the shared option decorators (engine, keys, rollouts);
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
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from reconciler import manifests
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
@click.version_option(package_name="swarm-secrets")
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
                default=16,  # ApplyOptions.concurrency (a unit test keeps them equal)
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
