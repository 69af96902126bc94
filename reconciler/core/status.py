"""What the swarm holds, per set and logical secret, for ``swarm-secrets status``.

Built from the live state alone plus the *offline* manifests (sets, their secrets and ``keep``; no
values, no keys), so it runs anywhere the engine is reachable, including where no decryption key is
present. For each secret: the current version, when it was made, the services using it, and every
superseded version with the reason it is kept or the note that the next apply collects it. When tasks
on a node that is down use a version, the note says so and that they do not keep it: "used only by
tasks on down node 3f2a… (host): they cannot start again, so the next apply collects it", or, next to
what does keep it, "tasks on down node … also use it but cannot start again: they do not keep it".

It classifies with the planner's own rules (``core/collect.py``): the same idea of "current"
(:func:`~reconciler.core.collect.current_version`; without values, the newest version) and the same
keep rules (Spec, PreviousSpec, running tasks, ``spec.keep``) through
:func:`~reconciler.core.collect.collect`. Each superseded version also gets the class of what keeps
it (:class:`~reconciler.core.collect.KeptBy`: in use, rollback target, running task, keep, or none),
counted per secret: what ``/metrics`` exports too.

Time (``now``: the swarm's clock, see ``core/schedule.py``): every secret says how old its current
version is and, when the manifest gives ``rotate.every``, whether a rotation is due.
Also: orphaned sets, and unmanaged secrets nothing references (e.g. what a migration replaced; they
are never removed by this tool).

Pure: no docker, no I/O. ``render/status.py`` prints a report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.core import schedule
from reconciler.core.collect import (
    Cause,
    KeptBy,
    Scope,
    collect,
    current_version,
    kept_by,
    protections,
    stranded,
)
from reconciler.core.model import LiveSecret, LiveState, Rotation, SecretSet
from reconciler.core.policy import Governance


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionStatus:
    name: str
    version: int
    created_at: str
    used_by: tuple[str, ...]
    """Services whose current Spec mounts this version."""
    note: str
    """For the current version ``current``; otherwise why it is kept or that it will be collected."""
    kept_by: str = ""
    """For a superseded version: the :class:`KeptBy` class of what keeps it (``none``: nothing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretStatus:
    set_name: str
    secret: str
    current: VersionStatus
    superseded: tuple[VersionStatus, ...]
    age_seconds: float | None = None
    """How old the current version is (the swarm's clock); None when unknown."""
    generated: bool = False
    """The current version's value was generated (it has a generator label)."""
    rotate_every: str | None = None
    """``rotate.every`` as the manifest writes it (``90d``); None without one (or without manifests)."""
    rotate_every_seconds: int | None = None
    rotation_due: bool = False
    """The current version is at least ``rotate.every`` old."""
    kept: Mapping[str, int] = field(default_factory=dict)
    """Superseded versions present, by :class:`KeptBy` class (only classes that occur)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    secrets: tuple[SecretStatus, ...]
    orphaned_sets: tuple[str, ...]
    unmanaged_unreferenced: tuple[str, ...]
    """Secrets without our labels that nothing references (e.g. what a migration replaced, once no
    rollback can bring it back). Never removed by this tool; listed so a person can."""
    unmanaged_referenced: tuple[tuple[str, str], ...]
    """(name, why) of secrets without our labels that a service, a rollback target or a task uses."""
    governance: tuple[Governance, ...] = ()
    """With a policy: the rule governing each loaded set."""


def build_status(
    live: LiveState, sets: Sequence[SecretSet] | None = None, *, now: float | None = None
) -> StatusReport:
    """``sets`` are the loaded manifests (names, secrets, ``keep``, ``rotate``); None when none were
    given. ``now``: the swarm's clock (default: when ``live`` was observed)."""
    now = live.observed_at if now is None else now
    users: dict[str, list[str]] = defaultdict(list)
    for service in live.services:
        for ref in service.refs:
            users[ref.secret_id].append(service.name)
    groups: dict[tuple[str, str], list[LiveSecret]] = defaultdict(list)
    for version in live.secrets:
        if version.managed and version.set_name and version.secret:
            groups[(version.set_name, version.secret)].append(version)
    keeps = {s.name: s.keep for s in sets} if sets is not None else None
    declared = {(s.name, x.secret) for s in sets for x in s.secrets} if sets is not None else None
    rotations: dict[tuple[str, str], Rotation] = {
        (s.name, x.secret): x.rotate for s in sets or () for x in s.secrets if x.rotate is not None
    }
    currents: dict[tuple[str, str], LiveSecret] = {}
    scopes = []
    for key, versions in sorted(groups.items()):
        set_name, secret = key
        current = current_version(versions, None)
        assert current is not None  # a group has at least one version
        currents[key] = current
        if keeps is not None and set_name not in keeps:
            cause = Cause.ORPHANED
        elif declared is not None and key not in declared:
            cause = Cause.DELETED
        else:
            cause = Cause.SUPERSEDED
        scopes.append(
            Scope(
                set_name=set_name,
                secret=secret,
                versions=tuple(versions),
                current_id=current.id,
                current_version=current.version,
                keep=(keeps or {}).get(set_name, 0),
                cause=cause,
            )
        )
    removals, kept = collect(scopes, live)
    notes = {k.name: k.reason for k in kept}
    protected = kept_by(live)
    classes = {k.name: KeptBy.KEEP for k in kept}
    classes.update({s.name: protected[s.id] for s in live.secrets if s.id in protected})
    down_users = stranded(live)
    for removal in removals:
        orphaned = keeps is not None and removal.set_name not in keeps
        collector = "`apply --prune-orphans` collects it" if orphaned else "the next apply collects it"
        down = down_users.get(removal.secret_id)
        notes[removal.name] = (
            f"used only by {down}: they cannot start again, so {collector}"
            if down
            else f"unreferenced: {collector}"
        )
    statuses = []
    for scope in scopes:
        current = currents[(scope.set_name, scope.secret)]
        superseded = sorted(
            (v for v in scope.versions if v.id != current.id),
            key=lambda v: (v.version or 0, v.name),
            reverse=True,
        )
        note = (
            "current"
            if scope.cause is not Cause.DELETED
            else "current; the secret is no longer in the manifests"
        )
        old = tuple(
            _version_status(v, users, notes[v.name], classes.get(v.name, KeptBy.NONE)) for v in superseded
        )
        rotate = rotations.get((scope.set_name, scope.secret))
        statuses.append(
            SecretStatus(
                set_name=scope.set_name,
                secret=scope.secret,
                current=_version_status(current, users, note),
                superseded=old,
                age_seconds=_rounded(schedule.age(current, now)),
                generated=current.generator is not None,
                rotate_every=rotate.text if rotate else None,
                rotate_every_seconds=rotate.every if rotate else None,
                rotation_due=schedule.rotation_due(rotate, current, now),
                kept=dict(sorted(Counter(v.kept_by for v in old).items())),
            )
        )
    orphaned_sets = tuple(sorted({s.set_name for s in scopes} - set(keeps))) if keeps is not None else ()
    kept_reasons = protections(live)
    unmanaged = [s for s in live.secrets if not s.managed]
    return StatusReport(
        secrets=tuple(statuses),
        orphaned_sets=orphaned_sets,
        unmanaged_unreferenced=tuple(sorted(s.name for s in unmanaged if s.id not in kept_reasons)),
        unmanaged_referenced=tuple(
            sorted((s.name, kept_reasons[s.id]) for s in unmanaged if s.id in kept_reasons)
        ),
    )


def _version_status(
    secret: LiveSecret, users: Mapping[str, list[str]], note: str, kept: KeptBy | None = None
) -> VersionStatus:
    return VersionStatus(
        name=secret.name,
        version=secret.version or 0,
        created_at=secret.created_at,
        used_by=tuple(sorted(users.get(secret.id, ()))),
        note=note,
        kept_by=kept.value if kept is not None else "",
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
