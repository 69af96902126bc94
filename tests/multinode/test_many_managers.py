"""swarm-secrets on a three-manager swarm (real engines, ``scripts/multi-swarm``): rotation read inside
every replica on every node, the leader's engine killed mid-apply, the quorum lost and regained, and a
node stopped for good, whose tasks must not keep old versions forever.

Every test ends with the GitOps invariant (the next plan is empty) and counts versions: one per value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from reconciler.engine import swarm as swarm_module
from reconciler.engine.swarm import Swarm
from reconciler.errors import SwarmNoLeader

from .conftest import NODES, Cluster, MultiLab

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

SPREAD = {"MaxReplicas": 1}  # one replica per node: three replicas cover the three nodes
# With one replica per node a new task can only start where the old one stopped: start-first would wait
# forever for room (the rollout times out), so these services update stop-first.


def run(lab: MultiLab, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env=lab.env(**env), catch_exceptions=False)


def apply(lab: MultiLab, *extra: str, **env: str) -> Result:
    return run(lab, "apply", str(lab.root), "--yes", "--timeout", "120", *extra, **env)


def assert_converged(lab: MultiLab, **env: str) -> None:
    result = run(lab, "plan", str(lab.root), "--detailed-exitcode", **env)
    assert result.exit_code == 0, f"plan not empty after apply:\n{result.output}"


def other_manager(cluster: Cluster, *not_these: int) -> int:
    return next(n for n in NODES if n not in not_these)


def test_rotation_is_read_inside_every_replica_on_every_node(mlab: MultiLab, cluster: Cluster) -> None:
    mlab.via(other_manager(cluster, cluster.leader()))  # a follower serves the whole run
    pw = mlab.name("pw")
    web = mlab.create_service("web", replicas=3, placement=SPREAD, order="stop-first")
    assert mlab.wait_spread(web, 3) == set(NODES)
    mlab.manifest({pw: {"source": {"env": "PW"}, "services": [{"service": web, "target": "db_pw"}]}})

    for value, version in (("first-value", 1), ("second-value", 2)):
        result = apply(mlab, PW=value)
        assert result.exit_code == 0, result.output
        assert mlab.service_secret_names(web) == {"db_pw": f"{pw}_v{version}"}
        read = mlab.read_in_every_task(web, "/run/secrets/db_pw")
        assert {node for node, _ in read.values()} == set(NODES), read
        assert {content for _, content in read.values()} == {value.encode()}
        assert_converged(mlab, PW=value)
    assert mlab.secret_names() == {f"{pw}_v1", f"{pw}_v2"}


def test_one_docker_context_per_manager(mlab: MultiLab, cluster: Cluster, tmp_path: Path) -> None:
    """README's recipe: a context per manager (made by the docker CLI), chosen with DOCKER_CONTEXT, which
    wins over the current context; a context that names no manager is one clear error."""
    config = tmp_path / "docker-config"
    config.mkdir()
    cli_env = {"DOCKER_CONFIG": str(config), "PATH": os.environ["PATH"]}
    for name, host in (("manager-1", "unix:///nonexistent/docker.sock"), ("manager-2", cluster.hosts[2])):
        subprocess.run(
            ["docker", "context", "create", name, "--docker", f"host={host}"],
            env=cli_env,
            check=True,
            capture_output=True,
        )
    subprocess.run(["docker", "context", "use", "manager-1"], env=cli_env, check=True, capture_output=True)
    pw = mlab.name("pw")
    mlab.manifest({pw: {"source": {"env": "PW"}, "services": []}})
    env = {"DOCKER_HOST": None, "DOCKER_CONFIG": str(config), "PW": "x"}
    via_context = {**env, "DOCKER_CONTEXT": "manager-2"}
    result = CliRunner().invoke(main, ["apply", str(mlab.root), "--yes"], env=via_context)
    assert result.exit_code == 0, result.output
    assert mlab.secret_names() == {f"{pw}_v1"}
    # the current context (manager-1) is used without DOCKER_CONTEXT: that one cannot be reached
    result = CliRunner().invoke(main, ["plan", str(mlab.root)], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: cannot reach the Docker engine at unix:///nonexistent/")
    assert "(docker context 'manager-1')" in result.output
    result = CliRunner().invoke(main, ["plan", str(mlab.root)], env={**env, "DOCKER_CONTEXT": "manager-9"})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: docker context 'manager-9' (DOCKER_CONTEXT) not found")


def test_leader_killed_mid_apply(mlab: MultiLab, cluster: Cluster) -> None:
    leader = cluster.leader()
    mlab.via(other_manager(cluster, leader))
    pw, token = mlab.name("pw"), mlab.name("token")
    services = [mlab.create_service(f"app{i}", replicas=3) for i in (1, 2)]
    mlab.manifest(
        {
            pw: {"source": {"env": "PW"}, "services": services},
            token: {"source": {"env": "TOKEN"}, "services": services[:1]},
        }
    )
    assert apply(mlab, PW="one", TOKEN="t-one").exit_code == 0

    env = mlab.env(PW="two", TOKEN="t-two")
    cmd = [sys.executable, "-m", "reconciler", "apply", str(mlab.root), "--yes", "--timeout", "120"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kill the leader's engine as soon as a rollout is in flight.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [(mlab.api.inspect_service(s).get("UpdateStatus") or {}).get("State") for s in services]
        if "updating" in states:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"no rollout started: {proc.communicate()[0]}")
    cluster.kill(leader)
    output, _ = proc.communicate(timeout=400)
    print(f"apply while the leader (node {leader}) was killed, exit {proc.returncode}:\n{output}")
    # Converged, or failures reported per service (exit 3); never a traceback or a bare engine error.
    assert proc.returncode in (0, 3), output
    assert "Traceback" not in output
    summary = "Apply complete" if proc.returncode == 0 else "Apply finished with failures"
    assert summary in output, output

    # The old leader stays down: a re-run through the same manager converges, and then nothing is left.
    result = apply(mlab, PW="two", TOKEN="t-two")
    assert result.exit_code == 0, f"first run:\n{output}\nre-run:\n{result.output}"
    assert_converged(mlab, PW="two", TOKEN="t-two")
    assert mlab.secret_names() == {f"{pw}_v1", f"{pw}_v2", f"{token}_v1", f"{token}_v2"}
    for service in services:
        assert mlab.service_secret_names(service)[pw] == f"{pw}_v2"
        mlab.wait_spread(service, 3)
        read = mlab.read_in_every_task(service, f"/run/secrets/{pw}")
        assert {content for node, content in read.values() if node != leader} == {b"two"}
    assert mlab.read_in_every_task(services[0], f"/run/secrets/{token}")


def test_lost_quorum_is_a_clear_transient_error(
    mlab: MultiLab, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two of three managers stopped: the engine's answers are classified as "no leader" (transient),
    reads give up after the patience with one clear line, and work again once a quorum is back."""
    pw = mlab.name("pw")
    mlab.manifest({pw: {"source": {"env": "PW"}, "services": []}})
    leader = cluster.leader()
    survivor = other_manager(cluster, leader)
    mlab.via(survivor)
    stopped = [n for n in NODES if n != survivor]
    for node in stopped:
        cluster.stop(node)
    monkeypatch.setattr(swarm_module, "ELECTION_PATIENCE", 1.0)

    with Swarm.connect(cluster.hosts[survivor]) as swarm, pytest.raises(SwarmNoLeader) as caught:
        swarm.observe()
    message = str(caught.value)
    # what the engine said on this machine: the manager's own 20 s deadline, or the lost-quorum message
    assert "context deadline exceeded" in message or "does not have a leader" in message, message
    assert caught.value.transient

    # The CLI: warnings while it retries, then one error line (exit 1, nothing changed), no traceback.
    result = run(mlab, "plan", str(mlab.root), PW="x")
    assert result.exit_code == 1
    *retries, last = result.output.splitlines()
    assert last.startswith("error: ") and "has no leader right now" in last, result.output
    assert all("WARNING" in line and "retrying in" in line for line in retries), result.output
    assert "Traceback" not in result.output

    # A quorum again: the same reads wait for the election instead of failing.
    monkeypatch.setattr(swarm_module, "ELECTION_PATIENCE", 120.0)
    for node in stopped:
        cluster.start(node)
    result = apply(mlab, PW="x")
    assert result.exit_code == 0, result.output
    assert mlab.secret_names() == {f"{pw}_v1"}
    assert_converged(mlab, PW="x")


