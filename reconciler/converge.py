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
to the executor; the desired state and the plan carry keyed fingerprints. A generated secret has no
value until the executor creates its version: it asks :func:`generator` for one then, which makes it
from the CSPRNG (``sources/generator.py``) and hands it straight to the swarm.

Time: :func:`prepare` gives the planner the swarm's clock at observation
(:attr:`~reconciler.core.model.LiveState.observed_at`) as ``desired.now`` (``Settings.now`` instead
when given: ``apply --plan`` plans as of the saved plan), and the forced rotations of
``Settings.rotate`` as the version numbers they replace, so planning again (the replanner uses the
same desired state) never plans a second rotation.

**Stacks** (``core/stacks.py``): ``kind: Stack`` manifests, and the stack of ``swarm-secrets stack
deploy`` (``load(..., stacks=...)``), travel in :attr:`Loaded.stacks` and the desired state. The
planner gives their services a :class:`~reconciler.core.plan.DeployStack` instead of updates of their
own, and the executor runs it with :attr:`Settings.deployer` (the docker CLI).

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

import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import sources
from reconciler.core import guard, planner
from reconciler.core.collect import current_version
from reconciler.core.desired import Values, build_desired
from reconciler.core.model import (
    DesiredState,
    GenerateSource,
    LiveSecret,
    LiveState,
    SecretSet,
    SecretValue,
)
from reconciler.core.plan import CreateSecret, Plan
from reconciler.core.saved import SavedPlan, basis_of, moved
from reconciler.core.stacks import StackSpec
from reconciler.engine import executor
from reconciler.engine.executor import (
    SYSTEM_CLOCK,
    ApplyOptions,
    ApplyResult,
    Clock,
    ProgressFn,
    Replan,
    StackDeployer,
)
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
    "at_time",
    "auto_approve",
    "builtin_checks",
    "builtin_guards",
    "converge",
    "current_versions",
    "execute",
    "generator",
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
    stacks: tuple[StackSpec, ...] = ()
    """Stacks this run deploys: the Stack manifests, and the stack of ``stack deploy``."""
    isolated: bool = False
    """Loaded with ``isolate=True``: the sets below failed, and only they are left out."""
    failing: Mapping[str, ProblemsError] = field(default_factory=dict)
    """Isolated only: set name → why it is held back (ManifestError, PolicyViolation, SourceError)."""
    unattributed: ManifestError | None = None
    """Isolated only: problems that name no set (see the module docstring)."""
    failing_stacks: Mapping[str, ProblemsError] = field(default_factory=dict)
    """Isolated only: Stack manifest name → why it is not deployed (its manifest, its compose files,
    its grants, the policy, or a set it needs is held back). The sets are reconciled without it."""


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
    now: float | None = None
    """Plan as of this time (Unix seconds on the swarm's clock) instead of the observation's: ``apply
    --plan`` passes the saved plan's, so rotations are judged as they were when it was made."""
    rotate: frozenset[tuple[str, str]] = frozenset()
    """(set, secret) of generated secrets to give a new version now (``swarm-secrets rotate``)."""
    deployer: StackDeployer | None = None
    """Runs ``docker stack deploy`` for a plan's stack deploys; None: a plan with one is refused
    before anything changes (``plan`` needs none)."""


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
    stacks: Sequence[StackSpec] = (),
    isolate: bool = False,
) -> Loaded:
    """Load, validate and resolve: everything that can fail before the swarm is touched.

    ``complete``: every manifest must be read (``--prune-orphans``; see ``manifests.load``).
    ``stacks``: stacks to deploy besides the Stack manifests (``stack deploy``), held to the same
    grant checks.
    ``isolate``: a set that fails is left out and named in :attr:`Loaded.failing` instead of failing
    the whole load (the long-running loop; see the module docstring).
    """
    boundary = boundary or guard.Boundary()
    if not isolate:
        # The trust boundary's offline checks run inside the loader, before any source is read.
        manifests = manifest.load_manifests(paths, boundary, complete=complete)
        if stacks:
            problems = manifest.stack_problems((*manifests.stacks, *stacks), manifests.sets)
            if problems:
                raise ManifestError(problems)
        values = sources.resolve(manifests.sets, environ, sops_env=boundary.sops_passthrough)
        return Loaded(
            sets=manifests.sets,
            values=values,
            revision=revision or detect_revision(paths, environ),
            boundary=boundary,
            complete=complete,
            stacks=(*manifests.stacks, *stacks),
        )
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
        stacks=(*found.stacks, *stacks),
        failing_stacks=found.failing_stacks,
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
    """``loaded`` without the stacks and sets the trust boundary's live checks refuse (added to
    ``failing_stacks`` and ``failing``)."""
    refused_stacks: dict[str, ProblemsError] = {}
    for stack in loaded.stacks:
        problems = guard.check_live([], live, loaded.boundary, [stack])
        if problems:
            refused_stacks[stack.name] = PolicyViolation(problems)
    stacks = tuple(s for s in loaded.stacks if s.name not in refused_stacks)
    refused: dict[str, ProblemsError] = {}
    for secret_set in loaded.sets:
        problems = guard.check_live([secret_set], live, loaded.boundary, stacks)
        if problems:
            refused[secret_set.name] = PolicyViolation(problems)
    if not refused and not refused_stacks:
        return loaded
    return replace(
        loaded,
        sets=tuple(s for s in loaded.sets if s.name not in refused),
        values={k: v for k, v in loaded.values.items() if k[0] not in refused},
        failing=dict(sorted({**loaded.failing, **refused}.items())),
        stacks=stacks,
        failing_stacks=dict(sorted({**loaded.failing_stacks, **refused_stacks}.items())),
    )


