"""The ``swarm-secrets`` click group and what every command shares.

* :func:`handle_errors` is the one place errors become output and exit codes (see ``errors.ExitCode``):
  a ``ProblemsError`` prints one line per problem, another ``SwarmSecretsError`` one ``error:`` line,
  Ctrl-C exits 130, and anything else is a bug: traceback plus a request to report it;
* :data:`manifest_paths` is the ``[PATH]...`` argument (default ``manifests/``), :data:`manifest_dir`
  ``run``'s ``[PATH]``;
* the shared option decorators (engine, keys, rollouts, and the trust boundary: ``--policy`` and
  friends, gathered into one :class:`TrustOptions` argument);
* ``--log-level``/``--log-format`` configure logging, here and nowhere else (formatters: ``logs.py``).

Every option and argument can also be set in the environment, by one rule (:func:`variable_for`):
``SWARM_SECRETS_`` + the option's long name (an argument's metavar), in capitals, ``-`` as ``_``:
``--format`` is ``SWARM_SECRETS_FORMAT``, ``--prune-orphans`` ``SWARM_SECRETS_PRUNE_ORPHANS``, PATH
``SWARM_SECRETS_PATH``. The command is not part of the name: one variable means the same option in
every command that has it, so a CI job that sets ``SWARM_SECRETS_PRUNE_ORPHANS`` or
``SWARM_SECRETS_FINGERPRINT_KEY_FILE`` once gets a ``plan`` that shows what its ``apply`` does. The
group applies the rule to every command added to it (:class:`Group`), so an option added later gets its
variable, shown in ``--help``, without a line of its own. A variable named the old way
(``SWARM_SECRETS_<COMMAND>_<OPTION>``) is reported, not silently ignored.

Each command lives in a module of its own in this folder (``validate.py``, ``plan.py``, …) and is a
few lines that call the library: ``@main.command()``, the shared decorators, ``@handle_errors`` last
(closest to the function). ``cli/__init__.py`` imports them all so they register.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

import reconciler
from reconciler import manifests
from reconciler.core.guard import Boundary
from reconciler.core.model import Rotation
from reconciler.engine.lease import LeaseSettings
from reconciler.errors import ExitCode, ProblemsError, SwarmSecretsError
from reconciler.logs import JsonFormatter, TextFormatter

P = ParamSpec("P")
R = TypeVar("R")

BUG_HINT = "this is a bug in swarm-secrets; please report it with the traceback above"
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "SWARM_SECRETS_"

log = logging.getLogger(__name__)


# --- settings from the environment: one rule for every option ---------------------------------------


def variable_for(param: click.Parameter) -> str:
    """The environment variable of ``param``: ``SWARM_SECRETS_`` + its long option name (an argument's
    metavar) in capitals, ``-`` as ``_``. The same name in every command."""
    if isinstance(param, click.Option):
        longs = [o for o in param.opts if o.startswith("--")]
        name = longs[0][2:] if longs else (param.name or "")
    else:
        name = re.sub(r"[^A-Za-z0-9_-]", "", (param.metavar or param.name or "").split("...")[0])
    return ENV_PREFIX + name.upper().replace("-", "_")


def settable(command: click.Command) -> Iterator[click.Parameter]:
    """The parameters of ``command`` that take a value from the command line (not --help, --version)."""
    return (p for p in command.params if p.expose_value)


def walk_commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """(``stack deploy``, command) for every command under ``group``, groups of commands included."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        yield path, command
        if isinstance(command, click.Group):
            yield from walk_commands(command, path)


def _name_variables(command: click.Command) -> None:
    """Give each settable parameter of ``command`` its variable (first; variables it declared itself,
    such as DOCKER_HOST, stay as fallbacks) and show it in ``--help``."""
    for param in settable(command):
        declared = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        name = variable_for(param)
        param.envvar = [name, *(v for v in declared if v != name)]
        if isinstance(param, click.Option):
            param.show_envvar = True


class Argument(click.Argument):
    """An argument with a help line in ``--help`` (click's arguments have none), naming its default
    and its environment variable."""

    def __init__(self, *args: Any, help: str, default_text: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help
        self.default_text = default_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str]:
        extra = []
        if self.envvar:
            names = [self.envvar] if isinstance(self.envvar, str) else list(self.envvar)
            sep = "':'" if isinstance(self.type, click.Path) else "spaces"
            splitter = f"; several separated by {sep}" if self.nargs != 1 else ""
            extra.append(f"env var: {', '.join(names)}{splitter}")
        if self.default_text:
            extra.append(f"default: {self.default_text}")
        text = (self.help or "") + (f"  [{'; '.join(extra)}]" if extra else "")
        return self.metavar or self.name or "", text


def _format_params(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """Arguments (with their help: click before 8.5 shows none), then options, each in a section."""
    sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            sections["Arguments" if isinstance(param, click.Argument) else "Options"].append(record)
    for title, rows in sections.items():
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)


