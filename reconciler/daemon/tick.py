"""Wiring for ``swarm-secrets run``: the reconcile tick and the Docker events feed for the loop.

:func:`make_tick` returns the :data:`~reconciler.daemon.loop.Tick` the loop calls: load and resolve the
manifests (a bad commit fails here, before the swarm is touched), connect, plan, apply when the plan
is not empty, and summarise the outcome as a :class:`~reconciler.daemon.loop.TickResult`. It connects anew
on every tick, so an engine restart between ticks costs one failed tick at most.

:func:`docker_events` yields one item per secret or service event and reconnects (with a capped
delay) whenever the stream breaks, e.g. while the engine restarts; after a reconnect it yields once
more, since changes made while it was away produced no event.

Neither holds a value beyond the tick that resolved it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler import converge
from reconciler.daemon.types import Tick, TickRequest, TickResult
from reconciler.display import count
from reconciler.engine import executor
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmSecretsError

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


def make_tick(settings: TickSettings) -> Tick:
    # Updates Swarm rolled back or paused, not to be retried while nothing changed: level-based
    # retries would otherwise restart a service with a bad value every backoff period. A new revision,
    # a webhook or a manual reconcile clears them; an update to other versions is never held.
    held: set[tuple[str, frozenset[str]]] = set()
    last_revision: list[str | None] = [None]

    def tick(request: TickRequest) -> TickResult:
        manifests = request.manifests_dir or settings.manifests
        loaded = converge.load([manifests], revision=request.revision)
        asked = any(r == "manual" or r.startswith("webhook") for r in (request.reason, *request.reasons))
        if held and (asked or loaded.revision != last_revision[0]):
            why = "asked to" if asked else "new revision"
            log.info("retrying %s: %s", count(len(held), "held rollout"), why)
            held.clear()
        last_revision[0] = loaded.revision
        options = replace(settings.apply, held=frozenset(held))
        with Swarm.connect(settings.docker_host) as swarm:
            prepared = converge.prepare(
                loaded,
                swarm,
                key_file=settings.fingerprint_key_file,
                prune_orphans=settings.apply.prune_orphans,
            )
            managed = sum(1 for s in prepared.live.secrets if s.managed)
            for warning in prepared.plan.warnings:
                log.warning("%s", warning)
            if prepared.plan.empty:
                log.info("in sync (%d managed versions, revision %s)", managed, loaded.revision or "-")
                return TickResult(ok=True, changed=False, revision=loaded.revision, managed_secrets=managed)
            result = executor.execute(prepared.plan, prepared.desired, loaded.values, swarm, options)
        for warning in result.warnings:
            if warning not in prepared.plan.warnings:  # those were logged above
                log.warning("%s", warning)
        held.update(r.key for r in result.rollouts if r.failed_rollout and r.key is not None)
        failures = [f"{r.service}: {r.detail}" for r in result.rollouts if not r.ok]
        problems = [*result.errors, *(f"blocked {b}" for b in result.blocked), *failures]
        return TickResult(
            ok=result.ok,
            changed=result.changed,
            revision=loaded.revision,
            created=len(result.created),
            removed=len(result.removed),
            rollouts=dict(collections.Counter(r.outcome for r in result.rollouts)),
            drift_corrected=sum(1 for r in result.rollouts if r.drift and r.ok),
            managed_secrets=managed + len(result.created) - len(result.removed),
            error="; ".join(problems)[:500] or None,
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
