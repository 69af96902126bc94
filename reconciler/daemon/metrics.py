"""Prometheus metrics of the long-running reconciler, in a registry of their own.

:class:`Metrics` owns a private :class:`prometheus_client.CollectorRegistry` instead of the global
one, so two instances (two tests, or a test and a running service) never see each other's numbers,
and ``GET /metrics`` shows exactly these series. Every name starts with ``swarm_secrets_``:

=============================================  =====================================================
``ticks_total{result}``                        ticks by ``success`` / ``partial`` (the others done,
                                               some sets held back) / ``failure`` (may pass: retried
                                               with backoff) / ``stalled`` (cannot heal by retrying)
``failing_sets``                               sets held back: their manifests, sources or policy fail
``set_failing{set,class}``                     1 per held-back set (at most 20, by name), its class:
                                               manifest, policy or source
``waiting_for_change``                         1 while the loop waits for a change after a ``stalled``
                                               tick (bad manifest, source, policy, setting), else 0
``tick_duration_seconds``                      histogram of tick wall time (rollout waits included)
``last_success_timestamp_seconds``             Unix time of the last tick that reconciled every set
``managed_secrets``                            secret objects owned by the tool, after the last success
``versions_created_total``                     secret versions created
``versions_removed_total``                     secret versions removed by garbage collection
``rollouts_total{result}``                     service rollouts by outcome (converged, rolled_back, …)
``drift_corrections_total{cause}``             service updates made because someone changed a service:
                                               ``manual``, or ``stack_deploy`` (a ``docker stack
                                               deploy`` put its compose file's secrets back)
``stack_deploys_total``                        ``docker stack deploy`` runs for ``kind: Stack``
                                               manifests
``git_revision_info{revision}``                1, labelled with the revision applied last
``lease_held``                                 1 while this replica reconciles (it holds the lease of
                                               ``run``, or runs with ``--no-lock``), 0 standing by
``webhook_requests_total{provider,result}``    webhook deliveries by forge and outcome
``secret_age_seconds{set,secret}``             age of each managed secret's current version
``secret_rotation_period_seconds{set,secret}`` its ``rotate.every``, for secrets that have one
``secret_rotation_due{set,secret}``            1 when the current version is at least that old
``superseded_versions{set,secret,kept_by}``    superseded versions still present, by what keeps
                                               them: ``in_use``, ``rollback_target``,
                                               ``running_task``, ``keep``, or ``none`` (nothing:
                                               the next apply removes it; lasting: a bug)
=============================================  =====================================================

The per-secret series come from the last tick that observed the swarm (``TickResult.secrets``); ages
and due rotations are carried forward to the moment of the scrape on the monotonic clock, so a
rotation shows as due when it falls due, not at the next tick. They name sets and secrets (never
versions, services or values): a few series per secret, whatever the number of versions.

This module only counts: it must not decide anything, log, or serve HTTP (``loop.py`` serves
:meth:`Metrics.render`). Labels carry names and outcomes, never a value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from reconciler.core.rollout import Outcome
from reconciler.daemon.types import named_sets

if TYPE_CHECKING:  # loop.py imports this module; the type is only needed for annotations
    from reconciler.core.status import SecretStatus
    from reconciler.daemon.types import TickResult

PREFIX: Final = "swarm_secrets_"

ROLLOUT_RESULTS: Final = tuple(o.value for o in Outcome if o not in (Outcome.UNCHANGED, Outcome.HELD))
DRIFT_CAUSES: Final = ("manual", "stack_deploy")
"""Causes of drift corrections (``core/plan.drift_cause``), exported from the start as 0."""
"""Rollout outcomes exported from the start (as 0), so rate() works before the first rollout: every
:class:`~reconciler.core.rollout.Outcome` of an update that was made."""

WEBHOOK_RESULTS: Final = (
    "accepted",
    "ping",
    "unauthorized",
    "disabled",
    "too_large",
    "length_required",
    "bad_request",
    "duplicate",
    "busy",
)
"""Outcomes of a webhook delivery as counted by ``webhook_requests_total``."""

TICK_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""A no-op tick takes well under a second; one that waits for rollouts can take minutes."""


