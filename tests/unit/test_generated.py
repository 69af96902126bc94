"""Generated secrets and rotation schedules (issue 14), on plain data and on the in-memory swarm:

* the generator: alphabets, lengths, the CSPRNG;
* periods, engine timestamps, ages;
* the manifest: ``source.generate`` and ``rotate.every`` loaded;
* converge: the value is made only by the approved plan's create, exists only in the swarm, and
  appears in no plan rendering, saved plan, log record, audit event or label; the next plan is empty;
* scheduled and forced rotations, idempotent when planning again; saved plans judged as of their time;
* a due rotation of a sourced secret is a warning and creates nothing;
* ``swarm-secrets rotate`` refuses secrets it cannot make;
* no superseded version ever stays without a reason (the invariant ``status`` and ``/metrics`` watch).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from reconciler import converge
from reconciler.cli import main
from reconciler.core import schedule
from reconciler.core.collect import KeptBy
from reconciler.core.model import (
    CHARSETS,
    LABEL_FINGERPRINT,
    LABEL_GENERATOR,
    RAW_BYTES,
    GenerateSource,
    Rotation,
)
from reconciler.core.plan import CreateSecret, Plan, within
from reconciler.core.saved import dumps, loads
from reconciler.core.status import build_status
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import PlanOutdated
from reconciler.render.plan import render_json, render_markdown, render_text
from reconciler.sources import generator
from tests.fakes.clock import FakeClock
from tests.fakes.swarm import FakeSwarm

pytestmark = pytest.mark.usefixtures("restore_logging")

SETTINGS = converge.Settings(apply=ApplyOptions(timeout=30))


# --- the generator ------------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", CHARSETS)
def test_each_charset_gives_exactly_its_alphabet_and_length(charset: str) -> None:
    alphabet = set(generator.ALPHABETS[charset])
    values = [generator.generate(GenerateSource(charset=charset, length=300)).reveal() for _ in range(5)]
    assert all(len(v) == 300 and set(v.decode("ascii")) <= alphabet for v in values)
    assert len(set(values)) == 5
    # 1,500 draws from at most 94 characters: every character of the alphabet turns up
    assert set(b"".join(values).decode("ascii")) == alphabet


def test_the_alphabets() -> None:
    alphabets = generator.ALPHABETS
    assert alphabets["alnum"] == string.ascii_letters + string.digits
    assert set(alphabets["hex"]) == set(string.hexdigits.lower())
    assert set(alphabets["base64"]) == set(string.ascii_letters + string.digits + "+/")
    assert set(alphabets["urlsafe"]) == set(string.ascii_letters + string.digits + "-_")
    assert set(alphabets["printable"]) == set(string.printable) - set(string.whitespace)
    assert all(len(set(a)) == len(a) for a in alphabets.values())  # uniform: no character twice


def test_raw_bytes_and_the_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    value = generator.generate(GenerateSource(charset=RAW_BYTES, length=32))
    assert len(value) == 32 and repr(value) == "<SecretValue: 32 bytes>"
    drawn: list[str] = []

    class Spy:
        def choice(self, alphabet: str) -> str:
            drawn.append("choice")
            return secrets.choice(alphabet)

        def token_bytes(self, n: int) -> bytes:
            drawn.append("token_bytes")
            return secrets.token_bytes(n)

    monkeypatch.setattr(generator, "secrets", Spy())
    generator.generate(GenerateSource(charset="hex", length=16))
    generator.generate(GenerateSource(charset=RAW_BYTES, length=16))
    assert drawn == ["choice"] * 16 + ["token_bytes"]


# --- time ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("30m", 1800), ("12h", 43_200), ("90d", 7_776_000), ("2w", 1_209_600), (" 7d ", 604_800)],
)
def test_periods(text: str, seconds: int) -> None:
    assert schedule.parse_period(text) == seconds
    assert schedule.rotation(text) == Rotation(every=seconds, text=text.strip())


@pytest.mark.parametrize("text", ["0d", "90", "d", "1.5h", "90 days", "-1d", "1y", "07d"])
def test_what_is_not_a_period(text: str) -> None:
    assert schedule.parse_period(text) is None


def test_engine_timestamps_and_ages() -> None:
    assert schedule.parse_time("2024-01-01T00:00:00Z") == 1_704_067_200
    assert schedule.parse_time("2024-01-01T00:00:00.25Z") == 1_704_067_200.25
    # SystemTime carries the manager's zone; CreatedAt is UTC with nanoseconds
    assert schedule.parse_time("2024-01-01T02:00:00.5+02:00") == 1_704_067_200.5
    assert schedule.parse_time("2023-12-31T22:00:00-02:00") == 1_704_067_200
    assert schedule.parse_time("2024-01-01T00:00:00.123456789Z") == pytest.approx(1_704_067_200.123456789)
    for bad in ("", "yesterday", "2024-13-01T00:00:00Z", "2024-01-01 00:00:00Z"):
        assert schedule.parse_time(bad) is None
    assert [
        schedule.format_age(s) for s in (0, 1, 59, 119, 120, 7199, 7200, 172_799, 172_800, 7_862_400)
    ] == [
        "0 seconds",
        "1 second",
        "59 seconds",
        "119 seconds",
        "2 minutes",
        "119 minutes",
        "2 hours",
        "47 hours",
        "2 days",
        "91 days",
    ]


# --- manifests and converge on the in-memory swarm -----------------------------------------------------


def write_manifest(folder: Path, secrets: dict[str, Any], *, keep: int = 0) -> Path:
    doc = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "shop"},
        "spec": {"keep": keep, "secrets": secrets},
    }
    folder.mkdir(exist_ok=True)
    (folder / "set.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return folder


def session_key(**extra: Any) -> dict[str, Any]:
    return {"source": {"generate": {"length": 48, "charset": "urlsafe"}}, "services": ["web"], **extra}


@pytest.fixture
def fake() -> FakeSwarm:
    swarm = FakeSwarm()
    swarm.add_service("web")
    return swarm


def apply(
    fake: FakeSwarm, loaded: converge.Loaded, settings: converge.Settings = SETTINGS
) -> converge.Outcome:
    outcome = converge.converge(
        loaded, fake, approval=converge.auto_approve, settings=settings, clock=FakeClock()
    )
    assert outcome.ok, outcome.result
    return outcome


def value_of(fake: FakeSwarm, name: str) -> bytes:
    return next(fake.data[i] for i, s in fake.secrets.items() if s["Spec"]["Name"] == name)


def test_the_loader_reads_generate_and_rotate(tmp_path: Path) -> None:
    folder = write_manifest(
        tmp_path / "m",
        {"a": session_key(rotate={"every": "90d"}), "b": {"source": {"generate": {"bytes": 32}}}},
    )
    loaded = converge.load([folder])
    a, b = loaded.sets[0].secrets
    assert a.source == GenerateSource(charset="urlsafe", length=48) and a.generated
    assert a.rotate == Rotation(every=90 * 86_400, text="90d")
    assert b.source == GenerateSource(charset="bytes", length=32) and b.rotate is None
    assert loaded.values == {}  # nothing is made before a version is created


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where values were generated: records the call stack's top frame of each generation."""
    made: list[str] = []
    real = generator.generate

    def spy(source: GenerateSource) -> Any:
        made.append(source.label)
        return real(source)

    monkeypatch.setattr("reconciler.sources.generate", spy)
    return made


