"""The trust boundary against the real swarm and the real sops (issue 9).

Every adversarial case asserts: exit 1, one clear line on stderr (manifest file:line, path, what to
do), **zero mutations** (the version indexes of this test's secrets and services and of every
config are unchanged) and no marker value anywhere in the output, at debug level.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.daemon.types import STALLED, with_class

from .conftest import Lab
from .test_loop_service import eventually, free_port

pytestmark = pytest.mark.swarm

MARKER = "MARKER-trust-9e41"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[0-9:.]+Z (DEBUG|INFO|WARNING|ERROR) ")


def cli(lab: Lab, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-level", "debug", *args],
        env=lab.env(**env), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def refused(lab: Lab, command: list[str], expected: str, **env: str) -> str:
    """Run ``command``; assert exit 1, exactly one problem line containing ``expected``, nothing
    changed, and no marker in the output. Returns the line."""
    before = lab.versions()
    done = cli(lab, *command, **env)
    after = lab.versions()
    assert done.returncode == 1, done.stdout + done.stderr
    assert MARKER not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(problems) == 1, done.stderr
    assert expected in problems[0], problems[0]
    assert after == before, "the command changed the swarm"
    return problems[0]


def write_set(lab: Lab, secrets: dict[str, Any], *, name: str = "set", filename: str = "set.yaml") -> Path:
    return lab.manifest(secrets, set_suffix=name, filename=filename)


def policy_file(tmp_path: Path, *rules: dict[str, Any]) -> Path:
    path = tmp_path / "ops" / "policy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump({"apiVersion": "swarm-secrets/v1", "kind": "Policy", "spec": {"rules": list(rules)}})
    )
    return path


def test_a_typo_in_a_service_name_fails_and_revokes_nothing(lab: Lab) -> None:
    pw = lab.name("pw")
    api_service = lab.create_service("payments_api")
    lab.write("pw.txt", "v1-value")
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [api_service]}})
    assert cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90").returncode == 0
    assert lab.service_secret_names(api_service) == {pw: f"{pw}_v1"}

    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [api_service + "i"]}})
    expected = f"service '{api_service}i' does not exist (did you mean '{api_service}'?)"
    line = refused(lab, ["plan", str(lab.root)], expected)
    assert line.startswith("set.yaml:") or f"{lab.root}" in line
    refused(lab, ["apply", str(lab.root), "--yes"], expected)
    assert lab.service_secret_names(api_service) == {pw: f"{pw}_v1"}  # not revoked

    # a service deployed later: optional, the run goes ahead and says so
    later = lab.name("later")
    write_set(lab, {pw: {"source": {"file": "pw.txt"},
                         "services": [api_service, {"service": later, "optional": True}]}})  # fmt: skip
    done = cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90")
    assert done.returncode == 0, done.stderr
    assert f"service '{later}' not found; skipped" in done.stdout
    lab.create_service("later")
    assert cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90").returncode == 0
    assert lab.service_secret_names(later) == {pw: f"{pw}_v1"}


def test_engine_holding_and_own_services_are_refused(lab: Lab, tmp_path: Path) -> None:
    pw = lab.name("pw")
    lab.write("pw.txt", "value")
    socket_path = lab.docker_host.removeprefix("unix://")
    ops = lab.create_service(
        "ops", mounts=[{"Type": "bind", "Source": socket_path, "Target": "/var/run/docker.sock"}]
    )
    own = lab.create_service("own", labels={"io.swarm-secrets.role": "reconciler"})
    plain = lab.create_service("plain")

    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [ops]}})
    refused(lab, ["apply", str(lab.root), "--yes"], f"service '{ops}' mounts the engine socket {socket_path}")
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [own]}})
    refused(lab, ["apply", str(lab.root), "--yes"], f"service '{own}' is the reconciler itself")
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [plain]}})
    refused(lab, ["apply", str(lab.root), "--yes", "--self-service", plain], "is the reconciler itself")
    refused(lab, ["plan", str(lab.root)], "is the reconciler itself", SWARM_SECRETS_SELF_SERVICE=plain)

    # a policy rule that names the engine-holding service exactly allows it (a glob would not)
    set_name = f"{lab.prefix}-set"
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [ops]}})
    globbed = policy_file(tmp_path, {"sets": [set_name], "services": [f"{lab.prefix}_*"]})
    refused(lab, ["apply", str(lab.root), "--yes", "--policy", str(globbed)], "does not name")
    exact = policy_file(tmp_path, {"sets": [set_name], "services": [ops]})
    done = cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90", "--policy", str(exact))
    assert done.returncode == 0, done.stderr
    assert lab.service_secret_names(ops) == {pw: f"{pw}_v1"}


def test_the_policy_governs_services_stacks_targets_and_adoption(lab: Lab, tmp_path: Path) -> None:
    pw, set_name = lab.name("pw"), f"{lab.prefix}-set"
    stack = f"{lab.prefix}stk"
    web = lab.create_service("web")
    other = lab.create_service("other")
    in_stack = lab.create_service("", name=f"{stack}_app", labels={"com.docker.stack.namespace": stack})
    fake = lab.create_service("", name=f"{stack}_fake")  # named like the stack's, but hand-made
    lab.write("pw.txt", "value")
    policy = policy_file(
        tmp_path,
        {"sets": ["nothing-here"], "services": ["*"]},
        {"sets": [set_name], "services": [web], "stacks": [stack], "targets": ["/run/secrets/*"]},
    )
    p = ["--policy", str(policy)]
    where = f"policy rule 2 ({policy}:"

    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [other]}})
    line = refused(lab, ["validate", "--offline", str(lab.root), *p], f"service '{other}' is not allowed")
    assert where in line and f"allows services {web}; services of stacks {stack}" in line
    write_set(
        lab, {pw: {"source": {"file": "pw.txt"}, "services": [{"service": web, "target": "/etc/app/pw"}]}}
    )
    refused(lab, ["apply", str(lab.root), "--yes", *p], "target /etc/app/pw is not allowed")
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [fake]}})
    assert cli(lab, "validate", "--offline", str(lab.root), *p).returncode == 0  # needs the swarm to tell
    refused(lab, ["plan", str(lab.root), *p], f"service '{fake}' (no stack) is not allowed")
    rogue = {pw: {"source": {"file": "pw.txt"}, "services": [web]}}
    write_set(lab, rogue, name="rogue", filename="rogue.yaml")
    (lab.root / "set.yaml").unlink()
    refused(lab, ["plan", str(lab.root), *p], f"set '{lab.prefix}-rogue' matches no rule of the policy")

    # adoption: a hand-made secret already mounted at the target
    (lab.root / "set.yaml").unlink(missing_ok=True)
    for leftover in lab.root.glob("*.yaml"):
        leftover.unlink()
    hand = lab.name("handmade")
    lab.api.create_secret(hand, b"old")
    adopter = lab.create_service("adopter", secrets=[{"name": hand, "target": pw}])
    adopt_policy = policy_file(
        tmp_path, {"sets": [set_name], "services": [adopter, in_stack], "stacks": [stack]}
    )
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [adopter, in_stack]}})
    refused(lab, ["apply", str(lab.root), "--yes", "--policy", str(adopt_policy)], "needs `adopt: true`")
    adopt_policy = policy_file(
        tmp_path, {"sets": [set_name], "services": [adopter], "stacks": [stack], "adopt": True}
    )
    done = cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90", "--policy", str(adopt_policy))
    assert done.returncode == 0, done.stderr
    assert lab.service_secret_names(adopter) == {pw: f"{pw}_v1"}
    assert lab.service_secret_names(in_stack) == {pw: f"{pw}_v1"}

    # plan and status say which rule governs each set
    shown = cli(lab, "plan", str(lab.root), "--format", "json", "--policy", str(adopt_policy))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["policy"] == [
        {"set": set_name, "rule": 1, "where": f"policy rule 1 ({adopt_policy}:5)"}
    ]
    status = cli(lab, "status", str(lab.root), "--policy", str(adopt_policy))
    assert f"policy: set {set_name}: policy rule 1 ({adopt_policy}:5)" in status.stdout


def test_sources_outside_the_boundary_and_sops_output_never_leak(lab: Lab, tmp_path: Path) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    (tmp_path / "host.agekey").write_text(f"AGE-SECRET-KEY-1{MARKER}\n")
    (lab.root / "secrets").mkdir()
    (lab.root / "secrets" / "stolen.enc.env").symlink_to(tmp_path / "host.agekey")
    lab.write("secrets/plain.env", f"DB_PASSWORD={MARKER}\nbroken line {MARKER}\n")

    write_set(lab, {pw: {"source": {"sops": {"file": "secrets/stolen.enc.env"}}, "services": [app]}})
    refused(lab, ["apply", str(lab.root), "--yes"], "is outside the source root")
    write_set(lab, {pw: {"source": {"file": "../host.agekey"}, "services": [app]}})
    refused(lab, ["plan", str(lab.root)], "../host.agekey is outside the source root")
    write_set(
        lab,
        {pw: {"source": {"sops": {"file": "secrets/plain.env", "key": "DB_PASSWORD"}}, "services": [app]}},
    )
    refused(lab, ["apply", str(lab.root), "--yes"], "(exit 1: it is not readable as dotenv")
    write_set(lab, {pw: {"source": {"env": "SOPS_AGE_KEY"}, "services": [app]}})
    refused(lab, ["apply", str(lab.root), "--yes"], "SOPS_AGE_KEY belongs to", SOPS_AGE_KEY=MARKER)
    write_set(lab, {pw: {"source": {"env": "PW"}, "services": [{"service": app, "target": "/usr/bin/env"}]}})
    refused(lab, ["apply", str(lab.root), "--yes"], "target /usr/bin/env is inside /usr", PW=MARKER)
    assert lab.secret_names() == set()


def test_prune_orphans_refuses_while_a_manifest_does_not_load(lab: Lab) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    lab.write("pw.txt", "value")
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [app]}}, name="a", filename="a.yaml")
    write_set(lab, {lab.name("other"): {"source": {"file": "pw.txt"}}}, name="b", filename="b.yaml")
    assert cli(lab, "apply", str(lab.root), "--yes", "--timeout", "90").returncode == 0

    # set a's file gets a mistyped apiVersion: not skipped (which would make set a an orphan)
    text = (lab.root / "a.yaml").read_text().replace("swarm-secrets/v1", "swarm-secret/v1")
    (lab.root / "a.yaml").write_text(text)
    refused(lab, ["apply", str(lab.root), "--yes", "--prune-orphans"], "unknown apiVersion 'swarm-secret/v1'")
    assert lab.service_secret_names(app) == {pw: f"{pw}_v1"}
    # a decimal mode is refused the same way
    write_set(lab, {pw: {"source": {"file": "pw.txt"}, "services": [{"service": app, "mode": 288}]}},
              name="a", filename="a.yaml")  # fmt: skip
    text = (lab.root / "a.yaml").read_text()
    assert "mode: 288" in text
    (lab.root / "a.yaml").write_text(text.replace("mode: 288", "mode: 440"))
    refused(
        lab,
        ["apply", str(lab.root), "--yes", "--prune-orphans"],
        'write the mode as a quoted octal string, like "0440"',
    )
    # and a folder that is not searched (a symlink) stops --prune-orphans too
    (lab.root / "a.yaml").write_text(text.replace("mode: 288", 'mode: "0440"'))
    (lab.root / "linked").symlink_to(lab.root.parent)
    refused(lab, ["apply", str(lab.root), "--yes", "--prune-orphans"], "is a symlink to a folder")
    assert lab.service_secret_names(app) == {pw: f"{pw}_v1"}


@pytest.fixture()
def loop(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int, Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        secret = tmp_path / "hook.secret"
        secret.write_text("hook-secret")
        log = tmp_path / f"run-{len(started)}.log"
        cmd = [sys.executable, "-m", "reconciler", "--log-level", "debug", "--log-format", "json", "run",
               str(lab.root), "--interval", "300", "--debounce", "0.2", "--listen", f"127.0.0.1:{port}",
               "--reconcile-token-file", str(secret), *extra]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=lab.env(SOPS_AGE_KEY=MARKER), stdout=out, stderr=subprocess.STDOUT
            )
        started.append(proc)
        return proc, port, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def _reconcile(port: int) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/reconcile", data=b"", method="POST",
        headers={"Authorization": "Bearer hook-secret"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=5).close()


def test_run_readyz_metrics_and_logs_carry_no_marker(lab: Lab, loop: Callable[..., Any]) -> None:
    app = lab.create_service("app")
    pw = lab.name("pw")
    lab.write("secrets/plain.env", f"DB_PASSWORD={MARKER}\nbroken line {MARKER}\n")
    write_set(
        lab,
        {pw: {"source": {"sops": {"file": "secrets/plain.env", "key": "DB_PASSWORD"}}, "services": [app]}},
    )
    before = lab.versions()
    proc, port, log = loop()
    named = f"failing sets: {lab.prefix}-set"  # a fixed state, then the set held back and its class
    eventually(
        lambda: _get(port, "/readyz") == (503, with_class(STALLED, "source") + f"\n{named} (source)\n"),
        60,
        "a failed tick",
    )

    # in `run`, an env source needs a policy rule: the loop's environment is the reconciler's own
    write_set(lab, {pw: {"source": {"env": "PW"}, "services": [app]}})
    _reconcile(port)
    eventually(
        lambda: _get(port, "/readyz") == (503, with_class(STALLED, "policy") + f"\n{named} (policy)\n"),
        60,
        "policy",
    )
    status, metrics = _get(port, "/metrics")
    assert status == 200 and MARKER not in metrics
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert MARKER not in text
    assert "env sources are refused in `run` without a policy" in text  # the log has the details
    assert "sops could not decrypt" in text and "invalid dotenv" not in text
    for line in text.splitlines():
        json.loads(line)
    assert lab.versions() == before
    assert lab.service_secret_names(app) == {}
