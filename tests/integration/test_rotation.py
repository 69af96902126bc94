"""Generated secrets and rotation schedules on the real throwaway swarm (issue 14's acceptance):

* a generated secret is created by the first apply with the requested length and charset (read inside
  the task), the next plan is empty, and the value is in no output, log, audit event, label or file;
* ``rotate: {every: 5s}``: 6 s later the plan shows the scheduled rotation (exit 2) and applying it
  (as a saved plan) makes v2 with another value; a file secret on the same schedule is reported due
  (``status``) and never created;
* ``swarm-secrets rotate`` forces a new version of a generated secret, and refuses a file secret;
* the loop rotates a generated secret on schedule with no commit, and ``/metrics`` shows ages, due
  rotations and the superseded versions by what keeps them.

After every apply, each superseded version is kept by something (in use, rollback target, running
task, keep) or the next plan removes it: a version kept for no reason is a bug.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.core.model import LABEL_FINGERPRINT, LABEL_GENERATOR
from reconciler.core.schedule import parse_time
from reconciler.sources.generator import ALPHABETS

from . import test_loop_service
from .conftest import Lab
from .test_engine import apply, run
from .test_loop_service import Service, eventually

service_factory = test_loop_service.service_factory  # the run process fixture, stopped after the test

pytestmark = pytest.mark.swarm


@pytest.fixture(autouse=True)
def _seconds_long_rotations(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests rotate every few seconds to see it happen; the operator's floor (1h by default) is
    # lowered for them the way an operator would, by the variable every command and `run` read.
    monkeypatch.setenv("SWARM_SECRETS_MIN_ROTATION_PERIOD", "1s")


KEPT_REASONS = {"in_use", "rollback_target", "running_task", "keep"}


def status_json(lab: Lab) -> dict[str, Any]:
    result = run(lab, "status", str(lab.root), "--format", "json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def entry(lab: Lab, secret: str) -> dict[str, Any]:
    return next(s for s in status_json(lab)["secrets"] if s["secret"] == secret)


def assert_nothing_kept_without_a_reason(lab: Lab) -> None:
    """Every superseded version present is kept by something, or the next plan removes it (a task
    that kept it stopped after the apply looked)."""
    plan = run(lab, "plan", str(lab.root), "--format", "json")
    removed = {a["name"] for a in json.loads(plan.stdout)["actions"] if a["kind"] == "remove_secret"}
    for item in status_json(lab)["secrets"]:
        for old in item["superseded"]:
            assert old["kept_by"] in KEPT_REASONS or old["name"] in removed, old


def wait_until_older_than(api: docker.APIClient, name: str, seconds: float) -> None:
    """Sleep until the version ``name`` is ``seconds`` old on the swarm's own clock."""
    created = parse_time(api.inspect_secret(name)["CreatedAt"])
    now = parse_time(api.info()["SystemTime"])
    assert created is not None and now is not None
    time.sleep(max(0.0, seconds - (now - created)))


