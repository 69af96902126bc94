"""What a tick is asked to do and what it reports: the data shared by the loop, the tick and the metrics.

Kept apart from ``loop.py`` so that the metrics and the HTTP side can read a :class:`TickResult`
without importing the loop (which imports them). Data only: no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reconciler import errors
from reconciler.core.status import SecretStatus

ERROR_CLASSES = ("manifest", "policy", "source", "git", "engine", "config", "rollout", "error", "internal")
"""What kind of failure a tick had: the only failure detail ``/readyz`` ever shows (its text could
name files, services and engine messages, which an unauthenticated endpoint has no business with)."""


def error_class(exc: BaseException) -> str:
    """The :data:`ERROR_CLASSES` entry for an exception a tick raised."""
    for cls, name in (
        (errors.ManifestError, "manifest"),
        (errors.PolicyViolation, "policy"),
        (errors.PolicyFileError, "policy"),
        (errors.SourceError, "source"),
        (errors.GitError, "git"),
        (errors.SwarmError, "engine"),
        (errors.ConfigError, "config"),
        (errors.SwarmSecretsError, "error"),
    ):
        if isinstance(exc, cls):
            return name
    return "internal"


READY: Final = "ready"
STARTING: Final = "starting"
READY_RETRYING: Final = "ready: the last tick failed and is being retried"
NOT_STARTED: Final = "not ready: no tick has finished yet"
FAILING: Final = (
    "not ready: ticks fail with errors that may pass (engine, network, rollouts); retrying with backoff"
)
STALLED: Final = (
    "not ready: the manifests, a source, the policy or a setting is invalid; waiting for a change "
    "(a new revision, a webhook or POST /reconcile)"
)
STANDBY: Final = "ready: standing by; another replica holds the run lease and reconciles"
SETS_FAILING: Final = (
    "not ready: sets are held back: their manifests, a source or the policy fail; the other sets are "
    "reconciled"
)
"""The states ``/readyz`` reports; a failing state is followed by the class of the last failure
(:func:`with_class`). Never the text of a failure: that is in the log. While sets are held back, a second
line names them (:func:`failing_line`)."""

MAX_NAMED_SETS: Final = 20
"""Failing sets named by ``/readyz`` and labelled in ``/metrics`` at most (the rest are counted)."""
_SET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_NAMED = rf"{_SET_NAME.pattern} \((?:{'|'.join(ERROR_CLASSES)})\)"
_FAILING_LINE = re.compile(rf"failing sets: {_NAMED}(?:, {_NAMED})*(?: and \d+ more)?")


def named_sets(failing: Mapping[str, str]) -> list[tuple[str, str]]:
    """The failing sets to name, (set, class), by name, at most :data:`MAX_NAMED_SETS`: only names a
    set may have (the loader attributes nothing else) and known classes, so neither ``/readyz`` nor
    the metrics' label values can carry anything else."""
    valid = sorted((name, cls) for name, cls in failing.items() if _SET_NAME.fullmatch(name))
    return [(name, cls if cls in ERROR_CLASSES else "error") for name, cls in valid[:MAX_NAMED_SETS]]


def failing_class(failing: Mapping[str, str]) -> str:
    """The class ``/readyz`` gives for held-back sets: the first of :data:`ERROR_CLASSES` among theirs."""
    found = [name for name in ERROR_CLASSES if name in failing.values()]
    return found[0] if found else "error"


def failing_line(failing: Mapping[str, str]) -> str:
    """``failing sets: shop (manifest), web (policy) and 3 more`` for ``/readyz``."""
    named = named_sets(failing)
    text = "failing sets: " + ", ".join(f"{name} ({cls})" for name, cls in named)
    return text + (f" and {len(failing) - len(named)} more" if len(failing) > len(named) else "")


def readiness_text_ok(text: str) -> bool:
    """``text`` is one of :func:`readiness_reasons`, optionally followed by a :func:`failing_line`:
    the only texts ``/readyz`` may answer with."""
    first, _, second = text.partition("\n")
    return first in readiness_reasons() and (not second or _FAILING_LINE.fullmatch(second) is not None)


def with_class(state: str, error_class: str | None) -> str:
    """``state`` with the class of the failure behind it, e.g. ``… (class: manifest)``."""
    name = error_class if error_class in ERROR_CLASSES else "error"
    return f"{state} (class: {name})"


