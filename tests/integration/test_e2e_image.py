"""End to end: the real image, built from the repository's Dockerfile (scripts/build-image runs
``docker build`` on this checkout, making the base locally since no registry is reachable), runs
``swarm-secrets run`` **as a swarm service** on the test swarm, following a git repository (a bare
repo bind-mounted into it). A commit that changes an encrypted value leads, without any command, to a
new version and the consuming service rolled; a webhook with a bad signature is refused; ``/metrics``
shows the ticks.

The image itself: at most 200 MB with sops and the docker CLI, no pip and no perl, tini as PID 1
(a plain ``docker run`` stops cleanly on SIGTERM), the healthcheck, the OCI labels with the version.

Slow the first time on a machine (debootstrap of the base, ~1 min); the base is cached afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .conftest import Lab, remove_secrets
from .test_loop_service import eventually

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SWARM_SECRETS_E2E_IMAGE", "local/swarm-secrets:e2e")
MAX_IMAGE_BYTES = 200_000_000


@pytest.fixture(scope="session")
def image(docker_host: str) -> str:
    if not os.environ.get("SWARM_SECRETS_DEV_ENGINE"):
        pytest.skip("builds an image: only on the throwaway engine of scripts/test")
    done = subprocess.run(
        [str(REPO / "scripts" / "build-image"), IMAGE],
        env=dict(os.environ, DOCKER_HOST=docker_host),
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)  # the size and its breakdown (pytest -s shows it)
    return IMAGE


def docker_cli(docker_host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=dict(os.environ, DOCKER_HOST=docker_host),
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def in_image(docker_host: str, image: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return docker_cli(
        docker_host, "run", "--rm", "--network", "none", "--entrypoint", entrypoint, image, *args
    )


def test_image_size_and_contents(image: str, api: docker.APIClient, docker_host: str) -> None:
    info = api.inspect_image(image)
    assert info["Size"] <= MAX_IMAGE_BYTES, f"the image is {info['Size'] / 1e6:.1f} MB, more than 200 MB"
    config = info["Config"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "-s", "--", "swarm-secrets"]
    assert config["Cmd"] == ["run"]
    assert config["Healthcheck"]["Test"][:3] == ["CMD", "python3", "-c"]
    assert "http://127.0.0.1:8080/healthz" in config["Healthcheck"]["Test"][3]
    labels = config["Labels"]
    version = in_image(docker_host, image, "swarm-secrets", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"swarm-secrets {labels['org.opencontainers.image.version']}\n"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    assert labels["org.opencontainers.image.revision"].removesuffix("+dirty") == head
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"

    # what the features need is there and runs; what they do not need is not
    check = in_image(docker_host, image, "python3", "-c", """
import importlib.util, os, shutil, subprocess
from reconciler.sources.sops import find_sops
assert importlib.util.find_spec("pip") is None, "pip"
assert importlib.util.find_spec("setuptools") is None, "setuptools"
for absent in ("perl", "apt-get", "dpkg", "bash"):
    assert shutil.which(absent, path="/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin") is None, absent
sops = find_sops(os.environ)
for command in (["git", "--version"], ["docker", "--version"], ["ssh", "-V"], [sops, "--version"]):
    subprocess.run(command, check=True, capture_output=True)
