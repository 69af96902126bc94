"""Fixtures for tests against the real throwaway swarm that ``scripts/test`` starts.

The engine is taken from ``SWARM_SECRETS_TEST_DOCKER_HOST`` only (never from DOCKER_HOST, which may
point at someone's real swarm). Without it the swarm tests are skipped, unless
``SWARM_SECRETS_REQUIRE_SWARM`` is set (as ``scripts/test`` does), where a missing engine fails.

Every test works under a unique prefix (``t<hex>``) for its set, secret and service names, and
everything carrying that prefix is removed afterwards, so tests do not see each other's objects.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler.engine.swarm import Swarm

TEST_IMAGE = os.environ.get("SWARM_SECRETS_TEST_IMAGE", "local/busybox:1")
# busybox `sleep` as PID 1 ignores SIGTERM; a shell that traps it stops at once, so rollouts are fast.
IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]


def _docker_host() -> str:
    host = os.environ.get("SWARM_SECRETS_TEST_DOCKER_HOST")
    if not host:
        if os.environ.get("SWARM_SECRETS_REQUIRE_SWARM"):
            pytest.fail("SWARM_SECRETS_TEST_DOCKER_HOST is not set; run the suite with scripts/test")
        pytest.skip("no test swarm: run the suite with scripts/test")
    return host


@pytest.fixture(scope="session")
def docker_host() -> str:
    return _docker_host()


@pytest.fixture(scope="session")
def api(docker_host: str) -> Iterator[docker.APIClient]:
    client = docker.APIClient(base_url=docker_host, version="auto", timeout=60)
    yield client
    client.close()


@pytest.fixture()
def swarm(docker_host: str) -> Iterator[Swarm]:
    client = Swarm.connect(docker_host)
    yield client
    client.close()


@dataclass
class Lab:
    """A test's private corner of the swarm plus a manifest folder."""

    api: docker.APIClient
    prefix: str
    root: Path
    docker_host: str

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def env(self, **extra: str) -> dict[str, str]:
        environment = dict(os.environ)
        environment["DOCKER_HOST"] = self.docker_host
        environment.update(extra)
        return environment

    def create_service(
        self,
        suffix: str,
        *,
        secrets: Sequence[Mapping[str, Any]] = (),
        replicas: int = 1,
        command: Sequence[str] = IDLE_COMMAND,
        failure_action: str = "pause",
        monitor_ns: int = 1_000_000_000,
        labels: Mapping[str, str] | None = None,
        env: Sequence[str] = (),
        mounts: Sequence[Mapping[str, Any]] = (),
        name: str | None = None,
        placement: Mapping[str, Any] | None = None,
        order: str = "start-first",
    ) -> str:
        """Create a service with the raw API (as a person would with the CLI) and wait for it."""
        name = name or self.name(suffix)
        spec: dict[str, Any] = {
            "Name": name,
            "Labels": dict(labels or {}),
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": TEST_IMAGE,
                    "Command": list(command),
                    "Env": list(env),
                    "Mounts": [dict(m) for m in mounts],
                    "StopGracePeriod": 1_000_000_000,
                    "Secrets": [self.secret_ref(**s) for s in secrets],
                },
                "RestartPolicy": {"Condition": "on-failure", "Delay": 500_000_000, "MaxAttempts": 0},
                **({"Placement": dict(placement)} if placement else {}),
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
            "UpdateConfig": {
                "Parallelism": 1,
                "FailureAction": failure_action,
                "Monitor": monitor_ns,
                "Order": order,
                "MaxFailureRatio": 0,
            },
            "RollbackConfig": {
                "Parallelism": 1,
                "FailureAction": "pause",
                "Monitor": 1_000_000_000,
                "Order": "start-first",
            },
        }
        response = self.api._post_json(self.api._url("/services/create"), data=spec)
        self.api._raise_for_status(response)
        self.wait_running(name, replicas)
        return name

    def secret_ref(
        self, *, name: str, target: str, uid: str = "0", gid: str = "0", mode: int = 0o444
    ) -> dict[str, Any]:
        secret = self.api.inspect_secret(name)
        return {
            "SecretID": secret["ID"],
            "SecretName": name,
            "File": {"Name": target, "UID": uid, "GID": gid, "Mode": mode},
        }

    def wait_running(self, service: str, replicas: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.api.tasks(filters={"service": service, "desired-state": "running"})
            if sum(1 for t in tasks if t["Status"]["State"] == "running") >= replicas:
                return
            time.sleep(0.2)
        raise AssertionError(f"service {service} did not reach {replicas} running tasks")

    def service_secret_names(self, service: str) -> dict[str, str]:
        """target → secret name of the service's current spec."""
        spec = self.api.inspect_service(service)["Spec"]
        refs = spec["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        return {r["File"]["Name"]: r["SecretName"] for r in refs}

    def read_in_task(self, service: str, path: str) -> tuple[bytes, str]:
        """(content, "uid gid mode") of ``path`` inside a running task of ``service``."""
        tasks = self.api.tasks(filters={"service": service, "desired-state": "running"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        assert running, f"no running task of {service}"
        newest = max(running, key=lambda t: t["Version"]["Index"])
        container = newest["Status"]["ContainerStatus"]["ContainerID"]
        content = self._exec(container, ["cat", path])
        stat = self._exec(container, ["stat", "-c", "%u %g %a", path]).decode().strip()
        return content, stat

    def _exec(self, container: str, cmd: list[str]) -> bytes:
        exec_id = self.api.exec_create(container, cmd)
        output: bytes = self.api.exec_start(exec_id)
        assert self.api.exec_inspect(exec_id)["ExitCode"] == 0, output
        return output

    def secret_names(self) -> set[str]:
        return {s["Spec"]["Name"] for s in self.api.secrets() if s["Spec"]["Name"].startswith(self.prefix)}

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def manifest(
        self,
        secrets_spec: Mapping[str, Any],
        *,
        set_suffix: str = "set",
        keep: int = 0,
        filename: str = "set.yaml",
    ) -> Path:
        doc = {
            "apiVersion": "swarm-secrets/v1",
            "kind": "SecretSet",
            "metadata": {"name": f"{self.prefix}-{set_suffix}".lower()},
            "spec": {"keep": keep, "secrets": dict(secrets_spec)},
        }
        return self.write(filename, yaml.safe_dump(doc, sort_keys=False))

    def versions(self) -> dict[str, int]:
        """Object → version index of this test's secrets and services and of every config but the lease
        of `run` (a running loop renews it all the time, changing nothing else): equal before and after
        a command means the command changed nothing."""
        found = {
            f"config {c['Spec']['Name']}": c["Version"]["Index"]
            for c in self.api.configs()
            if c["Spec"]["Name"] != "swarm-secrets-run-lease"
        }
        for kind, items in (("secret", self.api.secrets()), ("service", self.api.services())):
            for item in items:
                if item["Spec"]["Name"].startswith(self.prefix):
                    found[f"{kind} {item['Spec']['Name']}"] = item["Version"]["Index"]
        return found

    def cleanup(self) -> None:
        for service in self.api.services():
            if service["Spec"]["Name"].startswith(self.prefix):
                self.api.remove_service(service["ID"])
        remove_secrets(self.api, lambda s: str(s["Spec"]["Name"]).startswith(self.prefix))


def remove_secrets(
    api: docker.APIClient, which: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> None:
    """Remove the secrets ``which`` selects, as soon as no task of a removed service holds them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [s for s in api.secrets() if which(s)]
        for secret in left:
            try:
                api.remove_secret(secret["ID"])
            except docker.errors.APIError:
                pass  # still referenced by a task that is shutting down: next round
        if not left:
            return
        time.sleep(0.5)


@pytest.fixture()
def lab(api: docker.APIClient, tmp_path: Path, docker_host: str) -> Iterator[Lab]:
    laboratory = Lab(
        api=api, prefix="t" + secrets.token_hex(3), root=tmp_path / "manifests", docker_host=docker_host
    )
    laboratory.root.mkdir()
    yield laboratory
    laboratory.cleanup()
