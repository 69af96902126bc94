"""Electing the replica of ``run`` that reconciles (``daemon/leader.py``), on the in-memory swarm (whose
configs behave as the engine's: ``tests/contract/test_lease_contract.py``): one leader at a time, a
standby hands requests over through the lease, takes over when the leader releases or dies."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler.daemon.leader import RUN_LEASE, Leadership
from reconciler.daemon.types import Reason, Trigger
from reconciler.engine import lease
from reconciler.engine.lease import LEASE_NAME, Identity, Lease, LeaseSettings
from tests.fakes.swarm import FakeSwarm

SETTINGS = LeaseSettings(name=RUN_LEASE, ttl=2)  # the shortest TTL: polls every 0.2 s


def wait_for(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Replica:
    """A Leadership with what it tells the loop recorded."""

    def __init__(self, fake: FakeSwarm) -> None:
        self.changes: list[tuple[bool, str | None]] = []
        self.handed: list[str] = []
        self.lock = threading.Lock()
        self.leadership = Leadership(
            lambda: contextlib.nullcontext(fake), SETTINGS, on_change=self.change, on_pending=self.pending
        )

    def change(self, leading: bool, problem: str | None = None) -> None:
        with self.lock:
            self.changes.append((leading, problem))

    def pending(self, reasons: tuple[str, ...]) -> None:
        with self.lock:
            self.handed += reasons

    @property
    def leading(self) -> bool:
        return self.leadership.leading


@pytest.fixture
def replicas() -> Iterator[Callable[[FakeSwarm], Replica]]:
    made: list[Replica] = []

    def make(fake: FakeSwarm) -> Replica:
        replica = Replica(fake)
        made.append(replica)
        replica.leadership.start()
        return replica

    yield make
    for replica in made:
        replica.leadership.close()


def test_one_replica_leads_the_other_hands_requests_over_and_takes_over_on_release(
    replicas: Callable[[FakeSwarm], Replica],
) -> None:
    fake = FakeSwarm()
    first = replicas(fake)
    wait_for(lambda: first.leading)
    second = replicas(fake)
    time.sleep(0.5)
    assert not second.leading and (True, None) in first.changes and (True, None) not in second.changes
    record = lease.read(fake, RUN_LEASE)
    assert record is not None and record.get("purpose").startswith("run")

    # a webhook that reached the standby: handed to the leader through the lease, within a few polls
    second.leadership.forward(Reason(Trigger.WEBHOOK, "github"))
    wait_for(lambda: first.handed == ["webhook:github"], timeout=4)
    assert second.handed == []

    # the leader stops (SIGTERM): it releases, and the standby leads within a poll or two
    first.leadership.close()
    wait_for(lambda: second.leading, timeout=2)
    assert first.changes[-1] == (True, None)  # (the loop has stopped by then: no need to say it)


def test_a_dead_leader_is_replaced_after_its_ttl(replicas: Callable[[FakeSwarm], Replica]) -> None:
    fake = FakeSwarm()
    dead = Lease(fake, Identity(host="gone", pid=1, purpose="run"), SETTINGS)
    dead.acquire()
    dead._stop.set()  # kill -9: it renews no more, and never releases
    started = time.monotonic()
    survivor = replicas(fake)
    wait_for(lambda: survivor.leading, timeout=SETTINGS.ttl + 4)
    assert time.monotonic() - started >= SETTINGS.ttl * 0.9  # not before the TTL ran out
    record = lease.read(fake, RUN_LEASE)
    assert record is not None and record.get("host") != "gone" and int(record.get("transitions")) == 2


def test_the_run_lease_is_never_the_applier_lease() -> None:
    with pytest.raises(ValueError, match="applier lease"):
        Leadership(
            lambda: contextlib.nullcontext(FakeSwarm()),
            LeaseSettings(name=LEASE_NAME),
            on_change=lambda *a, **k: None,
            on_pending=lambda r: None,
        )
