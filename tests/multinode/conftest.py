"""Fixtures for tests on a three-manager swarm (``scripts/multi-swarm``: one dockerd per network
namespace on one bridge).

The session fixture :func:`cluster` starts that swarm the first time a test of this folder needs it and
tears it down at the end of the session (also after failures and Ctrl-C), so ``scripts/test`` needs no
extra step and a run that selects no multi-node test starts nothing. ``SWARM_SECRETS_MULTI_DIR`` names
the folder; when a swarm is already up there (``scripts/multi-swarm up`` by hand, for a fast loop) it is
used and left running. It needs root, like ``scripts/dev-swarm``: without it the tests are skipped,
unless ``SWARM_SECRETS_REQUIRE_SWARM`` is set (``scripts/test`` sets it), where they fail.

Every test works under its own prefix (:class:`MultiLab`, a :class:`~tests.integration.conftest.Lab`
pointed at one manager), may stop or kill engines, and leaves all three engines running and the swarm
with three ready managers again (:func:`mlab`'s teardown), its objects removed.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import docker
import pytest

from tests.integration.conftest import Lab

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "multi-swarm"
NODES = (1, 2, 3)


@dataclass
class Cluster:
    """The three engines of the multi-node swarm and the script that starts and stops them."""

    dir: Path
    hosts: dict[int, str]
    node_ids: dict[int, str]
    apis: dict[int, docker.APIClient] = field(default_factory=dict)

    def script(self, *args: str, check: bool = True) -> str:
        env = dict(os.environ, SWARM_SECRETS_MULTI_DIR=str(self.dir))
        proc = subprocess.run(
            [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"multi-swarm {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout.strip()

    def api(self, node: int) -> docker.APIClient:
        if node not in self.apis:
            self.apis[node] = docker.APIClient(base_url=self.hosts[node], version="auto", timeout=120)
        return self.apis[node]

    def running(self, node: int) -> bool:
        """The engine answers ``/_ping`` (asked on a plain socket: docker-py leaks the socket of a failed
        connect, which pytest would report)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            try:
                sock.connect(self.hosts[node].removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in sock.recv(64)
            except OSError:
                return False

    def leader(self) -> int:
        return int(self.script("leader"))

    def node_of(self, node_id: str) -> int:
        return next(n for n, i in self.node_ids.items() if i == node_id)

    def stop(self, node: int) -> None:
        self.script("stop-node", str(node))

    def kill(self, node: int) -> None:
        self.script("kill-node", str(node))

    def start(self, node: int) -> None:
        self.script("start-node", str(node))

    def node_state(self, node: int, *, via: int) -> str:
        return str(self.api(via).inspect_node(self.node_ids[node])["Status"]["State"])

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every engine runs and a manager reports three ready managers, one of them leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for node in NODES:
                if not self.running(node):
                    self.start(node)
            for node in NODES:
                try:
                    listed = self.api(node).nodes()
                except Exception as exc:  # noqa: BLE001 - an election may be running: ask again
                    last = str(exc)
                    continue
                ready = [
                    n
                    for n in listed
                    if n["Status"]["State"] == "ready"
                    and (n.get("ManagerStatus") or {}).get("Reachability") == "reachable"
                ]
                leaders = [n for n in ready if (n.get("ManagerStatus") or {}).get("Leader")]
                if len(ready) == len(NODES) and leaders:
                    return
                last = f"{len(ready)} ready managers"
            time.sleep(1)
        raise AssertionError(f"the swarm did not recover three ready managers: {last}")


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # pytest then runs the finalizers, and the swarm is torn down


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    given = os.environ.get("SWARM_SECRETS_MULTI_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="swarm-secrets-multi.", dir="/tmp"))
    reuse = (folder / "ready").exists()
    if os.geteuid() != 0:
        message = "the multi-node swarm needs root (network namespaces, dockerd)"
        if os.environ.get("SWARM_SECRETS_REQUIRE_SWARM"):
            pytest.fail(message)
        pytest.skip(message)
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    env = dict(os.environ, SWARM_SECRETS_MULTI_DIR=str(folder))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if proc.returncode != 0:
            pytest.fail(f"scripts/multi-swarm up failed:\n{proc.stderr}")
        print(f"\nmulti-node swarm up in {time.monotonic() - started:.1f} s ({folder})", file=sys.stderr)
        hosts = {n: f"unix://{folder}/n{n}/docker.sock" for n in NODES}
        node_ids = {n: (folder / f"n{n}" / "node-id").read_text().strip() for n in NODES}
        built = Cluster(dir=folder, hosts=hosts, node_ids=node_ids)
        yield built
        for client in built.apis.values():
            client.close()
    finally:
        if not reuse:
            subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=300, check=False)
        signal.signal(signal.SIGTERM, previous)


@dataclass
class MultiLab(Lab):
    """A :class:`Lab` whose API and DOCKER_HOST are one manager of the cluster (:meth:`via` switches)."""

    cluster: Cluster | None = None
    manager: int = 1

    def via(self, node: int) -> None:
        """Talk to the swarm through manager ``node`` from now on (the CLI's DOCKER_HOST too)."""
        assert self.cluster is not None
        self.manager = node
        self.api = self.cluster.api(node)
        self.docker_host = self.cluster.hosts[node]

    def read_in_every_task(self, service: str, path: str) -> dict[str, tuple[int, bytes]]:
        """task id -> (node, content of ``path``) for every running task of ``service`` on a ready node,
        each read through the engine of the node it runs on."""
        assert self.cluster is not None
        ready = {n["ID"] for n in self.api.nodes() if n["Status"]["State"] == "ready"}
        tasks = self.api.tasks(filters={"service": service, "desired-state": "running"})
        found: dict[str, tuple[int, bytes]] = {}
        for task in tasks:
            if task["Status"]["State"] != "running" or task.get("NodeID") not in ready:
                continue
            node = self.cluster.node_of(task["NodeID"])
            container = task["Status"]["ContainerStatus"]["ContainerID"]
            api = self.cluster.api(node)
            exec_id = api.exec_create(container, ["cat", path])
            output: bytes = api.exec_start(exec_id)
            assert api.exec_inspect(exec_id)["ExitCode"] == 0, output
            found[task["ID"]] = (node, output)
        return found

    def wait_spread(self, service: str, replicas: int, timeout: float = 90) -> set[int]:
        """Until ``replicas`` tasks run on ready nodes; the nodes they run on."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        nodes: set[int] = set()
        while time.monotonic() < deadline:
            ready = {n["ID"] for n in self.api.nodes() if n["Status"]["State"] == "ready"}
            tasks = [
                t
                for t in self.api.tasks(filters={"service": service, "desired-state": "running"})
                if t["Status"]["State"] == "running" and t.get("NodeID") in ready
            ]
            nodes = {self.cluster.node_of(t["NodeID"]) for t in tasks}
            if len(tasks) >= replicas:
                return nodes
            time.sleep(0.5)
        raise AssertionError(f"{service}: {replicas} tasks did not run (on nodes {sorted(nodes)})")


@pytest.fixture()
def mlab(cluster: Cluster, tmp_path: Path) -> Iterator[MultiLab]:
    cluster.wait_ready()
    lab = MultiLab(
        api=cluster.api(1),
        prefix="m" + secrets.token_hex(3),
        root=tmp_path / "manifests",
        docker_host=cluster.hosts[1],
        cluster=cluster,
    )
    lab.root.mkdir()
    yield lab
    # Whatever the test stopped comes back, so the next test finds three ready managers.
    cluster.wait_ready()
    lab.via(cluster.leader())
    lab.cleanup()
