"""The executor on the in-memory swarm (``tests/fakes``): creates, 409s, stale versions, rollout
verdicts, exact collection, crash points, and "the swarm changed since the plan".

Everything goes through ``converge`` as the CLI and the loop use it; the clock is a fake, so rollouts
are watched without sleeping. The fake is held to the real engine by ``tests/contract/``.
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler import converge
from reconciler.core.guard import ROLE_LABEL
from reconciler.core.model import EnvSource, Origin, SecretSet, SecretSpec, SecretValue, ServiceGrant
from reconciler.core.plan import Plan
from reconciler.core.rollout import Outcome
from reconciler.engine import executor
from reconciler.engine.executor import STALE, ApplyOptions, ApplyResult, hold_key
from reconciler.errors import CheckFailed, Problem, SwarmRefused
from tests.fakes.clock import FakeClock
from tests.fakes.swarm import Crash, FakeSwarm, requires

ORIGIN = Origin(file="set.yaml", line=1, path="spec")


def grant(service: str, target: str = "", **owner: Any) -> ServiceGrant:
    return ServiceGrant(service=service, target=target or "pw", **owner)


def loaded(
    values: Mapping[str, bytes], grants: Mapping[str, Sequence[ServiceGrant]], *, keep: int = 0
) -> converge.Loaded:
    specs = tuple(
        SecretSpec(
            set_name="shop",
            secret=name,
            source=EnvSource(var="UNUSED"),
            grants=tuple(grants.get(name, ())),
            origin=ORIGIN,
        )
        for name in values
    )
    return converge.Loaded(
        sets=(SecretSet(name="shop", keep=keep, secrets=specs, origin=ORIGIN),),
        values={("shop", name): SecretValue(value) for name, value in values.items()},
        revision="rev1",
    )


def settings(**options: Any) -> converge.Settings:
    return converge.Settings(apply=ApplyOptions(timeout=30, **options))


def apply(fake: FakeSwarm, run: converge.Loaded, **options: Any) -> converge.Outcome:
    return converge.converge(
        run, fake, approval=converge.auto_approve, settings=settings(**options), clock=FakeClock()
    )


def result_of(outcome: converge.Outcome) -> ApplyResult:
    assert outcome.result is not None
    return outcome.result


def plan(fake: FakeSwarm, run: converge.Loaded) -> Plan:
    return converge.prepare(run, fake, settings()).plan


def execute(fake: FakeSwarm, prepared: converge.Prepared, **options: Any) -> ApplyResult:
    return converge.execute(prepared, prepared.plan, fake, settings(**options), clock=FakeClock())


def pw(value: bytes, *services: str) -> converge.Loaded:
    return loaded({"pw": value}, {"pw": [grant(s) for s in services]})


def rollback_safe(fake: FakeSwarm) -> None:
    """No Spec or PreviousSpec references a secret that is gone."""
    for service in fake.services.values():
        for spec in (service.spec, service.previous):
            for ref in ((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or ():
                assert ref["SecretID"] in fake.secrets, (service.spec["Name"], ref)


# --- the happy paths ---------------------------------------------------------------------------------


def test_first_apply_creates_rolls_and_converges() -> None:
    fake = FakeSwarm()
    fake.add_service("web", replicas=2)
    fake.add_service("db")
    run = loaded({"pw": b"one"}, {"pw": [grant("web", "/etc/pw", uid="1000", mode=0o440), grant("db")]})
    result = result_of(apply(fake, run))
    assert result.ok and result.created == ("pw_v1",)
    assert {r.service: r.outcome for r in result.rollouts} == {
        "db": Outcome.CONVERGED,
        "web": Outcome.CONVERGED,
    }
    assert fake.mounted("web") == {"/etc/pw": b"one"}
    assert fake.service_by_name("web").spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["File"] == {
        "Name": "/etc/pw",
        "UID": "1000",
        "GID": "0",
        "Mode": 0o440,
    }
    assert plan(fake, run).empty


def test_rotation_keeps_the_rollback_target_and_collects_it_after_the_next_rollout() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    assert apply(fake, pw(b"two", "web")).ok
    assert fake.secret_names() == {"pw_v1", "pw_v2"}  # v1 is web's PreviousSpec
    assert plan(fake, pw(b"two", "web")).empty

    third = plan(fake, pw(b"three", "web"))
    (removal,) = third.removals
    assert removal.name == "pw_v1" and removal.after == ("web",)
    assert "after web's rollout: no longer its rollback target" in removal.reason
    result = result_of(apply(fake, pw(b"three", "web")))
    assert result.ok and result.removed == ("pw_v1",)
    assert fake.secret_names() == {"pw_v2", "pw_v3"}
    assert plan(fake, pw(b"three", "web")).empty
    rollback_safe(fake)


def test_an_approved_removal_still_needed_after_the_rollouts_is_kept_and_reported() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    assert apply(fake, pw(b"two", "web")).ok
    prepared = converge.prepare(pw(b"three", "web"), fake, settings())
    assert [r.name for r in prepared.plan.removals] == ["pw_v1"]

    def someone_mounts_v1() -> None:  # after the rollout, before the collection looks
        fake.foreign_write(
            "web",
            lambda spec: spec["TaskTemplate"]["ContainerSpec"]["Secrets"].append(
                fake.ref("pw_v1", "/legacy")
            ),
        )

    fake.before["observe"] = someone_mounts_v1
    result = execute(fake, prepared)
    assert result.removed == () and "pw_v1" in fake.secret_names()
    assert result.kept_back[0].startswith("pw_v1: in use by web")
    rollback_safe(fake)


def test_zero_replicas_converge_without_an_update_status() -> None:
    fake = FakeSwarm()
    fake.add_service("idle", replicas=0)
    result = result_of(apply(fake, pw(b"one", "idle")))
    assert [(r.service, r.outcome) for r in result.rollouts] == [("idle", Outcome.CONVERGED)]


# --- rollout verdicts ------------------------------------------------------------------------------


def picky(fake: FakeSwarm, failure_action: str) -> None:
    fake.add_service("picky", failure_action=failure_action)
    assert apply(fake, pw(b"good", "picky")).ok
    fake.service_by_name("picky").health = requires("/run/secrets/pw", b"good")


def test_a_rollout_swarm_rolls_back_is_reported_and_the_old_version_runs() -> None:
    fake = FakeSwarm()
    picky(fake, "rollback")
    outcome = apply(fake, pw(b"bad", "picky"))
    (rollout,) = result_of(outcome).rollouts
    assert not outcome.ok
    assert rollout.outcome is Outcome.ROLLED_BACK and rollout.failed_rollout
    assert "task error: task: non-zero exit (1)" in rollout.detail
    assert "rollback_completed" in rollout.detail
    assert fake.service_secret_names("picky") == {"pw": "pw_v1"}
    assert fake.mounted("picky") == {"/run/secrets/pw": b"good"}
    rollback_safe(fake)


def test_a_paused_rollout_is_reported() -> None:
    fake = FakeSwarm()
    picky(fake, "pause")
    (rollout,) = result_of(apply(fake, pw(b"bad", "picky"))).rollouts
    assert rollout.outcome is Outcome.PAUSED and rollout.failed_rollout
    assert "update paused" in rollout.detail


def test_a_foreign_write_during_the_rollout_supersedes_it() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok

    def revert() -> None:
        v1 = fake.ref("pw_v1", "pw")
        fake.foreign_write("web", lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Secrets=[v1]))

    fake.before["rollout_probes"] = revert
    outcome = apply(fake, pw(b"two", "web"))
    (rollout,) = result_of(outcome).rollouts
    assert rollout.outcome is Outcome.SUPERSEDED and not rollout.failed_rollout and not outcome.ok
    assert "changed by someone else" in rollout.detail


def test_a_foreign_write_that_keeps_our_versions_does_not_supersede() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    fake.before["rollout_probes"] = lambda: fake.foreign_write(
        "web", lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Env=["A=1"])
    )
    (rollout,) = result_of(apply(fake, pw(b"two", "web"))).rollouts
    assert rollout.outcome is Outcome.CONVERGED


def test_a_manual_rollback_during_the_rollout_is_a_rollback() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    fake.before["rollout_probes"] = lambda: fake.manual_rollback("web")
    (rollout,) = result_of(apply(fake, pw(b"two", "web"))).rollouts
    assert rollout.outcome is Outcome.ROLLED_BACK
    assert "manually requested rollback" in rollout.detail


def test_a_rollout_that_never_starts_times_out_on_the_injected_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleeping(seconds: float) -> None:
        raise AssertionError("the executor must wait through its clock")

    monkeypatch.setattr(time, "sleep", no_sleeping)
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    fake.service_by_name("web").stuck = True
    clock = FakeClock()
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    result = converge.execute(prepared, prepared.plan, fake, settings(), clock=clock)
    (rollout,) = result.rollouts
    assert rollout.outcome is Outcome.TIMED_OUT and "timed out after 30 s" in rollout.detail
    assert 30 <= clock.slept <= 31 and rollout.seconds >= 30


def test_a_held_update_is_not_written() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    before = fake.service_by_name("web").version
    held = frozenset({hold_key(prepared.plan.updates[0])})
    result = execute(fake, prepared, held=held)
    assert [r.outcome for r in result.rollouts] == [Outcome.HELD]
    assert fake.service_by_name("web").version == before


# --- the swarm moves between plan and execution -----------------------------------------------------


def test_a_409_for_the_same_version_lets_the_plan_go_on() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    (create,) = prepared.plan.creates
    # a concurrent run creates the very same version first
    fake.before["create_secret"] = lambda: fake.create_secret(create.name, SecretValue(b"two"), create.labels)
    start = len(fake.calls)
    result = execute(fake, prepared)
    assert result.ok and not result.stale
    assert result.created == ()  # the other run made it
    assert fake.service_secret_names("web") == {"pw": "pw_v2"}
    assert fake.calls[start:].count("observe") == 1  # one fresh plan after the 409; nothing to collect


def test_a_409_for_another_value_stops_before_anything_else() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    (create,) = prepared.plan.creates
    other = {**create.labels, "io.swarm-secrets.fingerprint": "hmac-sha256:x:other"}
    fake.before["create_secret"] = lambda: fake.create_secret(create.name, SecretValue(b"other"), other)
    before = fake.versions()
    result = execute(fake, prepared)
    assert result.stale.startswith(STALE) and "create pw_v3" in result.stale
    assert not result.ok and result.rollouts == () and result.created == ()
    # nothing but the concurrent run's secret changed
    after = fake.versions()
    assert {k: v for k, v in after.items() if k in before} == before


def test_a_foreign_change_outside_the_secrets_lets_the_plan_go_on() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    fake.foreign_write("web", lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Env=["B=2"]))
    result = execute(fake, prepared)
    assert result.ok
    spec = fake.service_by_name("web").spec
    assert spec["TaskTemplate"]["ContainerSpec"]["Env"] == ["B=2"]  # their change stays
    assert fake.service_secret_names("web") == {"pw": "pw_v2"}


def test_a_foreign_change_to_a_reference_stops_with_the_swarm_changed() -> None:
    fake = FakeSwarm()
    fake.add_service("db")
    fake.add_service("web")
    assert apply(fake, pw(b"one", "db", "web")).ok
    fake.create_secret("legacy", SecretValue(b"legacy"), {})
    prepared = converge.prepare(pw(b"two", "db", "web"), fake, settings())
    legacy = fake.ref("legacy", "pw")
    fake.foreign_write("web", lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Secrets=[legacy]))
    start = len(fake.written)
    result = execute(fake, prepared, concurrency=1)
    assert result.stale.startswith(STALE) and "update web" in result.stale and "legacy" in result.stale
    assert not result.ok and result.removed == ()
    # web was not written by us; db's approved update may run (it is in the plan), nothing else did
    assert fake.written[start:] == ["db"]
    assert fake.service_secret_names("web") == {"pw": "legacy"}
    assert fake.service_secret_names("db") == {"pw": "pw_v2"}


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (
            lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(
                Mounts=[{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}]
            ),
            "engine socket",
        ),
        (lambda spec: spec.update(Labels={ROLE_LABEL: "reconciler"}), "reconciler"),
    ],
    ids=["engine socket", "reconciler role"],
)
def test_a_foreign_change_the_trust_boundary_refuses_stops_before_writing(change: Any, refusal: str) -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    # within the plan as far as secrets go, but the service may no longer be given one
    fake.foreign_write("web", change)
    start = len(fake.written)
    result = execute(fake, prepared)
    assert result.stale.startswith(STALE) and "trust boundary" in result.stale and refusal in result.stale
    assert not result.ok and result.removed == () and fake.written[start:] == []
    assert fake.service_secret_names("web") == {"pw": "pw_v1"}


def test_a_stale_version_on_write_is_inspected_again() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    fake.before["write_service_secrets"] = lambda: fake.foreign_write(
        "web", lambda spec: spec["Labels"].update(team="x")
    )
    start = len(fake.calls)
    result = execute(fake, prepared)
    assert result.ok
    assert fake.calls[start:].count("write_service_secrets") == 2  # the first was out of sequence
    assert fake.service_by_name("web").spec["Labels"] == {"team": "x"}


# --- crash points ----------------------------------------------------------------------------------


def rotated_twice() -> FakeSwarm:
    fake = FakeSwarm()
    fake.add_service("db")
    fake.add_service("web", replicas=2)
    assert apply(fake, pw(b"one", "db", "web")).ok
    assert apply(fake, pw(b"two", "db", "web")).ok
    return fake


def test_a_crash_after_any_mutation_leaves_a_swarm_the_next_run_converges_from() -> None:
    # The third rotation mutates four times: create v3, update db, update web, remove v1.
    third = pw(b"three", "db", "web")
    assert len(plan(rotated_twice(), third).actions) == 4
    for mutations in range(1, 5):
        fake = rotated_twice()
        fake.crash_after(mutations)
        with pytest.raises(Crash):
            apply(fake, third, concurrency=1)
        fake.recover()
        rollback_safe(fake)
        outcome = apply(fake, third)
        assert outcome.ok, (mutations, outcome.result)
        assert plan(fake, third).empty, mutations
        assert fake.service_secret_names("web") == {"pw": "pw_v3"}
        assert fake.mounted("db") == {"/run/secrets/pw": b"three"}
        rollback_safe(fake)


# --- the cycle collector ----------------------------------------------------------------------------


def test_prepare_pauses_the_cycle_collector_and_restores_it_however_it_ends() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    seen: list[bool] = []

    def look(_: converge.Prepared) -> list[Problem]:
        seen.append(gc.isenabled())
        return [Problem(file="set.yaml", line=None, path="", message="refused")] if len(seen) == 2 else []

    checked = dataclasses.replace(settings(), checks=(look,))
    converge.prepare(pw(b"one", "web"), fake, checked)
    with pytest.raises(CheckFailed):
        converge.prepare(pw(b"one", "web"), fake, checked)
    assert seen == [False, False]
    assert gc.isenabled()
    gc.disable()  # paused by whoever embeds it: left paused
    try:
        converge.prepare(pw(b"one", "web"), fake, checked)
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- structure --------------------------------------------------------------------------------------


def test_the_executor_imports_no_planner() -> None:
    tree = ast.parse(Path(executor.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not any(name and name.endswith("planner") for name in imported), imported


# --- one look for every watched rollout -------------------------------------------------------------


def test_one_look_serves_every_watcher_and_each_watcher_gets_a_newer_look_each_time() -> None:
    fake = FakeSwarm()
    a, b, c = (fake.add_service(name) for name in ("a", "b", "c"))
    looks = executor.RolloutLooks(fake)
    seen_a, seen_b = looks.start(a), looks.start(b)
    seen_a, probe = looks.look(a, seen_a)
    assert fake.probed == [{a, b}] and probe.desired == 1
    # b's first look may be the one a just took: it was taken after b started watching
    seen_b, _ = looks.look(b, seen_b)
    assert fake.probed == [{a, b}] and seen_b == seen_a
    # a never gets the same look twice: the next one is taken for both
    seen_a, _ = looks.look(a, seen_a)
    assert fake.probed == [{a, b}, {a, b}]
    # c starts after that look: a look from before its write would show its old spec, so c takes one
    seen_c = looks.start(c)
    looks.look(c, seen_c)
    assert fake.probed[-1] == {a, b, c} and len(fake.probed) == 3
    # b's next look is the one c took; the one after it leaves out a, which stopped watching
    looks.stop(a)
    seen_b, _ = looks.look(b, seen_b)
    assert len(fake.probed) == 3
    looks.look(b, seen_b)
    assert fake.probed[-1] == {b, c} and len(fake.probed) == 4


def test_a_watched_service_that_was_removed_fails_its_own_look_only() -> None:
    fake = FakeSwarm()
    a, b = fake.add_service("a"), fake.add_service("b")
    looks = executor.RolloutLooks(fake)
    seen_a, seen_b = looks.start(a), looks.start(b)
    del fake.services[b]
    assert looks.look(a, seen_a)[1].desired == 1
    with pytest.raises(SwarmRefused, match="no longer exists"):
        looks.look(b, seen_b)
