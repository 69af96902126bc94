"""The plan as data: a tuple of actions, each with a reason a person can read.

The planner (``core/planner.py``) builds a :class:`Plan`; ``render/plan.py`` prints it as text, JSON
or Markdown; ``engine/executor.py`` carries it out. A plan never holds a secret value (only names,
versions, targets, keyed fingerprints and reasons), so every rendering of it is safe to post publicly.

Order of execution is fixed by kind, not by position: every :class:`CreateSecret` first, then every
:class:`DeployStack` and :class:`UpdateService` (concurrently), then every :class:`RemoveSecret`
(re-checked after rollouts).

**Exactness.** The executor never performs an action the approved plan does not contain. When the
swarm moved between planning and execution it may plan again, but may only go on with the fresh plan
when it is :func:`within` the approved one (see there for the precise rule).

This module is pure: no I/O, no docker, no subprocess, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reconciler.core.model import LABEL_FINGERPRINT, LABEL_GENERATOR
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

    @property
    def fingerprint(self) -> str | None:
        """The keyed fingerprint label of the value the version gets (None for a generated one)."""
        return self.labels.get(LABEL_FINGERPRINT)

    @property
    def generator(self) -> str | None:
        """``urlsafe:48`` when the version's value is generated as it is created (``source.generate``):
        the plan holds no value for it, only how it is to be made."""
        return self.labels.get(LABEL_GENERATOR)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefChange:
    """One change to a service's secret references, addressed by the in-container path.

    ``old`` empty means add; ``new`` None means remove; both set means replace. ``new`` names a swarm
    secret that exists now or is created by a :class:`CreateSecret` of the same plan. How a change
    applies to a service is defined once, in ``core/refs.py``.
    """

    path: str
    """Normalized absolute target path (``/run/secrets/db_password``)."""
    set_name: str | None
    """The set the new (or, for a removal, the old) reference belongs to; None for foreign refs."""
    secret: str | None
    """Logical name of the new (or removed) reference, when it is one of ours."""
    old: tuple[str, ...]
    """Swarm secret names referenced at ``path`` now and replaced or removed (sorted; empty: add).
    Several when references share one path."""
    new: str | None
    """Swarm secret name to reference at ``path``."""
    target: str = ""
    """The target as the manifest writes it (relative or absolute); sent to the engine as is."""
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444
    reason: str

    @property
    def op(self) -> str:
        """``add``, ``replace`` or ``remove``."""
        if not self.old:
            return "add"
        return "remove" if self.new is None else "replace"


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
    after: tuple[str, ...] = ()
    """Services whose update in this plan frees this version (it is only their PreviousSpec now, and
    their Spec becomes the new PreviousSpec): it is removed after their rollouts, and only if a fresh
    look then still finds nothing that may need it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StackService:
    """One service a :class:`DeployStack` writes, and what the deploy changes in its managed references."""

    service: str
    service_id: str | None = None
    """None when the deploy creates the service."""
    observed_version: int = 0
    changes: tuple[RefChange, ...] = ()
    """The reference changes an update of its own would have made; the deploy makes them (pinned
    versions replace what the service references at those paths)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployStack:
    """Run ``docker stack deploy`` for one stack with an override that pins its managed compose
    secrets: every service of the stack is updated once, carrying its new versions and the new
    compose content together (``core/stacks.py``)."""

    kind: ClassVar[str] = "deploy_stack"
    stack: str
    content: str
    """Digest of the compose files and variables deployed (recorded on the services)."""
    pins: tuple[tuple[str, str], ...] = ()
    """(compose secret key, version name), sorted."""
    services: tuple[StackService, ...] = ()
    """Every service the compose files define, in their order."""
    reason: str

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(name for _, name in self.pins)


Action = CreateSecret | DeployStack | UpdateService | RemoveSecret

DRIFT = "drift"
"""How the reason of a change that corrects drift starts (someone moved the service off the wanted
version); :func:`drift_cause` tells the causes apart."""
STACK_DRIFT = "drift: a `docker stack deploy`"
"""How the reason starts when a stack deploy (most likely) put back what its compose file says."""


def drift_cause(change: RefChange) -> str | None:
    """``stack_deploy`` or ``manual`` when ``change`` corrects drift, else None (metrics count by it)."""
    if change.reason.startswith(STACK_DRIFT):
        return "stack_deploy"
    return "manual" if change.reason.startswith(DRIFT) else None


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
    def deploys(self) -> tuple[DeployStack, ...]:
        return tuple(a for a in self.actions if isinstance(a, DeployStack))

    @property
    def removals(self) -> tuple[RemoveSecret, ...]:
        return tuple(a for a in self.actions if isinstance(a, RemoveSecret))


# --- exactness ---------------------------------------------------------------------------------------


def action_fields(
    action: Action,
    *,
    change: Callable[[RefChange], dict[str, Any]],
    labels: Callable[[Mapping[str, str]], dict[str, str]] = dict,
) -> dict[str, Any]:
    """``action`` as a JSON-ready mapping: the one field list shared by the plan's JSON rendering and
    the saved-plan file; ``change`` renders a reference change and ``labels`` a create's labels (the
    rendering leaves out the fingerprint, the saved plan keeps every label)."""
    if isinstance(action, CreateSecret):
        return {
            "kind": action.kind,
            "set": action.set_name,
            "secret": action.secret,
            "version": action.version,
            "name": action.name,
            "labels": labels(action.labels),
            "reason": action.reason,
        }
    if isinstance(action, UpdateService):
        return {
            "kind": action.kind,
            "service": action.service,
            "service_id": action.service_id,
            "observed_version": action.observed_version,
            "stack": action.stack,
            "reason": action.reason,
            "changes": [change(c) for c in action.changes],
        }
    if isinstance(action, DeployStack):
        return {
            "kind": action.kind,
            "stack": action.stack,
            "content": action.content,
            "pins": dict(action.pins),
            "reason": action.reason,
            "services": [
                {
                    "service": s.service,
                    "service_id": s.service_id,
                    "observed_version": s.observed_version,
                    "changes": [change(c) for c in s.changes],
                }
                for s in action.services
            ],
        }
    return {
        "kind": action.kind,
        "secret_id": action.secret_id,
        "name": action.name,
        "set": action.set_name,
        "secret": action.secret,
        "version": action.version,
        "reason": action.reason,
        "after": list(action.after),
    }


def _change_within(fresh: RefChange, approved: RefChange) -> bool:
    """Same path, same new reference written the same way, and it replaces no name the approved
    change did not (a subset: a concurrent run may have done part of it already)."""
    return (
        fresh.path == approved.path
        and fresh.new == approved.new
        and (fresh.target, fresh.uid, fresh.gid, fresh.mode)
        == (approved.target, approved.uid, approved.gid, approved.mode)
        and set(fresh.old) <= set(approved.old)
    )


def action_within(action: Action, approved: Plan) -> bool:
    """Whether ``action`` (from a fresh plan) is allowed by ``approved``:

    * a create is within when the approved plan creates the same set / secret / name / version with
      the same keyed fingerprint (for a generated version: the same generator);
    * an update is within when the approved plan updates the same service (by id) and each of its
      reference changes is within one approved change of that service (same path, same ``new`` with
      the same target, uid, gid and mode, ``old`` a subset of the approved ``old``);
    * a stack deploy is within when the approved plan deploys the same stack with the same content and
      the same pinned versions;
    * a removal is within when the approved plan removes the same secret (by id and name).

    Reasons are not compared: they are for people and may word the same change differently.
    """
    if isinstance(action, CreateSecret):
        return any(
            (c.set_name, c.secret, c.name, c.version, c.fingerprint, c.generator)
            == (
                action.set_name,
                action.secret,
                action.name,
                action.version,
                action.fingerprint,
                action.generator,
            )
            for c in approved.creates
        )
    if isinstance(action, DeployStack):
        return any(
            (d.stack, d.content, d.pins) == (action.stack, action.content, action.pins)
            for d in approved.deploys
        )
    if isinstance(action, UpdateService):
        same = [u for u in approved.updates if u.service_id == action.service_id]
        return bool(same) and all(
            any(_change_within(change, ok) for ok in same[0].changes) for change in action.changes
        )
    return any((r.secret_id, r.name) == (action.secret_id, action.name) for r in approved.removals)


def outside(fresh: Plan, approved: Plan) -> tuple[Action, ...]:
    """The creates, deploys and updates of ``fresh`` that ``approved`` does not allow
    (:func:`action_within`).

    Removals of a fresh plan are not looked at: the executor never takes a removal from a fresh plan
    (it re-checks the approved ones against a fresh observation instead), and versions that became
    free by themselves (old tasks gone) are no reason to stop; the next plan collects them.
    """
    candidates: tuple[Action, ...] = (*fresh.creates, *fresh.deploys, *fresh.updates)
    return tuple(a for a in candidates if not action_within(a, approved))


def within(fresh: Plan, approved: Plan) -> bool:
    """True when the executor may go on with ``fresh`` in place of ``approved``: :func:`outside`
    finds nothing."""
    return not outside(fresh, approved)
