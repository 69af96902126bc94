"""Monitoring rotations and old versions (issue 14): ``status`` (ages, due rotations, superseded
versions by what keeps them), the per-secret ``/metrics`` series, the run tick's snapshot and next
rotation on the in-memory swarm, and the loop ticking when a rotation falls due."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
import yaml

from reconciler.core.status import SecretStatus, VersionStatus
from reconciler.daemon import tick as tick_module
from reconciler.daemon.loop import ROTATION_MIN_WAIT, Loop
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.tick import TickSettings, make_tick
from reconciler.daemon.types import Reason, TickRequest, TickResult, Trigger
from reconciler.engine.executor import ApplyOptions
from reconciler.render.status import render_status_json, render_status_text
from tests.fakes.swarm import FakeSwarm

from .test_loop import Recorder, running, settings, wait_for

# --- the tick on the in-memory swarm -------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSwarm:
    swarm = FakeSwarm()

    class Connect:
        @staticmethod
        def connect(docker_host: str | None = None) -> contextlib.AbstractContextManager[FakeSwarm]:
            return contextlib.nullcontext(swarm)

    monkeypatch.setattr(tick_module, "Swarm", Connect)
    swarm.add_service("web")
    return swarm


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    doc = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": "shop"},
        "spec": {
            "secrets": {
                "session_key": {
                    "source": {"generate": {"bytes": 32}},
                    "rotate": {"every": "5s"},
                    "services": ["web"],
                },
                "pw": {"source": {"file": "pw.txt"}, "rotate": {"every": "1h"}, "services": ["web"]},
            }
        },
    }
    (folder / "set.yaml").write_text(yaml.safe_dump(doc))
    (folder / "pw.txt").write_text("pw")
    return folder


def tick_once(manifests: Path) -> TickResult:
    tick = make_tick(
        TickSettings(manifests=manifests, apply=ApplyOptions(poll_interval=0, timeout=5), lease=None)
    )
    return tick(TickRequest(reason=Reason(Trigger.ROTATION)))


def by_secret(result: TickResult) -> dict[str, SecretStatus]:
    assert result.secrets is not None
    return {s.secret: s for s in result.secrets}


def test_the_tick_reports_ages_due_rotations_superseded_versions_and_the_next_rotation(
    fake: FakeSwarm, manifests: Path
) -> None:
    first = tick_once(manifests)
    assert first.ok and first.created == 2
    assert first.next_rotation == pytest.approx(5, abs=0.01)  # the swarm after the tick: v1 is new
    secrets = by_secret(first)
    assert secrets["session_key"].generated and secrets["session_key"].rotate_every_seconds == 5
    assert not secrets["pw"].generated and secrets["pw"].rotate_every == "1h"

    fake.advance(3)
    quiet = tick_once(manifests)
    assert quiet.ok and not quiet.changed and quiet.next_rotation == pytest.approx(2, abs=0.01)

    fake.advance(2.5)
    rotated = tick_once(manifests)  # no commit, no new value anywhere: the schedule alone
    assert (
        rotated.ok
        and rotated.created == 1
        and fake.service_secret_names("web")["session_key"] == ("session_key_v2")
    )
    secrets = by_secret(rotated)
    assert secrets["session_key"].age_seconds == pytest.approx(0, abs=0.01)
    assert secrets["session_key"].kept == {"rollback_target": 1}
    assert rotated.next_rotation == pytest.approx(5, abs=0.01)

    fake.advance(3600)
    due = by_secret(tick_once(manifests))
    assert due["pw"].rotation_due and fake.secret_names() >= {"pw_v1"} and "pw_v2" not in fake.secret_names()


# --- status ------------------------------------------------------------------------------------------


def status_item(**fields: object) -> SecretStatus:
    current = VersionStatus(
        name="k_v3", version=3, created_at="2024-01-01T00:00:00Z", used_by=("web",), note="current"
    )
    old = VersionStatus(
        name="k_v2", version=2, created_at="", used_by=(), note="rollback target of web (PreviousSpec)",
        kept_by="rollback_target",
    )  # fmt: skip
    base: dict[str, object] = {
        "set_name": "shop",
        "secret": "k",
        "current": current,
        "superseded": (old,),
        "age_seconds": 91 * 86_400.0,
        "generated": True,
        "rotate_every": "90d",
        "rotate_every_seconds": 90 * 86_400,
        "rotation_due": True,
        "kept": {"rollback_target": 1},
    }
    base.update(fields)
    return SecretStatus(**base)  # type: ignore[arg-type]


def test_status_text_and_json_carry_age_rotation_and_kept_versions() -> None:
    from reconciler.core.status import StatusReport

    report = StatusReport(
        secrets=(
            status_item(),
            status_item(secret="pw", generated=False, rotation_due=False, age_seconds=5.0),
        ),
        orphaned_sets=(),
        unmanaged_unreferenced=(),
        unmanaged_referenced=(),
    )
    text = render_status_text(report)
    assert (
        "k: k_v3 (v3, created 2024-01-01T00:00:00, 91 days old, generated; rotation due (every 90d))" in text
    )
    assert "pw: k_v3 (v3, created 2024-01-01T00:00:00, 5 seconds old; rotates every 90d)" in text
    assert "superseded versions present: 1 rollback target" in text
    data = json.loads(render_status_json(report))
    for entry in data["secrets"]:
        assert {"age_seconds", "rotation_due"} <= set(entry)
    assert data["secrets"][0]["rotation_due"] is True and data["secrets"][0]["superseded"][0]["kept_by"] == (
        "rollback_target"
    )


# --- /metrics ------------------------------------------------------------------------------------------


def scrape(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_per_secret_age_due_and_kept_versions_move_with_the_clock() -> None:
    passed = [100.0]
    metrics = Metrics(monotonic=lambda: passed[0])
    item = status_item(age_seconds=89 * 86_400.0, rotation_due=False, kept={"rollback_target": 1, "keep": 2})
    metrics.observe(TickResult(ok=True, changed=False, secrets=(item,)), 0.1)
    key = {"set": "shop", "secret": "k"}
    assert scrape(metrics, "swarm_secrets_secret_age_seconds", **key) == 89 * 86_400
    assert scrape(metrics, "swarm_secrets_secret_rotation_period_seconds", **key) == 90 * 86_400
    assert scrape(metrics, "swarm_secrets_secret_rotation_due", **key) == 0
    assert scrape(metrics, "swarm_secrets_superseded_versions", **key, kept_by="rollback_target") == 1
    assert scrape(metrics, "swarm_secrets_superseded_versions", **key, kept_by="keep") == 2
    assert scrape(metrics, "swarm_secrets_superseded_versions", **key, kept_by="none") is None
    # a day and a bit later, without a tick: older, and due
    passed[0] += 86_401
    assert scrape(metrics, "swarm_secrets_secret_age_seconds", **key) == 90 * 86_400 + 1
    assert scrape(metrics, "swarm_secrets_secret_rotation_due", **key) == 1
    # a tick that could not observe (None) keeps the snapshot; a new snapshot replaces it whole
    metrics.observe(TickResult(ok=False, changed=False), 0.1)
    assert scrape(metrics, "swarm_secrets_secret_rotation_due", **key) == 1
    metrics.observe(TickResult(ok=True, changed=True, secrets=()), 0.1)
    assert scrape(metrics, "swarm_secrets_secret_age_seconds", **key) is None


def test_metrics_name_sets_and_secrets_never_versions_or_services() -> None:
    metrics = Metrics()
    metrics.observe(TickResult(ok=True, changed=False, secrets=(status_item(),)), 0.1)
    text = metrics.render()[0].decode()
    lines = [line for line in text.splitlines() if "shop" in line]
    assert lines and all("k_v" not in line and "web" not in line for line in lines)
    assert 'swarm_secrets_superseded_versions{kept_by="rollback_target",secret="k",set="shop"} 1.0' in text


# --- the loop ticks when a rotation falls due -----------------------------------------------------------


def test_the_loop_ticks_when_a_rotation_falls_due_not_at_the_interval() -> None:
    tick = Recorder(TickResult(ok=True, changed=False, next_rotation=0.0))
    loop = Loop(settings(interval=60.0), tick)
    with running(loop):
        wait_for(lambda: tick.count >= 2, timeout=10)
    assert tick.requests[1].reason == "rotation"
    assert tick.times[1] - tick.times[0] >= ROTATION_MIN_WAIT  # bounded: never spinning


def test_rotation_ticks_are_bounded_by_the_interval_and_jittered_never_early() -> None:
    now = [1000.0]
    loop = Loop(settings(interval=60.0, jitter=0.5), Recorder(), clock=lambda: now[0], rng=random.Random(7))
    waits = []
    for _ in range(50):
        loop._record(TickResult(ok=True, changed=False, next_rotation=10.0))
        due, reasons = loop._due(now[0])
        assert reasons[0].trigger is Trigger.ROTATION
        waits.append(due - now[0])
    assert all(10.0 <= w <= 15.0 for w in waits) and len(set(waits)) > 1
    loop._record(TickResult(ok=True, changed=False, next_rotation=600.0))  # the interval comes first
    assert loop._due(now[0])[1][0].trigger is Trigger.INTERVAL
    loop._record(TickResult(ok=True, changed=False, next_rotation=0.2))  # due at once: not before 1 s
    assert ROTATION_MIN_WAIT <= loop._due(now[0])[0] - now[0] <= 1.5 * ROTATION_MIN_WAIT
    loop._record(TickResult(ok=True, changed=False, next_rotation=None))
    assert loop._due(now[0])[1][0].trigger is Trigger.INTERVAL
    # while failing, the retry decides
    loop._record(TickResult(ok=False, changed=False, next_rotation=0.0))
    assert loop._due(now[0])[1][0].trigger is Trigger.RETRY
