"""The contract between the lease (``engine/lease.py``) and a swarm: configs found by exact name, created
once, their labels replaced only by compare-and-swap on the version index, stamped by the manager's
clock; and the lease itself on top of them. Run against the in-memory fake *and* the real engine, so the
tick's unit tests can take the lease on the fake.
"""

from __future__ import annotations

import pytest

from reconciler.engine import lease
from reconciler.engine.lease import Identity, Lease, LeaseSettings, parse_time
from reconciler.errors import LeaseBusy, SwarmConflict, SwarmRefused

from .conftest import World


def test_a_config_is_found_by_its_exact_name_only(world: World) -> None:
    name = world.name("cfg")
    config_id = world.swarm.create_config(name, b"note", {"a": "1"})
    raw = world.swarm.inspect_config(name)
    assert raw is not None
    assert raw["ID"] == config_id and raw["Spec"]["Name"] == name and raw["Spec"]["Labels"] == {"a": "1"}
    assert int(raw["Version"]["Index"]) > 0
    assert parse_time(str(raw["CreatedAt"])) is not None and parse_time(str(raw["UpdatedAt"])) is not None
    # neither a prefix of the name nor the id (the engine itself would answer to an id or its prefix)
    for other in (name[:-1], config_id, config_id[:8], world.name("missing")):
        assert world.swarm.inspect_config(other) is None
    with pytest.raises(SwarmConflict):
        world.swarm.create_config(name, b"note", {})


def test_config_labels_change_only_at_the_current_version(world: World) -> None:
    name = world.name("cfg")
    config_id = world.swarm.create_config(name, b"the note stays", {"a": "1"})
    before = world.swarm.inspect_config(name)
    assert before is not None
    version = int(before["Version"]["Index"])
    world.swarm.update_config_labels(config_id, version, name, {"a": "2", "b": "x"})
    after = world.swarm.inspect_config(name)
    assert after is not None
    assert after["Spec"]["Labels"] == {"a": "2", "b": "x"}  # replaced, not merged
    assert int(after["Version"]["Index"]) > version
    updated, created = parse_time(str(after["UpdatedAt"])), parse_time(str(before["UpdatedAt"]))
    assert updated is not None and created is not None and updated >= created
    assert world.swarm.find_config(name) == (config_id, b"the note stays")
    # a write at the version read before someone else's write is refused, and changes nothing
    with pytest.raises(SwarmConflict):
        world.swarm.update_config_labels(config_id, version, name, {"a": "3"})
    again = world.swarm.inspect_config(name)
    assert again is not None and again["Spec"]["Labels"] == {"a": "2", "b": "x"}
    assert again["Version"] == after["Version"]


def test_updating_a_config_that_is_gone_is_refused(world: World) -> None:
    name = world.name("cfg")
    config_id = world.swarm.create_config(name, b"note", {})
    raw = world.swarm.inspect_config(name)
    assert raw is not None
    world.remove_config(config_id)
    with pytest.raises(SwarmRefused):
        world.swarm.update_config_labels(config_id, int(raw["Version"]["Index"]), name, {"a": "1"})


def test_updated_at_is_stamped_by_the_managers_clock(world: World) -> None:
    name = world.name("cfg")
    config_id = world.swarm.create_config(name, b"note", {})
    raw = world.swarm.inspect_config(name)
    assert raw is not None
    world.swarm.update_config_labels(config_id, int(raw["Version"]["Index"]), name, {"a": "1"})
    raw = world.swarm.inspect_config(name)
    assert raw is not None
    updated, now = parse_time(str(raw["UpdatedAt"])), parse_time(world.swarm.system_time())
    assert updated is not None and now is not None
    assert -1.0 <= now - updated <= 30.0  # the same clock: now is after the write, not long after


def test_the_lease_is_taken_once_triggers_are_handed_over_and_release_frees_it(world: World) -> None:
    settings = LeaseSettings(name=world.name("lease"), ttl=30, wait=0)
    holder = Lease(world.swarm, Identity(host="h1", pid=1, purpose="apply", revision="r1"), settings)
    holder.acquire()
    other = Lease(world.swarm, Identity(host="h2", pid=2, purpose="run"), settings)
    with pytest.raises(LeaseBusy, match="pid 1 on host h1, revision r1, for apply"):
        other.acquire()
    assert lease.post_trigger(world.swarm, "webhook:github", name=settings.name)
    assert lease.post_trigger(world.swarm, "manual", name=settings.name)
    assert holder.take_pending() == ("webhook:github", "manual")
    assert holder.take_pending() == ()
    holder.release()
    record = lease.read(world.swarm, settings.name)
    assert record is not None and record.free and record.get("pid") == ""
    assert not lease.post_trigger(world.swarm, "manual", name=settings.name)  # free: nobody to hand it to
    other.acquire()
    assert other.held
    other.release()
