"""Which replica of ``swarm-secrets run`` reconciles: the one holding the lease of ``run``.

``deploy/stack.yml`` runs two or more replicas on different managers. Each races for a lease of its
own kind, :data:`RUN_LEASE` (a Docker config with compare-and-swap, ``engine/lease.py``): the winner
**leads** (its loop ticks) and keeps the lease for as long as it lives, renewing it in the background;
the others **stand by**: they keep the lease's record under watch (one read every ``poll`` seconds),
answer ``/healthz`` and ``/readyz``, report ``swarm_secrets_lease_held 0``, and run no tick, no git
fetch and no decryption.

**Takeover.** A leader that dies (``kill -9``, its node or its manager lost) stops renewing; a standby
takes the lease over once it has seen no renewal for the lease's TTL (crediting the age of the last one
by the swarm's clocks, so it does not wait a TTL more than needed) and ticks at once (``elected``). So
the work resumes within about ``--lock-ttl`` seconds plus one tick, well within TTL + ``--interval``. A
leader stopped with SIGTERM releases the lease when its loop has finished: a standby takes over within
one ``poll``. A leader that cannot renew in time (its engine unreachable) steps down and stands by.

**Why a lease of its own, held between ticks.** Re-acquiring the applier lease at each tick would let
every replica tick (each fetching, decrypting and planning), nobody would hold anything between ticks
(so no replica could say it leads), and a standby would notice a dead leader only at its own next tick.
Holding the *applier* lease between ticks instead would shut out every CI ``apply`` for good. So the
replicas elect a leader with the run lease, and the leader's ticks still take the applier lease for
each change, taking turns with ``apply`` as before.

**Requests that reach a standby** (the forge's webhook, ``POST /reconcile``: Swarm's routing mesh sends
them to any replica) are handed to the leader through the swarm: :func:`~reconciler.engine.lease.post_trigger`
records the reason on the run lease, and the leader, which looks at its record every ``poll`` seconds,
takes it and requests the tick (``Loop.handed``). While no replica holds the lease (between a leader's
release and a standby's takeover), the standby keeps trying for two TTLs; if it wins the lease meanwhile,
it requests the tick itself.

This module only elects and hands over; the loop decides when to tick and never touches Docker itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from reconciler.daemon.types import Reason, error_class
from reconciler.engine import lease
from reconciler.engine.lease import Identity, Lease, LeaseSettings
from reconciler.engine.protocol import Swarm
from reconciler.errors import LeaseBusy, SwarmSecretsError

log = logging.getLogger(__name__)

RUN_LEASE = "swarm-secrets-run-lease"
"""The Docker config whose holder is the replica of ``run`` that reconciles."""
_PURPOSE = "run (the replica that reconciles)"

Connect = Callable[[], AbstractContextManager[Swarm]]
"""A new connection to a manager (``lambda: Swarm.connect(docker_host)``)."""


class Leadership:
    """This replica's part in the election; see the module docstring. :meth:`start`, :meth:`forward`
    from any thread, :meth:`close` at the end (releases the lease if held)."""

    def __init__(
        self,
        connect: Connect,
        settings: LeaseSettings,
        *,
        on_change: Callable[..., None],
        on_pending: Callable[[tuple[str, ...]], None],
        retry_cap: float = 30.0,
    ) -> None:
        """``settings``: the TTL and the name of the run lease (:data:`RUN_LEASE`; never the applier
        lease's); ``on_change(leading, problem=error class or None)`` follows :meth:`Loop.set_leading
        <reconciler.daemon.loop.Loop.set_leading>`; ``on_pending`` gets the reasons handed over."""
        if settings.name == lease.LEASE_NAME:
            raise ValueError(
                "the lease of `run` must not be the applier lease, which ticks take for each change"
            )
        self.settings = settings
        self._connect = connect
        self._on_change = on_change
        self._on_pending = on_pending
        self._retry_cap = retry_cap
        self._stop = threading.Event()
        self._leading = threading.Event()
        self._handovers: queue.Queue[Reason] = queue.Queue(maxsize=64)
        self._threads: list[threading.Thread] = []

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        for target, name in ((self._run, "reconciler-leader"), (self._hand_over, "reconciler-handover")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def forward(self, reason: Reason) -> None:
        """Hand ``reason`` (a webhook, ``POST /reconcile``) to the leading replica; never blocks."""
        try:
            self._handovers.put_nowait(reason)
        except queue.Full:
            log.warning("too many requests to hand over to the leading replica; dropping %s", reason)

    def close(self) -> None:
        """Stop standing by or leading; a held lease is released (the next replica takes it at once)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    # --- the election ------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                with self._connect() as swarm:
                    while not self._stop.is_set():
                        self._serve(swarm)
                        delay = 1.0
            except LeaseBusy:
                return  # only raised when stopping while standing by
            except SwarmSecretsError as exc:
                log.warning(
                    "cannot follow the lease %s (%s); trying again in %.0f s", self.settings.name, exc, delay
                )
                self._on_change(False, problem=error_class(exc))
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._retry_cap)

    def _serve(self, swarm: Swarm) -> None:
        """Stand by until this replica holds the lease, then lead until it is lost or the end."""
        held = Lease(swarm, Identity.here(purpose=_PURPOSE), self.settings, on_pending=self._on_pending)
        # Standing by: watching the record (the loop hears so once another replica is seen to hold it).
        held.acquire(wait=float("inf"), cancel=self._stop, on_wait=lambda record: self._on_change(False))
        self._leading.set()
        self._on_change(True)
        try:
            while not self._stop.wait(min(0.5, self.settings.poll)) and not held.lost:
                pass
        finally:
            self._leading.clear()
            if held.lost:
                self._on_change(False, problem=None)
            held.release()

    # --- requests that reached this replica while it stands by ---------------------------------------

    def _hand_over(self) -> None:
        while not self._stop.is_set():
            try:
                reason = self._handovers.get(timeout=0.5)
            except queue.Empty:
                continue
            self._post(reason)

    def _post(self, reason: Reason) -> None:
        deadline = time.monotonic() + 2 * self.settings.ttl
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.leading:
                self._on_pending((str(reason),))  # this replica won the lease meanwhile
                return
            try:
                with self._connect() as swarm:
                    if lease.post_trigger(swarm, str(reason), name=self.settings.name):
                        log.info(
                            "%s handed to the replica that holds the lease %s", reason, self.settings.name
                        )
                        return
            except SwarmSecretsError as exc:
                log.debug("could not hand %s over yet: %s", reason, exc)
            self._stop.wait(self.settings.poll)  # nobody holds the lease right now: a takeover is near
        if not self._stop.is_set():
            log.warning(
                "%s could not be handed to a leading replica within %.0f s; the next interval tick "
                "catches up",
                reason,
                2 * self.settings.ttl,
            )
