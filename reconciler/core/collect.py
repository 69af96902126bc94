"""Rollback-safe garbage collection: which superseded versions to remove and which to keep, and why.

The planner hands over one :class:`Scope` per (set, logical secret) it may collect; :func:`collect`
returns :class:`RemoveSecret` actions and :class:`Kept` notes. A superseded version stays when anything
may still need it, because the engine's own in-use check reads only each service's current Spec
(moby/swarmkit#2509):

* a service's current Spec references it — including services this very plan is about to move away
  from it, since their Spec becomes PreviousSpec after the update;
* a service's PreviousSpec references it (what ``docker service rollback`` brings back);
* a task that is not shut down yet and can still run uses it (old tasks of a rollout still running,
  tasks not started yet);
* it is among the newest ``keep`` unprotected superseded versions of its set.

Exactness: the plan shows what the executor will remove, so the rules are applied to the swarm as it
will be once the plan's own service updates are made (``after``, predicted by the planner). A version
protected now only as the PreviousSpec of services the plan updates is free afterwards: it becomes a
:class:`RemoveSecret` with ``after`` naming those services, and the executor removes it after their
rollouts only if a fresh observation still finds it free.

A task on a node that is **down** (or that has left the swarm) does not keep a version: the managers go
on listing it as running for a day, but it cannot start again, and a container it may still have on
that node keeps its secret files without the Swarm object. A node that is ``unknown`` (a new leader has
not heard from it yet) or ``disconnected`` still counts as live. The reasons say when tasks on a down
node use a version, so ``status`` can explain it.

This module is pure: no docker, no subprocess, no clock, no I/O. It never removes the current version
of a secret, an unmanaged secret, or anything outside the scopes it is given.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from reconciler.core.model import LiveSecret, LiveService, LiveState
from reconciler.core.plan import Kept, RemoveSecret

__all__ = [
    "Cause",
    "KeptBy",
    "Scope",
    "collect",
    "current_version",
    "kept_by",
    "needs_tasks",
    "protections",
    "stranded",
]


class Cause(enum.Enum):
    """Why a scope's versions are superseded; only the removal reason depends on it."""

    SUPERSEDED = "superseded"
    """The secret is declared; every version but the current one is superseded."""
    DELETED = "deleted"
    """The secret is no longer in its set's manifest: every version is superseded."""
    ORPHANED = "orphaned"
    """The set has no loaded manifest and ``--prune-orphans`` was given."""