def _spare_stacks(loaded: Loaded, live: LiveState, held: frozenset[str]) -> Loaded:
    """``loaded`` without the stacks whose services use a version of a held-back set (added to
    ``failing_stacks``): the deploy could not pin that set's compose secrets, so it would put the
    compose file's own secret back where the held-back set's version is mounted."""
    if not held or not loaded.stacks:
        return loaded
    owner = {s.id: s.set_name for s in live.secrets if s.managed and s.set_name}
    spared: dict[str, ProblemsError] = {}
    for stack in loaded.stacks:
        members = frozenset(stack.swarm_services)
        needs = sorted(
            {
                owner[ref.secret_id]
                for service in live.services
                if service.stack == stack.name or service.name in members
                for ref in service.refs
                if owner.get(ref.secret_id) in held
            }
        )
        if needs:
            origin = stack.origin
            spared[stack.name] = ManifestError(
                [
                    Problem(
                        origin.file if origin else stack.name,
                        origin.line if origin else None,
                        origin.path if origin else "",
                        f"stack '{stack.name}' is not deployed while its services use versions of "
                        f"held-back sets ({', '.join(needs)}): fix those sets first",
                    )
                ]
            )
    if not spared:
        return loaded
    return replace(
        loaded,
        stacks=tuple(s for s in loaded.stacks if s.name not in spared),
        failing_stacks=dict(sorted({**loaded.failing_stacks, **spared}.items())),
    )


def builtin_checks(settings: Settings) -> tuple[Check, ...]:
    """Checks every run makes, whatever the options, beyond the trust boundary and the revision guard
    that :func:`prepare` runs first: a plan that deploys a stack needs a way to run docker."""
    if settings.read_only or settings.deployer is not None:
        return ()

    def deployer(prepared: Prepared) -> Sequence[Problem]:
        return [
            Problem(
                "", None, "", f"stack {d.stack} is to be deployed, but this run cannot run the docker CLI"
            )
            for d in prepared.plan.deploys
        ]

    return (deployer,)


def builtin_guards(settings: Settings) -> tuple[Guard, ...]:
    """Guards around every execution (none yet; an applier lease goes here)."""
    return ()


