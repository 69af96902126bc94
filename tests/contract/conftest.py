"""The ``world`` fixture: one swarm to run a contract test against, the in-memory fake or the real engine.

Both worlds offer the same few operations a person (or another tool) performs on a swarm: create a
service, write its spec as someone else, roll it back by hand, remove a config. The real engine is the
throwaway swarm of ``scripts/test``, found exactly as the integration tests find it
(``SWARM_SECRETS_TEST_DOCKER_HOST``; skipped without it unless ``SWARM_SECRETS_REQUIRE_SWARM`` is set);
every object it creates carries a unique prefix and is removed afterwards.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import docker
import pytest

from reconciler.core.model import SecretValue
from reconciler.engine.protocol import Swarm
from reconciler.engine.swarm import Swarm as DockerSwarm
from tests.fakes.swarm import FakeSwarm, requires
from tests.integration.conftest import IDLE_COMMAND, Lab, _docker_host

SpecChange = Callable[[dict[str, Any]], None]


class World(Protocol):
    swarm: Swarm
    real: bool

    def name(self, suffix: str) -> str: ...

    def secret(self, suffix: str, value: bytes) -> str:
        """Create a secret (as a person would) and return its name."""
        ...

    def ref(self, name: str, target: str) -> dict[str, Any]:
        """A raw reference to the secret ``name`` at ``target`` (root, 0444)."""
        ...

    def create_service(
        self,
        suffix: str,
        *,
        secrets: Sequence[tuple[str, str]] = (),
        replicas: int = 1,
        failure_action: str = "pause",
        require: tuple[str, bytes] | None = None,
        env: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """A running service mounting ``(secret name, target)``; its tasks exit at once unless the
        file ``require[0]`` holds ``require[1]``. Returns the service id."""
        ...

    def foreign_write(self, service_id: str, change: SpecChange) -> None:
        """Someone else updates the service's spec (``change`` edits it in place)."""
        ...

    def manual_rollback(self, service_id: str) -> None:
        """``docker service rollback``."""
        ...

    def pause(self) -> None:
        """Let time pass between two looks at a rollout."""
        ...

    def remove_config(self, config_id: str) -> None:
        """``docker config rm`` (as a person would)."""
        ...


class FakeWorld:
    real = False

    def __init__(self) -> None:
        self.fake = FakeSwarm()
        self.swarm: Swarm = self.fake
        self.prefix = "c" + secrets.token_hex(3)
        self._pauses = 0

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def secret(self, suffix: str, value: bytes) -> str:
        name = self.name(suffix)
        self.fake.create_secret(name, SecretValue(value), {})
        return name

    def ref(self, name: str, target: str) -> dict[str, Any]:
        return self.fake.ref(name, target)

    def create_service(
        self,
        suffix: str,
        *,
        secrets: Sequence[tuple[str, str]] = (),
        replicas: int = 1,
        failure_action: str = "pause",
        require: tuple[str, bytes] | None = None,
        env: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> str:
        return self.fake.add_service(
            self.name(suffix),
            secrets=[self.ref(name, target) for name, target in secrets],
            replicas=replicas,
            failure_action=failure_action,
            health=requires(*require) if require else None,
            env=env,
            labels=labels,
        )

    def foreign_write(self, service_id: str, change: SpecChange) -> None:
        self.fake.foreign_write(self.fake.services[service_id].spec["Name"], change)

    def manual_rollback(self, service_id: str) -> None:
        self.fake.manual_rollback(self.fake.services[service_id].spec["Name"])

    def pause(self) -> None:
        self._pauses += 1
        assert self._pauses < 1000, "the fake's rollout never ended"

    def remove_config(self, config_id: str) -> None:
        del self.fake.configs[config_id]


class EngineWorld:
    real = True

    def __init__(self, docker_host: str, root: Path) -> None:
        self.api = docker.APIClient(base_url=docker_host, version="auto", timeout=60)
        self.lab = Lab(api=self.api, prefix="c" + secrets.token_hex(3), root=root, docker_host=docker_host)
        self.client = DockerSwarm.connect(docker_host)
        self.swarm: Swarm = self.client

    def name(self, suffix: str) -> str:
        return self.lab.name(suffix)

    def secret(self, suffix: str, value: bytes) -> str:
        name = self.name(suffix)
        self.api.create_secret(name, value)
        return name

    def ref(self, name: str, target: str) -> dict[str, Any]:
        return self.lab.secret_ref(name=name, target=target)

    def create_service(
        self,
        suffix: str,
        *,
        secrets: Sequence[tuple[str, str]] = (),
        replicas: int = 1,
        failure_action: str = "pause",
        require: tuple[str, bytes] | None = None,
        env: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> str:
        command = IDLE_COMMAND
        if require is not None:
            path, content = require
            idle = "trap 'exit 0' TERM; while :; do sleep 0.2; done"
            command = ["sh", "-c", f"grep -q '^{content.decode()}$' {path} || exit 1; {idle}"]
        name = self.lab.create_service(
            suffix,
            secrets=[{"name": name, "target": target} for name, target in secrets],
            replicas=replicas,
            failure_action=failure_action,
            command=command,
            env=env,
            labels=labels,
        )
        return str(self.api.inspect_service(name)["ID"])

    def _update(self, service_id: str, change: SpecChange, **params: str) -> None:
        for attempt in range(5):  # the orchestrator moves the version while a rollout runs: retry
            raw = self.api.inspect_service(service_id)
            spec = raw["Spec"]
            change(spec)
            url = self.api._url("/services/{0}/update", service_id)
            version = raw["Version"]["Index"]
            response = self.api._post_json(url, data=spec, params={"version": version, **params})
            try:
                self.api._raise_for_status(response)
                return
            except docker.errors.APIError as exc:
                if "out of sequence" not in str(exc) or attempt == 4:
                    raise

    def foreign_write(self, service_id: str, change: SpecChange) -> None:
        self._update(service_id, change)

    def manual_rollback(self, service_id: str) -> None:
        self._update(service_id, lambda spec: None, rollback="previous")

    def pause(self) -> None:
        time.sleep(0.2)

    def remove_config(self, config_id: str) -> None:
        self.api.remove_config(config_id)

    def close(self) -> None:
        self.lab.cleanup()
        for config in self.api.configs():
            if config["Spec"]["Name"].startswith(self.lab.prefix):
                self.api.remove_config(config["ID"])
        self.client.close()
        self.api.close()


@pytest.fixture(params=["fake", pytest.param("engine", marks=pytest.mark.swarm)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "fake":
        yield FakeWorld()
        return
    engine = EngineWorld(_docker_host(), tmp_path)
    try:
        yield engine
    finally:
        engine.close()