def readiness_reasons() -> frozenset[str]:
    """Every text ``/readyz`` may answer with (see ``Loop.readiness``): a fixed set."""
    fixed = {READY, STARTING, NOT_STARTED, STANDBY}
    for name in ERROR_CLASSES:
        fixed |= {with_class(state, name) for state in (READY_RETRYING, FAILING, STALLED, SETS_FAILING)}
    return frozenset(fixed)


class Trigger(enum.StrEnum):
    """Why a tick is requested. The loop and the tick decide by these, never by parsing text."""

    STARTUP = "startup"
    """The service started: at once, not debounced."""
    INTERVAL = "interval"
    """The periodic level-based resync."""
    RETRY = "retry"
    """The backoff delay after a failed tick ran out."""
    WEBHOOK = "webhook"
    """A forge delivered a verified webhook (the :class:`Reason` names the forge)."""
    MANUAL = "manual"
    """``POST /reconcile``."""
    EVENT = "event"
    """The swarm reported a secret or service change (maybe our own: see the loop's quiet window)."""
    GIT = "git"
    """A new revision of the manifests was fetched."""
    ROTATION = "rotation"
    """A generated secret's scheduled rotation falls due (before the next interval tick)."""
    FOLLOW_UP = "follow-up"
    """The last tick found the swarm moved under it (a rollout superseded by another writer, or the
    swarm changed since its plan): plan again from the swarm as it is now (``TickResult.follow_up``)."""
    ELECTED = "elected"
    """This replica took the lease of ``run`` (``daemon/leader.py``): from now on it reconciles."""

    @property
    def immediate(self) -> bool:
        """Runs at once, without the debounce."""
        return self in (Trigger.STARTUP, Trigger.ELECTED)

    @property
    def explicit(self) -> bool:
        """Someone asked for it, or the last tick did (a follow-up): runs after the debounce even while
        backing off after failures (a new commit may be the fix); other requests wait for the retry
        time."""
        return self in (Trigger.STARTUP, Trigger.ELECTED, Trigger.WEBHOOK, Trigger.MANUAL, Trigger.FOLLOW_UP)

    @property
    def asked(self) -> bool:
        """A person asked (an authenticated ``POST /reconcile``): held rollouts are tried again. A
        webhook does not count: a replayed or repeated delivery must not re-roll a service whose
        rollout Swarm just undid (a push that matters brings a new revision anyway)."""
        return self is Trigger.MANUAL

    @property
    def handed_over(self) -> bool:
        """Requested from outside (a webhook, ``POST /reconcile``): a standby replica hands it to the
        replica that reconciles, through the swarm (``daemon/leader.py``), instead of dropping it."""
        return self in (Trigger.WEBHOOK, Trigger.MANUAL)

    @property
    def from_swarm(self) -> bool:
        """Caused by a change in the swarm, which may be our own: ignored in the quiet window."""
        return self is Trigger.EVENT


class Reason(str):
    """A :class:`Trigger` and where it came from, as the text logs show (``event``, ``webhook:github``).

    A ``str`` (so it logs, serializes and compares as that text) that carries its :attr:`trigger`: code
    decides by the enum, never by matching the text.
    """

    trigger: Trigger

    def __new__(cls, trigger: Trigger, source: str = "") -> Reason:
        reason = super().__new__(cls, f"{trigger.value}:{source}" if source else trigger.value)
        reason.trigger = trigger
        return reason

    def __reduce__(self) -> tuple[object, ...]:
        source = str(self).partition(":")[2]
        return Reason, (self.trigger, source)

    @classmethod
    def parse(cls, text: str) -> Reason | None:
        """The :class:`Reason` a text such as ``webhook:github`` stands for, when it is one a standby
        may hand over (:attr:`Trigger.handed_over`, a known forge); else None."""
        name, _, source = text.partition(":")
        try:
            trigger = Trigger(name)
        except ValueError:
            return None
        expected = _FORGES if trigger is Trigger.WEBHOOK else ("",)
        if not trigger.handed_over or source not in expected:
            return None
        return cls(trigger, source)