def prepare(loaded: Loaded, swarm: Swarm, settings: Settings | None = None) -> Prepared:
    """Key, desired state, live state and plan; then the pre-mutation checks (:class:`CheckFailed`).

    The trust boundary's live checks and the revision guard run right after observing; on a fresh
    swarm the key config is created only after they passed (``read_only``: never)."""
    with _collector_paused():
        return _prepare(loaded, swarm, settings or Settings())


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the duration. An observation decodes tens of thousands of
    dicts and lists (a thousand secrets, two hundred services) and the plan builds thousands of model
    objects; every 700 new ones started a collection that walked them (now and then the loaded
    manifests too) for cycles that decoded JSON and frozen dataclasses do not make: 1.5-2.5 ms of a
    ~34 ms no-op plan (bench_noop_plan's 1,000 secrets, 15 interleaved rounds with and without).
    Reference counting still frees everything as usual; a cycle made meanwhile waits for the next
    collection."""
    if not gc.isenabled():  # already paused (another prepare in this process) or by the embedder
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _prepare(loaded: Loaded, swarm: Swarm, settings: Settings) -> Prepared:
    if settings.apply.prune_orphans and not loaded.complete and not loaded.isolated:
        # Pruning takes every set it did not load for deleted: it must know it loaded them all. (An
        # isolated load that missed a file holds back every set it did not load instead.)
        raise ConfigError("--prune-orphans needs the manifests loaded with complete=True (a bug)")
    # Observing is mostly waiting for the engine: fetch the key and fingerprint the values meanwhile.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe") as pool:
        observing = pool.submit(swarm.observe, lean=True, sets=_collectable(loaded, settings))
        key = find_key(swarm, settings.key_file)
        desired = (
            build_desired(loaded.sets, loaded.values, key, revision=loaded.revision, stacks=loaded.stacks)
            if key
            else None
        )
        live = observing.result()
    held: frozenset[str] = frozenset()
    if loaded.isolated:
        loaded = _isolate_live(loaded, live)
        held = held_back(loaded, live)
        loaded = _spare_stacks(loaded, live, held)
        if desired is not None:
            desired = replace(
                desired,
                sets=tuple(s for s in desired.sets if s.name not in loaded.failing),
                stacks=loaded.stacks,
            )
    else:
        guard.enforce_live(loaded.sets, live, loaded.boundary, loaded.stacks)
    guard_revision(loaded, live, settings.revision_guard)
    if desired is None:  # a fresh swarm: the key config is created only now, after the checks passed
        key = load_key(swarm, settings.key_file, create=not settings.read_only)
        desired = build_desired(
            loaded.sets, loaded.values, key, revision=loaded.revision, stacks=loaded.stacks
        )
    desired = at_time(desired, live, settings)
    plan = planner.plan(desired, live, prune_orphans=settings.apply.prune_orphans, held_back=held)
    plan = replace(plan, governance=guard.governance(loaded.sets, loaded.boundary.policy))
    prepared = Prepared(loaded=loaded, desired=desired, live=live, plan=plan, held_back=held)
    problems = [p for check in (*builtin_checks(settings), *settings.checks) for p in check(prepared)]
    if problems:
        raise CheckFailed(problems)
    return prepared


def _collectable(loaded: Loaded, settings: Settings) -> frozenset[str] | None:
    """The sets a plan may remove versions of (``observe(lean=True)`` lists tasks only when one of
    their versions is in no Spec): the loaded ones, or every set when orphans are pruned."""
    return None if settings.apply.prune_orphans else frozenset(s.name for s in loaded.sets)


def revision_note(loaded: Loaded, live: LiveState, repository: Path) -> str | None:
    """What ``plan`` says when ``apply`` would refuse these manifests as older than what the swarm
    records (or could not tell): a warning, since a plan changes nothing and refuses nothing."""
    recorded = revisions.recorded_revisions(live, (s.name for s in loaded.sets))
    problem = revisions.check_revision(loaded.revision, recorded, repository)
    if problem is None:
        return None
    if problem.kind == "older":
        return f"apply would refuse these manifests: {problem.detail}; {problem.advice}"
    return f"apply cannot tell whether these manifests are older than the swarm's: {problem.detail}"


def at_time(desired: DesiredState, live: LiveState, settings: Settings) -> DesiredState:
    """``desired`` with the time it is planned at (``Settings.now``, else the swarm's clock when
    ``live`` was observed, else this machine's) and the version numbers forced rotations replace."""
    now = settings.now if settings.now is not None else live.observed_at
    if now is None:
        log.debug("the engine did not give its time; versions' ages use this machine's clock")
        now = time.time()
    forced = planner.forced_versions(desired, live, settings.rotate) if settings.rotate else {}
    return replace(desired, now=now, forced=forced)


def generator(loaded: Loaded) -> Callable[[CreateSecret], SecretValue]:
    """What the executor calls to get the value of a generated version it is creating: a fresh one,
    made as the manifest says (its generator label must agree). Never kept here."""
    specs = {
        (s.name, spec.secret): spec.source
        for s in loaded.sets
        for spec in s.secrets
        if isinstance(spec.source, GenerateSource)
    }

    def generate(action: CreateSecret) -> SecretValue:
        source = specs.get((action.set_name, action.secret))
        if source is None or source.label != action.generator:
            raise ConfigError(
                f"{action.set_name}/{action.secret} is not generated as {action.generator} by the loaded "
                "manifests; make a new plan"
            )
        return sources.generate(source)

    return generate


def current_versions(
    loaded: Loaded, swarm: Swarm, settings: Settings | None = None
) -> dict[tuple[str, str], str]:
    """(set, secret) -> the name of the version that holds the manifests' value now (``env``, ``stack
    override``). Read only: no key config is created, no service needs to exist yet. When a value has
    no version yet (changed since the last apply, or never applied), a :class:`ConfigError` says to
    apply first: a version name that does not hold the value must never be handed out."""
    settings = settings or Settings()
    key = find_key(swarm, settings.key_file)
    live = swarm.observe()
    missing: list[str] = []
    names: dict[tuple[str, str], str] = {}
    if key is None:
        missing = [f"{s.name}/{x.secret}" for s in loaded.sets for x in s.secrets]
    else:
        desired = build_desired(loaded.sets, loaded.values, key, revision=loaded.revision)
        versions: dict[tuple[str, str], list[LiveSecret]] = {}
        for secret in live.secrets:
            if secret.managed and secret.set_name and secret.secret:
                versions.setdefault((secret.set_name, secret.secret), []).append(secret)
        for dset in desired.sets:
            for declared in dset.secrets:
                found = current_version(
                    versions.get((dset.name, declared.secret), ()),
                    declared.fingerprint,
                    generator=declared.generator,
                )
                if found is None:
                    missing.append(f"{dset.name}/{declared.secret}")
                else:
                    names[(dset.name, declared.secret)] = found.name
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(
            f"no version holds the current value of {shown} yet (changed since the last apply, or never "
            "applied): run `swarm-secrets apply` first"
        )
    return names


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
    """The executor's way to plan again: observe, then plan the same desired state. The trust
    boundary's live checks run again on the fresh observation (:class:`PolicyViolation`): another
    writer may have changed a service since the plan (given it the engine socket, the reconciler's
    role label, a secret of another set), and a plan within the approved one is still refused then."""

    def replan() -> tuple[LiveState, Plan]:
        live = swarm.observe(lean=True, sets=_collectable(prepared.loaded, settings))
        loaded = prepared.loaded
        guard.enforce_live(loaded.sets, live, loaded.boundary, loaded.stacks)
        held = held_back(loaded, live)
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
            generate=generator(prepared.loaded),
            stacks=prepared.desired.stacks,
            deployer=settings.deployer,
        )