print(subprocess.run(["docker", "--version"], check=True, capture_output=True, text=True).stdout)
""")  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("Docker version ")


def test_a_plain_docker_run_stops_cleanly_on_sigterm(image: str, docker_host: str) -> None:
    # tini as PID 1 forwards SIGTERM to `run`, which finishes and exits 0 (no engine is reachable
    # from this container, so it cannot even take the lease of `run` and tick: it keeps trying until
    # told to stop).
    started = docker_cli(docker_host, "run", "-d", "--network", "none", image, "--log-level", "info", "run",
                         "/nonexistent", "--listen", "off", "--no-events")  # fmt: skip
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        # the loop is running (its signal handlers are in place) once it tried to follow the lease
        eventually(
            lambda: "cannot follow the lease" in docker_cli(docker_host, "logs", container).stderr,
            60,
            "the first attempt at the lease",
        )
        stopped = docker_cli(docker_host, "stop", "--time", "20", container)
        assert stopped.returncode == 0, stopped.stderr
        state = docker_cli(
            docker_host, "inspect", "--format", "{{.State.ExitCode}}", container
        ).stdout.strip()
        assert state == "0", docker_cli(docker_host, "logs", container).stderr
    finally:
        docker_cli(docker_host, "rm", "-f", container)


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")  # fmt: skip
    return subprocess.run(["git", "-C", str(cwd), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def sops(*args: str, stdin: str | None = None, cwd: Path, key_file: Path) -> None:
    from reconciler.sources.sops import find_sops

    env = dict(os.environ, SOPS_AGE_KEY_FILE=str(key_file))
    subprocess.run([find_sops(env), *args], input=stdin, cwd=cwd, env=env, check=True, capture_output=True,
                   text=True, timeout=60)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def reconciler_service(lab: Lab, api: docker.APIClient) -> Iterator[dict[str, Any]]:
    info: dict[str, Any] = {}
    yield info
    if "id" in info:
        api.remove_service(info["id"])
    names = set(info.get("secrets", ()))
    remove_secrets(api, lambda s: s["Spec"]["Name"] in names)


def test_image_as_a_swarm_service_follows_git(
    image: str, lab: Lab, api: docker.APIClient, tmp_path: Path, docker_host: str,
    reconciler_service: dict[str, Any],
) -> None:  # fmt: skip
    # an age key for this test, and a repository with an encrypted value
    key_file = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    recipient = next(
        line.split(": ")[1] for line in key_file.read_text().splitlines() if "public key" in line
    )
    work = tmp_path / "work"
    (work / "manifests" / "secrets").mkdir(parents=True)
    pw, app = lab.name("pw"), lab.create_service("app")
    manifests = work / "manifests"
    (manifests / ".sops.yaml").write_text(yaml.safe_dump({"creation_rules": [{"age": recipient}]}))
    (manifests / "secrets" / "app.enc.yaml").write_text("db:\n  password: first-value\n")
    sops("--encrypt", "--in-place", "secrets/app.enc.yaml", cwd=manifests, key_file=key_file)
    (manifests / "set.yaml").write_text(yaml.safe_dump({
        "apiVersion": "swarm-secrets/v1", "kind": "SecretSet", "metadata": {"name": f"{lab.prefix}-e2e"},
        "spec": {"secrets": {pw: {"source": {"sops": {"file": "secrets/app.enc.yaml", "key": "db.password"}},
                                  "services": [app]}}},
    }))  # fmt: skip
    bare = tmp_path / "repo.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(bare)], check=True)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    git(work, "push", "-q", str(bare), "main")

    # the reconciler's own roots of trust, created by hand as deploy/README.md says
    age_secret, hook_secret = lab.name("e2e_age"), lab.name("e2e_hook")
    api.create_secret(age_secret, key_file.read_bytes())
    api.create_secret(hook_secret, b"e2e-webhook-secret")
    reconciler_service["secrets"] = [age_secret, hook_secret]
    socket_path = docker_host.removeprefix("unix://")
    port = free_port()
    spec = docker.types.TaskTemplate(
        docker.types.ContainerSpec(
            image,
            args=["--log-level", "info", "--log-format", "json", "run", "--git-url", "file:///repo.git",
                  "--git-ref", "main", "--git-path", "manifests", "--interval", "3",
                  "--webhook-secret-file", "/run/secrets/webhook", "--timeout", "60"],
            env=["SOPS_AGE_KEY_FILE=/run/secrets/age"],
            mounts=[docker.types.Mount("/var/run/docker.sock", socket_path, type="bind"),
                    docker.types.Mount("/repo.git", str(bare), type="bind", read_only=True)],
            secrets=[docker.types.SecretReference(api.inspect_secret(age_secret)["ID"], age_secret,
                                                  filename="age", mode=0o400),
                     docker.types.SecretReference(api.inspect_secret(hook_secret)["ID"], hook_secret,
                                                  filename="webhook", mode=0o400)],
            stop_grace_period=10_000_000_000,
        ),
    )  # fmt: skip
    created = api.create_service(
        spec, name=lab.name("reconciler"),
        endpoint_spec=docker.types.EndpointSpec(ports={port: (8080, "tcp", "host")}),
    )  # fmt: skip
    reconciler_service["id"] = created["ID"]

    # without any command: v1 appears and the consumer is rolled onto it
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v1"}, 240, "the first reconcile from git")
    first_revision = git(work, "rev-parse", "HEAD")
    labels = api.inspect_secret(f"{pw}_v1")["Spec"]["Labels"]
    assert labels["io.swarm-secrets.revision"] == first_revision

    # a commit that changes the encrypted value: v2, the consumer rolls, the task reads the new value
    new_value = json.dumps("second-value")
    sops("set", "--value-stdin", "secrets/app.enc.yaml", '["db"]["password"]', stdin=new_value,
         cwd=manifests, key_file=key_file)  # fmt: skip
    git(work, "commit", "-q", "-am", "rotate")
    git(work, "push", "-q", str(bare), "main")
    eventually(lambda: lab.service_secret_names(app) == {pw: f"{pw}_v2"}, 120, "the rotation from git")
    lab.wait_running(app, 1)
    eventually(lambda: lab.read_in_task(app, f"/run/secrets/{pw}")[0] == b"second-value", 60, "the new value")

    # the HTTP side, through the published port: a bad signature is refused, metrics show the ticks
    # the engine's own address: a dev engine runs in a network namespace of its own (scripts/dev-swarm)
    url = f"http://{api.info()['Swarm']['NodeAddr']}:{port}"
    bad = urllib.request.Request(
        f"{url}/hooks/github",
        data=b"{}",
        method="POST",
        headers={"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Event": "push"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=5)
    assert refused.value.code == 401
    refused.value.close()

    def metrics() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def successful_ticks() -> float:
        prefix = 'swarm_secrets_ticks_total{result="success"}'
        return sum(float(line.split()[-1]) for line in metrics().splitlines() if line.startswith(prefix))

    # the rotation's tick ends once its rollout is watched to the end
    eventually(lambda: successful_ticks() >= 2, 120, "two successful ticks in /metrics")
    assert f'revision="{git(work, "rev-parse", "HEAD")}"' in metrics()

    # the service's logs carry no value
    logs = subprocess.run(["docker", "service", "logs", "--raw", created["ID"]], capture_output=True,
                          env=dict(os.environ, DOCKER_HOST=docker_host), timeout=60, check=False)  # fmt: skip
    assert b"second-value" not in logs.stdout + logs.stderr
    assert b"first-value" not in logs.stdout + logs.stderr
