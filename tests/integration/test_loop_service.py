"""``swarm-secrets run`` as a real process against the throwaway swarm: first reconcile at start,
drift corrected from Docker events, webhook-triggered rotation, bad signatures refused, metrics,
SIGTERM, surviving an engine restart, ticks that wait for the swarm's lease, a bad manifest that
makes the loop wait for a change, another writer superseding a rollout, and a commit that breaks one
of two sets while the other still converges."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import docker
import pytest

from reconciler.engine import lease
from reconciler.engine.lease import Identity, Lease, LeaseSettings
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmConflict

from .conftest import Lab

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = b"webhook-shared-secret"
RECONCILE_TOKEN = b"reconcile-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (AssertionError, KeyError, docker.errors.APIError, urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


class Service:
    def __init__(self, lab: Lab, tmp: Path, *extra: str, source: Sequence[str] | None = None) -> None:
        self.port = free_port()
        secret_file = tmp / "webhook.secret"
        secret_file.write_bytes(WEBHOOK_SECRET + b"\n")
        token_file = tmp / "reconcile.token"
        token_file.write_bytes(RECONCILE_TOKEN + b"\n")
        self.log = tmp / "run.log"
        cmd = [
            sys.executable, "-m", "reconciler", "--log-level", "info", "--log-format", "json",
            "run", *(source or [str(lab.root)]), "--interval", "300", "--debounce", "0.5", "--timeout", "60",
            "--listen", f"127.0.0.1:{self.port}", "--github-webhook-secret-file", str(secret_file),
            "--reconcile-token-file", str(token_file), "--lock-ttl", "10", *extra,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=lab.env(), stdout=subprocess.DEVNULL, stderr=log)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def github_hook(self, body: bytes, signature: str | None) -> int:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        request = urllib.request.Request(self.url("/hooks/github"), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def reconcile(self) -> int:
        request = urllib.request.Request(
            self.url("/reconcile"), data=b"", method="POST",
            headers={"Authorization": "Bearer " + RECONCILE_TOKEN.decode()},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)

    def metric(self, name: str) -> float:
        status, text = self.get("/metrics")
        assert status == 200
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


@pytest.fixture()
def service_factory(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(*extra: str, source: Sequence[str] | None = None) -> Service:
        svc = Service(lab, tmp_path, *extra, source=source)
        started.append(svc)
        eventually(lambda: svc.get("/healthz")[0] == 200, 30, "the listener")
        return svc

    yield start
    for svc in started:
        if svc.proc.poll() is None:
            # SIGTERM first: a tick in hand finishes and frees the swarm's lease for the next test
            svc.proc.terminate()
            try:
                svc.proc.wait(30)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()


def test_run_reconciles_on_start_events_and_webhooks(
    lab: Lab, api: docker.APIClient, swarm: Swarm, service_factory: Callable[..., Service]
) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    value = lab.write("pw.txt", "one")
    lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    svc = service_factory()

    # startup tick: v1 created and mounted; ready afterwards
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v1"}, 90, "the first reconcile")
    eventually(lambda: svc.get("/readyz")[0] == 200, 30, "readiness")
    assert svc.metric('swarm_secrets_ticks_total{result="success"}') >= 1

    # a bad or missing signature is refused and triggers nothing
    value.write_text("two")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert svc.github_hook(body, "sha256=" + "0" * 64) == 401
    assert svc.github_hook(body, None) == 401
    time.sleep(2)
    assert f"{pw}_v2" not in lab.secret_names()

    # a good one triggers a tick: the new value rolls out
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    assert svc.github_hook(body, signature) == 202
    eventually(
        lambda: lab.service_secret_names(app) == {pw: f"{pw}_v2"}, 90, "the webhook-triggered rotation"
    )
    lab.wait_running(app, 1)
    eventually(
        lambda: lab.read_in_task(app, f"/run/secrets/{pw}")[0] == b"two", 60, "the new value in a task"
    )

    # drift by hand is corrected from the Docker events alone (the interval is 300 s)
    time.sleep(11)  # past the loop's quiet window for its own events
    raw = swarm.inspect_service(app)
    refs = raw["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    v1 = api.inspect_secret(f"{pw}_v1")
    refs[0]["SecretID"], refs[0]["SecretName"] = v1["ID"], f"{pw}_v1"
    swarm.write_service_secrets(raw, refs)
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v2"}, 60, "drift correction")
    eventually(lambda: svc.metric("swarm_secrets_drift_corrections_total") >= 1, 30, "the drift metric")

    # SIGTERM: finishes the step in hand and exits 0
    assert svc.stop() == 0
    log_text = svc.log.read_text()
    assert "one" not in [
        json.loads(line).get("message") for line in log_text.splitlines() if line.startswith("{")
    ]


def test_run_survives_an_engine_restart(lab: Lab, service_factory: Callable[..., Service]) -> None:
    if not os.environ.get("SWARM_SECRETS_DEV_ENGINE"):
        pytest.skip("restarts the engine: only on the throwaway engine of scripts/test")
    pw = lab.name("pw")
    app = lab.create_service("app")
    value = lab.write("pw.txt", "before")
    lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    svc = service_factory()
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v1"}, 90, "the first reconcile")

    subprocess.run([str(REPO / "scripts" / "dev-swarm"), "restart"], check=True, timeout=180)
    assert svc.proc.poll() is None, "the reconciler died with the engine"
    value.write_text("after")
    # the engine is back: a manual trigger converges to the new value

    def triggered_and_converged() -> bool:
        assert svc.reconcile() == 202
        time.sleep(1)
        return lab.service_secret_names(app) == {pw: f"{pw}_v2"}

    eventually(triggered_and_converged, 180, "convergence after the engine restart")
    assert svc.stop() == 0


def test_a_rolled_back_value_is_not_retried_until_something_changes(
    lab: Lab, api: docker.APIClient, service_factory: Callable[..., Service]
) -> None:
    flag = lab.name("flag")
    value = lab.write("flag.txt", "good")
    lab.manifest({flag: {"source": {"file": "flag.txt"}, "services": []}})
    assert subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", str(lab.root), "--yes"],
        env=lab.env(), capture_output=True, timeout=120, check=False,
    ).returncode == 0  # fmt: skip
    command = [
        "sh",
        "-c",
        f"grep -q good /run/secrets/{flag} || exit 1; trap 'exit 0' TERM; while :; do sleep 0.2; done",
    ]
    app = lab.create_service("picky", command=command, failure_action="rollback",
                             secrets=[{"name": f"{flag}_v1", "target": flag}])  # fmt: skip
    lab.manifest({flag: {"source": {"file": "flag.txt"}, "services": [app]}})
    value.write_text("bad")
    svc = service_factory()

    def rollout_started() -> str:
        return str((api.inspect_service(app).get("UpdateStatus") or {}).get("StartedAt", ""))

    # the first tick rolls the bad value out; Swarm rolls it back
    eventually(
        lambda: svc.metric('swarm_secrets_rollouts_total{result="rolled_back"}') >= 1, 120, "the rollback"
    )
    eventually(lambda: rollout_started() != "" and
               (api.inspect_service(app).get("UpdateStatus") or {}).get("State") == "rollback_completed",
               60, "the rollback to complete")  # fmt: skip
    settled = rollout_started()
    failures = svc.metric('swarm_secrets_ticks_total{result="failure"}')
    # retried ticks fail (and say why) without rolling the service again
    eventually(
        lambda: svc.metric('swarm_secrets_ticks_total{result="failure"}') >= failures + 1, 60, "a retry"
    )
    assert rollout_started() == settled
    assert lab.service_secret_names(app) == {flag: f"{flag}_v1"}
    assert svc.get("/readyz")[0] == 503

    # fixing the value (a new version) goes ahead at once on the next tick
    value.write_text("good again")
    eventually(lambda: lab.service_secret_names(app) == {flag: f"{flag}_v3"}, 120, "the fixed value")
    assert svc.stop() == 0


def test_a_tick_waits_for_the_lease_another_applier_holds(
    lab: Lab, swarm: Swarm, service_factory: Callable[..., Service]
) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "one")
    lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    held = Lease(swarm, Identity.here(purpose="apply", revision="ci-job"), LeaseSettings())
    held.acquire(wait=0)
    try:
        svc = service_factory()
        time.sleep(4)  # the startup tick found work to do and waits for the lease
        assert lab.secret_names() == set()
        assert svc.get("/readyz")[0] == 503
    finally:
        held.release()
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v1"}, 90, "the tick after the release")

    def released() -> bool:
        record = lease.read(swarm)
        return record is not None and record.free and record.get("purpose") == ""

    eventually(released, 90, "the tick to release the lease once its rollout is watched")
    log_text = svc.log.read_text()
    assert "waiting up to 300 s for the lease held by" in log_text
    assert svc.stop() == 0


def test_a_bad_manifest_makes_the_loop_wait_for_a_change(
    lab: Lab, service_factory: Callable[..., Service]
) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "one")
    manifest = lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    good = manifest.read_text()
    manifest.write_text(good.replace("services:", "servicez:"))
    svc = service_factory("--interval", "300")
    eventually(lambda: svc.metric('swarm_secrets_ticks_total{result="stalled"}') >= 1, 60, "the stalled tick")
    status, reason = svc.get("/readyz")
    assert status == 503 and reason.startswith("not ready: the manifests") and "servicez" not in reason
    assert svc.metric("swarm_secrets_waiting_for_change") == 1
    time.sleep(6)  # a transient failure would have been retried after 5 s
    assert svc.metric('swarm_secrets_ticks_total{result="stalled"}') == 1
    assert svc.metric('swarm_secrets_ticks_total{result="failure"}') == 0
    # the fix, then a manual reconcile: converged
    manifest.write_text(good)
    assert svc.reconcile() == 202
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v1"}, 90, "the fixed manifest applied")
    eventually(lambda: svc.get("/readyz")[0] == 200, 30, "readiness")
    assert svc.metric("swarm_secrets_waiting_for_change") == 0
    messages = [
        json.loads(line).get("message", "") for line in svc.log.read_text().splitlines() if line[:1] == "{"
    ]
    assert any("waiting for a change" in m and "servicez" in m for m in messages)
    assert svc.stop() == 0


def test_a_foreign_write_during_a_rollout_is_superseded_never_held_and_corrected_by_the_next_tick(
    lab: Lab, api: docker.APIClient, swarm: Swarm, service_factory: Callable[..., Service]
) -> None:
    """Issue 10's race: the loop rolls app to v2; during that rollout someone points app back at v1. The
    rollout ends `superseded` (not a rollback, nothing held) and the very next tick, a follow-up that
    neither the interval (300 s), Docker events (off) nor the backoff brings, puts v2 back."""
    pw = lab.name("pw")
    app = lab.create_service("app", monitor_ns=5_000_000_000)  # a rollout that lasts a few seconds
    value = lab.write("pw.txt", "one")
    lab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    svc = service_factory("--no-events")
    eventually(lambda: svc.metric('swarm_secrets_ticks_total{result="success"}') >= 1, 90, "the first tick")
    assert lab.service_secret_names(app) == {pw: f"{pw}_v1"}
    ticks = svc.metric("swarm_secrets_ticks_total")

    value.write_text("two")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    assert svc.github_hook(body, signature) == 202

    def rolling_to_v2() -> bool:
        raw = api.inspect_service(app)
        names = {r["SecretName"] for r in raw["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]}
        return names == {f"{pw}_v2"} and (raw.get("UpdateStatus") or {}).get("State") == "updating"

    eventually(rolling_to_v2, 60, "the tick's rollout to v2")
    v1 = api.inspect_secret(f"{pw}_v1")
    for _ in range(5):  # another writer, at the service's current version
        raw = swarm.inspect_service(app)
        refs = raw["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
        refs[0]["SecretID"], refs[0]["SecretName"] = v1["ID"], f"{pw}_v1"
        try:
            swarm.write_service_secrets(raw, refs)
            break
        except SwarmConflict:
            continue

    eventually(lambda: svc.metric('swarm_secrets_rollouts_total{result="superseded"}') == 1, 90, "superseded")
    eventually(lambda: svc.metric('swarm_secrets_ticks_total{result="success"}') >= 2, 90, "the next tick")
    assert lab.service_secret_names(app) == {pw: f"{pw}_v2"}
    assert svc.metric("swarm_secrets_ticks_total") == ticks + 2  # the drift corrected within two ticks
    assert svc.metric('swarm_secrets_rollouts_total{result="held"}') == 0
    assert svc.metric('swarm_secrets_rollouts_total{result="rolled_back"}') == 0
    assert svc.metric("swarm_secrets_drift_corrections_total") == 1
    messages = [
        json.loads(line).get("message", "") for line in svc.log.read_text().splitlines() if line[:1] == "{"
    ]
    assert any(m.startswith("tick failed (webhook:github)") and "superseded" in m for m in messages)
    assert any(m.startswith("tick done (follow-up)") for m in messages)
    assert svc.stop() == 0


def git(cwd: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")  # fmt: skip
    subprocess.run(["git", "-C", str(cwd), *args], env=env, check=True, capture_output=True, timeout=60)


def test_a_commit_that_breaks_one_of_two_sets_holds_it_back_and_the_other_still_converges(
    lab: Lab, api: docker.APIClient, tmp_path: Path, service_factory: Callable[..., Service]
) -> None:
    """Issue 10's acceptance: a loop following two sets (real git), where a commit breaks one of them: a
    value change in the other still converges, the broken set is left exactly as it is, and /metrics
    and /readyz name it (its class, never the problem's text); fixing it makes the loop ready again."""
    app_a, app_b = lab.create_service("a"), lab.create_service("b")
    pw_a, pw_b = lab.name("pw_a"), lab.name("pw_b")
    lab.write("a.txt", "a-one")
    lab.write("b.txt", "b-one")
    set_a = lab.manifest(
        {pw_a: {"source": {"file": "a.txt"}, "services": [app_a]}}, set_suffix="a", filename="a.yaml"
    )
    set_b = lab.manifest(
        {pw_b: {"source": {"file": "b.txt"}, "services": [app_b]}}, set_suffix="b", filename="b.yaml"
    )
    name_b = f"{lab.prefix}-b"
    bare = tmp_path / "repo.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(bare)], check=True)
    git(lab.root, "init", "-q", "-b", "main")

    def push(message: str) -> None:
        git(lab.root, "add", "-A")
        git(lab.root, "commit", "-q", "-m", message)
        git(lab.root, "push", "-q", str(bare), "main")

    push("two sets")
    svc = service_factory(
        "--git-ref", "main", "--git-path", ".", "--state-dir", str(tmp_path / "state"),
        source=["--git-url", f"file://{bare}"],
    )  # fmt: skip
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()

    def hook() -> None:  # a push event (each delivery without an ID: never taken for a replay)
        assert svc.github_hook(body, signature) == 202

    eventually(lambda: svc.metric('swarm_secrets_ticks_total{result="success"}') >= 1, 90, "the first tick")
    assert svc.get("/readyz")[0] == 200 and lab.service_secret_names(app_a) == {pw_a: f"{pw_a}_v1"}
    b_objects = {k: v for k, v in lab.versions().items() if pw_b in k or app_b in k}

    # one commit: b's manifest breaks, a's value changes
    broken = set_b.read_text().replace("services:", "servicez:")
    set_b.write_text(broken)
    lab.write("a.txt", "a-two")
    push("a rotates, b breaks")
    hook()
    eventually(lambda: lab.service_secret_names(app_a) == {pw_a: f"{pw_a}_v2"}, 90, "a converging")
    eventually(lambda: svc.metric('swarm_secrets_ticks_total{result="partial"}') >= 1, 60, "a partial tick")
    assert svc.metric(f'swarm_secrets_set_failing{{class="manifest",set="{name_b}"}}') == 1
    assert svc.metric("swarm_secrets_failing_sets") == 1
    status, reason = svc.get("/readyz")
    assert status == 503 and reason.splitlines()[1] == f"failing sets: {name_b} (manifest)"
    assert "servicez" not in reason and "b.yaml" not in reason
    assert {k: v for k, v in lab.versions().items() if pw_b in k or app_b in k} == b_objects  # untouched
    messages = [
        json.loads(line).get("message", "") for line in svc.log.read_text().splitlines() if line[:1] == "{"
    ]
    assert any(m.startswith(f"set '{name_b}' is held back") and "servicez" in m for m in messages)

    # the fix: both sets load again, the loop is ready, nothing is named
    set_b.write_text(broken.replace("servicez:", "services:"))
    push("b fixed")
    hook()
    eventually(lambda: svc.get("/readyz")[0] == 200, 60, "readiness after the fix")
    assert svc.metric("swarm_secrets_failing_sets") == 0
    assert "swarm_secrets_set_failing{" not in svc.get("/metrics")[1]
    assert lab.service_secret_names(app_b) == {pw_b: f"{pw_b}_v1"}
    assert set_a.exists() and svc.stop() == 0