class Command(click.Command):
    """A command whose ``--help`` lists its arguments, with default and variable, before its options
    (the same layout with every click version)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        _format_params(self, ctx, formatter)
        self.format_epilog(ctx, formatter)


class Group(click.Group):
    """The ``swarm-secrets`` group: applies :func:`variable_for` to its own options and to those of
    every command added to it, and makes its commands :class:`Command`."""

    command_class = Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_variables(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _name_variables(cmd)
        super().add_command(cmd, name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)
        self.format_epilog(ctx, formatter)


def misnamed_variables(group: click.Group, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(set, meant) for variables named ``SWARM_SECRETS_<COMMAND>_<OPTION>`` where ``meant``, the
    rule's name, is an option of that command: the old documented form, which is not read."""
    found = []
    for name, command in walk_commands(group):
        prefix = f"{ENV_PREFIX}{name.upper().replace(' ', '_')}_"
        options = {variable_for(p) for p in settable(command)}
        for variable in sorted(v for v in environ if v.startswith(prefix)):
            meant = ENV_PREFIX + variable.removeprefix(prefix)
            if meant in options and variable not in options:
                found.append((variable, meant))
    return found


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
    cls=Argument,
    nargs=-1,
    metavar="[PATH]...",
    type=click.Path(path_type=Path),
    callback=_default_paths,
    help="Manifest files or folders (folders are searched for *.yaml/*.yml).",
    default_text=f"{manifests.DEFAULT_PATH}/",
)
"""The manifest files or folders a command reads (folders are searched recursively); default manifests/."""

manifest_dir = click.argument(
    "path",
    cls=Argument,
    required=False,
    metavar="[PATH]",
    type=click.Path(path_type=Path),
    default=None,
    help="Manifest folder to reconcile (or --git-url).",
    default_text=f"{manifests.DEFAULT_PATH}/ without --git-url",
)
"""``run``'s manifest folder; default manifests/ unless --git-url is given."""


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


def _show_version(ctx: click.Context) -> None:
    # The version is looked up only when asked for (see reconciler/__init__.py).
    click.echo(f"swarm-secrets {reconciler.__version__}")
    ctx.exit()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _show_version(ctx) if value else None,
    help="Show the version and exit.",
)
def main(log_level: str, log_format: str) -> None:
    """Declarative GitOps reconciler for Docker Swarm secrets.

    Every option can also be set in the environment as SWARM_SECRETS_<OPTION>: the long option name in
    capitals with '-' as '_' (--prune-orphans: SWARM_SECRETS_PRUNE_ORPHANS), the same variable in
    every command; PATH as SWARM_SECRETS_PATH. Each command's --help names them.
    """
    configure_logging(log_level, log_format)
    for variable, meant in misnamed_variables(main, os.environ):
        log.warning("%s is not read: options come from SWARM_SECRETS_<OPTION>, here %s", variable, meant)


# --- engine commands: plan, apply, status -------------------------------------------------------------


def engine_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Options of every command that talks to the swarm."""
    fn = click.option(
        "--docker-host",
        envvar="DOCKER_HOST",  # after SWARM_SECRETS_DOCKER_HOST (the rule), as the docker CLI reads it
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
    help="File with the HMAC key for value fingerprints. Default: the random key kept in the "
    "swarm's Docker config 'swarm-secrets-fingerprint-key', which apply and run create when it is "
    "missing; plan never writes: without the config it uses a throwaway key (every secret then plans "
    "as new).",
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
    ``--sops-env``, ``--min-rotation-period``); :meth:`boundary` loads the policy (inside the command,
    so its errors are reported like any other)."""

    policy: Path | None = None
    source_root: Path | None = None
    self_service: str | None = None
    sops_env: tuple[str, ...] = ()
    min_rotation: Rotation = Rotation(every=3600, text="1h")

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
            min_rotation=self.min_rotation,
        )


# ParamType is generic only in newer click (a subscript would fail at run time with click 8.1).
class Period(click.ParamType):  # type: ignore[type-arg]
    """A period as ``rotate.every`` writes it (``90d``, ``1h``), read as a :class:`Rotation`."""

    name = "period"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Rotation:
        from reconciler.core.schedule import rotation

        if isinstance(value, Rotation):
            return value
        period = rotation(str(value))
        if period is None:
            self.fail(f"{value!r} is not a period: a whole number and s, m, h, d or w (1h, 30m)", param, ctx)
        return period


_VARIABLE_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!]+")


def _variable_globs(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    for glob in value:
        if not _VARIABLE_GLOB.fullmatch(glob):
            raise click.BadParameter(f"{glob!r} is not a variable-name glob (letters, digits, '_', '*', '?')")
    return tuple(value)


def trust_options(fn: Callable[..., R]) -> Callable[..., R]:
    """``--policy``, ``--source-root``, ``--self-service``, ``--sops-env`` and ``--min-rotation-period``,
    handed to the command as one ``trust: TrustOptions`` argument. Use it above ``@handle_errors``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        policy: Path | None,
        source_root: Path | None,
        self_service: str | None,
        sops_env: tuple[str, ...],
        min_rotation_period: Rotation,
        **kwargs: Any,
    ) -> R:
        trust = TrustOptions(
            policy=policy,
            source_root=source_root,
            self_service=self_service,
            sops_env=sops_env,
            min_rotation=min_rotation_period,
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
        click.option(
            "--min-rotation-period",
            envvar="SWARM_SECRETS_MIN_ROTATION_PERIOD",
            default="1h",
            show_default=True,
            type=Period(),
            metavar="PERIOD",
            help="The shortest rotate.every a generated secret may have (every rotation restarts the "
            "services using it): a whole number and s, m, h, d or w.",
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


docker_cli_option = click.option(
    "--docker-cli",
    default=None,
    metavar="PATH",
    help="The docker CLI that deploys stacks (`docker stack deploy`; for kind: Stack manifests and "
    "`stack deploy`). Default: docker on PATH.",
)


def lease_settings(lock: bool, lock_timeout: float, lock_ttl: float) -> LeaseSettings | None:
    """The lease settings of :func:`lock_options`, or None for ``--no-lock``."""
    return LeaseSettings(ttl=lock_ttl, wait=lock_timeout) if lock else None
