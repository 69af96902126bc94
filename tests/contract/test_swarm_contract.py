"""The contract between the executor and a swarm: every behaviour the executor relies on, checked
against the in-memory fake *and* the real engine, so the fake cannot drift from the engine.

Each test runs twice (``world`` is ``fake`` or ``engine``); the executor's unit tests run on the fake
only because these pass on both. Rollouts are judged by the same judge the executor uses.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from reconciler.core.collect import needs_tasks
from reconciler.core.model import (
    LABEL_FINGERPRINT,
    LABEL_MANAGED,
    LABEL_SECRET,
    LABEL_SET,
    LABEL_VERSION,
    SecretValue,
)
from reconciler.core.refs import raw_ref
from reconciler.core.rollout import Outcome, Rollout, Verdict, judge
from reconciler.core.schedule import parse_time
from reconciler.engine.swarm import STACK_LABEL
from reconciler.errors import SwarmConflict, SwarmRefused

from .conftest import World


def secrets_of(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or [])


def write(world: World, service_id: str, refs: list[dict[str, Any]]) -> Rollout:
    """Write the service's secret references as the executor does; the rollout to judge."""
    raw = world.swarm.inspect_service(service_id)
    before = {r["SecretID"] for r in secrets_of(raw.get("Spec"))}
    world.swarm.write_service_secrets(raw, refs)
    return Rollout(
        written=frozenset(r["SecretID"] for r in refs) - before,
        baseline_started_at=(raw.get("UpdateStatus") or {}).get("StartedAt"),
        deadline=time.monotonic() + 90,
        timeout=90,
    )


def watch(world: World, service_id: str, rollout: Rollout) -> Verdict:
    while True:
        verdict = judge(rollout, world.swarm.rollout_probes([service_id])[service_id], time.monotonic())
        if verdict.outcome is not None:
            return verdict
        rollout = verdict.rollout
        world.pause()


# --- secrets ---------------------------------------------------------------------------------------


def test_a_created_secret_is_observed_with_its_labels(world: World) -> None:
    name = world.name("pw_v1")
    labels = {
        LABEL_MANAGED: "true",
        LABEL_SET: "shop",
        LABEL_SECRET: world.name("pw"),
        LABEL_VERSION: "1",
        LABEL_FINGERPRINT: "hmac-sha256:k:x",
        "team": "data",
    }
    secret_id = world.swarm.create_secret(name, SecretValue(b"value"), labels)
    found = world.swarm.observe().secret_by_id(secret_id)
    assert found is not None
    assert (found.name, dict(found.labels)) == (name, labels)
    assert found.managed and found.version == 1 and found.set_name == "shop"
    assert found.created_at
    assert found.index > 0  # the object version index, which saved plans record


def test_an_observation_carries_the_swarms_clock_that_stamps_created_at(world: World) -> None:
    """Versions' ages (rotation schedules) compare ``observed_at`` with ``CreatedAt``: both the swarm's."""
    secret_id = world.swarm.create_secret(world.name("clock"), SecretValue(b"x"), {})
    live = world.swarm.observe()
    found = live.secret_by_id(secret_id)
    assert found is not None and live.observed_at is not None
    created = parse_time(found.created_at)
    assert created is not None
    assert -1 < live.observed_at - created < 60  # taken just after it was created, on the same clock


def test_secret_names_are_unique_case_insensitively(world: World) -> None:
    name = world.name("pw_v1")
    world.swarm.create_secret(name, SecretValue(b"a"), {})
    with pytest.raises(SwarmConflict):
        world.swarm.create_secret(name.upper(), SecretValue(b"b"), {})


@pytest.mark.parametrize("name", ["bad name!", "x" * 65])
def test_invalid_secret_names_are_refused(world: World, name: str) -> None:
    with pytest.raises(SwarmRefused) as caught:
        world.swarm.create_secret(name, SecretValue(b"a"), {})
    assert "creating secret" in str(caught.value)


def test_removal_is_refused_for_the_spec_but_not_for_previous_spec_the_rollback_trap(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0)
    write(world, service, [world.ref(new, "pw")])
    live = world.swarm.observe()
    by_name = {s.name: s.id for s in live.secrets}
    with pytest.raises(SwarmRefused):
        world.swarm.remove_secret(by_name[new], new)
    # only the PreviousSpec references the old one: the engine lets it go (moby/swarmkit#2509)
    world.swarm.remove_secret(by_name[old], old)
    assert world.swarm.observe().secret_by_id(by_name[old]) is None


def test_removing_a_secret_that_is_gone_is_refused(world: World) -> None:
    name = world.name("pw_v1")
    secret_id = world.swarm.create_secret(name, SecretValue(b"a"), {})
    world.swarm.remove_secret(secret_id, name)
    with pytest.raises(SwarmRefused):
        world.swarm.remove_secret(secret_id, name)