def test_a_generated_secret_is_made_once_and_its_value_is_nowhere_but_in_the_swarm(
    lab: Lab, api: docker.APIClient, tmp_path: Path
) -> None:
    key, text = lab.name("key"), lab.name("text")
    app = lab.create_service("app")
    lab.manifest(
        {
            key: {"source": {"generate": {"length": 48, "charset": "urlsafe"}}, "services": [app]},
            text: {"source": {"generate": {"length": 40, "charset": "printable"}}, "services": [app]},
        }
    )
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    outputs = []
    commands = (
        ["--log-level", "debug", "--log-format", "json", "apply", str(lab.root), "--yes"],
        ["--log-level", "debug", "plan", str(lab.root), "--detailed-exitcode"],
        ["plan", str(lab.root), "--format", "json"],
        ["plan", str(lab.root), "--format", "markdown", "--out", str(tmp_path / "saved.json")],
        ["status", str(lab.root), "--format", "json"],
        ["status", str(lab.root)],
    )
    for args in commands:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=lab.env(TMPDIR=str(tmpdir)),
            capture_output=True,
            timeout=120,
            check=False,
        )
        # the plan after the apply is empty: --detailed-exitcode says 0
        assert proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
        outputs.append(proc.stdout + proc.stderr)
    assert b"secret_created" in outputs[0] and b"No changes." in outputs[1]

    values = {}
    for name, length, charset in ((key, 48, "urlsafe"), (text, 40, "printable")):
        value, _ = lab.read_in_task(app, f"/run/secrets/{name}")
        assert len(value) == length and set(value.decode("ascii")) <= set(ALPHABETS[charset]), value
        values[name] = value
        labels = api.inspect_secret(f"{name}_v1")["Spec"]["Labels"]
        assert labels[LABEL_GENERATOR] == f"{charset}:{length}" and LABEL_FINGERPRINT not in labels
    assert values[key] != values[text]

    # read from inside the task, now searched for everywhere else
    files = [p for p in (*tmp_path.rglob("*"), *lab.root.rglob("*")) if p.is_file()]
    for value in values.values():
        for output in outputs:
            assert value not in output
        for secret in api.secrets():
            assert value.decode() not in json.dumps(secret["Spec"])
        for service in api.services():
            assert value.decode() not in json.dumps(service)
        for file in files:
            assert value not in file.read_bytes(), file
    assert not list(tmpdir.iterdir()), "temp files left behind"
    assert b"generate:urlsafe:48" in (tmp_path / "saved.json").read_bytes()


def test_a_scheduled_rotation_is_planned_and_applied_and_a_file_secret_is_only_reported_due(
    lab: Lab, api: docker.APIClient, tmp_path: Path
) -> None:
    key, pw = lab.name("key"), lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "file-value")
    lab.manifest(
        {
            key: {"source": {"generate": {"bytes": 32}}, "rotate": {"every": "5s"}, "services": [app]},
            pw: {"source": {"file": "pw.txt"}, "rotate": {"every": "5s"}, "services": [app]},
        }
    )
    assert apply(lab).exit_code == 0
    first, _ = lab.read_in_task(app, f"/run/secrets/{key}")
    assert len(first) == 32
    wait_until_older_than(api, f"{key}_v1", 6)

    saved = tmp_path / "rotation.plan.json"
    result = run(lab, "plan", str(lab.root), "--detailed-exitcode", "--out", str(saved))
    assert result.exit_code == 2, result.output
    assert f"+ create {key}_v2" in result.stdout and "scheduled rotation: v1 is " in result.stdout
    assert "old, every 5s" in result.stdout
    assert f"warning: secret {lab.prefix}-set/{pw}: rotation is due" in result.stdout
    due = entry(lab, pw)
    assert due["rotation_due"] is True and due["age_seconds"] >= 6 and due["rotate_every"] == "5s"

    # the saved plan says a version is to be generated; applied later, it is judged as of its time
    assert '"generate:bytes:32"' in saved.read_text()
    result = run(lab, "apply", "--plan", str(saved), str(lab.root), "--timeout", "90")
    assert result.exit_code == 0, result.output
    assert lab.service_secret_names(app) == {key: f"{key}_v2", pw: f"{pw}_v1"}
    second, _ = lab.read_in_task(app, f"/run/secrets/{key}")
    assert len(second) == 32 and second != first
    assert lab.secret_names() == {f"{key}_v1", f"{key}_v2", f"{pw}_v1"}  # no new version of pw
    rotated = entry(lab, key)
    assert rotated["rotation_due"] is False and rotated["kept"] == {"rollback_target": 1}
    assert_nothing_kept_without_a_reason(lab)