def test_a_node_stopped_for_good_does_not_pin_old_versions(mlab: MultiLab, cluster: Cluster) -> None:
    leader = cluster.leader()
    mlab.via(leader)
    pw = mlab.name("pw")
    web = mlab.create_service("web", replicas=3)
    mlab.manifest({pw: {"source": {"env": "PW"}, "services": [web]}})
    assert apply(mlab, PW="v1").exit_code == 0
    # The node to stop must run one of the tasks. No placement rule can force one onto each node here
    # (with one replica per node the orchestrator could not replace the stopped node's task), and a node
    # restarted by the test before may not be scheduled on yet: stop a follower that runs a task.
    running = mlab.wait_spread(web, 3)
    gone = next((n for n in sorted(running) if n != leader), None)
    assert gone is not None, f"all three tasks run on the leader (node {leader}): nothing to stop"

    cluster.stop(gone)
    deadline = time.monotonic() + 90
    while cluster.node_state(gone, via=leader) != "down":
        assert time.monotonic() < deadline, "the stopped node was never marked down"
        time.sleep(0.5)
    # Its task still says "running" in the managers' view (desired state: shutdown).
    stale = [
        t
        for t in mlab.api.tasks(filters={"service": web})
        if t.get("NodeID") == cluster.node_ids[gone] and t["Status"]["State"] == "running"
    ]
    assert stale, "expected the down node's task to stay 'running' in the managers' view"
    mlab.wait_spread(web, 3)  # the orchestrator replaced it on the live nodes

    # v2: v1 is the rollback target (PreviousSpec), and status says the down node does not keep it.
    assert apply(mlab, PW="v2").exit_code == 0
    assert mlab.secret_names() == {f"{pw}_v1", f"{pw}_v2"}
    report = json.loads(run(mlab, "status", str(mlab.root), "--format", "json").stdout)
    (entry,) = [s for s in report["secrets"] if s["secret"] == pw]
    (old,) = entry["superseded"]
    assert old["name"] == f"{pw}_v1"
    # (old tasks on the live nodes may still be stopping: "used by tasks still running" may be there too)
    assert old["note"].startswith(f"rollback target of {web} (PreviousSpec); "), old
    down_note = f"tasks on down node {cluster.node_ids[gone][:12]} ("
    assert down_note in old["note"] and "cannot start again: they do not keep it" in old["note"], old

    # The next rotations collect what nothing that can run needs, the down node notwithstanding.
    for version in (3, 4):
        result = apply(mlab, PW=f"v{version}")
        assert result.exit_code == 0, result.output
        assert mlab.secret_names() == {f"{pw}_v{version - 1}", f"{pw}_v{version}"}, result.output
        read = mlab.read_in_every_task(web, f"/run/secrets/{pw}")
        assert {c for node, c in read.values() if node != gone} == {f"v{version}".encode()}
        assert_converged(mlab, PW=f"v{version}")
