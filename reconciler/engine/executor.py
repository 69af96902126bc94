"""Carry out a plan against the swarm: create versions, roll services, wait, collect.

Order and safety rules:

1. **Create** every new version the plan lists (all values were resolved before anything runs).
   A 409 means a concurrent run created the name first: observe again and re-plan (bounded).
2. **Re-observe and re-plan**, then **update** services concurrently (``concurrency`` workers). Each
   update is a raw spec round-trip that replaces only the secret references; a stale version
   (``update out of sequence``) is re-inspected and retried. Every rollout is watched until it
   converges, rolls back, pauses or times out; a failure is reported per service and the others
   carry on. Running the updates from a fresh plan keeps the run level-based: what is written is what
   the swarm needs *now*, never a stale diff.
3. **Re-observe and collect**: the planner is asked again after the rollouts, so a version that just
   became a rollback target (PreviousSpec) or is still used by old tasks is kept; only removals run.

A crash between any two steps leaves a swarm the next run converges from: a created but unused
version is either reused (same fingerprint) or collected; a half-rolled service is finished or
reported; nothing is deleted that a service or a rollback can still need.

This module never sees Engine JSON except the secret-reference list it rewrites; it never logs a
value (values go straight from the resolved map into ``Swarm.create_secret``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core import planner
from reconciler.core.desired import Values
from reconciler.core.model import DesiredState, LiveState, normalize_target
from reconciler.core.plan import Plan, RefChange, UpdateService
from reconciler.core.planner import OLD_SEPARATOR
from reconciler.engine.swarm import Swarm, secret_ids_of
from reconciler.errors import SwarmConflict, SwarmError, SwarmSecretsError
from reconciler.logs import audit

log = logging.getLogger(__name__)

MAX_REPLANS = 3
MAX_UPDATE_ATTEMPTS = 5

OUTCOME_CONVERGED = "converged"
OUTCOME_ROLLED_BACK = "rolled_back"
OUTCOME_PAUSED = "paused"
OUTCOME_TIMED_OUT = "timed_out"
OUTCOME_FAILED = "failed"
OUTCOME_UNCHANGED = "unchanged"
OUTCOME_HELD = "held"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyOptions:
    timeout: float = 300.0
    """Seconds to wait for each service's rollout before reporting it timed out."""
    concurrency: int = 16
    """How many service rollouts run (and are watched) at the same time. 16: a rotation touching up to
    16 services rolls them in one wave (bench/bench_rotation_floor.py: with 4, eight services took two
    waves, 1.7-1.8x the by-hand floor; sixteen took four, 2x). Each service is still paced by its own
    update config (README: why 16 is safe on large swarms)."""
    prune_orphans: bool = False
    """Also revoke and collect sets that have managed secrets but no loaded manifest."""
    poll_interval: float = 0.25
    """Seconds between two looks at a rollout."""
    held: frozenset[tuple[str, frozenset[str]]] = frozenset()
    """(service id, secret names) of updates that rolled back or paused before: not tried again (the
    long-running loop sets this so a bad value does not restart a service over and over); an update
    to other versions, e.g. after the next commit, goes ahead."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutResult:
    service: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    drift: bool = False
    """The update corrected drift (the manifest had not changed)."""
    key: tuple[str, frozenset[str]] | None = None
    """:func:`hold_key` of the update, so a caller can hold it after a failure."""

    @property
    def ok(self) -> bool:
        return self.outcome in (OUTCOME_CONVERGED, OUTCOME_UNCHANGED)

    @property
    def failed_rollout(self) -> bool:
        """Swarm rolled the service back or paused it: retrying the same update would fail again."""
        return self.outcome in (OUTCOME_ROLLED_BACK, OUTCOME_PAUSED)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    created: tuple[str, ...] = ()
    rollouts: tuple[RolloutResult, ...] = ()
    removed: tuple[str, ...] = ()
    kept: int = 0
    blocked: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocked and all(r.ok for r in self.rollouts)

    @property
    def changed(self) -> bool:
        return bool(
            self.created or self.removed or any(r.outcome != OUTCOME_UNCHANGED for r in self.rollouts)
        )


ProgressFn = Callable[[str, str, str], None]
"""``progress(service, state, detail)``: called on every rollout state change (for displays)."""


def observe_and_plan(
    desired: DesiredState, swarm: Swarm, *, prune_orphans: bool = False
) -> tuple[LiveState, Plan]:
    live = swarm.observe()
    return live, planner.plan(desired, live, prune_orphans=prune_orphans)


# --- service reference rewriting -------------------------------------------------------------------


def hold_key(update: UpdateService) -> tuple[str, frozenset[str]]:
    """What identifies an update for :attr:`ApplyOptions.held`: the service and the versions it gets."""
    return update.service_id, frozenset(c.new for c in update.changes if c.new)


def rewrite_secrets(
    current: Sequence[Mapping[str, Any]], changes: Sequence[RefChange], ids: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The new ``ContainerSpec.Secrets`` list: ``current`` with ``changes`` applied.

    The raw-JSON twin of :func:`reconciler.core.planner.apply_ref_changes` (same rules: a change drops the
    references at its path that are named in ``old``, then adds ``new``), working on the engine's
    dicts so that fields we do not model survive byte for byte. UID, GID and Mode are always sent: the
    raw API has no defaults (an omitted Mode means a file of mode 000, an omitted UID fails every task).
    A reference the plan did not know about at a path we write means the service changed since it was
    planned: :class:`SwarmConflict`.
    """
    result = [dict(raw) for raw in current]
    for change in changes:
        olds = set(change.old.split(OLD_SEPARATOR)) if change.old else set()
        result = [r for r in result if not (_path(r) == change.path and r.get("SecretName") in olds)]
        if change.new is not None:
            wanted = _ref_json(change, ids)
            others = [r for r in result if _path(r) == change.path]
            if others == [wanted]:
                continue  # someone (a concurrent run) already wrote exactly this
            if others:
                raise SwarmConflict(f"{change.path} changed since the plan was made")
            result.append(wanted)
    return result