def test_a_generated_value_is_made_by_the_create_and_exists_only_in_the_swarm(
    tmp_path: Path, fake: FakeSwarm, generations: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    loaded = converge.load([write_manifest(tmp_path / "m", {"session_key": session_key()})])
    prepared = converge.prepare(loaded, fake, SETTINGS)
    assert generations == []  # planning makes no value
    (create,) = prepared.plan.creates
    assert create.generator == "urlsafe:48" and create.fingerprint is None
    saved = dumps(converge.save_plan(prepared, SETTINGS, manifests_digest="sha256:x"))

    outcome = apply(fake, loaded)
    assert generations == ["urlsafe:48"]  # exactly once: when the approved create ran
    assert outcome.result is not None and outcome.result.created == ("session_key_v1",)
    value = value_of(fake, "session_key_v1")
    assert len(value) == 48 and set(value.decode()) <= set(generator.ALPHABETS["urlsafe"])
    assert fake.mounted("web")["/run/secrets/session_key"] == value
    labels = fake.secrets[next(iter(fake.secrets))]["Spec"]["Labels"]
    assert labels[LABEL_GENERATOR] == "urlsafe:48" and LABEL_FINGERPRINT not in labels

    # the next plan is empty, and nothing shows the value
    again = converge.prepare(loaded, fake, SETTINGS)
    assert again.plan.empty and again.plan.warnings == ()
    shown = [render_text(p.plan) + render_json(p.plan) + render_markdown(p.plan) for p in (prepared, again)]
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    status = str(build_status(fake.observe(), loaded.sets))
    for text in (*shown, saved, logs, status, str(labels), repr(outcome)):
        assert value.decode() not in text
    assert "generate:urlsafe:48" in saved  # the saved plan says how it is to be made, not what it is


def test_scheduled_rotation_makes_a_new_value_and_rolls_the_services(tmp_path: Path, fake: FakeSwarm) -> None:
    loaded = converge.load(
        [write_manifest(tmp_path / "m", {"session_key": session_key(rotate={"every": "5s"})})]
    )
    apply(fake, loaded)
    first = value_of(fake, "session_key_v1")
    fake.advance(4)
    assert converge.prepare(loaded, fake, SETTINGS).plan.empty
    fake.advance(2)
    plan = converge.prepare(loaded, fake, SETTINGS).plan
    (create,) = plan.creates
    assert create.name == "session_key_v2"
    assert create.reason == "scheduled rotation: v1 is 6 seconds old, every 5s"
    assert [c.reason for u in plan.updates for c in u.changes] == ["rotate to v2 (scheduled rotation)"]
    apply(fake, loaded)
    assert fake.mounted("web")["/run/secrets/session_key"] == value_of(fake, "session_key_v2") != first
    assert fake.secret_names() == {"session_key_v1", "session_key_v2"}  # v1: web's rollback target
    assert converge.prepare(loaded, fake, SETTINGS).plan.empty


def test_changed_parameters_make_a_new_version(tmp_path: Path, fake: FakeSwarm) -> None:
    folder = write_manifest(tmp_path / "m", {"session_key": session_key()})
    apply(fake, converge.load([folder]))
    write_manifest(folder, {"session_key": {**session_key(), "source": {"generate": {"bytes": 64}}}})
    loaded = converge.load([folder])
    (create,) = converge.prepare(loaded, fake, SETTINGS).plan.creates
    assert create.generator == "bytes:64" and "generator changed" in create.reason
    apply(fake, loaded)
    assert len(fake.mounted("web")["/run/secrets/session_key"]) == 64


def test_a_forced_rotation_is_planned_once_even_when_planning_again(tmp_path: Path, fake: FakeSwarm) -> None:
    loaded = converge.load([write_manifest(tmp_path / "m", {"session_key": session_key()})])
    apply(fake, loaded)
    forced = dataclasses.replace(SETTINGS, rotate=frozenset({("shop", "session_key")}))
    prepared = converge.prepare(loaded, fake, forced)
    assert prepared.desired.forced == {("shop", "session_key"): 1}
    (create,) = prepared.plan.creates
    assert create.name == "session_key_v2" and create.reason.startswith("forced rotation")
    # Someone changes the service outside its secrets while we apply: the executor plans again, and the
    # fresh plan (same desired state, v2 exists now) must be within the approved one, not a v3.
    fake.before["write_service_secrets"] = lambda: fake.foreign_write(
        "web", lambda spec: spec["Labels"].update(team="x")
    )
    result = converge.execute(prepared, prepared.plan, fake, forced, clock=FakeClock())
    assert result.ok and not result.stale and result.created == ("session_key_v2",)
    _, fresh = converge.replanner(prepared, fake, forced)()
    assert fresh.empty
    assert fake.mounted("web")["/run/secrets/session_key"] == value_of(fake, "session_key_v2")


def test_a_409_from_a_concurrent_rotation_of_the_same_generator_lets_the_plan_go_on(
    tmp_path: Path, fake: FakeSwarm, generations: list[str]
) -> None:
    loaded = converge.load([write_manifest(tmp_path / "m", {"session_key": session_key()})])
    prepared = converge.prepare(loaded, fake, SETTINGS)
    (create,) = prepared.plan.creates
    # another applier (--no-lock) creates the same version, generated its own way, just before us
    fake.before["create_secret"] = lambda: fake.create_secret(
        create.name, generator.generate(GenerateSource(charset="urlsafe", length=48)), create.labels
    )
    result = converge.execute(prepared, prepared.plan, fake, SETTINGS, clock=FakeClock())
    assert result.ok and not result.stale and result.created == ()  # theirs is used, none made twice
    assert generations == ["urlsafe:48"]  # ours was made for the refused create, then dropped
    assert fake.secret_names() == {"session_key_v1"}
    assert fake.mounted("web")["/run/secrets/session_key"] == value_of(fake, "session_key_v1")


def test_a_create_is_within_an_approved_one_only_with_the_same_generator() -> None:
    def create(generator: str) -> CreateSecret:
        labels = {LABEL_GENERATOR: generator}
        return CreateSecret(set_name="s", secret="k", version=2, name="k_v2", labels=labels, reason="r")

    approved = Plan(actions=(create("hex:32"),))
    assert within(Plan(actions=(create("hex:32"),)), approved)
    assert not within(Plan(actions=(create("hex:64"),)), approved)


def test_a_saved_plan_is_applied_as_of_its_time(tmp_path: Path, fake: FakeSwarm) -> None:
    folder = write_manifest(tmp_path / "m", {"session_key": session_key(rotate={"every": "5s"})})
    loaded = converge.load([folder])
    apply(fake, loaded)
    fake.advance(6)
    prepared = converge.prepare(loaded, fake, SETTINGS)
    saved = loads(dumps(converge.save_plan(prepared, SETTINGS, manifests_digest="d")))
    assert saved.basis.now == prepared.desired.now and saved.basis.values == {
        "shop/session_key": "generate:urlsafe:48"
    }
    fake.advance(60)  # the plan would now say "66 seconds old": judged as of the saved time, it is equal
    later = dataclasses.replace(SETTINGS, now=saved.basis.now)
    outcome = converge.converge(
        loaded,
        fake,
        approval=converge.saved_plan_approval(saved, later, manifests_digest="d"),
        settings=later,
        clock=FakeClock(),
    )
    assert outcome.ok and outcome.result is not None and outcome.result.created == ("session_key_v2",)
    # judged now instead, the plan differs: refused, saying so
    fake.advance(6)
    prepared = converge.prepare(loaded, fake, SETTINGS)
    saved = loads(dumps(converge.save_plan(prepared, SETTINGS, manifests_digest="d")))
    fake.advance(60)
    with pytest.raises(PlanOutdated, match="differs from the saved one"):
        converge.converge(
            loaded,
            fake,
            approval=converge.saved_plan_approval(saved, SETTINGS, manifests_digest="d"),
            settings=SETTINGS,
        )


def test_a_due_rotation_of_a_sourced_secret_is_a_warning_and_creates_nothing(
    tmp_path: Path, fake: FakeSwarm
) -> None:
    folder = write_manifest(
        tmp_path / "m", {"pw": {"source": {"file": "pw.txt"}, "rotate": {"every": "5s"}, "services": ["web"]}}
    )
    (folder / "pw.txt").write_text("hunter2-marker")
    loaded = converge.load([folder])
    apply(fake, loaded)
    fake.advance(6)
    plan = converge.prepare(loaded, fake, SETTINGS).plan
    assert plan.empty and plan.actions == ()
    assert plan.warnings == (
        "secret shop/pw: rotation is due: v1 is 6 seconds old, every 5s; swarm-secrets cannot make this "
        "value: change it at its source, then apply",
    )
    (item,) = build_status(fake.observe(), loaded.sets).secrets
    assert item.rotation_due and item.rotate_every == "5s" and item.age_seconds == pytest.approx(6, abs=0.01)


def test_rotate_refuses_what_it_cannot_make(tmp_path: Path) -> None:
    folder = write_manifest(
        tmp_path / "m",
        {
            "session_key": session_key(),
            "pw": {"source": {"file": "pw.txt"}},
            "token": {"source": {"env": "T"}},
        },
    )
    (folder / "pw.txt").write_text("x")
    runner = CliRunner()

    def rotate(*names: str) -> Any:
        args = [a for n in names for a in ("--secret", n)]
        return runner.invoke(
            main, ["rotate", str(folder), *args, "--yes", "--docker-host", "unix:///nowhere"], env={"T": "t"}
        )

    result = rotate("session_key", "pw", "token", "sesion_key")
    assert result.exit_code == 1
    assert (
        "shop/pw comes from the file" in result.stderr and "change the value at its source" in result.stderr
    )
    assert "shop/token comes from the environment variable T" in result.stderr
    assert "no secret 'sesion_key' in the loaded manifests (did you mean 'session_key'?)" in result.stderr
    assert "cannot reach" not in result.stderr  # refused before the swarm is asked anything
    assert runner.invoke(main, ["rotate", str(folder)]).exit_code == 2  # --secret is needed


# --- the invariant: no superseded version stays without a reason --------------------------------------


def superseded(fake: FakeSwarm, loaded: converge.Loaded) -> Iterator[tuple[str, str]]:
    for item in build_status(fake.observe(), loaded.sets).secrets:
        for old in item.superseded:
            yield old.name, old.kept_by


def test_no_superseded_version_is_ever_kept_without_a_reason(tmp_path: Path, fake: FakeSwarm) -> None:
    """Rotations on schedule, forced ones, a changed value, a person's rollback and keep=1: after every
    apply, each superseded version left is kept by a service, a rollback, a task or spec.keep."""
    fake.add_service("api")
    folder = tmp_path / "m"
    secrets = {
        "session_key": session_key(rotate={"every": "5s"}, services=["web", "api"]),
        "pw": {"source": {"file": "pw.txt"}, "services": ["api"]},
    }
    write_manifest(folder, secrets, keep=1)
    reasons = {k.value for k in KeptBy} - {KeptBy.NONE.value}
    seen: set[str] = set()
    for round_ in range(8):
        (folder / "pw.txt").write_text(f"pw-{round_ // 2}")
        loaded = converge.load([folder])
        settings = SETTINGS
        if round_ == 3:
            settings = dataclasses.replace(SETTINGS, rotate=frozenset({("shop", "session_key")}))
        if round_ == 5:
            fake.manual_rollback("web")
        apply(fake, loaded, settings)
        kept = dict(superseded(fake, loaded))
        assert set(kept.values()) <= reasons, kept
        seen |= set(kept.values())
        fake.advance(6)
    assert {"rollback_target", "keep"} <= seen  # the walk met the reasons it is about


def test_a_manifest_cannot_set_off_a_restart_loop_the_operator_sets_the_shortest_rotation(
    tmp_path: Path,
) -> None:
    """Every rotation of a generated secret restarts its services: a manifest author's `every: 5s`
    would restart them for ever. The floor is the operator's (--min-rotation-period, default 1h)."""
    folder = write_manifest(
        tmp_path / "m",
        {
            "session_key": session_key(rotate={"every": "5s"}),
            "pw": {"source": {"env": "PW"}, "rotate": {"every": "5s"}, "services": ["web"]},  # only a warning
        },
    )
    runner = CliRunner()
    refused = runner.invoke(main, ["validate", "--offline", str(folder)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    (line,) = [ln for ln in refused.output.splitlines() if "rotate.every" in ln]
    assert "set.yaml" in line and "spec.secrets.session_key.rotate.every" in line
    assert "rotate.every 5s is shorter than 1h" in line and "--min-rotation-period" in line
    assert "pw" not in line
    # the operator lowers the floor (flag or variable); a bad floor is a usage error
    assert (
        runner.invoke(main, ["validate", "--offline", "--min-rotation-period", "5s", str(folder)]).exit_code
        == 0
    )
    allowed = runner.invoke(
        main, ["validate", "--offline", str(folder)], env={"SWARM_SECRETS_MIN_ROTATION_PERIOD": "1s"}
    )
    assert allowed.exit_code == 0, allowed.output
    bad = runner.invoke(main, ["validate", "--offline", "--min-rotation-period", "soon", str(folder)])
    assert bad.exit_code == 2 and "'soon' is not a period" in bad.output
    # a period at or above the floor is fine
    write_manifest(tmp_path / "m", {"session_key": session_key(rotate={"every": "60m"})})
    assert runner.invoke(main, ["validate", "--offline", str(folder)]).exit_code == 0
