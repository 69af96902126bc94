"""``swarm-secrets apply``: show the plan, ask, carry it out, report.

:func:`run_apply` is the part after loading (connect, first look, the swarm's lease, converge,
report, exit code), shared with ``rotate`` and ``stack deploy``."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from reconciler import converge
from reconciler.cli.app import (
    TrustOptions,
    docker_cli_option,
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
from reconciler.core.plan import Plan
from reconciler.core.saved import SavedPlan, loads
from reconciler.display import count, display_path
from reconciler.engine import lease
from reconciler.engine.executor import ApplyOptions, ApplyResult
from reconciler.engine.lease import LeaseSettings
from reconciler.engine.stackdeploy import DockerCli, find_docker_cli
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
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Apply exactly this saved plan (from `plan --out FILE`), without asking; refused when "
    "anything it was computed from changed.",
)
@rollout_options
@revision_check_options
@lock_options
@click.option("--stats", is_flag=True, help="Print how many Engine API requests the run made.")
@docker_cli_option
@trust_options
@handle_errors
def apply(
    paths: tuple[Path, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    yes: bool,
    plan_file: Path | None,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    allow_older_revision: bool,
    revision_check: RevisionCheckMode,
    lock: bool,
    lock_timeout: float,
    lock_ttl: float,
    stats: bool,
    docker_cli: str | None,
) -> None:
    """Show the plan, then create versions, roll services, wait for them and collect old versions.

    Exit codes: 0 converged; 1 error before any change (also: manifests older than the commit the
    swarm records for a set, unless --allow-older-revision; another applier held the swarm's lease
    for longer than --lock-timeout); 3 applied with failures (a rollout rolled back, paused, was
    superseded or timed out, a secret was blocked, or the swarm changed since the plan was shown):
    the swarm is consistent, fix and re-run.

    With --plan FILE, apply exactly the saved plan: it is the approval (no prompt). When a value, a
    manifest, a service or a secret it was computed from changed, nothing is done and the exit code
    is 1, with one line saying what moved.
    """
    saved = _read_saved(plan_file) if plan_file is not None else None
    if saved is not None:
        if prune_orphans and not saved.basis.prune_orphans:
            raise ConfigError("--prune-orphans was not given to the plan saved in the file; make a new plan")
        prune_orphans = saved.basis.prune_orphans
    boundary = trust.boundary(paths)
    loaded = converge.load(paths, revision=revision, boundary=boundary, complete=prune_orphans)
    settings = apply_settings(
        paths[0],
        fingerprint_key_file=fingerprint_key_file,
        timeout=timeout,
        concurrency=concurrency,
        prune_orphans=prune_orphans,
        allow_older_revision=allow_older_revision,
        revision_check=revision_check,
        # Applying a saved plan changes nothing before it is verified, not even the key config.
        read_only=saved is not None,
        # A saved plan is judged as of when it was made (a rotation due since is the next run's).
        now=saved.basis.now if saved is not None else None,
    )
    approval: converge.Approval = converge.auto_approve if yes else _prompt
    show: converge.Show | None = _show
    verify: converge.Approval | None = None
    if saved is not None and plan_file is not None:
        digest = converge.manifest_digest(paths, loaded.sets)
        verify = converge.saved_plan_approval(saved, settings, manifests_digest=digest)
        approval = _saved_approval(verify, plan_file)
        show = None
    run_apply(
        loaded,
        settings,
        docker_host=docker_host,
        docker_cli=docker_cli,
        locking=lease_settings(lock, lock_timeout, lock_ttl),
        approval=approval,
        show=show,
        verify=verify,
        ask=not yes and verify is None,
        stats=stats,
    )


def apply_settings(
    repository: Path,
    *,
    fingerprint_key_file: Path | None,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    allow_older_revision: bool,
    revision_check: RevisionCheckMode,
    **more: Any,
) -> converge.Settings:
    """The settings of a command that applies (``apply``, ``rotate``, ``stack deploy``) from the
    options they share; ``more``: other :class:`~reconciler.converge.Settings` fields."""
    return converge.Settings(
        key_file=fingerprint_key_file,
        apply=ApplyOptions(timeout=timeout, concurrency=concurrency, prune_orphans=prune_orphans),
        revision_guard=RevisionGuard(
            repository=repository, allow_older=allow_older_revision, undecidable=revision_check
        ),
        **more,
    )


def run_apply(
    loaded: converge.Loaded,
    settings: converge.Settings,
    *,
    docker_host: str | None,
    docker_cli: str | None = None,
    locking: LeaseSettings | None,
    approval: converge.Approval,
    show: converge.Show | None = None,
    verify: converge.Approval | None = None,
    ask: bool = True,
    stats: bool = False,
    purpose: str = "apply",
) -> None:
    """Connect, take a first look (changing nothing), then under the swarm's lease plan, approve and
    apply ``loaded``, print what was done, and exit 3 when it was not all done (``apply``; ``rotate``
    with its forced rotations in ``settings``; ``stack deploy``).

    ``verify`` approves a saved plan (nothing is shown then); ``ask``: the approval will prompt, so
    without a terminal it is refused before waiting for the lease. Stacks to deploy need the docker
    CLI: found before connecting."""
    cli = find_docker_cli(docker_cli) if loaded.stacks else None
    with Swarm.connect(docker_host) as swarm:
        if cli is not None:
            settings = replace(settings, deployer=DockerCli(cli, host=swarm.url))
        if locking is not None:
            # A first look that changes nothing, not even the swarm's lease: a refusal (a policy, the
            # revision guard, a saved plan that no longer applies) comes before it; an apply with
            # nothing to do takes no lease; one that cannot ask says so before it waits, not after.
            first = converge.prepare(loaded, swarm, replace(settings, read_only=True))
            planned = verify(first) if verify is not None else first.plan
            if planned is None or planned.empty:
                _show(first)
                _stats(stats, swarm)
                return
            if ask:
                _can_ask()
        # The swarm's lease (engine/lease.py), held from before the plan that is shown and approved to
        # the end: what another applier changed while this one waited is in that plan.
        holding: AbstractContextManager[lease.Lease | None] = lease.hold(
            swarm, locking, purpose=purpose, revision=loaded.revision, on_wait=_tell_waiting
        )
        with holding as held:
            try:
                outcome = converge.converge(
                    loaded, swarm, approval=approval, settings=settings, show=show, progress=Progress()
                )
            except KeyboardInterrupt:
                click.echo(
                    "interrupted: rollouts already started go on in the swarm; run apply again to watch "
                    "them and collect old versions",
                    err=True,
                )
                raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
            if outcome.result is not None:
                # warnings shown with the plan are not repeated
                click.echo(_result_text(outcome.result, shown=outcome.prepared.plan.warnings))
            _stats(stats, swarm)
            lost = held is not None and held.lost
    if lost:
        click.echo(
            "error: the swarm's lease was lost while applying (not renewed in time): another applier "
            "may have run at the same time; run apply again",
            err=True,
        )
        raise click.exceptions.Exit(ExitCode.PARTIAL)
    if not outcome.ok:
        raise click.exceptions.Exit(ExitCode.PARTIAL)


def _tell_waiting(record: lease.Record) -> None:
    click.echo(f"waiting for the swarm's lease, held by {record.describe()}", err=True)


def show_plan(prepared: converge.Prepared) -> None:
    """Print the plan (the ``show`` of apply and stack deploy)."""
    click.echo(render.render_text(prepared.plan, color=sys.stdout.isatty()).rstrip("\n"))


_show = show_plan


def _read_saved(path: Path) -> SavedPlan:
    try:
        return loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the saved plan {display_path(path)}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{display_path(path)} is not a usable saved plan: {exc}") from None


def _saved_approval(verify: converge.Approval, path: Path) -> converge.Approval:
    """``verify`` (the saved plan, if nothing it was computed from moved), saying so and showing it."""

    def approve(prepared: converge.Prepared) -> Plan | None:
        plan = verify(prepared)
        if plan is None:
            return None
        click.echo(f"Applying the saved plan {display_path(path)}; nothing it was made from has changed.")
        click.echo(render.render_text(plan, color=sys.stdout.isatty()).rstrip("\n"))
        return plan

    return approve


def _can_ask() -> None:
    if not sys.stdin.isatty():
        raise ConfigError("not applying: stdin is not a terminal; pass --yes to apply without asking")


def _prompt(prepared: converge.Prepared) -> Plan | None:
    """The interactive approval: ask on a terminal; refuse to guess without one."""
    if prepared.plan.empty:
        return prepared.plan
    _can_ask()
    click.confirm("Apply these changes?", abort=True)
    return prepared.plan


def _stats(enabled: bool, swarm: Swarm) -> None:
    if enabled:
        click.echo(f"engine requests: {swarm.requests}", err=True)


def _result_text(result: ApplyResult, *, shown: tuple[str, ...] = ()) -> str:
    """What the apply did; warnings already ``shown`` with the plan are not repeated."""
    lines = []
    if result.created:
        lines.append("created: " + ", ".join(result.created))
    lines.extend(f"deployed stack {name}" for name in result.deployed)
    for rollout in result.rollouts:
        lines.append(
            f"service {rollout.service}: {rollout.outcome.value.replace('_', ' ')} "
            f"({rollout.detail}; {rollout.seconds:.1f} s)"
        )
    if result.removed:
        lines.append("removed: " + ", ".join(result.removed))
    lines.extend(f"kept {k} (planned for removal, but still needed)" for k in result.kept_back)
    if result.kept:
        lines.append(f"kept: {count(result.kept, 'superseded version')} (see `swarm-secrets status` for why)")
    lines.extend(f"blocked: {b}" for b in result.blocked)
    lines.extend(f"warning: {w}" for w in result.warnings if w not in shown)
    lines.extend(f"error: {e}" for e in result.errors)
    failed = [r for r in result.rollouts if not r.ok]
    if result.stale:
        lines.append(f"Apply stopped: {result.stale}. Nothing outside the shown plan was done.")
    elif result.ok:
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
