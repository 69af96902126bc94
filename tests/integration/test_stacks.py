"""Stacks and rotation on the real swarm with the real ``docker stack deploy``: the three-step story of
issue 11 with ``swarm-secrets stack deploy`` (one update per release, the rotated value stays, old
versions collected only when nothing needs them, a plain redeploy is drift), ``env`` evaluated in a
shell for a compose file that names its versions, and a ``kind: Stack`` in git followed by ``run``.

Update counts are task generations: every update that replaces a service's task makes one new task
(one replica each), so the new task IDs since a step are its updates. Services stop in 1 s and
update start-first with a 1 s monitor, so each rollout takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import yaml

from reconciler.core.stacks import variable_name

from .conftest import TEST_IMAGE, Lab
from .test_loop_service import eventually, free_port

pytestmark = pytest.mark.swarm

DEBIAN_CLI = "/usr/bin/docker"
"""The docker CLI the image ships (Debian's docker.io, 20.10); the story runs with it when it is there,
the other tests with the docker on PATH (which may be newer)."""

IDLE = "trap 'exit 0' TERM; while :; do sleep 0.2; done"


def compose(services: dict[str, dict[str, object]], secrets: dict[str, object]) -> str:
    body = {
        name: {
            "image": TEST_IMAGE,
            "command": ["sh", "-c", IDLE],
            "stop_grace_period": "1s",
            "deploy": {"update_config": {"order": "start-first", "monitor": "1s"}},
            **extra,
        }
        for name, extra in services.items()
    }
    return yaml.safe_dump({"version": "3.8", "services": body, "secrets": secrets}, sort_keys=False)


def swarm_secrets(
    lab: Lab, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=lab.env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def docker_cli(lab: Lab, cli: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [cli, *args],
        env=lab.env(**(env or {})),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Tasks:
    """Task generations per service: the new task IDs since the last look."""

    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self.seen: dict[str, set[str]] = {}

    def new(self, service: str) -> int:
        ids = {t["ID"] for t in self.api.tasks(filters={"service": service})}
        new = ids - self.seen.get(service, set())
        self.seen.setdefault(service, set()).update(ids)
        return len(new)


@pytest.fixture()
def stacks_cleanup(lab: Lab, api: docker.APIClient) -> Iterator[None]:
    """Networks and configs a stack deploy made under the test's prefix go too (after its services)."""
    yield
    for service in api.services():
        if service["Spec"]["Name"].startswith(lab.prefix):
            api.remove_service(service["ID"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [n for n in api.networks() if n["Name"].startswith(lab.prefix)]
        for network in left:
            try:
                api.remove_network(network["Id"])
            except docker.errors.APIError:
                pass  # tasks still leaving it
        if not left:
            break
        time.sleep(0.5)


def wait_converged(lab: Lab, service: str) -> None:
    def done() -> bool:
        status = lab.api.inspect_service(service).get("UpdateStatus") or {}
        return status.get("State") in (None, "completed")

    eventually(done, 60, f"{service}'s rollout")
    lab.wait_running(service, 1)


def test_the_story_stack_deploy_keeps_the_rotated_value_with_one_update_per_release(
    lab: Lab, api: docker.APIClient, tmp_path: Path, stacks_cleanup: None
) -> None:
    cli = DEBIAN_CLI if os.access(DEBIAN_CLI, os.X_OK) else shutil.which("docker") or "docker"
    stack, pw = lab.prefix, lab.name("pw")
    db = f"{stack}_db"
    work = tmp_path / "app"
    work.mkdir()
    (work / "db_password.txt").write_text("the-stack-file-value")
    (work / "stack.yml").write_text(
        compose(
            {"db": {"environment": {"RELEASE": "${RELEASE:-1}"}, "secrets": ["db_password"]}},
            {"db_password": {"file": "./db_password.txt"}},
        )
    )
    lab.manifest({pw: {"source": {"env": "TEST_PW"}, "services": [{"service": db, "target": "db_password"}]}})
    tasks = Tasks(api)

    # 1. the stack, deployed as teams do, with a file secret of its own
    docker_cli(lab, cli, "stack", "deploy", "-c", "stack.yml", stack, cwd=work)
    lab.wait_running(db, 1)
    assert lab.read_in_task(db, "/run/secrets/db_password")[0] == b"the-stack-file-value"
    tasks.new(db)

    # 2. apply migrates the service to a managed version, and says a stack deploy would revert it
    applied = swarm_secrets(
        lab, "apply", str(lab.root), "--yes", "--timeout", "60", env={"TEST_PW": "rotated-1"}
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "would revert this change; deploy it with `swarm-secrets stack deploy`" in applied.stdout
    assert lab.read_in_task(db, "/run/secrets/db_password")[0] == b"rotated-1"
    assert tasks.new(db) == 1

    # the override for a deploy run by hand pins the managed compose secret to the current version
    override = tmp_path / "override.yml"
    done = swarm_secrets(
        lab, "stack", "override", "-c", str(work / "stack.yml"), "--manifests", str(lab.root), stack,
        "-o", str(override), env={"TEST_PW": "rotated-1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pinned = yaml.safe_load(override.read_text())["secrets"]
    assert pinned == {"db_password": {"external": True, "name": f"{pw}_v1"}}

    def release(number: int, value: str) -> str:
        done = swarm_secrets(
            lab, "stack", "deploy", "-c", str(work / "stack.yml"), "--manifests", str(lab.root), stack,
            "--docker-cli", cli, "--timeout", "60", env={"TEST_PW": value, "RELEASE": str(number)},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert value not in done.stdout + done.stderr  # never a value, in any output
        assert not any(value in v for v in api.inspect_service(db)["Spec"]["Labels"].values())
        wait_converged(lab, db)
        return done.stdout

    # 3. the team's next release, through swarm-secrets: one update, the rotated value stays
    out = release(2, "rotated-1")
    assert f"~ deploy stack {stack}: release" in out and f"deployed stack {stack}" in out
    assert lab.service_secret_names(db) == {"db_password": f"{pw}_v1"}
    assert lab.read_in_task(db, "/run/secrets/db_password")[0] == b"rotated-1"
    assert "RELEASE=2" in api.inspect_service(db)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert tasks.new(db) == 1

    # a release that also rotates the value: still one update; v1 stays as the rollback target
    out = release(3, "rotated-2")
    assert f"pins {pw}_v2" in out
    assert lab.read_in_task(db, "/run/secrets/db_password")[0] == b"rotated-2"
    assert tasks.new(db) == 1
    assert {n for n in lab.secret_names() if n.startswith(pw)} == {f"{pw}_v1", f"{pw}_v2"}
    assert (
        api.inspect_service(db)["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretName"]
        == f"{pw}_v1"
    )

    # the next release makes v2 the rollback target: v1 is needed by nothing any more and goes
    out = release(4, "rotated-2")
    assert f"- remove {pw}_v1" in out and f"removed: {pw}_v1" in out
    assert {n for n in lab.secret_names() if n.startswith(pw)} == {f"{pw}_v2"}
    assert tasks.new(db) == 1
    assert (
        swarm_secrets(
            lab, "plan", str(lab.root), "--detailed-exitcode", env={"TEST_PW": "rotated-2"}
        ).returncode
        == 0
    )

    # a plain `docker stack deploy` puts the stack's own secret back: drift, and the plan says by what
    docker_cli(lab, cli, "stack", "deploy", "-c", "stack.yml", stack, cwd=work, env={"RELEASE": "4"})
    plan = swarm_secrets(lab, "plan", str(lab.root), "--format", "json", env={"TEST_PW": "rotated-2"})
    assert plan.returncode == 0, plan.stderr
    assert (
        f"drift: a `docker stack deploy` of stack '{stack}' put its own secret '{stack}_db_password' back"
        in plan.stdout
    )


def test_env_in_a_shell_then_a_compose_file_naming_its_versions(
    lab: Lab, api: docker.APIClient, tmp_path: Path, stacks_cleanup: None
) -> None:
    stack, pw, token = lab.prefix, lab.name("pw"), lab.name("token")
    app = f"{stack}_app"
    lab.manifest(
        {
            pw: {
                "source": {"env": "TEST_PW"},
                "services": [{"service": app, "target": "db_password", "optional": True}],
            },
            token: {
                "source": {"env": "TEST_TOKEN"},
                "services": [{"service": app, "target": "token", "optional": True}],
            },
        }
    )
    values = {"TEST_PW": "pw-value", "TEST_TOKEN": "token-value"}
    applied = swarm_secrets(lab, "apply", str(lab.root), "--yes", env=values)
    assert applied.returncode == 0, applied.stdout + applied.stderr  # the service comes later: optional
    work = tmp_path / "app"
    work.mkdir()
    (work / "stack.yml").write_text(
        compose(
            {"app": {"secrets": ["db_password", "token"]}},
            {
                "db_password": {"external": True, "name": "${" + variable_name(pw) + "}"},
                "token": {"external": True, "name": "${" + variable_name(token) + "}"},
            },
        )
    )
    env_command = f"{sys.executable} -m reconciler env {lab.root}"
    script = f'set -e; eval "$({env_command})"; docker stack deploy -c stack.yml {stack}'
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=lab.env(**values), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lab.wait_running(app, 1)
    assert lab.service_secret_names(app) == {"db_password": f"{pw}_v1", "token": f"{token}_v1"}
    assert lab.read_in_task(app, "/run/secrets/token")[0] == b"token-value"
    assert swarm_secrets(lab, "plan", str(lab.root), "--detailed-exitcode", env=values).returncode == 0
    # a value without a version yet: env refuses to name one, and prints no value
    stale = swarm_secrets(lab, "env", str(lab.root), env={**values, "TEST_PW": "changed-value"})
    assert stale.returncode == 1 and "run `swarm-secrets apply` first" in stale.stderr
    assert "changed-value" not in stale.stdout + stale.stderr


# --- a Stack in git, followed by run ---------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")  # fmt: skip
    return subprocess.run(["git", "-C", str(cwd), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def sops(*args: str, cwd: Path, key_file: Path, stdin: str | None = None) -> None:
    from reconciler.sources.sops import find_sops

    env = dict(os.environ, SOPS_AGE_KEY_FILE=str(key_file))
    subprocess.run([find_sops(env), *args], input=stdin, cwd=cwd, env=env, check=True, capture_output=True,
                   text=True, timeout=60)  # fmt: skip


@pytest.fixture()
def loop(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        cmd = [sys.executable, "-m", "reconciler", "--log-level", "info", "run", *args, "--listen",
               f"127.0.0.1:{port}", "--interval", "300", "--debounce", "0.2", "--timeout", "60"]  # fmt: skip
        with (tmp_path / "run.log").open("wb") as log:
            process = subprocess.Popen(cmd, env=lab.env(**env), stdout=subprocess.DEVNULL, stderr=log)
        started.append(process)
        return process, port

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(port: int, name: str) -> float:
    lines = metrics(port).splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + " ", name + "{")))


def at_revision(port: int, revision: str) -> bool:
    """The loop finished a tick at ``revision`` (its metrics name the revision applied last)."""
    return f'swarm_secrets_git_revision_info{{revision="{revision}"}} 1.0' in metrics(port)


def test_a_stack_manifest_in_git_followed_by_run_rolls_each_service_once_per_commit(
    lab: Lab, api: docker.APIClient, tmp_path: Path, stacks_cleanup: None,
    loop: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:  # fmt: skip
    stack, pw = lab.prefix, lab.name("pw")
    app, worker = f"{stack}_app", f"{stack}_worker"
    key_file = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    recipient = next(
        line.split(": ")[1] for line in key_file.read_text().splitlines() if "public key" in line
    )
    work = tmp_path / "work"
    manifests = work / "manifests"
    (manifests / "secrets").mkdir(parents=True)
    (manifests / ".sops.yaml").write_text(yaml.safe_dump({"creation_rules": [{"age": recipient}]}))
    (manifests / "secrets" / "app.enc.yaml").write_text("db:\n  password: first-value\n")
    sops("--encrypt", "--in-place", "secrets/app.enc.yaml", cwd=manifests, key_file=key_file)
    (manifests / "set.yaml").write_text(yaml.safe_dump({
        "apiVersion": "swarm-secrets/v1", "kind": "SecretSet", "metadata": {"name": f"{stack}-set"},
        "spec": {"secrets": {pw: {"source": {"sops": {"file": "secrets/app.enc.yaml", "key": "db.password"}},
                                  "services": [{"service": app, "target": "db_password"}]}}},
    }))  # fmt: skip
    (manifests / "stack.yaml").write_text(yaml.safe_dump({
        "apiVersion": "swarm-secrets/v1", "kind": "Stack", "metadata": {"name": stack},
        "spec": {"compose": ["compose.yml"], "env": {"RELEASE": "1"}, "resolveImage": "never"},
    }))  # fmt: skip

    def write_compose(release: str) -> None:
        (manifests / "compose.yml").write_text(
            compose(
                {
                    "app": {"environment": {"RELEASE": release}, "secrets": ["db_password"]},
                    "worker": {"environment": {"RELEASE": release}},
                },
                {"db_password": {"external": True}},  # pinned by the override; never deployed as such
            )
        )

    write_compose("${RELEASE}")
    (work / "README.md").write_text("the app\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "apiVersion": "swarm-secrets/v1", "kind": "Policy",
        "spec": {"rules": [{"sets": [f"{stack}-set"], "stacks": [stack], "deploy": [stack]}]},
    }))  # fmt: skip
    token = tmp_path / "token"
    token.write_text("reconcile-token\n")
    _, port = loop(
        "--git-url", work.as_uri(), "--git-ref", "main", "--git-path", "manifests", "--policy", str(policy),
        "--state-dir", str(tmp_path / "state"), "--reconcile-token-file", str(token),
        env={"SOPS_AGE_KEY_FILE": str(key_file)},
    )  # fmt: skip
    tasks = Tasks(api)

    def ran(service: str, value: bytes) -> bool:
        return lab.read_in_task(service, "/run/secrets/db_password")[0] == value

    eventually(lambda: at_revision(port, git(work, "rev-parse", "HEAD")), 120, "the first tick")
    assert ran(app, b"first-value")
    assert metric(port, "swarm_secrets_stack_deploys_total") == 1
    tasks.new(app), tasks.new(worker)

    def reconcile() -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/reconcile", data=b"", method="POST",
            headers={"Authorization": "Bearer reconcile-token"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202

    # a commit that changes the value (sops) and the compose file: each service of the stack rolls once
    sops("set", "--value-stdin", "secrets/app.enc.yaml", '["db"]["password"]', stdin='"second-value"',
         cwd=manifests, key_file=key_file)  # fmt: skip
    write_compose("2")
    git(work, "commit", "-q", "-am", "second")
    reconcile()
    eventually(
        lambda: at_revision(port, git(work, "rev-parse", "HEAD")), 120, "the tick of the second commit"
    )
    assert ran(app, b"second-value")
    wait_converged(lab, app)
    wait_converged(lab, worker)
    assert (tasks.new(app), tasks.new(worker)) == (1, 1)
    assert metric(port, "swarm_secrets_stack_deploys_total") == 2
    assert lab.service_secret_names(app) == {"db_password": f"{pw}_v2"}
    assert "RELEASE=2" in api.inspect_service(worker)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]

    # a commit that changes nothing in the stack: nothing is deployed
    versions = {s: api.inspect_service(s)["Version"]["Index"] for s in (app, worker)}
    (work / "README.md").write_text("the app, documented\n")
    git(work, "commit", "-q", "-am", "third")
    reconcile()
    eventually(lambda: at_revision(port, git(work, "rev-parse", "HEAD")), 120, "the tick of the third commit")
    assert metric(port, "swarm_secrets_stack_deploys_total") == 2
    assert {s: api.inspect_service(s)["Version"]["Index"] for s in (app, worker)} == versions
    assert (tasks.new(app), tasks.new(worker)) == (0, 0)
