"""Carry out an approved plan, exactly: create versions, roll services, wait, collect.

The executor performs the actions of the plan it is given and nothing else. It does not plan (it
imports no planner); when the swarm moved between planning and execution it asks the ``replan``
callback that ``converge`` supplies for a fresh plan, and goes on only when that plan is
:func:`~reconciler.core.plan.within` the approved one. Otherwise it stops and reports "the swarm
changed since the plan; plan again" (:attr:`ApplyResult.stale`; ``apply`` exits 3, the loop ticks
again). The steps:

1. **Create** every new version the plan lists (all values were resolved before anything runs). A
   409 means someone created the name first: plan again; a fresh plan within the approved one (the
   same name with the same fingerprint exists now) lets the remaining creates go on. The value of a
   generated version (``CreateSecret.generator``) is made by the ``generate`` callback right before
   its create, sent to the swarm and dropped: it exists nowhere else.
2. **Deploy** stacks and **update** services, concurrently (``concurrency`` workers). A stack deploy
   runs ``docker stack deploy`` with the override that pins the approved versions
   (``engine/stackdeploy.py``), then watches every service of the stack like an update of its own.
   An **update** is a raw spec round-trip that replaces only the secret references, by the one rule
   of ``core/refs.py``. When the service's version moved since the plan, a reference the plan did not
   expect sits at a path it writes, or the write is out of sequence, the service is planned again: its
   fresh update is made only when it is within the approved one. Every rollout is watched
   (``core/rollout.py`` judges each look) until it converges, rolls back, pauses, is superseded by a
   foreign write or times out; a failure is reported per service and the others carry on.
3. **Collect**: the approved removals, after the rollouts, each only if a fresh observation still
   finds nothing that may need it (``core/collect.protections``: Spec, PreviousSpec, running tasks).
   A version that only old tasks told to stop still use (the plan's "once the old tasks still using
   it have stopped") is waited for, up to :data:`STOPPING_WAIT` seconds, so that apply removes what
   it showed. Anything still protected (a rollout rolled back, a task still runs) is kept and
   reported.

A crash between any two steps leaves a swarm the next run converges from: a created but unused
version is either reused (same fingerprint) or collected; a half-rolled service is finished or
reported; nothing is deleted that a service or a rollback can still need.

Waiting goes through an injected :class:`Clock`, so tests run rollouts without sleeping. This module
never sees Engine JSON except the secret-reference list it rewrites; it never logs a value (values go
straight from the resolved map into ``Swarm.create_secret``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from reconciler.core.collect import protections
from reconciler.core.desired import Values
from reconciler.core.model import LiveState, SecretValue
from reconciler.core.plan import (
    Action,
    CreateSecret,
    DeployStack,
    Plan,
    RemoveSecret,
    UpdateService,
    drift_cause,
    outside,
)
from reconciler.core.refs import rewrite_refs
from reconciler.core.rollout import Outcome, Rollout, RolloutProbe, judge
from reconciler.core.stacks import StackSpec, deploy_labels, override_document
from reconciler.display import count
from reconciler.engine.protocol import RawService, Swarm
from reconciler.engine.stackdeploy import ComposeChanged, DeployReport
from reconciler.errors import (
    PolicyViolation,
    SwarmConflict,
    SwarmError,
    SwarmNoLeader,
    SwarmRefused,
    SwarmSecretsError,
)
from reconciler.logs import audit

log = logging.getLogger(__name__)

MAX_REPLANS = 3
"""Fresh plans after 409s on create before giving up (another apply is racing us)."""
MAX_UPDATE_ATTEMPTS = 5
"""Inspect/write rounds per service before reporting it kept changing."""
STALE = "the swarm changed since the plan; plan again"
STOPPING_WAIT = 30.0
"""Seconds collection waits for old tasks that were told to stop (their stop grace period, 10 s by
default) when only they still use a version the plan removes."""


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
    """Also revoke and collect sets that have managed secrets but no loaded manifest (planning)."""
    poll_interval: float = 0.1
    """Seconds between two looks at a rollout. One look answers for every rollout being watched
    (:class:`RolloutLooks`: three requests), so looking often costs the managers little however many
    services roll; a converged rollout is seen 50 ms late on average."""
    held: frozenset[tuple[str, frozenset[str]]] = frozenset()
    """(service id, secret names) of updates that rolled back or paused before: not tried again (the
    long-running loop sets this so a bad value does not restart a service over and over); an update
    to other versions, e.g. after the next commit, goes ahead."""


class Clock(Protocol):
    """Time for watching rollouts: injected so tests neither sleep nor read the real clock."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutResult:
    service: str
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0
    drift: bool = False
    """The update corrected drift (the manifest had not changed)."""
    drift_cause: str = ""
    """``manual`` or ``stack_deploy`` (``core/plan.drift_cause``) when ``drift``."""
    key: tuple[str, frozenset[str]] | None = None
    """:func:`hold_key` of the update, so a caller can hold it after a failure."""

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def failed_rollout(self) -> bool:
        """Swarm rolled the service back or paused it: retrying the same update would fail again."""
        return self.outcome.failed_rollout


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    created: tuple[str, ...] = ()
    rollouts: tuple[RolloutResult, ...] = ()
    removed: tuple[str, ...] = ()
    kept: int = 0
    """Superseded versions left in place: the plan's kept ones and approved removals kept back."""
    kept_back: tuple[str, ...] = ()
    """``name: why`` of approved removals a fresh look found still protected (kept, not an error)."""
    blocked: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    stale: str = ""
    """Set when execution stopped because the swarm changed since the plan: what moved."""
    deployed: tuple[str, ...] = ()
    """Stacks ``docker stack deploy`` was run for (successfully)."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocked and not self.stale and all(r.ok for r in self.rollouts)

    @property
    def changed(self) -> bool:
        return bool(
            self.created
            or self.removed
            or self.deployed
            or any(r.outcome is not Outcome.UNCHANGED for r in self.rollouts)
        )


ProgressFn = Callable[[str, str, str], None]
"""``progress(service, state, detail)``: called on every rollout state change (for displays)."""

Replan = Callable[[], "tuple[LiveState, Plan]"]
"""Observe the swarm again and plan from it (supplied by ``converge``; the executor never plans). Raises
:class:`~reconciler.errors.PolicyViolation` when the trust boundary refuses the fresh observation."""

Generate = Callable[[CreateSecret], SecretValue]
"""A fresh value for a generated version about to be created (supplied by ``converge``)."""


class StackDeployer(Protocol):
    """Runs ``docker stack deploy`` (``engine/stackdeploy.DockerCli``; an in-memory one in tests)."""

    def deploy(
        self, stack: StackSpec, override: Mapping[str, Any], *, timeout: float = ...
    ) -> DeployReport: ...


def hold_key(update: UpdateService | DeployStack) -> tuple[str, frozenset[str]]:
    """What identifies an update for :attr:`ApplyOptions.held`: the service and the versions it gets;
    for a stack deploy, the stack, its content and the versions it pins."""
    if isinstance(update, DeployStack):
        return f"stack:{update.stack}", frozenset({update.content, *update.pinned})
    return update.service_id, frozenset(c.new for c in update.changes if c.new)


def describe(actions: Sequence[Action]) -> str:
    """What a fresh plan wants that the approved one did not contain, briefly."""
    parts = []
    for action in actions[:3]:
        if isinstance(action, CreateSecret):
            parts.append(f"create {action.name}")
        elif isinstance(action, DeployStack):
            parts.append(f"deploy stack {action.stack} ({action.reason})")
        elif isinstance(action, UpdateService):
            paths = ", ".join(f"{c.path} {', '.join(c.old) or '-'} → {c.new or '-'}" for c in action.changes)
            parts.append(f"update {action.service} ({paths})")
        else:
            parts.append(f"remove {action.name}")
    more = f" and {len(actions) - 3} more" if len(actions) > 3 else ""
    return "; ".join(parts) + more


class _Stale(Exception):
    """Raised inside the executor when a fresh plan is not within the approved one."""


def _log_progress(service: str, state: str, detail: str) -> None:
    log.info("rollout %s: %s (%s)", service, state, detail)


class RolloutLooks:
    """Looks at the rollouts being watched, shared by the threads that watch them.

    One :meth:`Swarm.rollout_probes` call answers for every watched service, so each look costs the
    engine three requests however many rollouts run (one look per service cost three each: at 16
    rollouts every 0.25 s, 190 requests a second competing with the engine starting the new tasks).
    A watcher is answered only with a look taken after the one it had before, and after it started
    watching: a look from before its write would show the old spec (superseded). A look another
    watcher took meanwhile serves it; otherwise it takes one for everybody.
    """

    def __init__(self, swarm: Swarm) -> None:
        self._swarm = swarm
        self._lock = threading.Lock()
        self._taken = 0
        self._watching: Counter[str] = Counter()
        self._probes: Mapping[str, RolloutProbe] = {}

    def start(self, service_id: str) -> int:
        """Watch ``service_id`` from now on; the number to pass to the first :meth:`look`."""
        with self._lock:
            self._watching[service_id] += 1
            return self._taken

    def stop(self, service_id: str) -> None:
        with self._lock:
            self._watching[service_id] -= 1
            if self._watching[service_id] <= 0:
                del self._watching[service_id]

    def look(self, service_id: str, after: int) -> tuple[int, RolloutProbe]:
        """A look at ``service_id`` taken after look number ``after``, and its number."""
        with self._lock:
            if self._taken <= after or service_id not in self._probes:
                self._probes = self._swarm.rollout_probes(sorted(self._watching.keys() | {service_id}))
                self._taken += 1
            probe = self._probes.get(service_id)
            if probe is None:
                raise SwarmRefused(f"service {service_id} no longer exists")
            return self._taken, probe


def _secrets_of(spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return list(((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or [])


class _Execution:
    """One execution of one approved plan (the state the steps share)."""

    def __init__(
        self,
        plan: Plan,
        values: Values,
        swarm: Swarm,
        live: LiveState,
        replan: Replan,
        options: ApplyOptions,
        progress: ProgressFn,
        clock: Clock,
        revision: str | None,
        generate: Generate | None,
        stacks: Mapping[str, StackSpec],
        deployer: StackDeployer | None,
    ) -> None:
        self.approved = plan
        self.stacks = stacks
        self.deployer = deployer
        self.deployed: list[str] = []
        self.values = values
        self.generate = generate
        self.swarm = swarm
        self.replan_fn = replan
        self.options = options
        self.progress = progress
        self.clock = clock
        self.revision = revision
        self.ids: dict[str, str] = {s.name: s.id for s in live.secrets}
        self.lock = threading.Lock()
        self.stale = ""
        self.created: list[str] = []
        self.errors: list[str] = []
        self.looks = RolloutLooks(swarm)

    # --- planning again --------------------------------------------------------------------------

    def replan(self) -> Plan:
        """A fresh plan, when it is within the approved one; else :class:`_Stale` (and remembered)."""
        with self.lock:
            if self.stale:
                raise _Stale(self.stale)
            try:
                live, fresh = self.replan_fn()
            except PolicyViolation as exc:
                # The swarm moved so that the trust boundary refuses what was approved (e.g. a service
                # to update can reach the engine now): stop; the next plan shows the refusal.
                self.stale = f"{STALE} (the trust boundary refuses it now: {exc.problems[0].message})"
                log.info("%s", self.stale)
                raise _Stale(self.stale) from None
            self.ids.update({s.name: s.id for s in live.secrets})
            extra = outside(fresh, self.approved)
            if extra:
                self.stale = f"{STALE} (not in the approved plan: {describe(extra)})"
                log.info("%s", self.stale)
                raise _Stale(self.stale)
            return fresh

    # --- 1. creates ------------------------------------------------------------------------------

    def create(self) -> bool:
        """Create the approved versions; False when execution must stop."""
        pending: Sequence[CreateSecret] = self.approved.creates
        for attempt in range(MAX_REPLANS + 1):
            conflict = False
            for action in pending:
                try:
                    secret_id = self.swarm.create_secret(action.name, self._value(action), action.labels)
                except SwarmConflict:
                    log.info("%s was created concurrently; planning again", action.name)
                    conflict = True
                    break
                except SwarmError as exc:
                    if not exc.transient:
                        self.errors.append(f"could not create {action.name}: {exc}")
                        return False
                    # Not confirmed (e.g. the leader was lost): it may or may not exist. Never create
                    # it again blindly: plan again, which reuses it if it landed.
                    log.warning("creating %s was not confirmed (%s); planning again", action.name, exc)
                    audit(
                        "secret_create_unconfirmed",
                        set=action.set_name,
                        secret=action.secret,
                        version=action.version,
                        name=action.name,
                        revision=self.revision or "",
                    )
                    conflict = True
                    break
                self.ids[action.name] = secret_id
                self.created.append(action.name)
                audit(
                    "secret_created",
                    set=action.set_name,
                    secret=action.secret,
                    version=action.version,
                    name=action.name,
                    revision=self.revision or "",
                    **({"generated": action.generator} if action.generator else {}),
                )
            if not conflict:
                return True
            if attempt == MAX_REPLANS:
                self.errors.append(
                    "secrets kept being created concurrently; another apply is running? try again"
                )
                return False
            try:
                pending = self.replan().creates
            except _Stale:
                return False
            except SwarmError as exc:
                self.errors.append(f"could not observe the swarm again after a conflict: {exc}")
                return False
        return True  # pragma: no cover - the loop returns

    def _value(self, action: CreateSecret) -> SecretValue:
        """The value of the version ``action`` creates: generated this moment, or resolved before."""
        if action.generator is None:
            return self.values[(action.set_name, action.secret)]
        if self.generate is None:
            raise SwarmSecretsError(f"{action.name} is to be generated, and no generator was given (a bug)")
        return self.generate(action)

    # --- 2. updates ------------------------------------------------------------------------------

    def update_all(self) -> list[RolloutResult]:
        results: list[RolloutResult] = []
        todo: list[UpdateService | DeployStack] = []
        for deploy in self.approved.deploys:
            key = hold_key(deploy)
            if key in self.options.held:
                results.append(
                    RolloutResult(
                        service=f"stack {deploy.stack}",
                        outcome=Outcome.HELD,
                        detail="not retried: its rollouts failed with these versions and this content "
                        "before; a new commit or a manual reconcile tries again",
                        key=key,
                    )
                )
            else:
                todo.append(deploy)
        for update in self.approved.updates:
            key = hold_key(update)
            if key in self.options.held:
                results.append(
                    RolloutResult(
                        service=update.service,
                        outcome=Outcome.HELD,
                        detail=f"not retried: rolling it to {', '.join(sorted(key[1]))} failed before; "
                        "a new commit or a manual reconcile tries again",
                        key=key,
                    )
                )
            else:
                todo.append(update)
        if not todo:
            return results
        workers = max(1, self.options.concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rollout") as pool:
            futures = [
                pool.submit(self.deploy, action)
                if isinstance(action, DeployStack)
                else pool.submit(self.update, action)
                for action in todo
            ]
            for future, action in zip(futures, todo, strict=True):
                outcome = future.result()
                for result in outcome if isinstance(outcome, list) else [outcome]:
                    if result is not None:
                        results.append(replace(result, key=hold_key(action)))
        return results

    # --- 2a. stack deploys -----------------------------------------------------------------------

    def deploy(self, action: DeployStack) -> list[RolloutResult]:
        """Run the approved stack deploy and watch every service of the stack."""
        started = self.clock.now()
        stack = self.stacks.get(action.stack)

        def failed(detail: str) -> list[RolloutResult]:
            self.progress(f"stack {action.stack}", Outcome.FAILED.value, detail)
            seconds = self.clock.now() - started
            return [
                RolloutResult(
                    service=f"stack {action.stack}", outcome=Outcome.FAILED, detail=detail, seconds=seconds
                )
            ]

        if stack is None or self.deployer is None:  # converge hands both over with every DeployStack
            return failed("no stack definition or docker CLI was given for this deploy (a bug)")
        if self.stale:
            return []
        pinned = dict(action.pins)
        override = override_document(stack, pinned, labels=deploy_labels(stack, pinned, self.revision))
        try:
            before = self.swarm.stack_services(action.stack)
            report = self.deployer.deploy(stack, override, timeout=max(60.0, self.options.timeout))
        except ComposeChanged as exc:
            with self.lock:
                self.stale = self.stale or f"{STALE} ({exc})"
            return failed(str(exc))
        except SwarmSecretsError as exc:
            return failed(str(exc))
        with self.lock:
            self.deployed.append(action.stack)
        audit(
            "stack_deployed",
            stack=action.stack,
            versions=sorted(set(pinned.values())),
            content=action.content,
            revision=self.revision or "",
            output=list(report.shown),
        )
        try:
            after = self.swarm.stack_services(action.stack)
        except SwarmSecretsError as exc:
            return failed(f"deployed, but the stack's services could not be listed: {exc}")
        results: list[RolloutResult] = []
        for entry in action.services:
            short = entry.service.removeprefix(f"{action.stack}_")
            found = after.get(entry.service)
            seconds = self.clock.now() - started
            if found is None:
                results.append(
                    RolloutResult(
                        service=entry.service,
                        outcome=Outcome.FAILED,
                        detail="the deploy did not create it",
                        seconds=seconds,
                    )
                )
                continue
            service_id, _ = found
            with self.lock:
                ids = dict(self.ids)
            names = {pinned[u.key] for u in stack.compose.uses if u.service == short and u.key in pinned}
            written = frozenset(ids[n] for n in names if n in ids)
            baseline = before.get(entry.service, ("", None))[1]
            self.progress(entry.service, "updating", f"deployed with stack {action.stack}")
            try:
                outcome, detail = self.watch(service_id, entry.service, written, baseline, started)
            except SwarmSecretsError as exc:
                outcome, detail = Outcome.FAILED, str(exc)
            causes = [cause for c in entry.changes if (cause := drift_cause(c)) is not None]
            results.append(
                RolloutResult(
                    service=entry.service,
                    outcome=outcome,
                    detail=detail,
                    seconds=self.clock.now() - started,
                    drift=bool(causes),
                    drift_cause=causes[0] if causes else "",
                )
            )
        return results

    def update(self, action: UpdateService) -> RolloutResult | None:
        """Make one approved update and watch its rollout; None when stopped before writing."""
        started = self.clock.now()
        causes = [cause for c in action.changes if (cause := drift_cause(c)) is not None]
        drift = bool(causes)
        name = action.service

        def result(outcome: Outcome, detail: str) -> RolloutResult:
            return RolloutResult(
                service=name,
                outcome=outcome,
                detail=detail,
                seconds=self.clock.now() - started,
                drift=drift,
                drift_cause=causes[0] if causes else "",
            )

        # After a write the engine did not confirm (the leader was lost), the next inspect tells whether
        # it landed: (IDs written, UpdateStatus.StartedAt before it), to watch that rollout instead.
        unconfirmed: tuple[frozenset[str], str | None] | None = None
        try:
            for attempt in range(1, MAX_UPDATE_ATTEMPTS + 1):
                if self.stale:
                    return None
                raw = self.swarm.inspect_service(action.service_id)
                current = _secrets_of(raw.get("Spec"))
                if unconfirmed is not None:
                    written, baseline = unconfirmed
                    unconfirmed = None
                    if written and written <= frozenset(str(r.get("SecretID")) for r in current):
                        log.info("the update of %s had landed; watching its rollout", name)
                        self._audit_update(action, confirmed=False)
                        self.progress(name, "updating", f"{count(len(action.changes), 'reference')} changed")
                        outcome, detail = self.watch(action.service_id, name, written, baseline, started)
                        return result(outcome, detail)
                new = self._rewrite(raw, current, action)
                if new is None:
                    # The service moved since it was planned: plan again; go on only within the plan.
                    fresh = self.replan()
                    found = next((u for u in fresh.updates if u.service_id == action.service_id), None)
                    if found is None:
                        return result(Outcome.UNCHANGED, "already up to date")
                    action = found
                    continue
                if new == current:
                    return result(Outcome.UNCHANGED, "already up to date")
                baseline = (raw.get("UpdateStatus") or {}).get("StartedAt")
                written = frozenset(str(r.get("SecretID")) for r in new) - frozenset(
                    str(r.get("SecretID")) for r in current
                )
                try:
                    self.swarm.write_service_secrets(raw, new)
                except SwarmConflict:
                    log.info("service %s changed while we updated it (attempt %d)", name, attempt)
                    continue
                except SwarmError as exc:
                    if not exc.transient:
                        raise
                    log.warning("updating %s was not confirmed (%s); inspecting again", name, exc)
                    unconfirmed = (written, baseline)
                    continue
                self._audit_update(action)
                self.progress(name, "updating", f"{count(len(action.changes), 'reference')} changed")
                outcome, detail = self.watch(action.service_id, name, written, baseline, started)
                return result(outcome, detail)
            return result(
                Outcome.FAILED,
                f"the service kept changing under us ({MAX_UPDATE_ATTEMPTS} attempts); the next run retries",
            )
        except _Stale:
            return None
        except SwarmSecretsError as exc:
            self.progress(name, Outcome.FAILED.value, str(exc))
            return result(Outcome.FAILED, str(exc))

    def _audit_update(self, action: UpdateService, *, confirmed: bool = True) -> None:
        fields: dict[str, object] = {} if confirmed else {"confirmed": False}
        audit(
            "service_updated",
            service=action.service,
            secrets=sorted({f"{c.set_name}/{c.secret}" for c in action.changes if c.secret}),
            changes=[f"{c.path}:{', '.join(c.old) or None}->{c.new}" for c in action.changes],
            revision=self.revision or "",
            **fields,
        )

    def _rewrite(
        self, raw: RawService, current: list[dict[str, Any]], action: UpdateService
    ) -> list[dict[str, Any]] | None:
        """The new reference list, or None when the service is not as ``action`` was planned on."""
        if int((raw.get("Version") or {}).get("Index", -1)) != action.observed_version:
            return None
        try:
            with self.lock:
                ids = dict(self.ids)
            return rewrite_refs(current, action.changes, ids)
        except SwarmConflict as exc:
            log.info("service %s: %s; planning again", action.service, exc)
            return None

    def watch(
        self, service_id: str, service: str, written: frozenset[str], baseline: str | None, started: float
    ) -> tuple[Outcome, str]:
        """Look at the rollout of ``service`` until the judge gives an outcome."""
        rollout = Rollout(
            written=written,
            baseline_started_at=baseline,
            deadline=started + self.options.timeout,
            timeout=self.options.timeout,
        )
        seen = self.looks.start(service_id)
        try:
            return self._watch(service_id, service, rollout, seen)
        finally:
            self.looks.stop(service_id)

    def _watch(self, service_id: str, service: str, rollout: Rollout, seen: int) -> tuple[Outcome, str]:
        shown: tuple[str, str] | None = None
        while True:
            try:
                seen, probe = self.looks.look(service_id, seen)
            except SwarmNoLeader as exc:
                # An election outlasted the read's own patience: the rollout goes on in the swarm
                # meanwhile; look again until this rollout's deadline.
                if self.clock.now() >= rollout.deadline:
                    detail = f"timed out after {self.options.timeout:.0f} s: the swarm had no leader ({exc})"
                    self.progress(service, Outcome.TIMED_OUT.value, detail)
                    return Outcome.TIMED_OUT, detail
                log.warning("watching %s: %s; looking again", service, exc)
                self.clock.sleep(self.options.poll_interval)
                continue
            verdict = judge(rollout, probe, self.clock.now())
            rollout = verdict.rollout
            if verdict.outcome is not None:
                self.progress(service, verdict.outcome.value, verdict.detail)
                return verdict.outcome, verdict.detail
            if (verdict.state, verdict.progress) != shown:
                shown = (verdict.state, verdict.progress)
                self.progress(service, verdict.state, verdict.progress)
            self.clock.sleep(self.options.poll_interval)

    # --- 3. removals -----------------------------------------------------------------------------

    def _settled(self, secret_ids: Sequence[str]) -> LiveState:
        """A fresh observation, taken once the old tasks that alone still use one of ``secret_ids``
        have stopped (or :data:`STOPPING_WAIT` passed)."""
        live = self.swarm.observe()
        deadline = self.clock.now() + min(STOPPING_WAIT, self.options.timeout)
        while any(_only_stopping(live, i) for i in secret_ids) and self.clock.now() < deadline:
            self.clock.sleep(self.options.poll_interval)
            live = self.swarm.observe()
        return live

    def collect(self) -> tuple[list[str], list[str], list[str]]:
        """(removed, kept back, warnings) for the approved removals, each checked against a fresh look."""
        removed: list[str] = []
        kept_back: list[str] = []
        warnings: list[str] = []
        removals: Sequence[RemoveSecret] = self.approved.removals
        if not removals:
            return removed, kept_back, warnings
        try:
            live = self._settled([r.secret_id for r in removals])
        except SwarmError as exc:
            warnings.append(f"could not observe the swarm for garbage collection, nothing removed: {exc}")
            return removed, kept_back, warnings
        users = protections(live)
        present = {s.id for s in live.secrets}
        for removal in removals:
            if removal.secret_id not in present:
                continue  # someone else collected it: nothing to do
            why = users.get(removal.secret_id)
            if why:
                kept_back.append(f"{removal.name}: {why}")
                continue
            try:
                self.swarm.remove_secret(removal.secret_id, removal.name)
            except SwarmError as exc:
                # e.g. started being used in between: keeping it is always safe.
                kept_back.append(f"{removal.name}: {exc}")
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
        return removed, kept_back, warnings


def _only_stopping(live: LiveState, secret_id: str) -> bool:
    """Only tasks told to stop use ``secret_id``: no Spec, no PreviousSpec, no task meant to run."""
    if secret_id not in live.stopping_task_secret_ids:
        return False
    return not any(
        r.secret_id == secret_id for service in live.services for r in (*service.refs, *service.previous_refs)
    )


def execute(
    plan: Plan,
    values: Values,
    swarm: Swarm,
    *,
    live: LiveState,
    replan: Replan,
    options: ApplyOptions = ApplyOptions(),
    progress: ProgressFn | None = None,
    clock: Clock = SYSTEM_CLOCK,
    revision: str | None = None,
    generate: Generate | None = None,
    stacks: Sequence[StackSpec] = (),
    deployer: StackDeployer | None = None,
) -> ApplyResult:
    """Carry out the approved ``plan`` exactly (see the module docstring for the steps).

    ``live`` is the observation the plan was approved against (it gives the ids of the versions the
    plan references); ``replan`` observes and plans again when the swarm moved; ``revision`` goes
    into the audit events and the deployed stacks' labels; ``generate`` makes the values of generated
    versions as they are created; ``stacks`` and ``deployer`` carry out the plan's stack deploys.
    """
    run = _Execution(
        plan,
        values,
        swarm,
        live,
        replan,
        options,
        progress or _log_progress,
        clock,
        revision,
        generate,
        {s.name: s for s in stacks},
        deployer,
    )
    blocked = tuple(f"{b.set_name}/{b.secret}: {b.reason}" for b in plan.blocked)
    warnings = list(plan.warnings)
    rollouts: list[RolloutResult] = []
    removed: list[str] = []
    kept_back: list[str] = []
    if run.create():
        rollouts = run.update_all()
        for rollout in rollouts:
            audit(
                "rollout_finished",
                service=rollout.service,
                outcome=rollout.outcome.value,
                detail=rollout.detail,
            )
        if not run.stale:
            removed, kept_back, more = run.collect()
            warnings += more
    return ApplyResult(
        created=tuple(run.created),
        rollouts=tuple(rollouts),
        removed=tuple(removed),
        kept=len(plan.kept) + len(kept_back),
        kept_back=tuple(kept_back),
        blocked=blocked,
        errors=tuple(run.errors),
        warnings=tuple(dict.fromkeys(warnings)),
        stale=run.stale,
        deployed=tuple(run.deployed),
    )
