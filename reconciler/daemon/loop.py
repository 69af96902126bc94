"""The long-running service: when to reconcile, coalescing, retries, signals, readiness.

The reconcile step itself (fetch → load → plan → apply) is injected as a :data:`Tick`; this module
decides *when* it runs and reports how it went. Ticks are requested by

* ``startup`` (at once), ``interval`` (every ``interval`` ± ``jitter``), ``retry`` (after a failure,
  with exponential :class:`Backoff`, reset by a success), ``rotation`` (when a generated secret's
  scheduled rotation falls due within the interval: the tick's result says when; at least
  :data:`ROTATION_MIN_WAIT` after the tick, plus up to ``jitter`` of the wait, never earlier);
* ``webhook:<provider>`` and ``manual`` (``POST /reconcile``), from the HTTP listener;
* ``event`` (a Docker service/secret change) and ``git`` (a new revision), from any thread through
  :meth:`Loop.request`, or from the ``events`` iterable given to :meth:`Loop.run`.

Requests are coalesced: within ``debounce`` seconds of the first one, any number of requests make one
tick; requests that arrive while a tick runs make exactly one more tick after it. Reconciling is
level-based, so one tick answers every request made before it started.

**The reconciler's own changes must not trigger it again.** A tick that changed something (created
versions, updated services) makes Docker emit events for those very changes, during the tick and
for a while after it (tasks restarting). So after a tick whose result has ``changed=True``, ``event``
requests that came in during the tick are dropped and further ones are ignored for ``event_quiet``
seconds; :meth:`Loop.suppress_events_until` extends that window from outside. A foreign change
hidden by this window is still found by the next interval tick.

**When the swarm moves under a tick** (another writer supersedes a rollout, or the swarm changed between
the tick's plan and its execution), the tick says so (``TickResult.follow_up``) and the loop requests a
``follow-up`` tick: after the debounce, not waiting for the interval or the backoff, and never dropped
by the quiet window (it is not a Docker event). At most :data:`MAX_FOLLOW_UPS` in a row: a writer that
keeps undoing our changes then meets the ordinary backoff rather than a tick every few seconds.

Failures (``ok=False``, a :class:`SwarmSecretsError` raised by the tick, or any other exception,
which is logged with its traceback as a bug) never end the loop. A failure that may pass (engine
unreachable or answering 5xx, a network error, git timing out, a rollout that failed, the swarm's
lease held by another applier) is retried after the backoff delay; explicit requests (webhook,
``POST /reconcile``) do not wait for that delay, events do. A failure that cannot heal by retrying
(``transient`` False: a bad manifest, a source that cannot be resolved, a policy violation, a wrong
setting, git refusing the ref or the credentials) makes the loop **wait for a change** instead: no
retry timer and no backoff; the next tick comes from the interval, a webhook, ``POST /reconcile`` or
an event, and with git an interval or event tick that finds the same revision again stops right
after the fetch (:func:`with_git`). ``/readyz``, ``/metrics`` (``ticks_total{result="stalled"}``,
``waiting_for_change``) and the log line say which kind of failure it was.

**Several replicas** (``daemon/leader.py``): only the replica that holds the lease of ``run`` ticks.
A loop built with ``elected=False`` stands by until :meth:`Loop.set_leading` says it leads (then it ticks
at once, ``elected``); while standing by it runs no tick at all, hands webhooks and ``POST /reconcile``
to the leading replica (``forward``, through the swarm) and drops the rest (interval, events: the leader
has its own). Requests handed over by a standby arrive through :meth:`Loop.handed`.

SIGTERM/SIGINT set the stop flag: the tick in hand finishes (it is never interrupted), then
:meth:`Loop.run` returns 0. A second signal raises SystemExit(130) at once.

``/healthz``, ``/readyz``, ``/metrics``, ``/reconcile`` and ``/hooks/*`` are served by
:class:`reconciler.daemon.http.HttpListener`, which calls back into :meth:`Loop.request` and
:meth:`Loop.readiness`.

This module must not talk to Docker, git or the manifests itself, and never logs or serves a value:
errors are one line of names, and webhook bodies and signatures are never logged.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler import logs
from reconciler.daemon import http, webhooks
from reconciler.daemon.gitsync import Checkout
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.types import (
    FAILING,
    NOT_STARTED,
    READY,
    READY_RETRYING,
    SETS_FAILING,
    STALLED,
    STANDBY,
    STARTING,
    Reason,
    Tick,
    TickRequest,
    TickResult,
    Trigger,
    failing_class,
    failing_line,
    failure,
    with_class,
)
from reconciler.daemon.webhooks import SecretFiles
from reconciler.errors import ConfigError, ExitCode, SwarmSecretsError

log = logging.getLogger(__name__)

ROTATION_MIN_WAIT = 1.0
"""Fewest seconds between a tick and a rotation tick it asked for: a schedule can never make the loop
spin."""

_STOP_POLL = 0.1
"""Longest idle wait between stop-flag checks: an external ``stop_event.set()`` cannot wake the loop's
condition variable, so the loop looks at the flag at least this often."""
MAX_FOLLOW_UPS = 3
"""Follow-up ticks in a row at most (see the module docstring); reset by a tick that needs none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    """How the service schedules ticks and what it listens on (``run`` command options)."""

    manifests_dir: Path | None = None
    """Passed to the tick in :class:`TickRequest`; :func:`with_git` replaces it with the checkout."""
    interval: float = 60.0
    """Seconds between ticks while all is well (level-based resync, catches what events missed)."""
    jitter: float = 0.1
    """Fraction by which the interval and retry delays vary at random, so replicas of the tool and
    many clusters do not hit git or the engine in lockstep."""
    debounce: float = 2.0
    """Seconds after the first request before the tick runs; requests in between join that tick."""
    backoff_base: float = 5.0
    """Retry delay after the first failure."""
    backoff_factor: float = 2.0
    """Each further consecutive failure multiplies the delay by this."""
    backoff_cap: float = 300.0
    """Longest retry delay."""
    event_quiet: float = 10.0
    """Seconds after a tick that changed something during which Docker events are ignored."""
    listen: str | None = ":8080"
    """``host:port`` of the HTTP listener (``:8080`` = every IPv4 address, ``[::]:8080`` for IPv6,
    port 0 = any free port); None turns webhooks, health and metrics off."""
    secrets: SecretFiles = SecretFiles()
    """The files of the webhook secrets and tokens, one per purpose; an endpoint without one is off."""
    max_body: int = 1024 * 1024
    """Largest webhook body accepted; bigger ones get 413 and are never read."""
    http_timeout: float = 10.0
    """Deadline of a whole HTTP request (head and body) from the moment its connection is accepted."""
    http_max_connections: int = 512
    """Open HTTP connections at most; more are answered 503 at once."""
    readiness_grace: float = 0.0
    """Seconds after start during which ``/readyz`` says ready before any tick succeeded; 0 means not
    ready until the first success."""
    stale_after: float | None = None
    """``/readyz`` stays ready after failures while the last success is at most this old; None means
    three intervals."""

    def __post_init__(self) -> None:
        for name in ("interval", "backoff_base", "backoff_cap", "http_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0")
        for name in ("debounce", "event_quiet", "readiness_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter must be a fraction between 0 and 1")
        if self.backoff_factor < 1:
            raise ConfigError("backoff_factor must be at least 1")
        if self.stale_after is not None and self.stale_after <= 0:
            raise ConfigError("stale_after must be greater than 0")
        if self.max_body <= 0 or self.http_max_connections <= 0:
            raise ConfigError("max_body and http_max_connections must be greater than 0")
        if self.listen is not None:
            webhooks.parse_listen(self.listen)


