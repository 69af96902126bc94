"""Wiring for ``swarm-secrets run``: the reconcile tick and the Docker events feed for the loop.

:func:`make_tick` returns the :data:`~reconciler.daemon.types.Tick` the loop calls: load and resolve the
manifests (a bad commit fails here, before the swarm is touched), connect, and :func:`converge
<reconciler.converge.converge>` with the loop's auto-approval, then summarise the outcome as a
:class:`~reconciler.daemon.types.TickResult`, with the secrets' ages, due rotations and superseded
versions (``monitor.py``) and when the next scheduled rotation falls due. When the swarm moved under the
tick (it changed between the tick's plan and its execution, or another writer superseded a rollout),
the tick is not ok and asks for a follow-up (``TickResult.follow_up``): the loop ticks again at once,
planning from the swarm as it is. It connects anew on every tick, so an engine restart between ticks
costs one failed tick at most.

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
from reconciler.daemon import monitor
from reconciler.daemon.types import Reason, Tick, TickRequest, TickResult, error_class, failure
from reconciler.display import count
from reconciler.engine import lease
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.lease import LeaseSettings
from reconciler.engine.stackdeploy import DockerCli, find_docker_cli
from reconciler.engine.swarm import Swarm
from reconciler.errors import (
    ManifestError,
    PolicyViolation,
    ProblemsError,
    SourceError,
    SwarmSecretsError,
)
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
    docker_cli: str | None = None
    """The docker CLI that deploys ``kind: Stack`` manifests (``--docker-cli``); None: docker on PATH."""


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
    reported: dict[str, str] = {}  # what was logged about each failing set (``""``: unattributed)

    def tick(request: TickRequest) -> TickResult:
        manifests = request.manifests_dir or settings.manifests
        boundary = settings.boundary
        if request.source_root is not None:  # a git checkout: sources stay inside it
            boundary = replace(boundary, source_root=request.source_root)
        # One set's failure does not stop the others (converge: isolated sets are held back).
        loaded = converge.load(
            [manifests],
            revision=request.revision,
            boundary=boundary,
            complete=settings.apply.prune_orphans,
            isolate=True,
        )
        if not loaded.sets:  # nothing to reconcile at this revision: no need to touch the swarm
            _report_failing(loaded, reported)
            return _nothing_loaded(loaded, failing_classes(loaded, frozenset()))
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
        # Stacks are deployed by the docker CLI (found before anything changes: a missing one waits for
        # a change like any wrong setting), against the engine this tick talks to.
        cli = find_docker_cli(settings.docker_cli) if loaded.stacks else None
        with Swarm.connect(settings.docker_host) as swarm:
            if cli is not None:
                run_settings = replace(run_settings, deployer=DockerCli(cli, host=swarm.url))
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
            watch = monitor.after_tick(swarm, outcome)  # ages, rotations due, superseded versions
        prepared = outcome.prepared
        _report_failing(prepared.loaded, reported)
        failing = failing_classes(prepared.loaded, prepared.held_back)
        if not prepared.loaded.sets:  # the live checks held back every set that loaded
            return _nothing_loaded(prepared.loaded, failing)
        managed = sum(1 for s in prepared.live.secrets if s.managed)
        result = outcome.result
        if result is None:
            log.info("in sync (%d managed versions, revision %s)", managed, loaded.revision or "-")
            return TickResult(
                ok=True,
                changed=False,
                revision=loaded.revision,
                managed_secrets=managed,
                secrets=watch.secrets,
                next_rotation=watch.next_rotation,
                failing_sets=failing,
            )
        for warning in result.warnings:
            if warning not in prepared.plan.warnings:  # those were logged before the apply
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
            drift_causes=dict(
                collections.Counter(r.drift_cause for r in result.rollouts if r.drift and r.ok)
            ),
            stacks_deployed=len(result.deployed),
            managed_secrets=managed + len(result.created) - len(result.removed),
            error="; ".join(problems)[:500] or None,
            error_class=None if result.ok and not lost else "rollout" if not result.ok else "engine",
            secrets=watch.secrets,
            next_rotation=watch.next_rotation,
            failing_sets=failing,
            follow_up=bool(result.stale) or any(r.outcome is Outcome.SUPERSEDED for r in result.rollouts),
        )

    return tick


STACK_KEY = "stack/"
"""How a Stack manifest that is not deployed is named among the failing sets (no set name has a slash)."""


def failing_classes(loaded: converge.Loaded, held_back: frozenset[str]) -> dict[str, str]:
    """Each held-back set with the class of its failure: its own problems' (manifest, policy, source),
    or ``manifest`` for a set held back because a file that names no set cannot be read."""
    classes = {name: error_class(error) for name, error in loaded.failing.items()}
    classes.update({name: "manifest" for name in held_back if name not in classes})
    classes.update(
        {f"{STACK_KEY}{name}": error_class(error) for name, error in loaded.failing_stacks.items()}
    )
    return dict(sorted(classes.items()))


def _nothing_loaded(loaded: converge.Loaded, failing: dict[str, str]) -> TickResult:
    """Every set failed: the tick failed as a whole, with an error retrying cannot fix."""
    errors: list[ProblemsError] = [*([loaded.unattributed] if loaded.unattributed else [])]
    errors += loaded.failing.values()
    assert errors, "an isolated load without sets has problems (at least: no SecretSet found)"
    # One error of the weightiest kind present, holding every problem (the log line counts them).
    kind = next(
        k for k in (ManifestError, PolicyViolation, SourceError) if any(isinstance(e, k) for e in errors)
    )
    combined = kind([problem for error in errors for problem in error.problems])
    return failure(combined, loaded.revision, failing_sets=failing)


def _report_failing(loaded: converge.Loaded, reported: dict[str, str]) -> None:
    """Log why sets are held back: every problem when it is new, a reminder at debug level when it is
    not (the loop would otherwise repeat the same lines every interval)."""
    now = {name: str(error) for name, error in loaded.failing.items()}
    now.update({f"{STACK_KEY}{name}": str(error) for name, error in loaded.failing_stacks.items()})
    if loaded.unattributed is not None:
        now[""] = str(loaded.unattributed)
    for name, text in now.items():
        stack = name.removeprefix(STACK_KEY) if name.startswith(STACK_KEY) else None
        who = f"stack '{stack}'" if stack else f"set '{name}'" if name else "a problem that names no set"
        if reported.get(name) == text:
            log.debug("%s: still held back", who)
            continue
        what = (
            f"stack '{stack}' is not deployed (the sets are reconciled without it)"
            if stack
            else f"set '{name}' is held back (nothing of it is changed; the sets that load are reconciled)"
            if name
            else "a manifest that names no set cannot be read: every set on the swarm that did not load "
            "is held back (nothing is pruned)"
        )
        for line in text.splitlines():
            log.error("%s: %s", what, line)
    for name in sorted(set(reported) - set(now)):
        again = (
            f"stack '{name.removeprefix(STACK_KEY)}' loads again"
            if name.startswith(STACK_KEY)
            else f"set '{name}' loads again"
            if name
            else "every manifest names its set again"
        )
        log.info("%s", again)
    reported.clear()
    reported.update(now)


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
