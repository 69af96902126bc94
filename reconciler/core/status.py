"""What the swarm holds, per set and logical secret, for ``swarm-secrets status``.

Built from the live state alone plus the *offline* manifests (set names and ``keep``; no values, no
keys), so it runs anywhere the engine is reachable, including where no decryption key is present.
For each logical secret: the current version (the newest one a service uses, else the newest), when
it was made, the services using it, and every superseded version with the reason it is kept (in use,
a rollback target, used by running tasks, within ``spec.keep``) or the note that the next apply
collects it. When tasks on a node that is down use a version, the note says so and that they do not
keep it (``core/collect.py``): "used only by tasks on down node 3f2a… (host): they cannot start
again, so the next apply collects it", or, next to what does keep it, "tasks on down node … also use
it but cannot start again: they do not keep it". Also: orphaned sets, and unmanaged secrets nothing
references (e.g. what a migration replaced; they are never removed by this tool).

Pure: no docker, no I/O. ``render/status.py`` prints a report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.core.collect import protections, stranded
from reconciler.core.model import LiveSecret, LiveState


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionStatus:
    name: str
    version: int
    created_at: str
    used_by: tuple[str, ...]
    """Services whose current Spec mounts this version."""
    note: str
    """For the current version ``current``; otherwise why it is kept or that it will be collected."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretStatus:
    set_name: str
    secret: str
    current: VersionStatus
    superseded: tuple[VersionStatus, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    secrets: tuple[SecretStatus, ...]
    orphaned_sets: tuple[str, ...]
    unmanaged_unreferenced: tuple[str, ...]
    """Secrets without our labels that nothing references (e.g. what a migration replaced, once no
    rollback can bring it back). Never removed by this tool; listed so a person can."""
    unmanaged_referenced: tuple[tuple[str, str], ...]
    """(name, why) of secrets without our labels that a service, a rollback target or a task uses."""


def build_status(live: LiveState, sets: Mapping[str, int] | None = None) -> StatusReport:
    """``sets`` maps the loaded set names to their ``keep``; None when no manifests were given."""
    users: dict[str, list[str]] = defaultdict(list)
    for service in live.services:
        for ref in service.refs:
            users[ref.secret_id].append(service.name)
    kept_reasons = protections(live)
    down_users = stranded(live)
    groups: dict[tuple[str, str], list[LiveSecret]] = defaultdict(list)
    for secret in live.secrets:
        if secret.managed and secret.set_name and secret.logical:
            groups[(secret.set_name, secret.logical)].append(secret)
    statuses = []
    for (set_name, logical), versions in sorted(groups.items()):
        versions.sort(key=lambda s: s.version or 0, reverse=True)
        used = [v for v in versions if users.get(v.id)]
        current = used[0] if used else versions[0]
        keep = (sets or {}).get(set_name, 0)
        spared = 0
        superseded = []
        for version in versions:
            if version is current:
                continue
            note = kept_reasons.get(version.id, "")
            if not note and spared < keep:
                spared += 1
                note = f"kept: spec.keep={keep}"
                if version.id in down_users:
                    note += f"; {down_users[version.id]} also use it but cannot start again"
            if not note and version.id in down_users:
                note = (
                    f"used only by {down_users[version.id]}: they cannot start again, so the next "
                    "apply collects it"
                )
            superseded.append(
                _version_status(version, users, note or "unreferenced: the next apply collects it")
            )
        statuses.append(
            SecretStatus(
                set_name=set_name,
                secret=logical,
                current=_version_status(current, users, "current"),
                superseded=tuple(superseded),
            )
        )
    managed_sets = {s.set_name for s in live.secrets if s.managed and s.set_name}
    orphaned = tuple(sorted(managed_sets - set(sets))) if sets is not None else ()
    unmanaged = [s for s in live.secrets if not s.managed]
    return StatusReport(
        secrets=tuple(statuses),
        orphaned_sets=orphaned,
        unmanaged_unreferenced=tuple(sorted(s.name for s in unmanaged if s.id not in kept_reasons)),
        unmanaged_referenced=tuple(
            sorted((s.name, kept_reasons[s.id]) for s in unmanaged if s.id in kept_reasons)
        ),
    )


def _version_status(secret: LiveSecret, users: Mapping[str, list[str]], note: str) -> VersionStatus:
    return VersionStatus(
        name=secret.name,
        version=secret.version or 0,
        created_at=secret.created_at,
        used_by=tuple(sorted(users.get(secret.id, ()))),
        note=note,
    )