class Backoff:
    """Exponential retry delays: ``base × factor^(failures-1)``, capped, with ± ``jitter``.

    Pure apart from the injected random generator; :meth:`reset` after a success.
    """

    def __init__(
        self, *, base: float, factor: float, cap: float, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.base, self.factor, self.cap, self.jitter = base, factor, cap, jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before retrying."""
        self.failures += 1
        # min() before the power would overflow for very long failure streaks.
        raw = self.base * self.factor ** min(self.failures - 1, 64)
        return min(self.cap, raw * (1 + self._rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """A snapshot of the loop for health checks and tests (times on the loop's monotonic clock)."""

    started_at: float
    ticks: int
    ticking: bool
    last_result: TickResult | None
    last_success_at: float | None
    consecutive_failures: int
    pending: tuple[Reason, ...]
    stalled: bool = False
    """The last tick failed with an error retrying cannot fix: waiting for a change."""
    failing_sets: Mapping[str, str] = field(default_factory=dict)
    """Sets held back as the last tick that loaded the manifests found them (set → failure class)."""
    leading: bool = True
    """This replica reconciles (it holds the lease of ``run``, or runs without one)."""


def _asked(reasons: tuple[Reason, ...]) -> bool:
    """A person or a forge asked for this tick (not a timer, not a Docker event)."""
    return any(r.trigger in (Trigger.WEBHOOK, Trigger.MANUAL) for r in reasons)


def with_git(tick: Tick, fetch: Callable[[], Checkout]) -> Tick:
    """A tick that first syncs the git checkout (``GitSync(...).sync``), then runs ``tick`` on it.

    The request gets the checkout's ``manifests_dir`` and ``revision``; a result without a revision
    gets the fetched one, and so does the failure of a tick that raised. A
    :class:`~reconciler.daemon.gitsync.GitError` fails the tick like any other. While the loop waits
    for a change (``request.stalled_revision``), a tick that finds that same revision again and was
    not asked for by a webhook or ``POST /reconcile`` stops here (``skipped``).
    """

    def fetching_tick(request: TickRequest) -> TickResult:
        checkout = fetch()
        stalled = request.stalled_revision
        if stalled is not None and checkout.revision == stalled and not _asked(request.reasons):
            return TickResult(ok=False, changed=False, revision=stalled, transient=False, skipped=True)
        try:
            result = tick(
                replace(
                    request,
                    manifests_dir=checkout.manifests_dir,
                    revision=checkout.revision,
                    source_root=checkout.root,
                )
            )
        except SwarmSecretsError as exc:
            return failure(exc, checkout.revision)
        return result if result.revision is not None else replace(result, revision=checkout.revision)

    return fetching_tick


class Loop:
    """Runs ticks when they are due; thread-safe :meth:`request`, :meth:`stop` and :meth:`status`."""

    def __init__(
        self,
        settings: LoopSettings,
        tick: Tick,
        *,
        metrics: Metrics | None = None,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        elected: bool = True,
        forward: Callable[[Reason], None] | None = None,
    ) -> None:
        """``elected=False``: stand by until :meth:`set_leading`; ``forward`` hands a webhook or
        ``POST /reconcile`` that reaches a standby to the leading replica (see the module docstring)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._tick = tick
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = stop_event or threading.Event()
        self._cv = threading.Condition()  # an RLock: the signal handler may run inside `with self._cv`
        # Read the secrets now so a bad file fails at startup, not at the first delivery.
        self.secrets = webhooks.load_secrets(settings.secrets)
        self.backoff = Backoff(
            base=settings.backoff_base,
            factor=settings.backoff_factor,
            cap=settings.backoff_cap,
            jitter=settings.jitter,
            rng=self._rng,
        )
        now = clock()
        self._started_at = now
        self._pending: dict[Reason, float] = {}  # reason -> when first requested
        self._next_interval_at = now + settings.interval
        self._retry_at: float | None = None  # set while failing
        self._rotation_at: float | None = None  # set when a scheduled rotation falls due before the interval
        self._suppress_until = float("-inf")
        self._ticking = False
        self._tick_started = now
        self._ticks = 0
        self._last_result: TickResult | None = None
        self._last_success_at: float | None = None
        self._stalled_revision: str | None = None
        self._stalled = False
        self._follow_ups = 0  # follow-up ticks requested in a row
        self._failing: Mapping[str, str] = {}  # held-back sets, as the last tick that knew said
        self._leading = elected
        self._standing_by = False  # told it stands by (until then, not leading means: not known yet)
        self._standby_problem: str | None = None  # error class while a standby cannot follow the lease
        self._forward = forward
        self.metrics.set_leading(elected)
        self.http: http.HttpListener | None = None

    # --- requests, from any thread -------------------------------------------------------------

    def request(self, reason: Reason | Trigger) -> bool:
        """Ask for a tick; False when the request was dropped: one of our own Docker events, or
        anything but a webhook or ``POST /reconcile`` (which are handed over) on a standby."""
        if not isinstance(reason, Reason):
            reason = Reason(reason)
        forward = None
        with self._cv:
            if not self._leading:
                if not reason.trigger.handed_over:
                    return False
                forward = self._forward  # without one, kept for the tick that follows an election
        if forward is not None:
            forward(reason)
            return True
        with self._cv:
            now = self._clock()
            if reason.trigger.from_swarm and now < self._suppress_until:
                log.debug("ignoring %s within %.1fs of our own change", reason, self._suppress_until - now)
                return False
            self._pending.setdefault(reason, now)
            self._cv.notify_all()
        return True

    def handed(self, texts: tuple[str, ...]) -> None:
        """Requests a standby replica handed over through the swarm (``webhook:github``, ``manual``):
        each one it may hand over is requested here; anything else is ignored."""
        for text in texts:
            reason = Reason.parse(text)
            if reason is None:
                log.warning("ignoring a request handed over through the lease: %r", text[:64])
                continue
            log.info("%s handed over by a standby replica: tick requested", reason)
            self.request(reason)

    def set_leading(self, leading: bool, *, problem: str | None = None) -> None:
        """This replica leads (reconciles) from now on, or stands by; ``problem``: the error class when a
        standby cannot follow the lease (``/readyz`` then fails)."""
        handed: list[Reason] = []
        with self._cv:
            self._standby_problem = None if leading else problem
            self._standing_by = not leading
            if leading == self._leading:
                return
            self._leading = leading
            now = self._clock()
            if leading:
                log.info("leading: this replica holds the run lease and reconciles")
                self.backoff.reset()
                self._retry_at = None
                self._next_interval_at = now + self.settings.interval
                self._pending[Reason(Trigger.ELECTED)] = now
            else:
                log.warning("standing by: this replica no longer holds the run lease")
                handed = [r for r in self._pending if r.trigger.handed_over]
                self._pending.clear()
                self._failing = {}  # the leading replica reports them
            self.metrics.set_leading(leading)
            self._cv.notify_all()
        for reason in handed:
            self.request(reason)  # to the leading replica

    def suppress_events_until(self, deadline: float) -> None:
        """Ignore ``event`` requests until ``deadline`` (on ``time.monotonic``'s clock)."""
        with self._cv:
            self._suppress_until = max(self._suppress_until, deadline)

    def stop(self) -> None:
        """Set the stop flag: the tick in hand finishes, no new one starts, :meth:`run` returns."""
        self._stop.set()
        # Non-blocking: stop() may run in a signal handler that interrupted a thread holding the lock;
        # if the lock is busy, the loop notices the flag within _STOP_POLL anyway.
        if self._cv.acquire(blocking=False):
            try:
                self._cv.notify_all()
            finally:
                self._cv.release()

    # --- state, for health checks ------------------------------------------------------------------

    def status(self) -> Status:
        with self._cv:
            return Status(
                started_at=self._started_at,
                ticks=self._ticks,
                ticking=self._ticking,
                last_result=self._last_result,
                last_success_at=self._last_success_at,
                consecutive_failures=self.backoff.failures,
                pending=tuple(sorted(self._pending, key=self._pending.__getitem__)),
                stalled=self._stalled,
                failing_sets=dict(self._failing),
                leading=self._leading,
            )

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for ``/readyz``. Ready when the last tick succeeded and no set is held back,
        or the last success is at most ``stale_after`` old and the failure may pass, or nothing
        succeeded yet but the process started less than ``readiness_grace`` ago. The reason is one of a
        fixed set (``types.readiness_reasons``): a state and the class of the last failure, never its
        text (the log has that); while sets are held back, a second line names them
        (``types.failing_line``)."""
        with self._cv:
            ready, reason = self._readiness()
            named = self._failing if self._leading else {}  # a standby: the leading replica says
            return ready, reason + ("\n" + failing_line(named) if named else "")

    def _readiness(self) -> tuple[bool, str]:
        if self._standing_by:
            problem = self._standby_problem
            return (False, with_class(FAILING, problem)) if problem else (True, STANDBY)
        now, last, success = self._clock(), self._last_result, self._last_success_at
        stale_after = self.settings.stale_after or 3 * self.settings.interval
        if last is not None and last.ok:
            if self._failing:  # the others were reconciled; these wait for a fix
                return False, with_class(SETS_FAILING, failing_class(self._failing))
            return True, READY
        failed = last.error_class if last is not None else None
        if last is not None and not last.transient:
            return False, with_class(STALLED, failed)  # retrying cannot heal it: no grace either
        if success is not None and now - success <= stale_after:
            return True, with_class(READY_RETRYING, failed)
        if success is None and now - self._started_at <= self.settings.readiness_grace:
            return True, STARTING
        return (False, with_class(FAILING, failed)) if last is not None else (False, NOT_STARTED)

    # --- the loop ------------------------------------------------------------------------------

    def _due(self, now: float) -> tuple[float, tuple[Reason, ...]]:
        """When the next tick is due and for which reasons (caller holds the lock)."""
        if not self._leading:
            return float("inf"), ()  # a standby never ticks
        failing = self._retry_at is not None
        due = self._retry_at if self._retry_at is not None else self._next_interval_at
        timer = Reason(Trigger.RETRY if failing else Trigger.INTERVAL)
        if not failing and self._rotation_at is not None and self._rotation_at < due:
            due, timer = self._rotation_at, Reason(Trigger.ROTATION)
        pending = tuple(sorted(self._pending, key=self._pending.__getitem__))
        if pending:
            first = self._pending[pending[0]]
            at = first if any(r.trigger.immediate for r in pending) else first + self.settings.debounce
            if self._retry_at is not None and not any(r.trigger.explicit for r in pending):
                at = max(at, self._retry_at)
            if at < due:
                return at, pending
        return due, (timer, *pending)

    def _next(self) -> tuple[Reason, ...] | None:
        """Wait until a tick is due and take its reasons, or return None once stopping."""
        with self._cv:
            while not self._stop.is_set():
                now = self._clock()
                due, reasons = self._due(now)
                if due <= now:
                    self._pending.clear()  # this tick answers every request made so far
                    self._ticking, self._tick_started = True, now
                    return reasons
                self._cv.wait(min(due - now, _STOP_POLL))
        return None

    def _run_tick(self, reasons: tuple[Reason, ...]) -> None:
        with self._cv:
            stalled_revision = self._stalled_revision
        request = TickRequest(
            reason=reasons[0],
            reasons=reasons,
            manifests_dir=self.settings.manifests_dir,
            stalled_revision=stalled_revision,
        )
        bug: Exception | None = None
        started = time.perf_counter()
        try:
            result = self._tick(request)
            if not isinstance(result, TickResult):
                raise TypeError(f"tick returned {type(result).__name__}, not TickResult")
            if result.skipped and self._last_result is not None:
                # Nothing was tried: the failure that made the loop wait still stands.
                last = self._last_result
                result = replace(
                    result,
                    error=last.error,
                    error_class=last.error_class,
                    revision=result.revision or last.revision,
                )
        except SwarmSecretsError as exc:  # a user-fixable error: one line, no traceback
            result = failure(exc)
        except Exception as exc:  # a bug: keep serving, but show the traceback
            bug = exc
            # The message of an unexpected exception is not known to be value-free: keep it out of
            # /readyz, the traceback in the log has it.
            result = TickResult(
                ok=False,
                changed=False,
                error=f"unexpected {type(exc).__name__} (see log)",
                error_class="internal",
            )
        duration = time.perf_counter() - started
        try:
            self.metrics.observe(result, duration)
        except Exception:  # odd numbers in a result must not stop the service
            log.exception("could not record metrics for the tick")
        delay, follow_up = self._record(result)
        self._report(request, result, duration, delay, bug, follow_up)

    def _record(self, result: TickResult) -> tuple[float | None, bool]:
        """Update the schedule after a tick; return the retry delay when it failed, and whether a
        follow-up tick was requested."""
        with self._cv:
            now = self._clock()
            self._ticking = False
            self._ticks += 1
            self._last_result = result
            delay = None
            self._stalled = not result.ok and not result.transient
            self._stalled_revision = result.revision if self._stalled else None
            if result.failing_sets is not None:
                self._failing = dict(result.failing_sets)
            if result.ok:
                self.backoff.reset()
                self._retry_at = None
                self._last_success_at = now
            elif self._stalled:
                # Retrying the same inputs would fail the same way: wait for a change, not a timer.
                self.backoff.reset()
                self._retry_at = None
            else:
                delay = self.backoff.next_delay()
                self._retry_at = now + delay
            jitter = self._rng.uniform(-self.settings.jitter, self.settings.jitter)
            self._next_interval_at = now + self.settings.interval * (1 + jitter)
            self._rotation_at = None
            if result.next_rotation is not None and result.next_rotation < self.settings.interval:
                # Bounded (never spinning; a later one is the interval tick's) and jittered (never
                # early): replicas and many swarms do not rotate in lockstep.
                wait = max(result.next_rotation, ROTATION_MIN_WAIT)
                self._rotation_at = now + wait * (1 + self._rng.uniform(0, self.settings.jitter))
            if result.changed:
                # Events that came in during this tick were (very likely) caused by it: drop them.
                for reason, at in list(self._pending.items()):
                    if reason.trigger.from_swarm and at >= self._tick_started:
                        del self._pending[reason]
                self._suppress_until = max(self._suppress_until, now + self.settings.event_quiet)
            # Requested after the events were dropped: a follow-up is no event, the quiet window
            # cannot swallow it.
            follow_up = result.follow_up and self._follow_ups < MAX_FOLLOW_UPS
            self._follow_ups = self._follow_ups + 1 if follow_up else 0
            if follow_up:
                self._pending.setdefault(Reason(Trigger.FOLLOW_UP), now)
            elif result.follow_up:
                log.warning(
                    "the swarm keeps moving under the ticks (%d follow-ups in a row): another writer may be "
                    "undoing our changes; backing off",
                    MAX_FOLLOW_UPS,
                )
            return delay, follow_up

    def _report(
        self,
        request: TickRequest,
        result: TickResult,
        duration: float,
        delay: float | None,
        bug: Exception | None,
        follow_up: bool = False,
    ) -> None:
        why, rev = ",".join(request.reasons), result.revision or "-"
        failing = result.failing_sets or {}
        held_back = f"; held back: {failing_line(failing).removeprefix('failing sets: ')}" if failing else ""
        if result.skipped:
            log.debug("tick (%s): revision %s is still the one that failed; waiting for a change", why, rev)
        elif not result.ok:
            # One line (plus a traceback for a bug); the loop keeps running either way.
            error = result.error or "no error given"
            if follow_up:
                then = f"following up in {self.settings.debounce:.1f}s from the swarm as it is now"
            elif result.transient:
                then = f"retrying in {delay or 0:.1f}s"
            else:
                then = "not retrying: waiting for a change (a new revision, a webhook or POST /reconcile)"
            msg = f"tick failed ({why}) after {duration:.1f}s at revision {rev}: {error}; {then}"
            # The swarm moving under a tick is the world being busy, not a fault: a warning.
            level = logging.WARNING if follow_up else logging.ERROR
            trace = (type(bug), bug, bug.__traceback__) if bug is not None else None
            log.log(level, "%s", msg, exc_info=trace)
        elif result.changed:
            rollouts = ", ".join(f"{k}={v}" for k, v in result.rollouts.items() if v) or "none"
            log.info(
                "tick done (%s) in %.1fs: revision %s, %d created, %d removed, rollouts: %s, "
                "%d drift corrections%s%s",
                *(why, duration, rev, result.created, result.removed, rollouts, result.drift_corrected),
                "; following up: the swarm moved under it" if follow_up else "",
                held_back,
            )
        else:
            log.debug(
                "tick done (%s) in %.1fs: nothing to do at revision %s%s", why, duration, rev, held_back
            )
        if result.changed:
            logs.audit(
                "reconcile", ok=result.ok, reasons=request.reasons, revision=result.revision,
                created=result.created, removed=result.removed, rollouts=dict(result.rollouts),
                drift_corrected=result.drift_corrected, error=result.error,
            )  # fmt: skip

    def _pump(self, events: Iterable[object]) -> None:
        try:
            for item in events:
                if self._stop.is_set():
                    return
                log.debug("docker event: %s", item)
                self.request(Trigger.EVENT)
        except Exception:
            log.exception(
                "the event source failed; Docker events no longer trigger ticks (the interval still does)"
            )

    def start_http(self) -> tuple[str, int] | None:
        """Start the HTTP listener now (``run`` does it otherwise); return the bound address."""
        if self.http is None and self.settings.listen is not None:
            self.http = http.HttpListener(
                self,
                self.settings.listen,
                max_body=self.settings.max_body,
                timeout=self.settings.http_timeout,
                max_connections=self.settings.http_max_connections,
            )
            log.info("listening on http://%s:%d", *self.http.address)
        return self.http.address if self.http is not None else None

    def run(
        self, *, events: Iterable[object] | None = None, on_start: Callable[[], None] | None = None
    ) -> int:
        """Serve until stopped; returns the process exit code (0).

        Installs SIGTERM/SIGINT handlers when called from the main thread and restores the previous
        ones on return. ``events`` (e.g. the Docker events stream) is read in a daemon thread, each
        item requesting an ``event`` tick. ``on_start`` runs once the signal handlers are in place
        (``run`` starts the election there: whatever it logs, a SIGTERM from then on is handled).
        """
        previous = self._install_signals()
        try:
            if on_start is not None:
                on_start()
            self.start_http()
            if events is not None:
                threading.Thread(
                    target=self._pump, args=(events,), name="reconciler-events", daemon=True
                ).start()
            self.request(Trigger.STARTUP)
            while (reasons := self._next()) is not None:
                self._run_tick(reasons)
            log.info("stopped")
            return int(ExitCode.OK)
        finally:
            if self.http is not None:
                self.http.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                # The operator insists: give up on the tick in hand.
                raise SystemExit(int(ExitCode.INTERRUPTED))
            log.info("%s: finishing the tick in hand, then stopping", signal.Signals(signum).name)
            self.stop()

        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def run(
    settings: LoopSettings,
    tick: Tick,
    *,
    stop_event: threading.Event | None = None,
    events: Iterable[object] | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Build a :class:`Loop` and serve until SIGTERM/SIGINT or ``stop_event``; return 0."""
    return Loop(settings, tick, metrics=metrics, stop_event=stop_event).run(events=events)
