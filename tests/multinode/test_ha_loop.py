"""The long-running loop, highly available, on the three-manager swarm: two ``swarm-secrets run``
processes pointed at different managers elect one leader through the lease of ``run``; the standby
runs no tick and hands a webhook it receives to the leader; when the leader is killed (``kill -9``) or
its manager stops, the standby applies the next change within the lease TTL plus one interval."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.daemon.leader import RUN_LEASE
from reconciler.engine import lease
from reconciler.engine.swarm import Swarm

from .conftest import Cluster, MultiLab

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

TTL = 6
INTERVAL = 30
"""Long, so that work done sooner after a takeover is the takeover's, not the interval's."""
SECRET = b"ha-webhook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (AssertionError, urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Replica:
    """One ``run`` process talking to one manager, as a replica of the stack would."""

    def __init__(self, mlab: MultiLab, tmp: Path, node: int, name: str) -> None:
        assert mlab.cluster is not None
        self.name, self.node, self.port = name, node, free_port()
        secret = tmp / "webhook.secret"
        secret.write_bytes(SECRET)
        self.log = tmp / f"{name}.log"
        cmd = [
            sys.executable, "-m", "reconciler", "--log-level", "info", "--log-format", "json",
            "run", str(mlab.root), "--interval", str(INTERVAL), "--debounce", "0.5", "--timeout", "60",
            "--lock-ttl", str(TTL), "--listen", f"127.0.0.1:{self.port}",
            "--github-webhook-secret-file", str(secret),
        ]  # fmt: skip
        env = mlab.env(DOCKER_HOST=mlab.cluster.hosts[node], SWARM_SECRETS_TASK=name)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def metric(self, name: str) -> float:
        status, text = self.get("/metrics")
        assert status == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def github_push(self) -> int:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/hooks/github", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)

    def messages(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line).get("message", "") for line in lines if line.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def replicas(mlab: MultiLab, tmp_path: Path) -> Iterator[Callable[[int, str], Replica]]:
    started: list[Replica] = []

    def start(node: int, name: str) -> Replica:
        replica = Replica(mlab, tmp_path, node, name)
        started.append(replica)
        eventually(lambda: replica.get("/healthz")[0] == 200, 30, f"{name}'s listener")
        return replica

    yield start
    for replica in started:
        replica.stop()


def one_leader(a: Replica, b: Replica) -> tuple[Replica, Replica]:
    """(leader, standby) once exactly one of the two holds the lease and the other stands by."""
    found: list[tuple[Replica, Replica]] = []

    def elected() -> bool:
        held = {r.name: r.metric("swarm_secrets_lease_held") for r in (a, b)}
        standing_by = [r for r in (a, b) if r.get("/readyz")[1].startswith("ready: standing by")]
        if sorted(held.values()) != [0.0, 1.0] or len(standing_by) != 1:
            return False
        leader = a if held[a.name] == 1 else b
        found.append((leader, b if leader is a else a))
        return standing_by[0] is not leader

    eventually(elected, 60, "one leader and one standby")
    return found[-1]


def holder(cluster: Cluster, node: int) -> lease.Record:
    with Swarm.connect(cluster.hosts[node]) as swarm:
        record = lease.read(swarm, RUN_LEASE)
    assert record is not None
    return record


def test_one_replica_leads_a_webhook_to_the_standby_ticks_the_leader_and_kill_9_hands_over(
    mlab: MultiLab, cluster: Cluster, replicas: Callable[[int, str], Replica]
) -> None:
    pw = mlab.name("pw")
    app = mlab.create_service("app")
    value = mlab.write("pw.txt", "one")
    mlab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    a, b = replicas(1, "replica-a"), replicas(2, "replica-b")
    leader, standby = one_leader(a, b)
    record = holder(cluster, 3)  # any manager shows it
    assert record.get("pid") == str(leader.proc.pid) and record.get("task") == leader.name
    eventually(
        lambda: leader.metric('swarm_secrets_ticks_total{result="success"}') == 1, 90, "the first tick"
    )
    assert mlab.service_secret_names(app) == {pw: f"{pw}_v1"}

    # a push webhook that reaches the standby is handed to the leader through the lease, and ticks there
    value.write_text("two")
    assert standby.github_push() == 202
    eventually(
        lambda: any(m.startswith("tick done (webhook:github)") for m in leader.messages()),
        60,
        "the handed-over tick on the leader",
    )
    assert mlab.service_secret_names(app) == {pw: f"{pw}_v2"}
    assert any("webhook:github handed to the replica that holds the lease" in m for m in standby.messages())
    assert standby.metric("swarm_secrets_ticks_total") == 0  # a standby never ticks

    # kill -9 of the leader: the standby takes over and applies the next change within TTL + interval
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait()
    killed = time.monotonic()
    value.write_text("three")
    eventually(lambda: mlab.service_secret_names(app) == {pw: f"{pw}_v3"}, TTL + INTERVAL, "the takeover")
    took = time.monotonic() - killed
    assert standby.metric("swarm_secrets_lease_held") == 1
    eventually(lambda: any(m.startswith("tick done (elected)") for m in standby.messages()), 30, "its tick")
    record = holder(cluster, standby.node)
    assert record.get("pid") == str(standby.proc.pid)
    print(f"\ntakeover after kill -9: the new value was applied {took:.1f} s after the kill", file=sys.stderr)


def test_when_the_leaders_manager_stops_a_replica_on_another_manager_takes_over(
    mlab: MultiLab, cluster: Cluster, replicas: Callable[[int, str], Replica]
) -> None:
    raft_leader = cluster.leader()
    # The loop's leader talks to a manager that is not the Raft leader, which stops: the swarm keeps its
    # quorum and needs no election. The service runs on the Raft leader, which stays up.
    on, other = [n for n in (1, 2, 3) if n != raft_leader][:2]
    mlab.via(other)
    pw = mlab.name("pw")
    app = mlab.create_service("app", placement={"Constraints": [f"node.id=={cluster.node_ids[raft_leader]}"]})
    value = mlab.write("pw.txt", "one")
    mlab.manifest({pw: {"source": {"file": "pw.txt"}, "services": [app]}})
    first = replicas(on, "replica-on")
    eventually(lambda: first.metric("swarm_secrets_lease_held") == 1, 60, "the first replica to lead")
    second = replicas(other, "replica-other")
    eventually(lambda: second.get("/readyz")[1].startswith("ready: standing by"), 60, "the standby")
    eventually(lambda: first.metric('swarm_secrets_ticks_total{result="success"}') == 1, 90, "the first tick")
    assert mlab.service_secret_names(app) == {pw: f"{pw}_v1"}

    stopped = time.monotonic()
    cluster.stop(on)  # the leader's manager goes away; the process itself lives on, cut off
    value.write_text("two")
    eventually(lambda: mlab.service_secret_names(app) == {pw: f"{pw}_v2"}, TTL + INTERVAL, "the takeover")
    took = time.monotonic() - stopped
    assert second.metric("swarm_secrets_lease_held") == 1
    eventually(lambda: first.metric("swarm_secrets_lease_held") == 0, 30, "the cut-off replica to step down")
    print(f"\ntakeover after the manager stopped: applied {took:.1f} s after the stop began", file=sys.stderr)