def test_rotate_forces_a_new_version_of_a_generated_secret_and_refuses_a_file_secret(lab: Lab) -> None:
    key, pw = lab.name("key"), lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "file-value")
    lab.manifest(
        {
            key: {"source": {"generate": {"length": 24, "charset": "hex"}}, "services": [app]},
            pw: {"source": {"file": "pw.txt"}, "services": [app]},
        }
    )
    assert apply(lab).exit_code == 0
    first, _ = lab.read_in_task(app, f"/run/secrets/{key}")

    before = lab.versions()
    refused = run(lab, "rotate", str(lab.root), "--secret", pw, "--yes")
    assert refused.exit_code == 1
    assert (
        f"{pw} comes from the file" in refused.stderr and "change the value at its source" in refused.stderr
    )
    assert lab.versions() == before  # nothing changed, not even the lease

    result = run(lab, "rotate", str(lab.root), "--secret", key, "--yes", "--timeout", "90")
    assert result.exit_code == 0, result.output
    assert "forced rotation: replaces v1 (swarm-secrets rotate)" in result.stdout
    assert lab.service_secret_names(app) == {key: f"{key}_v2", pw: f"{pw}_v1"}
    second, _ = lab.read_in_task(app, f"/run/secrets/{key}")
    assert len(second) == 24 and second != first
    assert run(lab, "plan", str(lab.root), "--detailed-exitcode").exit_code == 0
    assert_nothing_kept_without_a_reason(lab)


def read_mounted(lab: Lab, service: str, path: str, version: str) -> bytes:
    """``path`` in a running task of ``service`` that mounts the secret ``version`` (AssertionError
    while there is none)."""
    for task in lab.api.tasks(filters={"service": service, "desired-state": "running"}):
        refs = task["Spec"]["ContainerSpec"].get("Secrets") or []
        if task["Status"]["State"] == "running" and any(r["SecretName"] == version for r in refs):
            return lab._exec(task["Status"]["ContainerStatus"]["ContainerID"], ["cat", path])
    raise AssertionError(f"no running task of {service} mounts {version}")


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_loop_rotates_a_generated_secret_on_schedule_and_metrics_show_it(
    lab: Lab, service_factory: Callable[..., Service]
) -> None:
    key, pw = lab.name("key"), lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "file-value")
    lab.manifest(
        {
            key: {"source": {"generate": {"length": 32}}, "rotate": {"every": "5s"}, "services": [app]},
            pw: {"source": {"file": "pw.txt"}, "rotate": {"every": "5s"}, "services": [app]},
        }
    )
    svc = service_factory()  # --interval 300: only the schedule can make the next tick
    values: dict[str, bytes] = {}

    def read(version: str) -> bool:
        values[version] = read_mounted(lab, app, f"/run/secrets/{key}", version)
        return len(values[version]) == 32

    eventually(lambda: read(f"{key}_v1"), 90, "v1 in a task")
    eventually(lambda: lab.service_secret_names(app)[key] == f"{key}_v2", 60, "the scheduled rotation")
    eventually(lambda: read(f"{key}_v2"), 60, "v2 in a task")
    assert values[f"{key}_v2"] != values[f"{key}_v1"]
    assert lab.service_secret_names(app)[pw] == f"{pw}_v1" and f"{pw}_v2" not in lab.secret_names()

    set_name = f"{lab.prefix}-set"

    def shown() -> bool:
        text = svc.get("/metrics")[1]
        return (
            metric(text, "swarm_secrets_secret_rotation_due", set=set_name, secret=pw) == 1
            and (metric(text, "swarm_secrets_secret_age_seconds", set=set_name, secret=pw) or 0) >= 5
            and metric(text, "swarm_secrets_secret_rotation_period_seconds", set=set_name, secret=key) == 5
            and (metric(text, "swarm_secrets_superseded_versions", set=set_name, secret=key) or 0) >= 1
        )

    eventually(shown, 30, "ages, due rotations and superseded versions in /metrics")
    text = svc.get("/metrics")[1]
    assert metric(text, "swarm_secrets_superseded_versions", set=set_name, secret=key, kept_by="none") is None
    assert '"reasons":["rotation"]' in svc.log.read_text()  # the schedule's own tick, no commit
    assert svc.stop() == 0
