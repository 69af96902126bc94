"""One applier at a time per swarm: a lease kept in the swarm itself.

``apply`` and every tick of ``run`` that has something to change take the lease before their first
mutation, renew it in the background while they work and release it at the end; ``plan``, ``status``
and a run whose plan is empty take none. Whoever finds it held waits (``--lock-timeout``) and then
gives up naming the holder. The design follows Kubernetes' coordination ``Lease`` (holder, acquire
and renew times, a duration, a transitions counter) with the optimistic concurrency of Terraform's
state locks.

**The object.** One Docker *config*, ``swarm-secrets-lease``, created by the first applier and never
removed. Its data is a fixed note saying what it is; its labels (``io.swarm-secrets.lease.*``) are the
record: ``holder`` (a random token of this acquisition, empty when free), ``host``, ``pid``, ``task``
(``SWARM_SECRETS_TASK``, e.g. ``{{.Task.Name}}`` in the stack file), ``revision``, ``purpose``,
``acquired-at`` and ``renewed-at`` (the holder's clock, shown to people only), ``ttl``, ``renewals``
(a counter only the holder moves), ``writer`` (who wrote last: the holder, or someone posting a
trigger), ``pending`` (tick requests posted for the holder) and ``transitions``.

**Why a config.** Every write is a compare-and-swap on the engine's optimistic concurrency:
``POST /configs/{id}/update?version=N`` succeeds only if the config is still at version ``N`` (else
500 ``update out of sequence``, :class:`~reconciler.errors.SwarmConflict`), and creating the name a
second time answers 409. Of the objects with that property a config is the right one: secrets would
show up among the values the tool manages (and ``docker secret ls``), and a service would run tasks,
keep a PreviousSpec and, above all, emit ``service`` events that wake every loop watching the swarm;
config events wake nobody. Labels are the only part of a config that may change, which is all a lease
needs, and ``docker config inspect swarm-secrets-lease`` shows who holds it.

**Time to live.** A holder renews every ``ttl / 3`` (default 60 s / 3). A holder killed with ``kill -9``
stops renewing and its lease counts as expired ``ttl`` seconds after its last renewal; the next
applier then takes it over with the same compare-and-swap, so two waiters cannot both win. A holder
that has not managed to renew for ``2/3 ttl`` (engine unreachable, object removed, taken over)
considers the lease **lost** (:attr:`Lease.lost`) and says so.

**Clocks.** No decision uses the clock of the machine a CLI runs on against another machine's. A
waiter measures how long it has seen the same ``(holder, renewals)`` on its own monotonic clock: after
``ttl`` unchanged, the holder is gone (this needs no clock agreement at all, as in Kubernetes'
leader election). To take over at once a lease whose holder died long ago, the waiter also credits
the age of the holder's last write *by the swarm's clocks*: the config's ``UpdatedAt``, stamped by the
Raft leader, against ``SystemTime`` of the manager it talks to. The one assumption is that the
managers' clocks agree to within ``ttl - ttl/3`` (40 s by default; NTP keeps them within
milliseconds): a larger skew could let a waiter take a live holder's lease early. On a single
manager both stamps come from one clock. The ``*-at`` labels use the holder's clock and are only
displayed.

**Triggers.** :func:`post_trigger` lets anyone (a standby replica that received a webhook) add a
reason to ``pending``; the holder reads and clears it with :meth:`Lease.take_pending`, or has it
handed to ``on_pending``: such a holder looks at its record every ``poll`` seconds between renewals
(a read) and takes posted reasons at once. Pending reasons survive a change of holder.

**Two leases.** ``swarm-secrets-lease`` (this module's default) is the *applier* lease: ``apply`` and
each tick of ``run`` that changes something hold it for that change only, so a CI apply and the loop
take turns. ``run``'s replicas also race for a lease of their own (``daemon/leader.py``): the one that
holds it reconciles, the others stand by watching it; that lease is held as long as the replica lives.

The lease protects the swarm from two appliers of this tool; it cannot stop other writers
(``docker service update`` by hand, a stack deploy). It never contains a value.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.core.model import LABEL_MANAGED, LABEL_PREFIX
from reconciler.engine.protocol import Swarm
from reconciler.errors import ConfigError, LeaseBusy, SwarmConflict, SwarmSecretsError

log = logging.getLogger(__name__)

LEASE_NAME = "swarm-secrets-lease"
"""The Docker config that holds the lease of a swarm."""
LEASE_LABEL = LABEL_PREFIX + "lease."
DEFAULT_TTL = 60.0
DEFAULT_WAIT = 300.0
TASK_ENV = "SWARM_SECRETS_TASK"
"""Environment variable naming the Swarm task this process runs as (recorded with the holder)."""
MAX_PENDING = 16
_CAS_ATTEMPTS = 8
_DOC = (
    b"swarm-secrets: the lease that lets one applier at a time change this swarm.\n"
    b"The holder is in the labels (docker config inspect swarm-secrets-lease). Do not edit them;\n"
    b"removing the config while nobody holds it is harmless.\n"
)
_REASON = re.compile(r"[^A-Za-z0-9:_.-]")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseSettings:
    """How long a lease lives and how long to wait for one (``--lock-ttl``, ``--lock-timeout``)."""

    ttl: float = DEFAULT_TTL
    """Seconds after the holder's last renewal until others may take the lease over."""
    wait: float = DEFAULT_WAIT
    """Seconds to wait for a lease held by someone else; 0 = give up at once."""
    name: str = LEASE_NAME
    """The Docker config holding the lease (tests use names of their own)."""

    def __post_init__(self) -> None:
        if self.ttl < 2:
            raise ConfigError("--lock-ttl must be at least 2 seconds")
        if self.wait < 0:
            raise ConfigError("--lock-timeout must not be negative")

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def poll(self) -> float:
        """Seconds between two looks at a lease held by someone else."""
        return min(2.0, max(0.2, self.ttl / 10))


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who holds a lease, for the people who find it held."""

    host: str
    pid: int
    task: str = ""
    revision: str = ""
    purpose: str = ""

    @classmethod
    def here(cls, *, purpose: str, revision: str | None = None) -> Identity:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            task=os.environ.get(TASK_ENV, "")[:128],
            revision=revision or "",
            purpose=purpose,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """The lease as read from the swarm."""

    config_id: str
    version: int
    updated_at: float | None
    """``UpdatedAt`` of the config (the Raft leader's clock), as a Unix time."""
    labels: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str:
        return self.labels.get(LEASE_LABEL + key, "")

    @property
    def token(self) -> str:
        return self.get("holder")

    @property
    def free(self) -> bool:
        return not self.token

    @property
    def ttl(self) -> float:
        try:
            return max(2.0, float(self.get("ttl")))
        except ValueError:
            return DEFAULT_TTL

    @property
    def renewals(self) -> int:
        return _int(self.get("renewals"))

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(r for r in self.get("pending").split(",") if r)

    def describe(self) -> str:
        """``pid 42 on host ci-7 (task x), revision 0123456789ab, for apply, since …``: no value."""
        who = f"pid {self.get('pid') or '?'} on host {self.get('host') or '?'}"
        if self.get("task"):
            who += f" (task {self.get('task')})"
        revision = self.get("revision")
        parts = [who, f"revision {revision[:12]}" if revision else "no revision"]
        if self.get("purpose"):
            parts.append(f"for {self.get('purpose')}")
        if self.get("acquired-at"):
            parts.append(f"since {self.get('acquired-at')} (its clock)")
        return ", ".join(parts)


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def parse_time(text: str) -> float | None:
    """An engine timestamp (RFC 3339 with up to nanoseconds) as a Unix time; None if unreadable."""
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    stamp = whole + ("." + (fraction or "0")[:6].ljust(6, "0")) + ("+00:00" if zone == "Z" else zone)
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read(swarm: Swarm, name: str = LEASE_NAME) -> Record | None:
    """The lease record, or None when the swarm has none yet."""
    raw = swarm.inspect_config(name)
    if raw is None:
        return None
    return Record(
        config_id=str(raw["ID"]),
        version=int((raw.get("Version") or {}).get("Index", 0)),
        updated_at=parse_time(str(raw.get("UpdatedAt", ""))),
        labels=dict((raw.get("Spec") or {}).get("Labels") or {}),
    )


def _write(swarm: Swarm, name: str, record: Record, changes: Mapping[str, str]) -> None:
    labels = dict(record.labels)
    labels.update({LEASE_LABEL + k: v for k, v in changes.items()})
    swarm.update_config_labels(record.config_id, record.version, name, labels)


def post_trigger(swarm: Swarm, reason: str, *, name: str = LEASE_NAME) -> bool:
    """Ask the holder for a tick (``reason`` such as ``webhook:github``); False when nobody holds the
    lease, so the caller should reconcile itself. The request stays until a holder takes it."""
    clean = _REASON.sub("", reason)[:64] or "trigger"
    for _ in range(_CAS_ATTEMPTS):
        record = read(swarm, name)
        if record is None or record.free:
            return False
        pending = [r for r in record.pending if r != clean][-(MAX_PENDING - 1) :] + [clean]
        try:
            _write(swarm, name, record, {"pending": ",".join(pending), "writer": "trigger"})
            return True
        except SwarmConflict:
            continue  # the holder renewed meanwhile: read again
    return False


class Lease:
    """One acquisition of the swarm's lease by this process; see the module docstring.

    ``acquire`` → (background renewal) → ``release``. Thread-safe; not reusable after release.
    """

    def __init__(
        self,
        swarm: Swarm,
        identity: Identity,
        settings: LeaseSettings | None = None,
        *,
        on_pending: Callable[[tuple[str, ...]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.swarm = swarm
        self.identity = identity
        self.settings = settings or LeaseSettings()
        self.token = secrets.token_hex(16)
        self._on_pending = on_pending
        self._clock = clock
        self._write_lock = threading.Lock()  # the renewal thread, take_pending and release write in turn
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._held = False
        self._last_ok = 0.0
        self._renewals = 0
        self._thread: threading.Thread | None = None
        # What a waiter saw last, and when (monotonic) it first saw it: see _expired.
        self._seen: tuple[str, int] | None = None
        self._seen_since = 0.0

    # --- state ------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        """The lease could not be renewed in time, or someone else has it now."""
        return self._lost.is_set()

    # --- acquiring --------------------------------------------------------------------------------

    def acquire(
        self,
        *,
        wait: float | None = None,
        cancel: threading.Event | None = None,
        on_wait: Callable[[Record], None] | None = None,
    ) -> None:
        """Take the lease, waiting up to ``wait`` seconds (default ``settings.wait``) while someone
        else holds it; ``on_wait`` is told once who. Raises :class:`LeaseBusy` naming the holder when
        time runs out or ``cancel`` is set."""
        if self._held:
            raise RuntimeError("this lease was acquired already")
        limit = self.settings.wait if wait is None else wait
        deadline = self._clock() + limit
        told = False
        while True:
            record = read(self.swarm, self.settings.name)
            started = self._clock()
            if record is None:
                if self._create():
                    return self._started(started)
                continue
            if record.free or self._expired(record):
                if record.token:
                    log.warning("taking over the expired lease of %s", record.describe())
                if self._take(record):
                    return self._started(started)
                continue  # someone else was faster: look again
            if not told:
                told = True
                if on_wait is not None:
                    on_wait(record)
                if math.isinf(limit):
                    log.info("standing by: the lease %s is held by %s", self.settings.name, record.describe())
                else:
                    log.info("waiting up to %.0f s for the lease held by %s", limit, record.describe())
            now = self._clock()
            if now >= deadline or (cancel is not None and cancel.is_set()):
                raise LeaseBusy(self._busy_message(record, limit, cancelled=now < deadline))
            pause = min(self.settings.poll, deadline - now)
            if cancel is not None:
                cancel.wait(pause)
            else:
                time.sleep(pause)

    def _expired(self, record: Record) -> bool:
        """True once the holder has not renewed for its TTL; see "Clocks" in the module docstring."""
        key = (record.token, record.renewals)
        now = self._clock()
        if key != self._seen:
            self._seen, self._seen_since = key, now
            if record.get("writer") == "holder" and record.updated_at is not None:
                # Credit the age of the holder's last write by the swarm's own clocks.
                swarm_now = parse_time(self.swarm.system_time())
                if swarm_now is not None:
                    self._seen_since -= min(max(0.0, swarm_now - record.updated_at), record.ttl)
        return now - self._seen_since >= record.ttl

    def _busy_message(self, record: Record, waited: float, *, cancelled: bool) -> str:
        why = "stopped while waiting" if cancelled else f"gave up after {waited:.0f} s (--lock-timeout)"
        return (
            f"another applier holds the swarm's lease ({self.settings.name}): {record.describe()}; {why}. "
            f"Try again when it is done; if it died, its lease expires {record.ttl:.0f} s after its last "
            "renewal. (--no-lock skips the lease: unsafe while another applier runs.)"
        )

    def _labels(self, renewals: int) -> dict[str, str]:
        now = _now_text()
        return {
            "holder": self.token,
            "host": self.identity.host[:128],
            "pid": str(self.identity.pid),
            "task": self.identity.task,
            "revision": self.identity.revision[:64],
            "purpose": self.identity.purpose[:64],
            "acquired-at": now,
            "renewed-at": now,
            "ttl": f"{self.settings.ttl:g}",
            "renewals": str(renewals),
            "writer": "holder",
        }

    def _create(self) -> bool:
        labels = {LABEL_MANAGED: "true", LABEL_PREFIX + "purpose": "lease"}
        labels.update({LEASE_LABEL + k: v for k, v in self._labels(0).items()})
        labels[LEASE_LABEL + "transitions"] = "1"
        try:
            self.swarm.create_config(self.settings.name, _DOC, labels)
        except SwarmConflict:
            return False  # created by someone else meanwhile
        return True

    def _take(self, record: Record) -> bool:
        changes = self._labels(record.renewals + 1)
        changes["transitions"] = str(_int(record.get("transitions")) + 1)
        try:
            _write(self.swarm, self.settings.name, record, changes)
        except SwarmConflict:
            return False
        self._renewals = record.renewals + 1
        return True

    def _started(self, started: float) -> None:
        self._held, self._last_ok = True, started
        log.info("lease %s acquired (ttl %g s)", self.settings.name, self.settings.ttl)
        self._thread = threading.Thread(target=self._renew_loop, name="reconciler-lease", daemon=True)
        self._thread.start()

    # --- holding ----------------------------------------------------------------------------------

    def _mine(self) -> Record | None:
        record = read(self.swarm, self.settings.name)
        if record is None or record.token != self.token:
            if not self._lost.is_set():
                who = "removed" if record is None else f"taken over by {record.describe()}"
                log.error("the lease %s was %s while this run held it", self.settings.name, who)
            self._lost.set()
            return None
        return record

    def _renew_once(self, *, clear_pending: bool) -> tuple[str, ...]:
        """One renewal (a write by the holder); returns the pending reasons it cleared."""
        with self._write_lock:
            for _ in range(_CAS_ATTEMPTS):
                started = self._clock()
                record = self._mine()
                if record is None:
                    return ()
                pending = record.pending if clear_pending else ()
                changes = {
                    "renewed-at": _now_text(),
                    "renewals": str(record.renewals + 1),
                    "writer": "holder",
                }
                if pending:
                    changes["pending"] = ""
                try:
                    _write(self.swarm, self.settings.name, record, changes)
                except SwarmConflict:
                    continue  # a trigger was posted meanwhile: read again
                self._last_ok = started
                return pending
        return ()

    def _renew_loop(self) -> None:
        # With ``on_pending``, the holder also looks at its record every ``poll`` seconds between two
        # renewals (one read), and writes at once when a trigger was posted: a webhook that reached a
        # standby replica is handed over within seconds, not at the next renewal.
        watching = self._on_pending is not None
        step = min(self.settings.poll, self.settings.renew_every) if watching else self.settings.renew_every
        while not self._stop.wait(step):
            if watching and self._clock() - self._last_ok < self.settings.renew_every - step / 2:
                try:
                    record = self._mine()
                except SwarmSecretsError as exc:
                    log.debug("could not look at the lease %s: %s", self.settings.name, exc)
                    record = None
                if self._lost.is_set():
                    return
                if record is None or not record.pending:
                    continue
            try:
                pending = self._renew_once(clear_pending=watching)
                if pending and self._on_pending is not None:
                    self._on_pending(pending)
            except SwarmSecretsError as exc:
                log.warning("could not renew the lease %s: %s", self.settings.name, exc)
            if self._lost.is_set():
                return
            if self._clock() - self._last_ok >= self.settings.ttl * 2 / 3:
                log.error(
                    "the lease %s was not renewed for %.0f s: another applier may take it over",
                    self.settings.name,
                    self._clock() - self._last_ok,
                )
                self._lost.set()
                return

    def take_pending(self) -> tuple[str, ...]:
        """The tick requests others posted for the holder, cleared in the same write."""
        return self._renew_once(clear_pending=True) if self.held else ()

    # --- releasing --------------------------------------------------------------------------------

    def release(self) -> None:
        """Stop renewing and free the lease (keeping pending requests for the next holder). Failing
        to free it is logged, never raised: the lease then expires after its TTL."""
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self._write_lock:
                for _ in range(_CAS_ATTEMPTS):
                    record = read(self.swarm, self.settings.name)
                    if record is None or record.token != self.token:
                        return
                    cleared = {k: "" for k in ("holder", "host", "pid", "task", "revision", "purpose")}
                    cleared.update({"renewed-at": _now_text(), "writer": "holder"})
                    try:
                        _write(self.swarm, self.settings.name, record, cleared)
                    except SwarmConflict:
                        continue
                    log.info("lease %s released", self.settings.name)
                    return
        except SwarmSecretsError as exc:
            log.warning(
                "could not release the lease %s (%s); it expires %g s after its last renewal",
                self.settings.name,
                exc,
                self.settings.ttl,
            )
        finally:
            self._held = False


@contextmanager
def hold(
    swarm: Swarm,
    settings: LeaseSettings | None,
    *,
    purpose: str,
    revision: str | None = None,
    cancel: threading.Event | None = None,
    on_wait: Callable[[Record], None] | None = None,
) -> Iterator[Lease | None]:
    """Hold the swarm's lease for the body of a ``with``; ``settings=None`` (``--no-lock``) holds none
    and yields None. Released however the body ends."""
    if settings is None:
        yield None
        return
    lease = Lease(swarm, Identity.here(purpose=purpose, revision=revision), settings)
    lease.acquire(cancel=cancel, on_wait=on_wait)
    try:
        yield lease
    finally:
        lease.release()
