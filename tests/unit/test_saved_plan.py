"""Saved plans: the file format (``core/saved.py``) and the approval that applies exactly a saved plan
or refuses, saying what moved (``converge.saved_plan_approval``), on the in-memory swarm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reconciler import converge
from reconciler.core.model import SecretValue
from reconciler.core.planner import plan
from reconciler.core.saved import FORMAT_VERSION, KIND, Basis, SavedPlan, dumps, loads
from reconciler.errors import PlanOutdated
from tests.fakes.swarm import FakeSwarm

from .test_executor import apply, grant, loaded, pw, result_of, settings
from .test_planner import CASE_FILES, load_case

MARKER = b"Zq7-saved-plan-marker-value"
READ_ONLY = dataclasses.replace(settings(), read_only=True)


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_every_planner_case_round_trips_through_the_file(path: Path) -> None:
    case = load_case(path)
    result = plan(case.desired, case.live, prune_orphans=case.prune_orphans)
    basis = Basis(
        revision=case.desired.revision,
        manifests_digest="sha256:x",
        fingerprint_key_id=case.desired.fingerprint_key_id,
        values={"shop/pw": "hmac-sha256:k1:a"},
        prune_orphans=case.prune_orphans,
        services={"svc": ("web", 7)},
        secrets={"id": ("pw_v1", 12)},
    )
    saved = SavedPlan(basis=basis, plan=result)
    text = dumps(saved)
    assert loads(text) == saved
    assert dumps(loads(text)) == text  # stable: the same plan gives the same file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "is not an object"),
        ('{"kind": "other"}', "not a saved plan"),
        (json.dumps({"kind": KIND, "format_version": FORMAT_VERSION + 1}), "format_version 2 is not 1"),
        (json.dumps({"kind": KIND, "format_version": True}), "format_version has the wrong type"),
        (
            json.dumps({"kind": KIND, "format_version": 1, "basis": {}, "plan": {}}),
            "basis.revision is missing",
        ),
    ],
)
def test_a_file_that_is_not_a_usable_saved_plan_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loads(text)


def test_a_tampered_action_is_refused() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    prepared = converge.prepare(pw(b"two", "web"), fake, settings())
    data = json.loads(dumps(converge.save_plan(prepared, settings(), manifests_digest="d")))
    data["plan"]["actions"][0]["kind"] = "delete_everything"
    with pytest.raises(ValueError, match="unknown action kind 'delete_everything'"):
        loads(json.dumps(data))


def saved_for(fake: FakeSwarm, run: converge.Loaded, digest: str = "sha256:m") -> SavedPlan:
    prepared = converge.prepare(run, fake, READ_ONLY)
    return loads(dumps(converge.save_plan(prepared, settings(), manifests_digest=digest)))


def apply_saved(
    fake: FakeSwarm, saved: SavedPlan, run: converge.Loaded, digest: str = "sha256:m"
) -> converge.Outcome:
    approval = converge.saved_plan_approval(saved, settings(), manifests_digest=digest)
    return converge.converge(run, fake, approval=approval, settings=READ_ONLY)


def test_the_file_holds_no_value_and_what_the_plan_was_computed_from() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    assert apply(fake, pw(b"two", "web")).ok
    prepared = converge.prepare(pw(MARKER, "web"), fake, settings())
    text = dumps(converge.save_plan(prepared, settings(), manifests_digest="sha256:m"))
    assert MARKER.decode() not in text
    basis = json.loads(text)["basis"]
    live = {s.name: s for s in prepared.live.secrets}
    web = fake.service_by_name("web")
    assert basis["services"] == {web.id: {"name": "web", "version": web.version}}
    # the secret it removes (v1, after the rollout) and the one its update replaces it with do not
    # exist yet / are created; v1's version index is recorded
    assert basis["secrets"] == {live["pw_v1"].id: {"name": "pw_v1", "version": live["pw_v1"].index}}
    assert basis["values"] == {"shop/pw": prepared.desired.sets[0].secrets[0].fingerprint}
    assert basis["values"]["shop/pw"].startswith(f"hmac-sha256:{basis['fingerprint_key_id']}:")
    assert basis["manifests_digest"] == "sha256:m" and basis["prune_orphans"] is False


def test_a_saved_plan_is_applied_exactly() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    saved = saved_for(fake, pw(b"two", "web"))
    outcome = apply_saved(fake, saved, pw(b"two", "web"))
    assert outcome.approved == saved.plan
    result = result_of(outcome)
    assert result.ok and result.created == ("pw_v2",)
    assert fake.service_secret_names("web") == {"pw": "pw_v2"}


def refused(fake: FakeSwarm, saved: SavedPlan, run: converge.Loaded, digest: str = "sha256:m") -> str:
    before = fake.versions()
    with pytest.raises(PlanOutdated) as caught:
        apply_saved(fake, saved, run, digest)
    assert fake.versions() == before  # nothing changed
    message = str(caught.value)
    assert "\n" not in message and message.endswith("; make a new plan")
    return message


def test_a_changed_value_is_refused() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    saved = saved_for(fake, pw(b"two", "web"))
    assert "the value of shop/pw changed" in refused(fake, saved, pw(b"three", "web"))


def test_changed_manifests_are_refused() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    fake.add_service("db")
    assert apply(fake, pw(b"one", "web")).ok
    saved = saved_for(fake, pw(b"two", "web"))
    assert "the manifest files changed" in refused(fake, saved, pw(b"two", "web"), digest="sha256:other")
    more = loaded({"pw": b"two", "token": b"t"}, {"pw": [grant("web")]})
    assert "secret shop/token is new in the manifests" in refused(fake, saved, more)
    revised = dataclasses.replace(pw(b"two", "web"), revision="rev2")
    assert "the manifests' revision changed (rev1 → rev2)" in refused(fake, saved, revised)


def test_a_changed_service_is_refused() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    saved = saved_for(fake, pw(b"two", "web"))
    fake.foreign_write("web", lambda spec: spec["Labels"].update(team="x"))
    assert "service web changed (version" in refused(fake, saved, pw(b"two", "web"))


def test_a_changed_or_removed_secret_is_refused() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    assert apply(fake, pw(b"two", "web")).ok
    saved = saved_for(fake, pw(b"three", "web"))  # removes v1 after the rollout
    v1 = next(i for i, s in fake.secrets.items() if s["Spec"]["Name"] == "pw_v1")
    fake.secrets[v1]["Version"]["Index"] += 1  # its labels were rewritten
    assert "secret pw_v1 changed (version" in refused(fake, saved, pw(b"three", "web"))


def test_a_plan_that_differs_for_another_reason_is_refused_too() -> None:
    fake = FakeSwarm()
    fake.add_service("web")
    assert apply(fake, pw(b"one", "web")).ok
    saved = saved_for(fake, pw(b"two", "web"))
    # someone else already made a version with this name: the same basis, another plan
    create = saved.plan.creates[0]
    other = {**create.labels, "io.swarm-secrets.fingerprint": "hmac-sha256:x:y"}
    fake.create_secret(create.name, SecretValue(b"other"), other)
    assert "the plan computed now differs from the saved one (its actions differ)" in refused(
        fake, saved, pw(b"two", "web")
    )
