"""The plan as data: a tuple of actions, each with a reason a person can read.

The planner (``planner.py``) builds a :class:`Plan`; ``render.py`` prints it as text, JSON or
Markdown; ``executor.py`` carries it out. A plan never holds a secret value (only names, versions,
targets and reasons), so every rendering of it is safe to post publicly.

Order of execution is fixed by kind, not by position: every :class:`CreateSecret` first, then every
:class:`UpdateService` (concurrently), then every :class:`RemoveSecret` (re-checked after rollouts).

This module is pure: no I/O, no docker, no subprocess, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from reconciler.core.policy import Governance


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSecret:
    """Create version ``version`` of a logical secret as the swarm secret ``name``."""

    kind: ClassVar[str] = "create_secret"
    set_name: str
    secret: str
    version: int
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    """Every label the new object gets: the user's and ours (set, secret, version, fingerprint,
    revision). The fingerprint is keyed, but renderers still leave it out: it helps nobody reading."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefChange:
    """One change to a service's secret references, addressed by the in-container path.

    ``old`` None means add; ``new`` None means remove; both set means replace. ``new`` names a swarm
    secret that exists now or is created by a :class:`CreateSecret` of the same plan.
    """

    path: str
    """Normalized absolute target path (``/run/secrets/db_password``)."""
    set_name: str | None
    """The set the new (or, for a removal, the old) reference belongs to; None for foreign refs."""
    secret: str | None
    """Logical name of the new (or removed) reference, when it is one of ours."""
    old: str | None
    """Swarm secret name referenced at ``path`` now."""
    new: str | None
    """Swarm secret name to reference at ``path``."""
    target: str = ""
    """The target as the manifest writes it (relative or absolute); sent to the engine as is."""
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateService:
    """Rewrite one service's secret references; one action per service however many change."""

    kind: ClassVar[str] = "update_service"
    service: str
    service_id: str
    observed_version: int
    changes: tuple[RefChange, ...]
    stack: str | None = None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSecret:
    """Delete a superseded managed version nothing can need any more."""

    kind: ClassVar[str] = "remove_secret"
    secret_id: str
    name: str
    set_name: str
    secret: str
    version: int
    reason: str


Action = CreateSecret | UpdateService | RemoveSecret


@dataclass(frozen=True, slots=True, kw_only=True)
class Kept:
    """A superseded version that stays, and why (not an action: a plan of only these is empty)."""

    name: str
    set_name: str
    secret: str
    version: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocked:
    """A logical secret that cannot be reconciled until a person acts (e.g. an unmanaged object
    holds the name its next version needs). Reported as an error; the rest of the plan proceeds."""

    set_name: str
    secret: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    actions: tuple[Action, ...] = ()
    kept: tuple[Kept, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    warnings: tuple[str, ...] = ()
    orphaned_sets: tuple[str, ...] = ()
    """Sets with managed objects in the swarm but no loaded manifest (pruned only on request)."""
    governance: tuple[Governance, ...] = ()
    """Which rule of the operator's policy governs each loaded set; empty without a policy."""

    @property
    def empty(self) -> bool:
        """Nothing to do: no actions and nothing blocked."""
        return not self.actions and not self.blocked

    @property
    def creates(self) -> tuple[CreateSecret, ...]:
        return tuple(a for a in self.actions if isinstance(a, CreateSecret))

    @property
    def updates(self) -> tuple[UpdateService, ...]:
        return tuple(a for a in self.actions if isinstance(a, UpdateService))

    @property
    def removals(self) -> tuple[RemoveSecret, ...]:
        return tuple(a for a in self.actions if isinstance(a, RemoveSecret))
