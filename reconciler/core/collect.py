"""Rollback-safe garbage collection: which superseded versions to remove and which to keep, and why.

The planner hands over one :class:`Scope` per (set, logical secret) it may collect; :func:`collect`
returns :class:`RemoveSecret` actions and :class:`Kept` notes. A superseded version stays when anything
may still need it, because the engine's own in-use check reads only each service's current Spec
(moby/swarmkit#2509):

* a service's current Spec references it — including services this very plan is about to move away
  from it, since their Spec becomes PreviousSpec after the update;
* a service's PreviousSpec references it (what ``docker service rollback`` brings back);
* a task that is not shut down yet uses it (old tasks of a rollout still running);
* it is among the newest ``keep`` unprotected superseded versions of its set.

This module is pure: no docker, no subprocess, no clock, no I/O. It never removes the current version
of a secret, an unmanaged secret, or anything outside the scopes it is given.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.core.model import LiveSecret, LiveState
from reconciler.core.plan import Kept, RemoveSecret

__all__ = ["Cause", "Scope", "collect", "protections"]


class Cause(enum.Enum):
    """Why a scope's versions are superseded; only the removal reason depends on it."""

    SUPERSEDED = "superseded"
    """The secret is declared; every version but the current one is superseded."""
    DELETED = "deleted"
    """The secret is no longer in its set's manifest: every version is superseded."""
    ORPHANED = "orphaned"
    """The set has no loaded manifest and ``--prune-orphans`` was given."""


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


def collect(scopes: Iterable[Scope], live: LiveState) -> tuple[tuple[RemoveSecret, ...], tuple[Kept, ...]]:
    """Removals and kept versions for ``scopes``, each sorted by set, secret, version."""
    users: dict[str, str] | None = None  # worked out at the first superseded version (often never)
    removals: list[RemoveSecret] = []
    kept: list[Kept] = []
    for scope in scopes:
        superseded = sorted(
            (v for v in scope.versions if v.id != scope.current_id),
            key=lambda v: (v.version or 0, v.name, v.id),
            reverse=True,  # newest first, so `keep` spares the newest
        )
        if superseded and users is None:
            users = protections(live)
        spared = 0
        for version in superseded:
            number = version.version or 0
            assert users is not None
            reason = users.get(version.id, "")
            if not reason and spared < scope.keep:
                spared += 1
                reason = f"kept: spec.keep={scope.keep}"
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
                    reason=_removal_reason(scope, number),
                )
            )
    removals.sort(key=lambda r: (r.set_name, r.secret, r.version, r.name))
    kept.sort(key=lambda k: (k.set_name, k.secret, k.version, k.name))
    return tuple(removals), tuple(kept)


def _removal_reason(scope: Scope, number: int) -> str:
    if scope.cause is Cause.ORPHANED:
        return f"set '{scope.set_name}' is orphaned (--prune-orphans) and nothing references v{number}"
    if scope.cause is Cause.DELETED or scope.current_version is None:
        return f"{scope.secret} was removed from the manifest and nothing references v{number}"
    return f"superseded by v{scope.current_version} and no longer referenced"


def protections(live: LiveState) -> dict[str, str]:
    """secret id -> why it must stay (Spec, PreviousSpec, running tasks); absent ids are free."""
    in_use: dict[str, set[str]] = defaultdict(set)
    rollback: dict[str, set[str]] = defaultdict(set)
    for service in live.services:
        for ref in service.refs:
            in_use[ref.secret_id].add(service.name)
        for ref in service.previous_refs:
            rollback[ref.secret_id].add(service.name)
    reasons: dict[str, str] = {}
    for secret_id in set(in_use) | set(rollback) | set(live.task_secret_ids):
        parts = []
        if secret_id in in_use:
            parts.append(f"in use by {', '.join(sorted(in_use[secret_id]))}")
        if secret_id in rollback:
            parts.append(f"rollback target of {', '.join(sorted(rollback[secret_id]))} (PreviousSpec)")
        if secret_id in live.task_secret_ids:
            parts.append("used by tasks still running")
        reasons[secret_id] = "; ".join(parts)
    return reasons
