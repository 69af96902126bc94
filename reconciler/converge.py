"""One reconciliation, end to end, shared by the CLI (``plan``, ``apply``), the loop tick and the benchmarks.

    load → resolve → observe → plan → checks → show → approve → (guards) execute → report

1. :func:`load` reads and validates the manifests and resolves every source. It touches no swarm,
   so a bad manifest, a missing key or an undecryptable file stops the run before anything changes.
2. :func:`prepare` connects that to one swarm: the fingerprint key, the desired state, the live state
   and the plan; then runs the **pre-mutation checks** (:data:`Check`): each gets the
   :class:`Prepared` state and returns problems; any problem stops the run (:class:`CheckFailed`,
   exit 1) before anything is shown, approved or changed. ``plan`` runs them too.
3. :func:`converge` shows the plan (a ``show`` callback), asks an **approval strategy**
   (:data:`Approval`: :func:`auto_approve` for ``--yes`` and the loop, the CLI's prompt,
   :func:`saved_plan_approval` for ``apply --plan``), and hands the approved plan to the executor
   inside the **guards** (:data:`Guard`: context managers around execution, e.g. an applier lease).
   It returns an :class:`Outcome` that the CLI and the loop render.

The executor performs exactly the approved plan. When the swarm moved in between, it asks the
:func:`replanner` made here for a fresh plan and goes on only when that is within the approved one
(see ``core/plan.py``); otherwise it stops with "the swarm changed since the plan; plan again".

Adding a step: a check is a function ``(Prepared) -> Sequence[Problem]``; a guard a function
``(Prepared) -> AbstractContextManager``. Put one that every run needs into :func:`builtin_checks` /
:func:`builtin_guards`, one that depends on an option into :attr:`Settings.checks` /
:attr:`Settings.guards` where the settings are built (``cli/``, ``daemon/tick.py``).

Values stay inside :class:`Loaded` (as :class:`~reconciler.core.model.SecretValue`) and are handed only
to the executor; the desired state and the plan carry keyed fingerprints.

The trust boundary (``core/guard.py``, the operator's ``Boundary``) is held in two places, both
before anything is read or changed: :func:`load` (via the loader: policy, source roots, reserved
variables, targets) before any source is read, and :func:`prepare` (``guard.enforce_live``: missing
services, the reconciler's own and engine-holding services, stacks, adopting) right after observing,
before planning. The revision guard (never the past over the present, ``manifests/revision.py``)
runs at the same point. Neither creates anything: on a fresh swarm the fingerprint key config is
created only once they passed.

**Isolated sets** (``load(isolate=True)``, the long-running loop; ``apply`` stays all-or-nothing): a set
whose manifests, sources or boundary checks fail is left out (:attr:`Loaded.failing`) and the others go
on. A failing set is **held back**, not orphaned: :func:`held_back` names it to the planner, which then
revokes, collects and prunes nothing of it. A problem that names no set (a file that cannot be read or
parsed: the swarm does not record which file a set came from) holds back every set on the swarm that
did not load, so nothing is pruned while any manifest cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import sources
from reconciler.core import guard, planner
from reconciler.core.desired import Values, build_desired
from reconciler.core.model import DesiredState, LiveState, SecretSet
from reconciler.core.plan import Plan
from reconciler.core.saved import SavedPlan, basis_of, moved
from reconciler.engine import executor
from reconciler.engine.executor import SYSTEM_CLOCK, ApplyOptions, ApplyResult, Clock, ProgressFn, Replan
from reconciler.engine.keysource import find_key, load_key
from reconciler.engine.protocol import Swarm
from reconciler.errors import (
    CheckFailed,
    ConfigError,
    ManifestError,
    PlanOutdated,
    PolicyViolation,
    Problem,
    ProblemsError,
    RevisionError,
)
from reconciler.manifests import loader as manifest
from reconciler.manifests import revision as revisions
from reconciler.manifests.digest import manifest_digest
from reconciler.manifests.revision import RevisionGuard, detect_revision

__all__ = [
    "Approval",
    "Check",
    "Guard",
    "Loaded",
    "Outcome",
    "Prepared",
    "Settings",
    "Show",
    "auto_approve",
    "builtin_checks",
    "builtin_guards",
    "converge",
    "execute",
    "held_back",
    "load",
    "manifest_digest",
    "prepare",
    "replanner",
    "save_plan",
    "saved_plan_approval",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    sets: tuple[SecretSet, ...]
    values: Values
    revision: str | None
    boundary: guard.Boundary = field(default_factory=guard.Boundary)
    """What the operator allows the manifests (policy, self service, ...): held again in prepare()."""
    complete: bool = False
    """Every manifest was read (a skipped folder would have failed the load): --prune-orphans needs it."""
    isolated: bool = False
    """Loaded with ``isolate=True``: the sets below failed, and only they are left out."""
    failing: Mapping[str, ProblemsError] = field(default_factory=dict)
    """Isolated only: set name → why it is held back (ManifestError, PolicyViolation, SourceError)."""
    unattributed: ManifestError | None = None
    """Isolated only: problems that name no set (see the module docstring)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    loaded: Loaded
    """What was loaded; when isolated, without the sets the live checks held back (``failing``)."""
    desired: DesiredState
    live: LiveState
    plan: Plan
    held_back: frozenset[str] = frozenset()
    """Sets the plan leaves exactly as they are (:func:`held_back`)."""