class SecretsCollector(Collector):
    """The per-secret series, from the snapshot of the last tick that observed the swarm."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._secrets: Sequence[SecretStatus] = ()
        self._taken = clock()

    def update(self, secrets: Sequence[SecretStatus]) -> None:
        with self._lock:
            self._secrets, self._taken = tuple(secrets), self._clock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            secrets, passed = self._secrets, max(0.0, self._clock() - self._taken)
        names = ["set", "secret"]
        age = GaugeMetricFamily(
            PREFIX + "secret_age_seconds",
            "Age of the current version of each managed secret (the swarm's clock).",
            labels=names,
        )
        period = GaugeMetricFamily(
            PREFIX + "secret_rotation_period_seconds",
            "rotate.every of each secret that has one.",
            labels=names,
        )
        due = GaugeMetricFamily(
            PREFIX + "secret_rotation_due",
            "1 when the current version is at least rotate.every old: generated secrets are rotated by "
            "the next tick; any other must be changed at its source.",
            labels=names,
        )
        superseded = GaugeMetricFamily(
            PREFIX + "superseded_versions",
            "Superseded versions still present, by what keeps them (in_use, rollback_target, "
            "running_task, keep; none: nothing, the next apply removes it).",
            labels=[*names, "kept_by"],
        )
        for item in secrets:
            key = [item.set_name, item.secret]
            old = None if item.age_seconds is None else item.age_seconds + passed
            if old is not None:
                age.add_metric(key, old)
            if item.rotate_every_seconds is not None:
                period.add_metric(key, item.rotate_every_seconds)
            every = item.rotate_every_seconds
            due.add_metric(key, 1 if old is not None and every is not None and old >= every else 0)
            for kept_by, count in sorted(item.kept.items()):
                superseded.add_metric([*key, kept_by], count)
        yield from (age, period, due, superseded)


class Metrics:
    """The reconciler's metrics; :meth:`observe` feeds them from one tick's result.

    Thread-safe: prometheus_client metrics lock internally, and the revision label swap is guarded
    by the tick loop being the only caller of :meth:`observe`.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._revision: str | None = None
        reg = self.registry
        self.ticks = Counter(PREFIX + "ticks", "Reconcile ticks by result.", ["result"], registry=reg)
        self.waiting = Gauge(
            PREFIX + "waiting_for_change",
            "1 while the last tick failed with an error retrying cannot fix (bad manifest, source, "
            "policy or setting) and the loop waits for a new revision, a webhook or POST /reconcile.",
            registry=reg,
        )
        self.tick_duration = Histogram(
            PREFIX + "tick_duration_seconds",
            "Wall time of one reconcile tick, rollout waits included.",
            buckets=TICK_BUCKETS,
            registry=reg,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last successful tick (0 before the first).",
            registry=reg,
        )
        self.managed_secrets = Gauge(
            PREFIX + "managed_secrets", "Secret objects owned by swarm-secrets.", registry=reg
        )
        self.versions_created = Counter(PREFIX + "versions_created", "Secret versions created.", registry=reg)
        self.versions_removed = Counter(
            PREFIX + "versions_removed", "Secret versions removed by garbage collection.", registry=reg
        )
        self.rollouts = Counter(PREFIX + "rollouts", "Service rollouts by outcome.", ["result"], registry=reg)
        self.drift_corrections = Counter(
            PREFIX + "drift_corrections",
            "Service updates made because a service's secret references drifted, by cause (manual, or "
            "stack_deploy: a docker stack deploy put its compose file's secrets back).",
            ["cause"],
            registry=reg,
        )
        self.stack_deploys = Counter(
            PREFIX + "stack_deploys", "docker stack deploy runs for kind: Stack manifests.", registry=reg
        )
        self.git_revision = Gauge(
            PREFIX + "git_revision_info",
            "Always 1; the revision label is the git revision applied last.",
            ["revision"],
            registry=reg,
        )
        self.webhook_requests = Counter(
            PREFIX + "webhook_requests",
            "Webhook deliveries by forge and outcome.",
            ["provider", "result"],
            registry=reg,
        )
        self.secrets = SecretsCollector(clock=monotonic)
        reg.register(self.secrets)
        self.failing_sets = Gauge(
            PREFIX + "failing_sets",
            "Sets held back because their manifests, sources or policy checks fail (the other sets are "
            "reconciled); the log says why.",
            registry=reg,
        )
        self.set_failing = Gauge(
            PREFIX + "set_failing",
            "1 for each set held back (at most 20, by name; failing_sets counts them all), labelled with "
            "the class of its failure.",
            ["set", "class"],
            registry=reg,
        )
        self.lease_held = Gauge(
            PREFIX + "lease_held",
            "1 while this replica holds the lease of `run` and reconciles (always 1 with --no-lock), 0 "
            "while it stands by.",
            registry=reg,
        )
        # Create the fixed label combinations now so every series exists (as 0) from the first scrape.
        for result in ("success", "partial", "failure", "stalled"):
            self.ticks.labels(result=result)
        for result in ROLLOUT_RESULTS:
            self.rollouts.labels(result=result)
        for cause in DRIFT_CAUSES:
            self.drift_corrections.labels(cause=cause)

    def observe(self, result: TickResult, duration: float) -> None:
        """Account for one finished tick that took ``duration`` seconds.

        Counters move for a failed tick too (a partial apply still created versions); the managed
        secrets gauge and the last-success time move only on success, because a failed tick may not
        have counted anything.
        """
        stalled = not result.ok and not result.transient
        partial = result.ok and bool(result.failing_sets)
        outcome = "partial" if partial else "success" if result.ok else "stalled" if stalled else "failure"
        self.ticks.labels(result=outcome).inc()
        self.waiting.set(1 if stalled else 0)
        self.tick_duration.observe(max(0.0, duration))
        if result.created > 0:
            self.versions_created.inc(result.created)
        if result.removed > 0:
            self.versions_removed.inc(result.removed)
        for outcome, count in result.rollouts.items():
            if count > 0:
                self.rollouts.labels(result=outcome).inc(count)
        for cause, count in result.drift_causes.items():
            if count > 0:
                self.drift_corrections.labels(cause=cause).inc(count)
        unattributed = result.drift_corrected - sum(result.drift_causes.values())
        if unattributed > 0:
            self.drift_corrections.labels(cause="manual").inc(unattributed)
        if result.stacks_deployed > 0:
            self.stack_deploys.inc(result.stacks_deployed)
        if result.ok:
            if not partial:
                self.last_success.set(self._clock())
            self.managed_secrets.set(result.managed_secrets)
        if result.failing_sets is not None:  # else the tick did not get as far as loading: keep the last
            self.failing_sets.set(len(result.failing_sets))
            self.set_failing.clear()
            for name, cls in named_sets(result.failing_sets):
                self.set_failing.labels(set=name, **{"class": cls}).set(1)
        if result.revision is not None:
            self.set_revision(result.revision)
        if result.secrets is not None:
            self.secrets.update(result.secrets)

    def set_leading(self, leading: bool) -> None:
        """This replica reconciles, or stands by (then the leading replica reports held-back sets)."""
        self.lease_held.set(1 if leading else 0)
        if not leading:
            self.failing_sets.set(0)
            self.set_failing.clear()

    def set_revision(self, revision: str) -> None:
        """Point ``git_revision_info`` at ``revision``, dropping the series of the previous one."""
        if revision == self._revision:
            return
        self.git_revision.clear()
        self.git_revision.labels(revision=revision).set(1)
        self._revision = revision

    def observe_webhook(self, provider: str, result: str) -> None:
        """Count one delivery to ``/hooks/<provider>`` with an outcome from :data:`WEBHOOK_RESULTS`."""
        self.webhook_requests.labels(provider=provider, result=result).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
