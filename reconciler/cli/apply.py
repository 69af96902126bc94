"""``swarm-secrets apply``: show the plan, ask, carry it out, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    engine_options,
    handle_errors,
    key_options,
    main,
    manifest_paths,
    rollout_options,
)
from reconciler.display import count
from reconciler.engine import executor
from reconciler.engine.executor import ApplyOptions, ApplyResult
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError, ExitCode
from reconciler.render import plan as render
from reconciler.render.progress import Progress


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
    loaded = converge.load(paths, revision=revision)
    with Swarm.connect(docker_host) as swarm:
        _apply(loaded, swarm, fingerprint_key_file, yes, timeout, concurrency, prune_orphans, stats)


def _apply(
    loaded: converge.Loaded,
    swarm: Swarm,
    fingerprint_key_file: Path | None,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    stats: bool,
) -> None:
    prepared = converge.prepare(loaded, swarm, key_file=fingerprint_key_file, prune_orphans=prune_orphans)
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
    click.echo(_result_text(result, shown=prepared.plan.warnings))
    _stats(stats, swarm)
    if not result.ok:
        raise click.exceptions.Exit(ExitCode.PARTIAL)


def _stats(enabled: bool, swarm: Swarm) -> None:
    if enabled:
        click.echo(f"engine requests: {swarm.requests}", err=True)


def _result_text(result: ApplyResult, *, shown: tuple[str, ...] = ()) -> str:
    """What the apply did; warnings already ``shown`` with the plan are not repeated."""
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
        lines.append(f"kept: {count(result.kept, 'superseded version')} (see `swarm-secrets status` for why)")
    lines.extend(f"blocked: {b}" for b in result.blocked)
    lines.extend(f"warning: {w}" for w in result.warnings if w not in shown)
    lines.extend(f"error: {e}" for e in result.errors)
    failed = [r for r in result.rollouts if not r.ok]
    if result.ok:
        lines.append(
            f"Apply complete: {len(result.created)} created, "
            f"{count(len(result.rollouts), 'service')} updated, {len(result.removed)} removed."
        )
    else:
        lines.append(
            f"Apply finished with failures: {count(len(failed), 'rollout')} failed, "
            f"{count(len(result.blocked), 'secret')} blocked, {count(len(result.errors), 'error')}. "
            "Old versions were kept; fix the cause and run apply again."
        )
    return "\n".join(lines)