_FORGES: Final = ("github", "gitlab", "gitea")
"""``webhooks.PROVIDERS`` (not imported: this module imports nothing of the daemon)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TickRequest:
    """What the tick is asked to do, and why."""

    reason: Reason
    """The earliest of the coalesced reasons: startup, interval, retry, webhook:<provider>, manual,
    event or git."""
    reasons: tuple[Reason, ...] = ()
    """Every distinct reason coalesced into this tick, earliest first."""
    manifests_dir: Path | None = None
    """Folder to load manifests from (``LoopSettings.manifests_dir``, or the git checkout)."""
    revision: str | None = None
    """Git commit of ``manifests_dir`` when :func:`with_git` fetched it, else None."""
    source_root: Path | None = None
    """The git checkout when :func:`with_git` fetched it: every source must stay inside it."""
    stalled_revision: str | None = None
    """The revision at which the last tick failed with an error retrying cannot fix (the loop is
    waiting for a change); :func:`with_git` skips a tick that finds that revision again, unless a
    webhook or ``POST /reconcile`` asked for it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TickResult:
    """What one tick did; the loop and the metrics read it, nothing in it is a value."""

    ok: bool
    """Converged, or nothing to do."""
    changed: bool
    """Any mutation was made (starts the event quiet window)."""
    revision: str | None = None
    """Git revision applied, if any."""
    created: int = 0
    """Secret versions created."""
    removed: int = 0
    """Secret versions removed."""
    rollouts: Mapping[str, int] = field(default_factory=dict)
    """Rollouts by outcome (a :class:`~reconciler.core.rollout.Outcome` value: converged, rolled_back,
    paused, superseded, timed_out, failed, unchanged, held)."""
    drift_corrected: int = 0
    """Service updates whose reason was drift."""
    drift_causes: Mapping[str, int] = field(default_factory=dict)
    """``drift_corrected`` by cause: ``manual`` (someone or something moved a service), ``stack_deploy``
    (a ``docker stack deploy`` put back what its compose file says; ``core/plan.drift_cause``)."""
    stacks_deployed: int = 0
    """Stacks ``docker stack deploy`` was run for (``kind: Stack`` manifests)."""
    managed_secrets: int = 0
    """Secret objects owned by the tool after the tick."""
    error: str | None = None
    """One-line error when not ok (for the log)."""
    error_class: str | None = None
    """One of :data:`ERROR_CLASSES` when not ok (for ``/readyz``)."""
    transient: bool = True
    """When not ok: retrying later with the same inputs may succeed (engine, network, a rollout), so
    the loop backs off and retries. False for a bad manifest, source, policy or setting
    (``SwarmSecretsError.transient``): the loop then waits for a change instead."""
    skipped: bool = False
    """Nothing was tried: the revision that failed with a permanent error is still the newest."""
    secrets: tuple[SecretStatus, ...] | None = None
    """Every managed secret after the tick: age of its current version, rotation due, superseded
    versions by what keeps them (for ``/metrics``); None when the tick did not observe the swarm."""
    next_rotation: float | None = None
    """Seconds until the next scheduled rotation of a generated secret falls due (0: now); the loop
    ticks then (bounded and jittered) instead of waiting for the interval. None: none scheduled."""
    failing_sets: Mapping[str, str] | None = None
    """Sets held back because their manifests, sources or policy checks fail, each with its failure
    class (manifest, policy, source); the other sets were reconciled (``ok`` is about those). Empty when
    every set loaded; None when the tick did not get as far as loading them (git, a bug): the last known
    stands."""
    follow_up: bool = False
    """The swarm moved under this tick: a rollout was superseded by another writer, or the swarm
    changed between the plan and its execution. The loop ticks again after the debounce (a
    ``follow-up``), without waiting for the interval or the backoff and without it being dropped as
    one of our own Docker events, so the next plan corrects the drift from the swarm as it is."""


def one_line(exc: BaseException) -> str:
    """The first line of an error, and how many more it has."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more)"


def failure(
    exc: errors.SwarmSecretsError,
    revision: str | None = None,
    *,
    failing_sets: Mapping[str, str] | None = None,
) -> TickResult:
    """The result of a tick that failed with ``exc``: one line, its class, and whether retrying may heal
    it."""
    return TickResult(
        ok=False,
        changed=False,
        revision=revision,
        error=one_line(exc),
        error_class=error_class(exc),
        transient=exc.transient,
        failing_sets=failing_sets,
    )


Tick = Callable[[TickRequest], TickResult]
"""The reconcile step: may raise; a SwarmSecretsError counts as a failed tick, anything else as a bug."""