def _path(raw: Mapping[str, Any]) -> str:
    return normalize_target(str((raw.get("File") or {}).get("Name", "")))


def _ref_json(change: RefChange, ids: Mapping[str, str]) -> dict[str, Any]:
    assert change.new is not None
    secret_id = ids.get(change.new)
    if secret_id is None:
        # Deleted since we observed (a concurrent run?): observing again settles it.
        raise SwarmConflict(f"secret {change.new} disappeared before it could be referenced")
    return {
        "SecretID": secret_id,
        "SecretName": change.new,
        "File": {
            "Name": change.target or change.path,
            "UID": change.uid,
            "GID": change.gid,
            "Mode": change.mode,
        },
    }


# --- rollouts --------------------------------------------------------------------------------------


Replan = Callable[[str], "tuple[UpdateService | None, Mapping[str, str]]"]
"""``replan(service_id)``: observe again and return that service's fresh update (None: nothing to do)
and the current secret name → id map."""


def _update_service(
    swarm: Swarm,
    action: UpdateService,
    ids: Mapping[str, str],
    options: ApplyOptions,
    progress: ProgressFn,
    replan: Replan,
    revision: str | None,
) -> RolloutResult:
    started = time.monotonic()
    drift = any(c.reason.startswith("drift") for c in action.changes)
    try:
        for attempt in range(1, MAX_UPDATE_ATTEMPTS + 1):
            raw = swarm.inspect_service(action.service_id)
            spec = raw.get("Spec") or {}
            current = (spec.get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or []
            try:
                new = rewrite_secrets(current, action.changes, ids)
            except SwarmConflict:
                # The service changed since it was planned (a concurrent run, a person): plan it again.
                fresh, ids = replan(action.service_id)
                if fresh is None:
                    return RolloutResult(
                        service=action.service, outcome=OUTCOME_UNCHANGED, detail="already up to date"
                    )
                action = fresh
                continue
            if new == current:
                return RolloutResult(
                    service=action.service, outcome=OUTCOME_UNCHANGED, detail="already up to date"
                )
            baseline = (raw.get("UpdateStatus") or {}).get("StartedAt")
            try:
                swarm.write_service_secrets(raw, new)
            except SwarmConflict:
                log.info(
                    "service %s changed while we updated it (attempt %d); inspecting again",
                    action.service,
                    attempt,
                )
                continue
            audit(
                "service_updated",
                service=action.service,
                secrets=sorted({f"{c.set_name}/{c.secret}" for c in action.changes if c.secret}),
                changes=[f"{c.path}:{c.old}->{c.new}" for c in action.changes],
                revision=revision or "",
            )
            written = frozenset(r["SecretID"] for r in new) - secret_ids_of(spec)
            progress(action.service, "updating", f"{len(action.changes)} reference(s) changed")
            result = _watch(
                swarm, action.service, action.service_id, written, baseline, options, progress, started
            )
            return RolloutResult(
                service=result.service,
                outcome=result.outcome,
                detail=result.detail,
                seconds=time.monotonic() - started,
                drift=drift,
            )
        return RolloutResult(
            service=action.service,
            outcome=OUTCOME_FAILED,
            detail=f"the service kept changing under us ({MAX_UPDATE_ATTEMPTS} attempts); "
            "the next run retries",
            seconds=time.monotonic() - started,
        )
    except SwarmSecretsError as exc:
        progress(action.service, OUTCOME_FAILED, str(exc))
        return RolloutResult(
            service=action.service,
            outcome=OUTCOME_FAILED,
            detail=str(exc),
            seconds=time.monotonic() - started,
        )


def _watch(
    swarm: Swarm,
    service: str,
    service_id: str,
    written: frozenset[str],
    baseline_started_at: str | None,
    options: ApplyOptions,
    progress: ProgressFn,
    started: float,
) -> RolloutResult:
    """Wait until the rollout converged, rolled back, paused or timed out (the docker CLI's rules:
    a terminal UpdateStatus *and* the up-to-date tasks running, as many as desired)."""
    deadline = started + options.timeout
    last = ""
    task_error = ""
    rollback_why = ""
    while True:
        probe = swarm.rollout_probe(service_id)
        fresh = probe.state is not None and probe.started_at != baseline_started_at
        state = probe.state if fresh else None
        task_error = task_error or (probe.failed_tasks[0] if probe.failed_tasks else "")
        status = f"{state or 'pending'} {probe.running}/{probe.desired} running"
        if status != last:
            progress(service, state or "updating", f"{probe.running}/{probe.desired} tasks running")
            last = status
        rolling_back = state in ("rollback_started", "rollback_paused", "rollback_completed")
        if rolling_back or not written <= probe.spec_secret_ids:
            # Swarm (FailureAction: rollback) or a person rolled back: the old versions run again. Keep
            # watching until the rollback itself ends, so the report says what state the service is in.
            rollback_why = (
                rollback_why or probe.message or "the service spec no longer holds the new versions"
            )
            settled = state in ("rollback_completed", "rollback_paused") or not rolling_back
            if settled or time.monotonic() >= deadline:
                why = rollback_why + (f"; task error: {task_error}" if task_error else "")
                end = "" if settled else "; the rollback was still running at the timeout"
                where = f"{state or 'spec reverted'}, {probe.running}/{probe.desired} running{end}"
                detail = f"rolled back: {why} ({where})"
                progress(service, OUTCOME_ROLLED_BACK, detail)
                return RolloutResult(service=service, outcome=OUTCOME_ROLLED_BACK, detail=detail)
            time.sleep(options.poll_interval)
            continue
        if state == "paused":
            why = (probe.message or "update paused") + (f"; task error: {task_error}" if task_error else "")
            progress(service, OUTCOME_PAUSED, why)
            return RolloutResult(
                service=service,
                outcome=OUTCOME_PAUSED,
                detail=f"paused: {why} (fix the cause, then `docker service update --rollback` or re-run)",
            )
        if probe.running >= probe.desired and (state is None or state == "completed"):
            progress(service, OUTCOME_CONVERGED, f"{probe.running}/{probe.desired} tasks running")
            return RolloutResult(
                service=service,
                outcome=OUTCOME_CONVERGED,
                detail=f"{probe.running}/{probe.desired} tasks running",
            )
        if time.monotonic() >= deadline:
            detail = f"timed out after {options.timeout:.0f} s ({status})"
            if task_error:
                detail += f"; task error: {task_error}"
            progress(service, OUTCOME_TIMED_OUT, detail)
            return RolloutResult(service=service, outcome=OUTCOME_TIMED_OUT, detail=detail)
        time.sleep(options.poll_interval)


# --- the whole apply -------------------------------------------------------------------------------


def _log_progress(service: str, state: str, detail: str) -> None:
    log.info("rollout %s: %s (%s)", service, state, detail)


def execute(
    plan: Plan,
    desired: DesiredState,
    values: Values,
    swarm: Swarm,
    options: ApplyOptions = ApplyOptions(),
    progress: ProgressFn | None = None,
) -> ApplyResult:
    """Apply ``plan`` (as shown to the user) and converge: see the module docstring for the steps."""
    report = progress or _log_progress
    created: list[str] = []
    errors: list[str] = []
    warnings: list[str] = list(plan.warnings)

    # 1. create versions; a conflict means someone else moved: observe, re-plan, create what is left.
    current = plan
    for attempt in range(MAX_REPLANS + 1):
        conflict = False
        for action in current.creates:
            try:
                swarm.create_secret(action.name, values[(action.set_name, action.secret)], action.labels)
            except SwarmConflict:
                log.info("%s was created concurrently; observing again", action.name)
                conflict = True
                break
            created.append(action.name)
            audit(
                "secret_created",
                set=action.set_name,
                secret=action.secret,
                version=action.version,
                name=action.name,
                revision=desired.revision or "",
            )
        if not conflict:
            break
        if attempt == MAX_REPLANS:
            errors.append("secrets kept being created concurrently; another apply is running? try again")
            return ApplyResult(created=tuple(created), errors=tuple(errors), warnings=tuple(warnings))
        _, current = observe_and_plan(desired, swarm, prune_orphans=options.prune_orphans)

    # 2. roll services from a fresh plan (level-based: what the swarm needs now).
    live, current = observe_and_plan(desired, swarm, prune_orphans=options.prune_orphans)
    if current.creates:
        # A version vanished between create and now (a concurrent collector): the next run recreates it.
        errors.append("new versions disappeared right after creation (a concurrent run?); run apply again")
    ids = {s.name: s.id for s in live.secrets}

    def replan(service_id: str) -> tuple[UpdateService | None, Mapping[str, str]]:
        fresh_live, fresh = observe_and_plan(desired, swarm, prune_orphans=options.prune_orphans)
        update = next((u for u in fresh.updates if u.service_id == service_id), None)
        return update, {s.name: s.id for s in fresh_live.secrets}

    rollouts: list[RolloutResult] = []
    updates = []
    for update in current.updates:
        if hold_key(update) in options.held:
            rollouts.append(
                RolloutResult(
                    service=update.service,
                    outcome=OUTCOME_HELD,
                    detail=f"not retried: rolling it to {', '.join(sorted(hold_key(update)[1]))} failed "
                    "before; a new commit or a manual reconcile tries again",
                    key=hold_key(update),
                )
            )
        else:
            updates.append(update)
    if updates:
        with ThreadPoolExecutor(
            max_workers=max(1, options.concurrency), thread_name_prefix="rollout"
        ) as pool:
            futures = [
                pool.submit(_update_service, swarm, a, ids, options, report, replan, desired.revision)
                for a in updates
            ]
            rollouts += [replace(f.result(), key=hold_key(a)) for f, a in zip(futures, updates, strict=True)]
    for result in rollouts:
        audit("rollout_finished", service=result.service, outcome=result.outcome, detail=result.detail)

    # 3. collect: ask again now that rollouts moved references into PreviousSpec.
    removed: list[str] = []
    try:
        _, final = observe_and_plan(desired, swarm, prune_orphans=options.prune_orphans)
    except SwarmError as exc:
        errors.append(f"could not observe the swarm for garbage collection: {exc}")
        final = Plan()
    for removal in final.removals:
        try:
            swarm.remove_secret(removal.secret_id, removal.name)
        except SwarmError as exc:
            # e.g. started being used in between: keeping it is always safe.
            warnings.append(f"kept {removal.name}: {exc}")
            continue
        removed.append(removal.name)
        audit(
            "secret_removed",
            set=removal.set_name,
            secret=removal.secret,
            version=removal.version,
            name=removal.name,
            reason=removal.reason,
        )
    return ApplyResult(
        created=tuple(created),
        rollouts=tuple(rollouts),
        removed=tuple(removed),
        kept=len(final.kept),
        blocked=tuple(f"{b.set_name}/{b.secret}: {b.reason}" for b in current.blocked),
        errors=tuple(errors),
        warnings=tuple(dict.fromkeys(warnings)),
    )