def test_configs_are_found_by_exact_name_and_created_once(world: World) -> None:
    name = world.name("key")
    assert world.swarm.find_config(name) is None
    world.swarm.create_config(name, b"\x00key-bytes", {LABEL_MANAGED: "true"})
    found = world.swarm.find_config(name)
    assert found is not None and found[1] == b"\x00key-bytes"
    assert world.swarm.find_config(name[:-1]) is None  # not a prefix match
    with pytest.raises(SwarmConflict):
        world.swarm.create_config(name, b"other", {})


# --- services --------------------------------------------------------------------------------------


def test_a_write_replaces_only_the_secrets_and_keeps_the_old_spec_as_previous_spec(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0, env=["A=1"])
    before = world.swarm.inspect_service(service)
    ref = world.ref(new, "/etc/pw")
    ref["File"].update(UID="1000", GID="1000", Mode=0o440)
    write(world, service, [ref])
    after = world.swarm.inspect_service(service)
    assert secrets_of(after.get("Spec")) == [ref]
    assert after["Version"]["Index"] > before["Version"]["Index"]
    assert after.get("PreviousSpec") == before.get("Spec")
    expected = dict(before.get("Spec") or {})
    expected["TaskTemplate"] = {
        **expected["TaskTemplate"],
        "ContainerSpec": {**expected["TaskTemplate"]["ContainerSpec"], "Secrets": [ref]},
    }
    assert after.get("Spec") == expected
    live = next(s for s in world.swarm.observe().services if s.id == service)
    assert [(r.secret_name, r.target, r.uid, r.gid, r.mode) for r in live.refs] == [
        (new, "/etc/pw", "1000", "1000", 0o440)
    ]
    assert [r.secret_name for r in live.previous_refs] == [old]
    assert live.version == after["Version"]["Index"]


def test_a_write_at_a_stale_version_is_a_conflict(world: World) -> None:
    old = world.secret("pw_v1", b"one")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0)
    stale = world.swarm.inspect_service(service)
    world.foreign_write(service, lambda spec: spec["Labels"].update(by="someone"))
    with pytest.raises(SwarmConflict):
        world.swarm.write_service_secrets(stale, [])


def test_a_write_referencing_a_missing_secret_is_refused(world: World) -> None:
    old = world.secret("pw_v1", b"one")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0)
    gone = world.ref(old, "pw")
    gone.update(SecretID="0" * 25, SecretName=world.name("gone_v1"))
    raw = world.swarm.inspect_service(service)
    with pytest.raises(SwarmRefused):
        world.swarm.write_service_secrets(raw, [gone])
    assert world.swarm.inspect_service(service)["Version"] == raw["Version"]


def test_running_tasks_hold_their_secrets(world: World) -> None:
    old = world.secret("pw_v1", b"one")
    world.create_service("app", secrets=[(old, "pw")])
    live = world.swarm.observe()
    old_id = next(s.id for s in live.secrets if s.name == old)
    assert old_id in live.task_secret_ids


def test_a_lean_look_lists_tasks_only_when_a_managed_version_is_in_no_spec(world: World) -> None:
    def managed(version: int, set_suffix: str = "") -> str:
        name = world.name(f"{set_suffix}pw_v{version}")
        labels = {
            LABEL_MANAGED: "true",
            LABEL_SET: world.name(f"set{set_suffix}").lower().replace("_", "-"),
            LABEL_SECRET: world.name("pw"),
            LABEL_VERSION: str(version),
        }
        world.swarm.create_secret(name, SecretValue(b"v%d" % version), labels)
        return name

    ours = {world.name("set").lower().replace("_", "-")}
    current = managed(1)
    world.create_service("app", secrets=[(current, "pw")])
    # every managed version of the sets planned in a Spec: a plan needs no tasks (and asks for none)
    lean, full = world.swarm.observe(lean=True, sets=ours), world.swarm.observe()
    current_id = next(s.id for s in full.secrets if s.name == current)
    assert current_id in full.task_secret_ids and not lean.task_secret_ids
    assert not needs_tasks(lean.secrets, lean.services, ours)
    # an unused version of another set (an orphan, a held-back set: never removed by this plan): still none
    managed(1, set_suffix="other")
    assert not world.swarm.observe(lean=True, sets=ours).task_secret_ids
    # a managed version of ours no Spec references (it could be removed): the tasks are listed
    managed(2)
    lean = world.swarm.observe(lean=True, sets=ours)
    assert needs_tasks(lean.secrets, lean.services, ours) and current_id in lean.task_secret_ids


def test_the_executors_reference_rule_round_trips_through_the_engine(world: World) -> None:
    old = world.secret("pw_v1", b"one")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0)
    raw = world.swarm.inspect_service(service)
    live = next(s for s in world.swarm.observe().services if s.id == service)
    # what observe parses, written back with the rule's raw shape, is what the engine had
    assert [raw_ref(r) for r in live.refs] == secrets_of(raw.get("Spec"))