Check = Callable[[Prepared], Sequence[Problem]]
"""A pre-mutation check: problems found in the loaded and observed state (empty: go on)."""
Guard = Callable[[Prepared], AbstractContextManager[object]]
"""Entered before execution, left after it (e.g. an applier lease); raising refuses the run."""
Approval = Callable[[Prepared], Plan | None]
"""Given the prepared run, the plan to execute (usually ``prepared.plan``), or None to stop."""
Show = Callable[[Prepared], None]
"""Shows the plan before approval (the CLI prints it, the loop logs its warnings)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    key_file: Path | None = None
    """HMAC key file; None: the key kept in the swarm's Docker config."""
    read_only: bool = False
    """``plan``: never write, not even the fingerprint key config."""
    apply: ApplyOptions = field(default_factory=ApplyOptions)
    """Rollout timeout, concurrency, orphan pruning, held updates."""
    checks: tuple[Check, ...] = ()
    """Pre-mutation checks beyond :func:`builtin_checks`."""
    guards: tuple[Guard, ...] = ()
    """Guards around execution beyond :func:`builtin_guards`."""
    revision_guard: RevisionGuard | None = None
    """Refuse manifests older than what the swarm records (apply, run); None: no check (plan)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one :func:`converge` did."""

    prepared: Prepared
    approved: Plan | None = None
    """The plan handed to the executor; None when nothing was executed (empty plan or declined)."""
    result: ApplyResult | None = None
    """The executor's report; None when nothing was executed."""

    @property
    def ok(self) -> bool:
        return self.result is None or self.result.ok

    @property
    def changed(self) -> bool:
        return self.result is not None and self.result.changed


def load(
    paths: Sequence[Path],
    *,
    revision: str | None = None,
    environ: Mapping[str, str] | None = None,
    boundary: guard.Boundary | None = None,
    complete: bool = False,
    isolate: bool = False,
) -> Loaded:
    """Load, validate and resolve: everything that can fail before the swarm is touched.

    ``complete``: every manifest must be read (``--prune-orphans``; see ``manifests.load``).
    ``isolate``: a set that fails is left out and named in :attr:`Loaded.failing` instead of failing
    the whole load (the long-running loop; see the module docstring).
    """
    boundary = boundary or guard.Boundary()
    if not isolate:
        # The trust boundary's offline checks run inside the loader, before any source is read.
        sets = manifest.load(paths, boundary, complete=complete)
        values = sources.resolve(sets, environ, sops_env=boundary.sops_passthrough)
        revision = revision or detect_revision(paths, environ)
        return Loaded(sets=sets, values=values, revision=revision, boundary=boundary, complete=complete)
    found = manifest.load_isolated(paths, boundary, complete=complete)
    values, unresolved = sources.resolve_isolated(found.sets, environ, sops_env=boundary.sops_passthrough)
    failing: dict[str, ProblemsError] = {**found.failing, **unresolved}
    return Loaded(
        sets=tuple(s for s in found.sets if s.name not in failing),
        values=values,
        revision=revision or detect_revision(paths, environ),
        boundary=boundary,
        complete=complete and found.unattributed is None,
        isolated=True,
        failing=dict(sorted(failing.items())),
        unattributed=found.unattributed,
    )


