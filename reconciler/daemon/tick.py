"""Wiring for ``swarm-secrets run``: the reconcile tick and the Docker events feed for the loop.

:func:`make_tick` returns the :data:`~reconciler.daemon.types.Tick` the loop calls: load and resolve the
manifests (a bad commit fails here, before the swarm is touched), connect, and :func:`converge
<reconciler.converge.converge>` with the loop's auto-approval, then summarise the outcome as a
:class:`~reconciler.daemon.types.TickResult`. When the swarm moved under the tick (it changed between
the tick's plan and its execution, or another writer superseded a rollout), the tick is not ok and asks
for a follow-up (``TickResult.follow_up``): the loop ticks again at once, planning from the swarm as it
is. It connects anew on every tick, so an engine restart between ticks costs one failed tick at most.

:func:`docker_events` yields one item per secret or service event and reconnects (with a capped
delay) whenever the stream breaks, e.g. while the engine restarts; after a reconnect it yields once
more, since changes made while it was away produced no event.

Neither holds a value beyond the tick that resolved it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import converge
from reconciler.core import guard
from reconciler.core.rollout import Outcome
from reconciler.daemon.types import Reason, Tick, TickRequest, TickResult
from reconciler.display import count
from reconciler.engine import lease
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.lease import LeaseSettings
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmSecretsError
from reconciler.manifests.revision import RevisionCheckMode, RevisionGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TickSettings:
    manifests: Path
    """Manifest folder when not following git (git ticks get the checkout's folder instead)."""
    docker_host: str | None = None
    """Engine of a swarm manager; None: DOCKER_HOST, the docker context, the local socket."""
    fingerprint_key_file: Path | None = None
    """HMAC key file; None: the key kept in the swarm's Docker config."""
    apply: ApplyOptions = ApplyOptions()
    """Rollout timeout, concurrency, orphan pruning."""
    allow_older_revision: bool = False
    """Apply even when the swarm records a newer commit of a set (``--allow-older-revision``)."""
    revision_check: RevisionCheckMode = "error"
    """When ancestry cannot be decided: fail the tick (error) or warn and apply (``--revision-check``)."""
    boundary: guard.Boundary = guard.Boundary()
    """What the operator allows the manifests (``daemon=True``: env sources need a policy rule). With
    git, the source root is the checkout, whatever ``boundary.source_root`` says."""
    lease: LeaseSettings | None = field(default_factory=LeaseSettings)
    """The swarm's lease, taken before a tick changes anything; None (``--no-lock``) takes none."""
    stop: threading.Event | None = None
    """Set when the service stops: a tick waiting for the lease gives up at once."""


def clears_held(reasons: Sequence[Reason], revision: str | None, last_revision: str | None) -> bool:
    """Whether a tick asked for by ``reasons`` at ``revision`` may retry held rollouts.

    Only a new revision or an authenticated ``POST /reconcile`` (``manual``) does. A webhook does not:
    a replayed or repeated delivery must not re-roll a service whose rollout Swarm just undid (a push
    that matters brings a new revision anyway). A new value is never held in the first place (its
    update has other versions).
    """
    return any(r.trigger.asked for r in reasons) or revision != last_revision


def make_tick(settings: TickSettings) -> Tick:
    # Updates Swarm rolled back or paused, not to be retried while nothing changed: level-based
    # retries would otherwise restart a service with a bad value every backoff period (clears_held).
    held: set[tuple[str, frozenset[str]]] = set()
    last_revision: list[str | None] = [None]

    def tick(request: TickRequest) -> TickResult:
        manifests = request.manifests_dir or settings.manifests
        boundary = settings.boundary
        if request.source_root is not None:  # a git checkout: sources stay inside it
            boundary = replace(boundary, source_root=request.source_root)
        loaded = converge.load(
            [manifests],
            revision=request.revision,
            boundary=boundary,
            complete=settings.apply.prune_orphans,
        )
        if held and clears_held((request.reason, *request.reasons), loaded.revision, last_revision[0]):
            log.info("retrying %s: new revision or POST /reconcile", count(len(held), "held rollout"))
            held.clear()
        last_revision[0] = loaded.revision
        run_settings = converge.Settings(
            key_file=settings.fingerprint_key_file,
            apply=replace(settings.apply, held=frozenset(held)),
            revision_guard=RevisionGuard(
                repository=manifests,
                allow_older=settings.allow_older_revision,
                undecidable=settings.revision_check,
            ),
        )

        def show(prepared: converge.Prepared) -> None:
            for warning in prepared.plan.warnings:
                log.warning("%s", warning)

        lost = False
        with Swarm.connect(settings.docker_host) as swarm:
            first = converge.prepare(loaded, swarm, run_settings)
            if first.plan.empty:
                show(first)
                outcome = converge.Outcome(prepared=first)
            else:
                # The swarm's lease (engine/lease.py), held from the plan made under it to the end.
                with lease.hold(
                    swarm, settings.lease, purpose="run", revision=loaded.revision, cancel=settings.stop
                ) as holding:
                    outcome = converge.converge(
                        loaded, swarm, approval=converge.auto_approve, settings=run_settings, show=show
                    )
                lost = holding is not None and holding.lost
        managed = sum(1 for s in outcome.prepared.live.secrets if s.managed)
        result = outcome.result
        if result is None:
            log.info("in sync (%d managed versions, revision %s)", managed, loaded.revision or "-")
            return TickResult(ok=True, changed=False, revision=loaded.revision, managed_secrets=managed)
        for warning in result.warnings:
            if warning not in outcome.prepared.plan.warnings:  # those were logged before the apply
                log.warning("%s", warning)
        held.update(r.key for r in result.rollouts if r.failed_rollout and r.key is not None)
        failures = [f"{r.service}: {r.detail}" for r in result.rollouts if not r.ok]
        problems = [
            *([result.stale] if result.stale else []),
            *result.errors,
            *(f"blocked {b}" for b in result.blocked),
            *failures,
        ]
        if lost:
            problems.append("the swarm's lease was lost during the tick: another applier may have run")
        return TickResult(
            ok=result.ok and not lost,
            changed=result.changed,
            revision=loaded.revision,
            created=len(result.created),
            removed=len(result.removed),
            rollouts=dict(collections.Counter(r.outcome for r in result.rollouts)),
            drift_corrected=sum(1 for r in result.rollouts if r.drift and r.ok),
            managed_secrets=managed + len(result.created) - len(result.removed),
            error="; ".join(problems)[:500] or None,
            error_class=None if result.ok and not lost else "rollout" if not result.ok else "engine",
            follow_up=bool(result.stale) or any(r.outcome is Outcome.SUPERSEDED for r in result.rollouts),
        )

    return tick


def docker_events(
    docker_host: str | None, stop: threading.Event, *, max_delay: float = 30.0
) -> Iterator[str]:
    """Secret/service events as strings (``"secret update"``), forever, reconnecting as needed."""
    delay = 1.0
    connected_before = False
    while not stop.is_set():
        try:
            with Swarm.connect(docker_host, timeout=3600) as swarm:
                if connected_before:
                    yield "reconnected"
                connected_before = True
                delay = 1.0
                for event in swarm.events():
                    if stop.is_set():
                        return
                    yield f"{event.get('Type', '?')} {event.get('Action', '?')}"
        except SwarmSecretsError as exc:
            log.info("docker events unavailable (%s); retrying in %.0f s", exc, delay)
        if stop.wait(delay):
            return
        delay = min(delay * 2, max_delay)