# --- rollouts --------------------------------------------------------------------------------------


def test_a_rollout_converges(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")])
    verdict = watch(world, service, write(world, service, [world.ref(new, "pw")]))
    assert verdict.outcome is Outcome.CONVERGED, verdict.detail
    new_id = next(s.id for s in world.swarm.observe().secrets if s.name == new)
    assert new_id in world.swarm.rollout_probes([service])[service].spec_secret_ids


def test_one_look_answers_for_every_service_asked_and_leaves_out_the_missing(world: World) -> None:
    one, two = world.secret("a_v1", b"one"), world.secret("b_v1", b"two")
    first = world.create_service("first", secrets=[(one, "pw")], replicas=0)
    second = world.create_service("second", secrets=[(two, "pw")], replicas=0)
    ids = {s.name: s.id for s in world.swarm.observe().secrets}
    missing = "0" * 25
    probes = world.swarm.rollout_probes([first, second, missing])
    assert set(probes) == {first, second}
    assert probes[first].spec_secret_ids == {ids[one]}
    assert probes[second].spec_secret_ids == {ids[two]}
    assert (probes[first].desired, probes[first].running) == (0, 0)
    assert world.swarm.rollout_probes([missing]) == {}


def test_a_rollout_without_tasks_converges(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")], replicas=0)
    verdict = watch(world, service, write(world, service, [world.ref(new, "pw")]))
    assert verdict.outcome is Outcome.CONVERGED, verdict.detail


def test_a_failing_rollout_is_rolled_back_by_swarm(world: World) -> None:
    good, bad = world.secret("flag_v1", b"good"), world.secret("flag_v2", b"bad")
    service = world.create_service(
        "app", secrets=[(good, "flag")], failure_action="rollback", require=("/run/secrets/flag", b"good")
    )
    verdict = watch(world, service, write(world, service, [world.ref(bad, "flag")]))
    assert verdict.outcome is Outcome.ROLLED_BACK, verdict.detail
    assert "rollback_" in verdict.detail
    raw = world.swarm.inspect_service(service)
    assert [r["SecretName"] for r in secrets_of(raw.get("Spec"))] == [good]
    # an automatic rollback drops PreviousSpec: nothing references the bad version any more
    assert raw.get("PreviousSpec") is None


def test_a_failing_rollout_is_paused_by_swarm(world: World) -> None:
    good, bad = world.secret("flag_v1", b"good"), world.secret("flag_v2", b"bad")
    service = world.create_service(
        "app", secrets=[(good, "flag")], failure_action="pause", require=("/run/secrets/flag", b"good")
    )
    verdict = watch(world, service, write(world, service, [world.ref(bad, "flag")]))
    assert verdict.outcome is Outcome.PAUSED, verdict.detail
    assert "update paused" in verdict.detail and "task error: " in verdict.detail
    raw = world.swarm.inspect_service(service)
    assert [r["SecretName"] for r in secrets_of(raw.get("Spec"))] == [bad]


def test_a_foreign_write_during_a_rollout_supersedes_it(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")])
    rollout = write(world, service, [world.ref(new, "pw")])
    back = world.ref(old, "pw")
    world.foreign_write(service, lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Secrets=[back]))
    verdict = watch(world, service, rollout)
    assert verdict.outcome is Outcome.SUPERSEDED, verdict.detail


def test_a_manual_rollback_is_a_rollback(world: World) -> None:
    old, new = world.secret("pw_v1", b"one"), world.secret("pw_v2", b"two")
    service = world.create_service("app", secrets=[(old, "pw")])
    rollout = write(world, service, [world.ref(new, "pw")])
    world.manual_rollback(service)
    verdict = watch(world, service, rollout)
    assert verdict.outcome is Outcome.ROLLED_BACK, verdict.detail
    assert "manually requested rollback" in verdict.detail
    # a manual rollback swaps Spec and PreviousSpec
    raw = world.swarm.inspect_service(service)
    assert [r["SecretName"] for r in secrets_of(raw.get("Spec"))] == [old]
    assert [r["SecretName"] for r in secrets_of(raw.get("PreviousSpec"))] == [new]


# --- stacks --------------------------------------------------------------------------------------------


def test_stack_services_are_the_services_labelled_as_the_stack(world: World) -> None:
    stack = world.name("stk")
    mine = world.create_service("a", replicas=0, labels={STACK_LABEL: stack})
    world.create_service("b", replicas=0, labels={STACK_LABEL: f"{stack}x"})  # a stack whose name extends it
    world.create_service("c", replicas=0)
    assert world.swarm.stack_services(stack) == {world.name("a"): (mine, None)}
    assert world.swarm.stack_services(world.name("none")) == {}
