"""The ``swarm-secrets`` command line: a thin click group over the library.

Each command is a few lines that call the library. Shared here, for every command:

* :func:`handle_errors` is the one place errors become output and exit codes (see ``errors.ExitCode``):
  a ``ProblemsError`` prints one line per problem, another ``SwarmSecretsError`` one ``error:`` line,
  Ctrl-C exits 130, and anything else is a bug: traceback plus a request to report it;
* :func:`manifest_paths` is the ``[PATH]...`` argument (default ``manifests/``);
* ``--log-level``/``--log-format`` configure logging, here and nowhere else (formatters: ``logs.py``).

Options can also come from the environment: ``SWARM_SECRETS_<OPTION>`` for group options,
``SWARM_SECRETS_<COMMAND>_<OPTION>`` for command options (click's ``auto_envvar_prefix``).

New commands (``plan``, ``apply``, ``status``, ``run``) follow ``validate``: ``@main.command()``, the
shared decorators, ``@handle_errors`` last (closest to the function).
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

from reconciler import executor, manifest, reconcile, render
from reconciler.errors import ConfigError, ExitCode, ProblemsError, SwarmSecretsError
from reconciler.executor import ApplyOptions, ApplyResult
from reconciler.logs import JsonFormatter, TextFormatter
from reconciler.model import SecretSet
from reconciler.plan import Plan
from reconciler.progress import Progress
from reconciler.status import build_status, render_status_json, render_status_text
from reconciler.swarm import Swarm

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
    return tuple(value) or (manifest.DEFAULT_PATH,)


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


@main.command()
@manifest_paths
@click.option(
    "--offline",
    is_flag=True,
    help="Check the schema and cross-file rules only; do not read or decrypt any source.",
)
@handle_errors
def validate(paths: tuple[Path, ...], offline: bool) -> None:
    """Check manifests, and that every secret value can be read (sops, files, variables).

    Values are read and discarded; nothing is printed but a summary, or one line per problem.
    """
    sets = manifest.load(paths)
    if not offline:
        from reconciler.sources import resolve

        resolve(sets)  # values are dropped at once: validate only proves they can be produced
    suffix = " (offline: sources not checked)" if offline else ""
    click.echo(f"ok: {summary(sets)}{suffix}")


def summary(sets: Sequence[SecretSet]) -> str:
    """``2 sets, 5 secrets, 7 service grants in 3 files``."""
    secrets = [spec for s in sets for spec in s.secrets]
    files = {s.origin.file for s in sets}
    return (
        f"{_count(len(sets), 'set')}, {_count(len(secrets), 'secret')}, "
        f"{_count(sum(len(spec.grants) for spec in secrets), 'service grant')} in "
        f"{_count(len(files), 'file')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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


def _render(the_plan: Plan, fmt: str) -> str:
    if fmt == "json":
        return render.render_json(the_plan)
    if fmt == "markdown":
        return render.render_markdown(the_plan)
    return render.render_text(the_plan, color=sys.stdout.isatty())


@main.command()
@manifest_paths
@engine_options
@key_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json", "markdown")),
    default="text",
    show_default=True,
    help="text for people, json for machines, markdown for a pull request.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when the plan is not empty (0: nothing to do, 1: error).",
)
@click.option(
    "--prune-orphans", is_flag=True, help="Also plan to revoke and collect sets that have no loaded manifest."
)
@handle_errors
def plan(
    paths: tuple[Path, ...],
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    fmt: str,
    detailed_exitcode: bool,
    prune_orphans: bool,
) -> None:
    """Show what apply would change; change nothing. Never prints a value."""
    loaded = reconcile.load(paths, revision=revision)
    with Swarm.connect(docker_host) as swarm:
        prepared = reconcile.prepare(
            loaded, swarm, key_file=fingerprint_key_file, prune_orphans=prune_orphans, read_only=True
        )
    click.echo(_render(prepared.plan, fmt).rstrip("\n"))
    if detailed_exitcode and not prepared.plan.empty:
        raise click.exceptions.Exit(ExitCode.CHANGES)


@main.command()
@manifest_paths
@engine_options
@key_options
@click.option(
    "--yes", "-y", is_flag=True, help="Apply without asking (required when stdin is not a terminal)."
)
@rollout_options
@click.option("--stats", is_flag=True, help="Print how many Engine API requests the run made.")
@handle_errors
def apply(
    paths: tuple[Path, ...],
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    stats: bool,
) -> None:
    """Show the plan, then create versions, roll services, wait for them and collect old versions.

    Exit codes: 0 converged; 1 error before any change; 3 applied with failures (a rollout rolled
    back, paused or timed out, or a secret was blocked): the swarm is consistent, fix and re-run.
    """
    loaded = reconcile.load(paths, revision=revision)
    with Swarm.connect(docker_host) as swarm:
        _apply(loaded, swarm, fingerprint_key_file, yes, timeout, concurrency, prune_orphans, stats)


def _apply(
    loaded: reconcile.Loaded,
    swarm: Swarm,
    fingerprint_key_file: Path | None,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    stats: bool,
) -> None:
    prepared = reconcile.prepare(loaded, swarm, key_file=fingerprint_key_file, prune_orphans=prune_orphans)
    click.echo(render.render_text(prepared.plan, color=sys.stdout.isatty()).rstrip("\n"))
    if prepared.plan.empty:
        _stats(stats, swarm)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("not applying: stdin is not a terminal; pass --yes to apply without asking")
        click.confirm("Apply these changes?", abort=True)
    options = ApplyOptions(timeout=timeout, concurrency=concurrency, prune_orphans=prune_orphans)
    try:
        result = executor.execute(prepared.plan, prepared.desired, loaded.values, swarm, options, Progress())
    except KeyboardInterrupt:
        click.echo(
            "interrupted: rollouts already started go on in the swarm; run apply again to watch "
            "them and collect old versions",
            err=True,
        )
        raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
    click.echo(_result_text(result))
    _stats(stats, swarm)
    if not result.ok:
        raise click.exceptions.Exit(ExitCode.PARTIAL)


def _stats(enabled: bool, swarm: Swarm) -> None:
    if enabled:
        click.echo(f"engine requests: {swarm.requests}", err=True)


def _result_text(result: ApplyResult) -> str:
    lines = []
    if result.created:
        lines.append("created: " + ", ".join(result.created))
    for rollout in result.rollouts:
        lines.append(
            f"service {rollout.service}: {rollout.outcome.replace('_', ' ')} "
            f"({rollout.detail}; {rollout.seconds:.1f} s)"
        )
    if result.removed:
        lines.append("removed: " + ", ".join(result.removed))
    if result.kept:
        lines.append(f"kept: {result.kept} superseded version(s) (see `swarm-secrets status` for why)")
    lines.extend(f"blocked: {b}" for b in result.blocked)
    lines.extend(f"warning: {w}" for w in result.warnings)
    lines.extend(f"error: {e}" for e in result.errors)
    failed = [r for r in result.rollouts if not r.ok]
    if result.ok:
        lines.append(
            f"Apply complete: {len(result.created)} created, {len(result.rollouts)} services updated, "
            f"{len(result.removed)} removed."
        )
    else:
        lines.append(
            f"Apply finished with failures: {len(failed)} rollout(s) failed, "
            f"{len(result.blocked)} secret(s) blocked, {len(result.errors)} error(s). "
            "Old versions were kept; fix the cause and run apply again."
        )
    return "\n".join(lines)


@main.command()
@manifest_paths
@engine_options
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text", show_default=True)
@handle_errors
def status(paths: tuple[Path, ...], docker_host: str | None, fmt: str) -> None:
    """Per set and secret: current version, its users, superseded versions and why each is kept;
    orphaned sets; unmanaged secrets nothing references. Reads manifests offline (no keys needed)."""
    sets = {s.name: s.keep for s in manifest.load(paths)} if all(p.exists() for p in paths) else None
    with Swarm.connect(docker_host) as swarm:
        report = build_status(swarm.observe(), sets)
    click.echo(render_status_json(report) if fmt == "json" else render_status_text(report), nl=False)


# --- the long-running reconciler ----------------------------------------------------------------------


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path), default=None)
@engine_options
@fingerprint_key_option
@click.option("--git-url", default=None, help="Follow this git repository instead of a local PATH.")
@click.option("--git-ref", default="main", show_default=True, help="Branch or tag to follow.")
@click.option("--git-path", default=".", show_default=True, help="Manifest folder inside the repository.")
@click.option(
    "--git-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File with an https access token (never put tokens in the URL).",
)
@click.option(
    "--git-ssh-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Private deploy key for ssh URLs (mode 0400).",
)
@click.option(
    "--git-known-hosts-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="known_hosts for ssh; unknown host keys are then refused.",
)
@click.option(
    "--checkout-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to keep the git checkout (default: a folder under the temp dir).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between periodic reconciliations (±10% jitter).",
)
@click.option(
    "--debounce",
    type=click.FloatRange(min=0),
    default=2,
    show_default=True,
    help="Seconds to gather triggers (events, webhooks) into one reconciliation.",
)
@click.option(
    "--listen",
    default=":8080",
    show_default=True,
    help="HTTP address for /healthz, /readyz, /metrics, /reconcile and /hooks/*; 'off' disables.",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Shared secret for GitHub/Gitea signatures and GitLab tokens (enables /hooks/*).",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Reconcile when secrets or services change in the swarm (drift within seconds).",
)
@rollout_options
@handle_errors
def run(
    path: Path | None,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    git_url: str | None,
    git_ref: str,
    git_path: str,
    git_token_file: Path | None,
    git_ssh_key_file: Path | None,
    git_known_hosts_file: Path | None,
    checkout_dir: Path | None,
    interval: float,
    debounce: float,
    listen: str,
    webhook_secret_file: Path | None,
    events: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
) -> None:
    """Reconcile continuously: on start, every --interval, on webhooks, on git changes and on swarm
    events. SIGTERM finishes the step in hand and exits 0."""
    import tempfile
    import threading

    from reconciler.gitsync import GitSettings, GitSync
    from reconciler.loop import LoopSettings, Reconciler, with_git
    from reconciler.service import TickSettings, docker_events, make_tick

    if git_url is None and path is None:
        path = manifest.DEFAULT_PATH
    if git_url is not None and path is not None:
        raise ConfigError("give either a manifest PATH or --git-url, not both")
    tick = make_tick(
        TickSettings(
            manifests=path or Path("."),
            docker_host=docker_host,
            fingerprint_key_file=fingerprint_key_file,
            apply=ApplyOptions(timeout=timeout, concurrency=concurrency, prune_orphans=prune_orphans),
        )
    )
    if git_url is not None:
        sync = GitSync(
            GitSettings(
                url=git_url,
                ref=git_ref,
                path=git_path,
                checkout_dir=checkout_dir or Path(tempfile.gettempdir()) / "swarm-secrets-checkout",
                token_file=git_token_file,
                ssh_key_file=git_ssh_key_file,
                known_hosts_file=git_known_hosts_file,
            )
        )
        tick = with_git(tick, sync.sync)
    settings = LoopSettings(
        manifests_dir=path,
        interval=interval,
        debounce=debounce,
        listen=None if listen == "off" else listen,
        webhook_secret_file=webhook_secret_file,
    )
    stop = threading.Event()
    reconciler = Reconciler(settings, tick, stop_event=stop)
    feed = docker_events(docker_host, stop) if events else None
    code = reconciler.run(events=feed)
    raise click.exceptions.Exit(code)
