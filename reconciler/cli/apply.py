"""``swarm-secrets apply``: show the plan, ask, carry it out, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    TrustOptions,
    engine_options,
    handle_errors,
    key_options,
    lease_settings,
    lock_options,
    main,
    manifest_paths,
    revision_check_options,
    rollout_options,
    trust_options,
)
from reconciler.engine import executor, lease
from reconciler.engine.executor import ApplyOptions, ApplyResult
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError, ExitCode
from reconciler.manifests.revision import RevisionCheckMode, RevisionGuard
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
@revision_check_options
@lock_options
@click.option("--stats", is_flag=True, help="Print how many Engine API requests the run made.")
@trust_options
@handle_errors
def apply(
    paths: tuple[Path, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    allow_older_revision: bool,
    revision_check: RevisionCheckMode,
    lock: bool,
    lock_timeout: float,
    lock_ttl: float,
    stats: bool,
) -> None:
    """Show the plan, then create versions, roll services, wait for them and collect old versions.

    Refuses (exit 1, nothing changed) manifests older than the commit the swarm records for the same
    set, unless --allow-older-revision.

    Exit codes: 0 converged; 1 error before any change (also: another applier held the swarm's lease
    for longer than --lock-timeout); 3 applied with failures (a rollout rolled back, paused or timed
    out, or a secret was blocked): the swarm is consistent, fix and re-run.
    """
    guard = RevisionGuard(repository=paths[0], allow_older=allow_older_revision, undecidable=revision_check)
    boundary = trust.boundary(paths)
    loaded = converge.load(paths, revision=revision, boundary=boundary, complete=prune_orphans)
    locking = lease_settings(lock, lock_timeout, lock_ttl)

    def prepare(swarm: Swarm) -> converge.Prepared:
        return converge.prepare(
            loaded, swarm, key_file=fingerprint_key_file, prune_orphans=prune_orphans, revision_guard=guard
        )

    with Swarm.connect(docker_host) as swarm:
        prepared = prepare(swarm)
        if prepared.plan.empty or locking is None:
            _apply(prepared, swarm, yes, timeout, concurrency, prune_orphans, stats)
            return
        _check_can_ask(yes)  # before waiting for the lease, not after
        # --- the swarm's lease (engine/lease.py): held from before the first mutation to the end. -----
        # A plan made before waiting may be stale by then: observe and plan again under the lease.
        with lease.hold(
            swarm, locking, purpose="apply", revision=loaded.revision, on_wait=_tell_waiting
        ) as held:
            prepared = prepare(swarm)
            _apply(prepared, swarm, yes, timeout, concurrency, prune_orphans, stats)
            if held is not None and held.lost:
                click.echo(
                    "error: the swarm's lease was lost while applying (not renewed in time): another "
                    "applier may have run at the same time; run apply again",
                    err=True,
                )
                raise click.exceptions.Exit(ExitCode.PARTIAL)


def _tell_waiting(record: lease.Record) -> None:
    click.echo(f"waiting for the swarm's lease, held by {record.describe()}", err=True)


def _apply(
    prepared: converge.Prepared,
    swarm: Swarm,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    stats: bool,
) -> None:
    loaded = prepared.loaded
    click.echo(render.render_text(prepared.plan, color=sys.stdout.isatty()).rstrip("\n"))
    if prepared.plan.empty:
        _stats(stats, swarm)
        return
    if not yes:
        _check_can_ask(yes)
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


def _check_can_ask(yes: bool) -> None:
    if not yes and not sys.stdin.isatty():
        raise ConfigError("not applying: stdin is not a terminal; pass --yes to apply without asking")


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
