"""The reconcile engine end to end on the real throwaway swarm: apply, rotate, collect, roll back,
drift, migration, ownership, concurrency, crash recovery and API call budgets.

Every test checks the GitOps invariant where it applies: after an apply, the next plan is empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from reconciler.core.model import LABEL_FINGERPRINT, LABEL_MANAGED, LABEL_SECRET, LABEL_SET, LABEL_VERSION
from reconciler.engine.swarm import Swarm

from .conftest import Lab

pytestmark = pytest.mark.swarm


def run(lab: Lab, *args: str, **env: str) -> Result:
    runner = CliRunner()
    return runner.invoke(main, list(args), env=lab.env(**env), catch_exceptions=False)


def apply(lab: Lab, *extra: str, **env: str) -> Result:
    return run(lab, "apply", str(lab.root), "--yes", "--timeout", "90", *extra, **env)


def plan_json(lab: Lab, **env: str) -> dict[str, object]:
    result = run(lab, "plan", str(lab.root), "--format", "json", **env)
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def assert_converged(lab: Lab, **env: str) -> None:
    result = run(lab, "plan", str(lab.root), "--detailed-exitcode", **env)
    assert result.exit_code == 0, f"plan not empty after apply:\n{result.output}"


def test_first_apply_rotation_and_collection(lab: Lab, api: docker.APIClient) -> None:
    db, web, pw = lab.name("db"), lab.name("web"), lab.name("pw")
    lab.create_service("db")
    lab.create_service("web", replicas=2)
    lab.manifest(
        {
            pw: {
                "source": {"env": "TEST_PW"},
                "services": [
                    db,
                    {
                        "service": web,
                        "target": "/etc/app/db_pass",
                        "uid": "1000",
                        "gid": "1000",
                        "mode": "0440",
                    },
                ],
            }
        }
    )

    # first apply: v1 exists, both services mount it where the manifest says
    result = apply(lab, TEST_PW="first-value")
    assert result.exit_code == 0, result.output
    assert lab.secret_names() == {f"{pw}_v1"}
    labels = api.inspect_secret(f"{pw}_v1")["Spec"]["Labels"]
    assert labels[LABEL_MANAGED] == "true" and labels[LABEL_VERSION] == "1" and labels[LABEL_SECRET] == pw
    assert labels[LABEL_SET] == f"{lab.prefix}-set"
    assert labels[LABEL_FINGERPRINT].startswith("hmac-sha256:")
    assert lab.read_in_task(db, f"/run/secrets/{pw}") == (b"first-value", "0 0 444")
    assert lab.read_in_task(web, "/etc/app/db_pass") == (b"first-value", "1000 1000 440")
    assert_converged(lab, TEST_PW="first-value")

    # rotation: v2, every consumer rolls, tasks read the new value, the file stays where it was
    result = apply(lab, TEST_PW="second-value")
    assert result.exit_code == 0, result.output
    assert lab.service_secret_names(db) == {pw: f"{pw}_v2"}
    assert lab.service_secret_names(web) == {"/etc/app/db_pass": f"{pw}_v2"}
    assert lab.read_in_task(db, f"/run/secrets/{pw}")[0] == b"second-value"
    assert lab.read_in_task(web, "/etc/app/db_pass") == (b"second-value", "1000 1000 440")
    # v1 is every service's rollback target (PreviousSpec): kept
    assert lab.secret_names() == {f"{pw}_v1", f"{pw}_v2"}
    assert_converged(lab, TEST_PW="second-value")

    # second rotation: v1 is collected, v2 (now PreviousSpec) is not
    result = apply(lab, TEST_PW="third-value")
    assert result.exit_code == 0, result.output
    assert lab.secret_names() == {f"{pw}_v2", f"{pw}_v3"}
    assert lab.read_in_task(web, "/etc/app/db_pass")[0] == b"third-value"
    assert_converged(lab, TEST_PW="third-value")


def test_failed_rollout_is_rolled_back_and_reported(lab: Lab, api: docker.APIClient) -> None:
    flag = lab.name("flag")
    # The service refuses to start unless its secret says "good".
    command = [
        "sh",
        "-c",
        f"grep -q good /run/secrets/{flag} || exit 1; trap 'exit 0' TERM; while :; do sleep 0.2; done",
    ]
    lab.manifest({flag: {"source": {"env": "FLAG"}, "services": []}})
    assert apply(lab, FLAG="good").exit_code == 0
    svc = lab.create_service(
        "picky", command=command, failure_action="rollback", secrets=[{"name": f"{flag}_v1", "target": flag}]
    )
    lab.manifest({flag: {"source": {"env": "FLAG"}, "services": [svc]}})
    assert apply(lab, FLAG="good").exit_code == 0
    assert_converged(lab, FLAG="good")

    result = apply(lab, FLAG="bad")
    assert result.exit_code == 3, result.output
    assert "rolled back" in result.output
    # the old version is intact and still what the service runs
    assert lab.service_secret_names(svc) == {flag: f"{flag}_v1"}
    assert f"{flag}_v1" in lab.secret_names()
    lab.wait_running(svc, 1)
    assert lab.read_in_task(svc, f"/run/secrets/{flag}")[0] == b"good"


def test_drift_is_corrected(lab: Lab, api: docker.APIClient, swarm: Swarm) -> None:
    pw = lab.name("pw")
    svc = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    assert apply(lab, PW="one").exit_code == 0
    assert apply(lab, PW="two").exit_code == 0
    # someone points the service back at v1 by hand
    raw = swarm.inspect_service(svc)
    refs = raw["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    v1 = api.inspect_secret(f"{pw}_v1")
    refs[0]["SecretID"], refs[0]["SecretName"] = v1["ID"], f"{pw}_v1"
    swarm.write_service_secrets(raw, refs)
    plan = plan_json(lab, PW="two")
    reasons = json.dumps(plan["actions"])
    assert "drift" in reasons
    assert apply(lab, PW="two").exit_code == 0
    assert lab.service_secret_names(svc) == {pw: f"{pw}_v2"}
    assert_converged(lab, PW="two")


def test_apply_prints_each_warning_once_and_counts_in_words(lab: Lab) -> None:
    app = lab.create_service("app")
    one, two = lab.name("one"), lab.name("two")
    lab.manifest({one: {"source": {"env": "ONE"}, "services": [app]}}, set_suffix="one", filename="one.yaml")
    lab.manifest({two: {"source": {"env": "TWO"}, "services": [app]}}, set_suffix="two", filename="two.yaml")
    assert apply(lab, ONE="1", TWO="1").exit_code == 0
    (lab.root / "two.yaml").unlink()  # set two is orphaned: a warning, and its reference stays

    result = apply(lab, ONE="2")
    assert result.exit_code == 0, result.output
    warning = f"set '{lab.prefix}-two' has 1 managed secret but no loaded manifest"
    assert result.output.count(warning) == 1, result.output
    assert "Apply complete: 1 created, 1 service updated, 0 removed." in result.output
    assert lab.service_secret_names(app) == {one: f"{one}_v2", two: f"{two}_v1"}


def test_unmanaged_objects_are_untouched_and_migration(lab: Lab, api: docker.APIClient) -> None:
    pw, other = lab.name("pw"), lab.name("other")
    # a hand-made secret, as the guide creates it, mounted by a service
    api.create_secret(pw, b"hand-made")
    api.create_secret(other, b"not ours")
    app = lab.create_service("app", secrets=[{"name": pw, "target": pw}, {"name": other, "target": "other"}])
    bystander = lab.create_service("bystander", secrets=[{"name": other, "target": "x"}])
    bystander_before = api.inspect_service(bystander)["Spec"]

    lab.manifest({pw: {"source": {"env": "PW"}, "services": [app]}})
    result = apply(lab, PW="managed-now")
    assert result.exit_code == 0, result.output
    # the managed version replaced the hand-made one at the same target; the foreign ref stays
    assert lab.service_secret_names(app) == {pw: f"{pw}_v1", "other": other}
    assert lab.read_in_task(app, f"/run/secrets/{pw}")[0] == b"managed-now"
    # unmanaged secrets are never removed, the bystander service never touched
    assert {pw, other} <= lab.secret_names()
    assert api.inspect_service(bystander)["Spec"] == bystander_before
    assert_converged(lab, PW="managed-now")

    status = run(lab, "status", str(lab.root), "--format", "json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    # the hand-made secret is the app's rollback target for now
    reasons = dict(report["unmanaged_referenced"])
    assert reasons[pw].startswith(f"rollback target of {app} (PreviousSpec)")
    assert other not in report["unmanaged_unreferenced"]
    # after the next rotation nothing can bring it back: unmanaged and unreferenced, still not removed
    assert apply(lab, PW="rotated").exit_code == 0
    report = json.loads(run(lab, "status", str(lab.root), "--format", "json").stdout)
    assert pw in report["unmanaged_unreferenced"]
    assert other not in report["unmanaged_unreferenced"]
    assert pw in lab.secret_names()


def test_unmanaged_secret_blocking_a_name_is_a_clear_error(lab: Lab, api: docker.APIClient) -> None:
    pw = lab.name("pw")
    api.create_secret(f"{pw}_v1", b"squatter")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": []}})
    result = apply(lab, PW="x")
    assert result.exit_code == 3, result.output
    assert f"{pw}_v1" in result.output and "unmanaged" in result.output
    assert lab.secret_names() == {f"{pw}_v1"}


def test_concurrent_applies_make_one_version(lab: Lab, api: docker.APIClient) -> None:
    pw = lab.name("pw")
    svc = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    env = lab.env(PW="same")
    cmd = [sys.executable, "-m", "reconciler", "apply", str(lab.root), "--yes", "--timeout", "90"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert "Traceback" not in output
    assert lab.secret_names() == {f"{pw}_v1"}
    assert lab.service_secret_names(svc) == {pw: f"{pw}_v1"}
    assert_converged(lab, PW="same")


def test_crash_mid_apply_converges_on_the_next_run(lab: Lab, api: docker.APIClient) -> None:
    names = [lab.name(f"s{i}") for i in range(3)]
    svc = lab.create_service("app")
    lab.manifest({n: {"source": {"env": "PW"}, "services": [svc]} for n in names})
    assert apply(lab, PW="v1").exit_code == 0
    env = lab.env(PW="v2")
    # a short lease TTL: the next run takes over the killed run's lease after 5 s instead of 60 s
    cmd = [
        sys.executable,
        "-m",
        "reconciler",
        "apply",
        str(lab.root),
        "--yes",
        "--timeout",
        "90",
        "--lock-ttl",
        "5",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill -9 as soon as the first new version exists: between two mutations
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(n.endswith("_v2") for n in lab.secret_names()):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = apply(lab, PW="v2")
    assert result.exit_code == 0, result.output
    assert lab.secret_names() == {f"{n}_v{v}" for n in names for v in (1, 2)}
    assert lab.service_secret_names(svc) == {n: f"{n}_v2" for n in names}
    assert_converged(lab, PW="v2")


def _noop_apply_requests(lab: Lab, count: int, suffix: str) -> int:
    names = [lab.name(f"{suffix}{i}") for i in range(count)]
    svc = lab.create_service(f"svc{suffix}", replicas=0)
    path = lab.root / suffix
    path.mkdir()
    lab.root, saved = path, lab.root
    try:
        lab.manifest({n: {"source": {"env": "PW"}, "services": [svc]} for n in names}, set_suffix=suffix)
        assert apply(lab, PW="x").exit_code == 0
        result = apply(lab, "--stats", PW="x")
        assert result.exit_code == 0, result.output
    finally:
        lab.root = saved
    line = next(line for line in result.output.splitlines() if line.startswith("engine requests:"))
    return int(line.split(":")[1])


def test_noop_apply_request_count_does_not_grow_with_secrets(lab: Lab) -> None:
    small = _noop_apply_requests(lab, 2, "a")
    large = _noop_apply_requests(lab, 20, "b")
    assert small == large
    # engine info, the key config, the secret and service lists: in the steady state (every version
    # in use) a plan needs neither tasks nor nodes (observe(lean=True))
    assert large == 4


def test_no_value_in_outputs_labels_or_temp_files(lab: Lab, api: docker.APIClient, tmp_path: Path) -> None:
    value = "Zq7-unmistakable-secret-value-9xK"
    pw = lab.name("pw")
    svc = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    outputs = []
    for args in (
        ["--log-level", "debug", "apply", str(lab.root), "--yes"],
        ["--log-level", "debug", "--log-format", "json", "plan", str(lab.root), "--format", "json"],
        ["plan", str(lab.root), "--format", "markdown"],
        ["plan", str(lab.root), "--format", "text"],
        ["status", str(lab.root), "--format", "json"],
        ["status", str(lab.root)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=lab.env(PW=value, TMPDIR=str(tmpdir)),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(proc.stdout + proc.stderr)
    for output in outputs:
        assert value.encode() not in output
    # every mutation is an audit event, naming what changed but not the value
    assert b"secret_created" in outputs[0] and b"service_updated" in outputs[0]
    for secret in api.secrets():
        assert value not in json.dumps(secret["Spec"])
    for service in api.services():
        assert value not in json.dumps(service)
    assert not list(tmpdir.iterdir()), "temp files left behind"


def _snapshot(api: docker.APIClient) -> tuple[object, ...]:
    return (
        sorted((s["ID"], s["Version"]["Index"]) for s in api.secrets()),
        sorted((s["ID"], s["Version"]["Index"]) for s in api.services()),
        sorted((c["ID"], c["Version"]["Index"]) for c in api.configs()),
    )


def test_failures_before_mutation_change_nothing(lab: Lab, api: docker.APIClient) -> None:
    pw, token = lab.name("pw"), lab.name("token")
    svc = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    assert apply(lab, PW="one").exit_code == 0
    before = _snapshot(api)
    # a source that cannot be resolved, next to a change that could be applied
    lab.manifest(
        {
            pw: {"source": {"env": "PW"}, "services": [svc]},
            token: {"source": {"file": "missing.txt"}, "services": [svc]},
        }
    )
    result = apply(lab, PW="two")
    assert result.exit_code == 1
    assert "missing.txt" in result.output and "Traceback" not in result.output
    # an invalid manifest
    lab.write("broken.yaml", "apiVersion: swarm-secrets/v1\nkind: SecretSet\nmetadata: {name: Bad_Name}\n")
    result = apply(lab, PW="two")
    assert result.exit_code == 1 and "metadata.name" in result.output
    # an unreachable engine
    (lab.root / "broken.yaml").unlink()
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    result = run(lab, "apply", str(lab.root), "--yes", "--docker-host", "unix:///nonexistent.sock", PW="two")
    assert result.exit_code == 1 and result.output.startswith("error:")
    assert _snapshot(api) == before


def test_plan_never_writes_not_even_the_key(lab: Lab, api: docker.APIClient) -> None:
    from reconciler.engine.keysource import KEY_CONFIG_NAME

    if not os.environ.get("SWARM_SECRETS_DEV_ENGINE"):
        pytest.skip("removes the swarm's key config for a moment: only on an engine the suite owns")
    pw = lab.name("pw")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": []}})
    existing = [
        c for c in api.configs(filters={"name": KEY_CONFIG_NAME}) if c["Spec"]["Name"] == KEY_CONFIG_NAME
    ]
    if existing:
        saved = api.inspect_config(existing[0]["ID"])["Spec"]
        api.remove_config(existing[0]["ID"])
    try:
        before = _snapshot(api)
        result = run(lab, "plan", str(lab.root), "--detailed-exitcode", PW="x")
        assert result.exit_code == 2, result.output
        assert _snapshot(api) == before
    finally:
        if existing:
            import base64

            api.create_config(saved["Name"], base64.b64decode(saved["Data"]), labels=saved.get("Labels"))