def held_back(loaded: Loaded, live: LiveState) -> frozenset[str]:
    """The sets a plan must leave as they are: the failing ones, and while a problem names no set,
    every set on the swarm that did not load (any of them may be declared in the unreadable file)."""
    if not loaded.isolated:
        return frozenset()
    names = set(loaded.failing)
    if loaded.unattributed is not None:
        ok = {s.name for s in loaded.sets}
        names.update(s.set_name for s in live.secrets if s.managed and s.set_name and s.set_name not in ok)
    return frozenset(names)


def _isolate_live(loaded: Loaded, live: LiveState) -> Loaded:
    """``loaded`` without the sets the trust boundary's live checks refuse (added to ``failing``)."""
    refused: dict[str, ProblemsError] = {}
    for secret_set in loaded.sets:
        problems = guard.check_live([secret_set], live, loaded.boundary)
        if problems:
            refused[secret_set.name] = PolicyViolation(problems)
    if not refused:
        return loaded
    return replace(
        loaded,
        sets=tuple(s for s in loaded.sets if s.name not in refused),
        values={k: v for k, v in loaded.values.items() if k[0] not in refused},
        failing=dict(sorted({**loaded.failing, **refused}.items())),
    )


def builtin_checks(settings: Settings) -> tuple[Check, ...]:
    """Checks every run makes, whatever the options, beyond the trust boundary and the revision guard
    that :func:`prepare` runs first (none yet)."""
    return ()


def builtin_guards(settings: Settings) -> tuple[Guard, ...]:
    """Guards around every execution (none yet; an applier lease goes here)."""
    return ()


def prepare(loaded: Loaded, swarm: Swarm, settings: Settings | None = None) -> Prepared:
    """Key, desired state, live state and plan; then the pre-mutation checks (:class:`CheckFailed`).

    The trust boundary's live checks and the revision guard run right after observing; on a fresh
    swarm the key config is created only after they passed (``read_only``: never)."""
    settings = settings or Settings()
    if settings.apply.prune_orphans and not loaded.complete and not loaded.isolated:
        # Pruning takes every set it did not load for deleted: it must know it loaded them all. (An
        # isolated load that missed a file holds back every set it did not load instead.)
        raise ConfigError("--prune-orphans needs the manifests loaded with complete=True (a bug)")
    # Observing is mostly waiting for the engine: fetch the key and fingerprint the values meanwhile.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe") as pool:
        observing = pool.submit(swarm.observe)
        key = find_key(swarm, settings.key_file)
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision) if key else None
        live = observing.result()
    if loaded.isolated:
        loaded = _isolate_live(loaded, live)
        if desired is not None:
            desired = replace(desired, sets=tuple(s for s in desired.sets if s.name not in loaded.failing))
    else:
        guard.enforce_live(loaded.sets, live, loaded.boundary)
    guard_revision(loaded, live, settings.revision_guard)
    if desired is None:  # a fresh swarm: the key config is created only now, after the checks passed
        key = load_key(swarm, settings.key_file, create=not settings.read_only)
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision)
    held = held_back(loaded, live)
    plan = planner.plan(desired, live, prune_orphans=settings.apply.prune_orphans, held_back=held)
    plan = replace(plan, governance=guard.governance(loaded.sets, loaded.boundary.policy))
    prepared = Prepared(loaded=loaded, desired=desired, live=live, plan=plan, held_back=held)
    problems = [p for check in (*builtin_checks(settings), *settings.checks) for p in check(prepared)]
    if problems:
        raise CheckFailed(problems)
    return prepared


