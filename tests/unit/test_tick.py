"""The run tick (``daemon/tick.py``) through converge, on the in-memory swarm: results, held rollouts
(Swarm's own rollback or pause) versus superseded ones, a tick whose swarm changed under it, and the
swarm's lease around every tick that changes something (the fake keeps configs as the engine does:
``tests/contract/test_lease_contract.py``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.core.model import SecretValue
from reconciler.daemon import tick as tick_module
from reconciler.daemon.tick import TickSettings, make_tick
from reconciler.daemon.types import Reason, Tick, TickRequest, TickResult, Trigger
from reconciler.engine import lease
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.lease import Identity, Lease, LeaseSettings
from reconciler.errors import LeaseBusy
from tests.fakes.swarm import FakeSwarm, requires

LEASE = LeaseSettings(ttl=30, wait=0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSwarm:
    swarm = FakeSwarm()

    class Connect:
        @staticmethod
        def connect(docker_host: str | None = None) -> contextlib.AbstractContextManager[FakeSwarm]:
            return contextlib.nullcontext(swarm)

    monkeypatch.setattr(tick_module, "Swarm", Connect)
    return swarm


@pytest.fixture
def manifests(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    doc = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "shop"},
        "spec": {"secrets": {"pw": {"source": {"env": "TICK_PW"}, "services": ["web"]}}},
    }
    (folder / "set.yaml").write_text(yaml.safe_dump(doc))
    yield folder


def request(*triggers: Trigger, revision: str = "rev1") -> TickRequest:
    reasons = tuple(Reason(t) for t in triggers or (Trigger.INTERVAL,))
    return TickRequest(reason=reasons[0], reasons=reasons, revision=revision)


@pytest.fixture
def tick(manifests: Path) -> Tick:
    settings = TickSettings(manifests=manifests, apply=ApplyOptions(poll_interval=0, timeout=5), lease=LEASE)
    return make_tick(settings)


def lease_writes(fake: FakeSwarm) -> int:
    return sum(1 for call in fake.calls if call in ("create_config", "update_config_labels"))


def run(tick: Tick, monkeypatch: pytest.MonkeyPatch, value: str, *triggers: Trigger) -> TickResult:
    monkeypatch.setenv("TICK_PW", value)
    return tick(request(*triggers))


def test_a_tick_converges_then_has_nothing_to_do(
    fake: FakeSwarm, tick: Tick, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_service("web")
    first = run(tick, monkeypatch, "one")
    assert first.ok and first.changed and first.created == 1
    assert dict(first.rollouts) == {"converged": 1} and first.managed_secrets == 1
    record = lease.read(fake)
    assert record is not None and record.free and record.get("purpose") == ""  # taken, then released
    assert record.renewals >= 0 and int(record.get("transitions")) == 1
    writes = lease_writes(fake)
    second = run(tick, monkeypatch, "one")
    assert second.ok and not second.changed
    assert lease_writes(fake) == writes  # an empty plan takes no lease


def test_a_tick_finding_the_lease_held_changes_nothing_and_fails_as_it_may_pass(
    fake: FakeSwarm, tick: Tick, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_service("web")
    other = Lease(fake, Identity(host="ci-7", pid=42, purpose="apply", revision="abc"), LEASE)
    other.acquire()
    monkeypatch.setenv("TICK_PW", "one")

    def objects() -> dict[str, int]:  # secrets and services (the tick may create the key config)
        return {i: v for i, v in fake.versions().items() if i not in fake.configs}

    before = objects()
    with pytest.raises(LeaseBusy, match="pid 42 on host ci-7") as busy:
        tick(request())
    assert busy.value.transient
    assert objects() == before and fake.secret_names() == set()
    other.release()
    assert run(tick, monkeypatch, "one").ok
    assert fake.service_secret_names("web") == {"pw": "pw_v1"}


def test_swarms_rollback_is_held_until_asked_but_a_superseded_rollout_is_not(
    fake: FakeSwarm, tick: Tick, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_service("web", failure_action="rollback")
    assert run(tick, monkeypatch, "good").ok
    fake.service_by_name("web").health = requires("/run/secrets/pw", b"good")
    failed = run(tick, monkeypatch, "bad")
    assert not failed.ok and dict(failed.rollouts) == {"rolled_back": 1}
    writes = len(fake.written)
    held = run(tick, monkeypatch, "bad")
    assert dict(held.rollouts) == {"held": 1} and len(fake.written) == writes  # not tried again
    asked = run(tick, monkeypatch, "bad", Trigger.MANUAL)
    assert dict(asked.rollouts) == {"rolled_back": 1}  # asked: tried again

    # someone else rewrites the service during our rollout: superseded, and never held
    fake.service_by_name("web").health = None
    v1 = fake.ref("pw_v1", "pw")
    fake.before["rollout_probes"] = lambda: fake.foreign_write(
        "web", lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Secrets=[v1])
    )
    superseded = run(tick, monkeypatch, "fine")
    assert dict(superseded.rollouts) == {"superseded": 1} and not superseded.ok
    assert superseded.follow_up and not failed.follow_up and not held.follow_up  # rollbacks need none
    again = run(tick, monkeypatch, "fine", Trigger.FOLLOW_UP)  # not asked: nothing was held
    assert again.ok and dict(again.rollouts) == {"converged": 1} and not again.follow_up


def test_a_tick_whose_swarm_changed_since_its_plan_stops_and_the_next_one_converges(
    fake: FakeSwarm, tick: Tick, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_service("web")
    assert run(tick, monkeypatch, "one").ok
    labels = {
        "io.swarm-secrets.managed": "true",
        "io.swarm-secrets.set": "shop",
        "io.swarm-secrets.secret": "pw",
        "io.swarm-secrets.version": "2",
        "io.swarm-secrets.fingerprint": "hmac-sha256:other:x",
    }
    fake.before["create_secret"] = lambda: fake.create_secret("pw_v2", SecretValue(b"theirs"), labels)
    stopped = run(tick, monkeypatch, "two")
    assert not stopped.ok and stopped.error is not None
    assert stopped.error.startswith("the swarm changed since the plan; plan again")
    assert stopped.follow_up
    assert fake.service_secret_names("web") == {"pw": "pw_v1"}
    after = run(tick, monkeypatch, "two", Trigger.FOLLOW_UP)
    assert after.ok and fake.service_secret_names("web") == {"pw": "pw_v3"}


def test_a_set_that_fails_is_held_back_and_named_while_the_others_converge(
    fake: FakeSwarm,
    tick: Tick,
    manifests: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add_service("web")
    fake.add_service("api")
    other = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "books"},
        "spec": {"secrets": {"token": {"source": {"env": "TICK_TOKEN"}, "services": ["api"]}}},
    }
    (manifests / "books.yaml").write_text(yaml.safe_dump(other))
    monkeypatch.setenv("TICK_TOKEN", "t1")
    first = run(tick, monkeypatch, "one")
    assert first.ok and first.failing_sets == {}
    # a commit breaks books: shop's new value still converges, books is named with its class
    (manifests / "books.yaml").write_text(yaml.safe_dump({**other, "spec": {"secretz": {}}}))
    with caplog.at_level(logging.ERROR, logger="reconciler.daemon.tick"):
        partial = run(tick, monkeypatch, "two")
        assert partial.ok and partial.failing_sets == {"books": "manifest"}
        assert fake.service_secret_names("web") == {"pw": "pw_v2"}
        assert fake.service_secret_names("api") == {"token": "token_v1"}
        again = run(tick, monkeypatch, "two")  # the same problem: not logged at every tick
    assert again.ok and again.failing_sets == {"books": "manifest"}
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 2 and all(m.startswith("set 'books' is held back") for m in logged)  # once each
    assert "books.yaml:6: spec.secretz: unknown field" in logged[1]
    # everything broken: nothing to reconcile, a failure retrying cannot fix, the sets still named
    (manifests / "set.yaml").write_text(
        "kind: SecretSet\napiVersion: swarm-secrets/v1\nmetadata: {name: shop}\n"
    )
    stalled = run(tick, monkeypatch, "three")
    assert not stalled.ok and not stalled.transient and stalled.error_class == "manifest"
    assert stalled.failing_sets == {"books": "manifest", "shop": "manifest"}
    assert fake.service_secret_names("web") == {"pw": "pw_v2"}