class KeptBy(enum.StrEnum):
    """Why a superseded version is still in the swarm, as a class (for ``status`` and ``/metrics``):
    the first that applies, in this order. :data:`NONE` means nothing keeps it: the next apply
    removes it; one that stays so is a bug."""

    IN_USE = "in_use"
    """A service's current Spec references it (e.g. its rollout to the newer version failed)."""
    ROLLBACK_TARGET = "rollback_target"
    """A service's PreviousSpec references it: ``docker service rollback`` would bring it back."""
    RUNNING_TASK = "running_task"
    """A task that can still run uses it (an old task of a rollout, not stopped yet)."""
    KEEP = "keep"
    """Among the newest ``spec.keep`` superseded versions nothing else keeps."""
    NONE = "none"
    """Nothing: collected by the next apply (or ``apply --prune-orphans`` for an orphaned set)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """The managed versions of one logical secret of one set, and what counts as current."""

    set_name: str
    secret: str
    versions: tuple[LiveSecret, ...]
    """Managed versions in the swarm (any order)."""
    current_id: str | None = None
    """Id of the current version when it exists in the swarm (never collected)."""
    current_version: int | None = None
    """Number of the current version, existing or created by the plan; for reasons only."""
    keep: int = 0
    cause: Cause = Cause.SUPERSEDED


def current_version(
    versions: Iterable[LiveSecret], fingerprint: str | None, *, generator: str | None = None
) -> LiveSecret | None:
    """The one idea of "current": the newest version whose fingerprint label is ``fingerprint`` (the
    planner: None when the value has no version yet). Without a fingerprint (``status`` reads no
    values) the newest version, which is the planner's choice too unless the value returned to an
    older version. A generated secret has no fingerprint: its current version is the newest one made
    by ``generator`` (its generator label, ``urlsafe:48``)."""
    if generator is not None:
        candidates = [v for v in versions if v.generator == generator]
    else:
        candidates = [v for v in versions if fingerprint is None or v.fingerprint == fingerprint]
    if len(candidates) == 1:  # the usual case (one version per secret): no sort keys to build
        return candidates[0]
    return max(candidates, key=lambda v: (v.version or 0, v.name, v.id), default=None)


def collect(
    scopes: Iterable[Scope], live: LiveState, *, after: LiveState | None = None
) -> tuple[tuple[RemoveSecret, ...], tuple[Kept, ...]]:
    """Removals and kept versions for ``scopes``, each sorted by set, secret, version.

    ``after`` is ``live`` once the plan's service updates are made (default: ``live``): what stays
    protected there is kept (with the reason that holds now); what is protected now but free there is
    removed after the rollouts of the services whose PreviousSpec holds it.
    """
    scopes = tuple(scopes)
    if not scopes:  # the steady state: no reasons to write for a thousand versions in use
        return (), ()
    users = protections(live)
    users_after = users if after is None or after is live else protections(after)
    rollback_of = _rollback_services(live) if users_after is not users else {}
    down_users = stranded(live)
    removals: list[RemoveSecret] = []
    kept: list[Kept] = []
    for scope in scopes:
        superseded = sorted(
            (v for v in scope.versions if v.id != scope.current_id),
            key=lambda v: (v.version or 0, v.name, v.id),
            reverse=True,  # newest first, so `keep` spares the newest
        )
        spared = 0
        for version in superseded:
            number = version.version or 0
            # Kept when still protected once the plan's updates are made; the reason that holds now
            # (e.g. "in use by web", which the update turns into "rollback target of web").
            reason = (users.get(version.id) or users_after[version.id]) if version.id in users_after else ""
            waits_for = rollback_of.get(version.id, ()) if version.id in users and not reason else ()
            if not reason and spared < scope.keep:
                spared += 1
                reason = f"kept: spec.keep={scope.keep}"
                if version.id in down_users:
                    reason += f"; {down_users[version.id]} also use it but cannot start again"
            if reason:
                kept.append(
                    Kept(
                        name=version.name,
                        set_name=scope.set_name,
                        secret=scope.secret,
                        version=number,
                        reason=reason,
                    )
                )
                continue
            removals.append(
                RemoveSecret(
                    secret_id=version.id,
                    name=version.name,
                    set_name=scope.set_name,
                    secret=scope.secret,
                    version=number,
                    reason=_removal_reason(scope, number, waits_for, down_users.get(version.id))
                    + (
                        " (once the old tasks still using it have stopped)"
                        if version.id in users and version.id in live.stopping_task_secret_ids
                        else ""
                    ),
                    after=waits_for,
                )
            )
    removals.sort(key=lambda r: (r.set_name, r.secret, r.version, r.name))
    kept.sort(key=lambda k: (k.set_name, k.secret, k.version, k.name))
    return tuple(removals), tuple(kept)


def _removal_reason(scope: Scope, number: int, after: tuple[str, ...], down_users: str | None) -> str:
    reason = _why_free(scope, number, after)
    if down_users:
        reason += f" (only {down_users} use it; they cannot start again)"
    return reason


def _why_free(scope: Scope, number: int, after: tuple[str, ...]) -> str:
    if after:
        if len(after) == 1:
            when = f"after {after[0]}'s rollout: no longer its rollback target"
        else:
            when = f"after the rollouts of {', '.join(after)}: no longer their rollback target"
        if scope.cause is Cause.ORPHANED:
            return f"set '{scope.set_name}' is orphaned (--prune-orphans); {when}"
        if scope.cause is Cause.DELETED or scope.current_version is None:
            return f"{scope.secret} was removed from the manifest; {when}"
        return f"superseded by v{scope.current_version}; {when}"
    if scope.cause is Cause.ORPHANED:
        return f"set '{scope.set_name}' is orphaned (--prune-orphans) and nothing references v{number}"
    if scope.cause is Cause.DELETED or scope.current_version is None:
        return f"{scope.secret} was removed from the manifest and nothing references v{number}"
    return f"superseded by v{scope.current_version} and no longer referenced"


def _rollback_services(live: LiveState) -> dict[str, tuple[str, ...]]:
    """secret id -> services whose PreviousSpec references it, sorted."""
    services: dict[str, set[str]] = defaultdict(set)
    for service in live.services:
        for ref in service.previous_refs:
            services[ref.secret_id].add(service.name)
    return {secret_id: tuple(sorted(names)) for secret_id, names in services.items()}


def needs_tasks(
    secrets: Iterable[LiveSecret], services: Iterable[LiveService], sets: Collection[str] | None = None
) -> bool:
    """Whether tasks can change a plan: only when some managed version (of ``sets``, the sets the plan
    may collect from; None: every set) is referenced by no service's current Spec. A version in a Spec
    is kept whatever the tasks do (and the plan's own updates turn it into a rollback target, kept too),
    so in the steady state, where every version is in use, a plan needs neither the task list nor the
    node list (``observe(lean=True)``). Versions of other sets (orphans not pruned, sets held back)
    are never removed by the plan, so their tasks do not matter to it."""
    in_spec = {ref.secret_id for service in services for ref in service.refs}
    return any(
        secret.managed and (sets is None or secret.set_name in sets) and secret.id not in in_spec
        for secret in secrets
    )


def _references(live: LiveState) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(secret id -> services whose Spec references it, secret id -> services whose PreviousSpec does)."""
    in_use: dict[str, set[str]] = defaultdict(set)
    rollback: dict[str, set[str]] = defaultdict(set)
    for service in live.services:
        for ref in service.refs:
            in_use[ref.secret_id].add(service.name)
        for ref in service.previous_refs:
            rollback[ref.secret_id].add(service.name)
    return in_use, rollback


def kept_by(live: LiveState) -> dict[str, KeptBy]:
    """secret id -> the first protection that keeps it (:class:`KeptBy`, the same rules as
    :func:`protections`); absent ids are free. ``spec.keep`` is the collector's to apply."""
    in_use, rollback = _references(live)
    runnable = _task_users(live)[0]
    classes: dict[str, KeptBy] = dict.fromkeys(runnable, KeptBy.RUNNING_TASK)
    classes.update(dict.fromkeys(rollback, KeptBy.ROLLBACK_TARGET))
    classes.update(dict.fromkeys(in_use, KeptBy.IN_USE))
    return classes


def protections(live: LiveState) -> dict[str, str]:
    """secret id -> why it must stay (Spec, PreviousSpec, tasks that can still run); absent ids are
    free. When tasks on a down node use a protected version too, the reason says that they do not
    keep it."""
    in_use, rollback = _references(live)
    runnable, down_users = _task_users(live)
    reasons: dict[str, str] = {}
    for secret_id in set(in_use) | set(rollback) | runnable:
        parts = []
        if secret_id in in_use:
            parts.append(f"in use by {', '.join(sorted(in_use[secret_id]))}")
        if secret_id in rollback:
            parts.append(f"rollback target of {', '.join(sorted(rollback[secret_id]))} (PreviousSpec)")
        if secret_id in runnable:
            parts.append("used by tasks still running")
        if secret_id in down_users:
            parts.append(f"{down_users[secret_id]} also use it but cannot start again: they do not keep it")
        reasons[secret_id] = "; ".join(parts)
    return reasons


def stranded(live: LiveState) -> dict[str, str]:
    """secret id -> "tasks on down node X (host)" for versions that tasks on down nodes (or nodes that
    left the swarm) use. Those tasks keep nothing: see the module docstring."""
    return _task_users(live)[1]


def _task_users(live: LiveState) -> tuple[set[str], dict[str, str]]:
    """(IDs of secrets that tasks which can still run use, secret id -> the down nodes whose tasks use
    it, as text)."""
    nodes = {node.id: node for node in live.nodes}
    runnable: set[str] = set()
    down_users: dict[str, str] = {}
    for secret_id in live.task_secret_ids:
        placed = live.task_nodes.get(secret_id)
        if placed is None or not nodes:
            runnable.add(secret_id)  # where its tasks are is not known: they may run
            continue
        down: list[str] = []
        gone: list[str] = []
        for node_id in placed:
            node = nodes.get(node_id)
            if not node_id or (node is not None and not node.down):
                runnable.add(secret_id)  # not placed yet, or on a node that is up (or not known down)
            elif node is not None:
                down.append(node.label)
            else:
                gone.append(node_id[:12])
        texts = []
        if down:
            texts.append(("down node " if len(down) == 1 else "down nodes ") + ", ".join(sorted(down)))
        if gone:
            texts.append(
                ("node " if len(gone) == 1 else "nodes ") + ", ".join(sorted(gone)) + " (left the swarm)"
            )
        if texts:
            down_users[secret_id] = "tasks on " + " and on ".join(texts)
    return runnable, down_users