def guard_revision(loaded: Loaded, live: LiveState, revision_guard: RevisionGuard | None) -> None:
    """Raise :class:`RevisionError` when the manifests are older than a revision the swarm records for
    one of the loaded sets (or that cannot be decided and the guard says refuse); else warn or pass."""
    if revision_guard is None:
        return
    recorded = revisions.recorded_revisions(live, (s.name for s in loaded.sets))
    problem = revisions.check_revision(loaded.revision, recorded, revision_guard.repository)
    if problem is None:
        return
    if revision_guard.refuses(problem):
        raise RevisionError(problem.message)
    flag = "--allow-older-revision" if revision_guard.allow_older else "--revision-check=warn"
    log.warning("%s; applying anyway, as %s says", problem.detail, flag)


def replanner(prepared: Prepared, swarm: Swarm, settings: Settings) -> Replan:
    """The executor's way to plan again: observe, then plan the same desired state."""

    def replan() -> tuple[LiveState, Plan]:
        live = swarm.observe()
        held = held_back(prepared.loaded, live)
        return live, planner.plan(
            prepared.desired, live, prune_orphans=settings.apply.prune_orphans, held_back=held
        )

    return replan


def auto_approve(prepared: Prepared) -> Plan:
    """Approve the plan as it is (``apply --yes``, the loop, the benchmarks)."""
    return prepared.plan


def save_plan(prepared: Prepared, settings: Settings, *, manifests_digest: str) -> SavedPlan:
    """``prepared.plan`` with what it was computed from, for ``plan --out``."""
    basis = basis_of(
        prepared.desired,
        prepared.live,
        prepared.plan,
        manifests_digest=manifests_digest,
        prune_orphans=settings.apply.prune_orphans,
    )
    return SavedPlan(basis=basis, plan=prepared.plan)


def saved_plan_approval(saved: SavedPlan, settings: Settings, *, manifests_digest: str) -> Approval:
    """Approve ``saved.plan`` exactly (``apply --plan``: the saved plan is the approval), but only when
    nothing it was computed from moved and the plan computed now equals it; otherwise
    :class:`PlanOutdated` (exit 1) saying what moved, before anything is changed."""

    def approve(prepared: Prepared) -> Plan:
        now = basis_of(
            prepared.desired,
            prepared.live,
            prepared.plan,
            manifests_digest=manifests_digest,
            prune_orphans=settings.apply.prune_orphans,
        )
        found = moved(saved.basis, now, prepared.live)
        if not found and prepared.plan != saved.plan:
            found.append(
                f"the plan computed now differs from the saved one ({_difference(saved.plan, prepared.plan)})"
            )
        if found:
            raise PlanOutdated(f"the saved plan no longer applies: {'; '.join(found)}; make a new plan")
        return saved.plan

    return approve


def _difference(saved: Plan, fresh: Plan) -> str:
    for name, old, new in (
        ("actions", saved.actions, fresh.actions),
        ("blocked secrets", saved.blocked, fresh.blocked),
        ("kept versions", saved.kept, fresh.kept),
        ("warnings", saved.warnings, fresh.warnings),
        ("orphaned sets", saved.orphaned_sets, fresh.orphaned_sets),
    ):
        if old != new:
            return f"its {name} differ"
    return "it differs"


def converge(
    loaded: Loaded,
    swarm: Swarm,
    *,
    approval: Approval,
    settings: Settings | None = None,
    show: Show | None = None,
    progress: ProgressFn | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Outcome:
    """One reconciliation of ``loaded`` against ``swarm`` (see the module docstring)."""
    settings = settings or Settings()
    prepared = prepare(loaded, swarm, settings)
    if show is not None:
        show(prepared)
    approved = approval(prepared)
    if approved is None or approved.empty:
        return Outcome(prepared=prepared)
    result = execute(prepared, approved, swarm, settings, progress=progress, clock=clock)
    return Outcome(prepared=prepared, approved=approved, result=result)


def execute(
    prepared: Prepared,
    approved: Plan,
    swarm: Swarm,
    settings: Settings,
    *,
    progress: ProgressFn | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ApplyResult:
    """Run the executor on ``approved`` inside the guards."""
    with ExitStack() as stack:
        for guard in (*builtin_guards(settings), *settings.guards):
            stack.enter_context(guard(prepared))
        return executor.execute(
            approved,
            prepared.loaded.values,
            swarm,
            live=prepared.live,
            replan=replanner(prepared, swarm, settings),
            options=settings.apply,
            progress=progress,
            clock=clock,
            revision=prepared.desired.revision,
        )
