"""Leader elections and down nodes, on plain data: the engine's answers during an election are
transient (reads wait for a new leader, mutations are not repeated), tasks on a node that is down
neither keep versions nor count as running, and a docker context per manager picks the endpoint.

The messages are the ones a three-manager swarm gave on this machine (tests/multinode measures them
for real) or that swarmkit's raft package defines.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
from tenacity import RetryCallState, wait_none

from reconciler.core.model import EnvSource, Origin, SecretSet, SecretSpec, SecretValue
from reconciler.core.status import build_status
from reconciler.engine import swarm as swarm_module
from reconciler.engine.swarm import (
    ELECTION_PATIENCE,
    Swarm,
    _current_context_host,
    _stop_retrying,
    _translate,
)
from reconciler.errors import ConfigError, SwarmConflict, SwarmNoLeader, SwarmUnavailable

NO_LEADER = (
    "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few "
    "managers are online. Make sure more than half of the managers are online."
)
DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"


ORIGIN = Origin(file="shop.yaml", line=1, path="metadata.name")
SHOP = (
    SecretSet(
        name="shop",
        secrets=(SecretSpec(set_name="shop", secret="pw", source=EnvSource(var="X"), origin=ORIGIN),),
        origin=ORIGIN,
    ),
)
"""The manifests of the tests below: set shop, secret pw (no values: status needs none)."""


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "explanation"),
    [
        (500, NO_LEADER),  # measured: quorum lost (two of three managers stopped)
        (500, DEADLINE),  # measured: a request waited 20 s for a leader that did not come
        (500, "rpc error: code = Unknown desc = raft: no elected cluster leader"),
        (
            500,
            "rpc error: code = Unknown desc = raft: failed to process the request: node lost leader status",
        ),
        (500, "rpc error: code = Unavailable desc = transport is closing"),
        (
            503,
            "This node is not a swarm manager. Manager is being prepared or has trouble connecting to the "
            "cluster.",
        ),
    ],
)
def test_election_answers_are_transient_no_leader_errors(status: int, explanation: str) -> None:
    error = _translate(api_error(status, explanation), "listing secrets")
    assert type(error) is SwarmNoLeader
    assert error.transient
    text = str(error)
    assert text.startswith("listing secrets: ") and "\n" not in text
    assert explanation in text  # the engine's own words, for the operator
    assert "leader election" in text


def test_a_stale_version_is_still_a_conflict_not_an_election() -> None:
    error = _translate(api_error(500, "rpc error: code = Unknown desc = update out of sequence"), "updating")
    assert type(error) is SwarmConflict


def test_a_read_timeout_is_transient_and_says_so() -> None:
    error = _translate(requests.exceptions.ReadTimeout("read timed out"), "listing tasks")
    assert type(error) is SwarmUnavailable and error.transient
    assert "did not answer in time" in str(error)


# --- retries ----------------------------------------------------------------------------------------


class FakeApi:
    """Just enough of docker.APIClient: each method answers from a script (a value or an exception)."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.hooks: dict[str, list[Any]] = {"response": []}
        self.scripts = scripts
        self.calls: dict[str, int] = {}

    def _answer(self, name: str) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        script = self.scripts[name]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def info(self) -> Any:
        return self._answer("info")

    def secrets(self, filters: Any = None) -> Any:
        return self._answer("secrets")

    def services(self, filters: Any = None, status: Any = None) -> Any:
        return self._answer("services")

    def tasks(self, filters: Any = None) -> Any:
        return self._answer("tasks")

    def nodes(self, filters: Any = None) -> Any:
        return self._answer("nodes")

    def create_secret(self, **kwargs: Any) -> Any:
        return self._answer("create_secret")


MANAGER_INFO = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}


def _without_waiting(method: Callable[..., Any]) -> Callable[..., Any]:
    retrying: Callable[..., Any] = method.retry_with(wait=wait_none())  # type: ignore[attr-defined]
    return retrying


def test_reads_wait_for_the_new_leader() -> None:
    api = FakeApi(
        info=[
            api_error(500, DEADLINE),
            api_error(500, NO_LEADER),
            api_error(500, NO_LEADER),
            api_error(500, NO_LEADER),
            api_error(500, NO_LEADER),
            MANAGER_INFO,
        ]
    )
    swarm = Swarm(api)
    _without_waiting(Swarm.check_manager)(swarm)
    # six attempts: more than the four other transient errors get, because an election ends
    assert api.calls["info"] == 6


def test_an_unreachable_engine_is_given_up_on_after_four_attempts() -> None:
    api = FakeApi(info=[requests.exceptions.ConnectionError("refused")])
    with pytest.raises(SwarmUnavailable, match="cannot reach"):
        _without_waiting(Swarm.check_manager)(Swarm(api))
    assert api.calls["info"] == 4


def _state_after(seconds: float, attempt: int, error: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.start_time = time.monotonic() - seconds
    state.attempt_number = attempt
    try:
        raise error
    except BaseException:
        import sys

        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    return state


def test_the_wait_for_a_leader_is_bounded() -> None:
    no_leader = _translate(api_error(500, NO_LEADER), "listing")
    assert not _stop_retrying(_state_after(ELECTION_PATIENCE - 5, 10, no_leader))
    assert _stop_retrying(_state_after(ELECTION_PATIENCE + 1, 3, no_leader))
    unreachable = SwarmUnavailable("cannot reach")
    assert not _stop_retrying(_state_after(0.5, 3, unreachable))
    assert _stop_retrying(_state_after(0.5, 4, unreachable))


def test_mutations_are_not_repeated_during_an_election() -> None:
    api = FakeApi(create_secret=[api_error(500, NO_LEADER), {"ID": "x"}])
    with pytest.raises(SwarmNoLeader):
        Swarm(api).create_secret("pw_v1", SecretValue(b"value"), {})
    assert api.calls["create_secret"] == 1  # the caller observes again; see the executor


def test_observe_retries_all_lists_while_there_is_no_leader() -> None:
    api = FakeApi(secrets=[api_error(500, NO_LEADER), []], services=[[]], tasks=[[]], nodes=[[]])
    live = _without_waiting(Swarm.observe)(Swarm(api))
    assert live.secrets == () and api.calls["secrets"] == 2
    assert api.calls["nodes"] == 2  # one more list per attempt: the nodes (see test_swarm_client)


# --- tasks on nodes that are down -------------------------------------------------------------------


def _task(
    task_id: str, node: str, secret_id: str, *, state: str = "running", desired: str = "running"
) -> dict[str, Any]:
    return {
        "ID": task_id,
        "NodeID": node,
        "DesiredState": desired,
        "Status": {"State": state},
        "Spec": {"ContainerSpec": {"Secrets": [{"SecretID": secret_id, "SecretName": secret_id}]}},
    }


def _node(node_id: str, state: str) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Description": {"Hostname": "vm"},
        "Status": {"State": state},
        "Spec": {"Availability": "active"},
    }


NODES = [_node("n-ready", "ready"), _node("n-down", "down"), _node("n-unknown", "unknown")]


def _secret(secret_id: str, version: int) -> dict[str, Any]:
    return {
        "ID": secret_id,
        "Spec": {
            "Name": f"pw_v{version}",
            "Labels": {
                "io.swarm-secrets.managed": "true",
                "io.swarm-secrets.set": "shop",
                "io.swarm-secrets.secret": "pw",
                "io.swarm-secrets.version": str(version),
            },
        },
    }


def test_observe_reports_where_tasks_are_and_which_nodes_are_down() -> None:
    tasks = [
        _task("t1", "n-down", "s1", desired="shutdown"),  # stranded: the orchestrator replaced it
        _task("t2", "n-ready", "s2"),
        _task("t3", "", "s3", state="pending"),  # not placed yet
        _task("t4", "n-ready", "s4", state="shutdown", desired="shutdown"),  # terminal: ignored
    ]
    api = FakeApi(secrets=[[]], services=[[]], tasks=[tasks], nodes=[NODES])
    live = Swarm(api).observe()
    assert live.task_secret_ids == {"s1", "s2", "s3"}
    assert live.task_nodes == {"s1": {"n-down"}, "s2": {"n-ready"}, "s3": {""}}
    assert [(n.id, n.state, n.down) for n in live.nodes] == [
        ("n-down", "down", True),
        ("n-ready", "ready", False),
        ("n-unknown", "unknown", False),
    ]


def test_status_says_why_a_version_on_a_down_node_goes_or_stays() -> None:
    service = {
        "ID": "svc",
        "Version": {"Index": 3},
        "Spec": {
            "Name": "shop_web",
            "TaskTemplate": {
                "ContainerSpec": {
                    "Secrets": [{"SecretID": "s4", "SecretName": "pw_v4", "File": {"Name": "pw"}}]
                }
            },
        },
        "PreviousSpec": {
            "Name": "shop_web",
            "TaskTemplate": {
                "ContainerSpec": {
                    "Secrets": [{"SecretID": "s3", "SecretName": "pw_v3", "File": {"Name": "pw"}}]
                }
            },
        },
    }
    tasks = [
        _task("t1", "n-down", "s1", desired="shutdown"),
        _task("t2", "n-down", "s2"),
        _task("t3", "n-unknown", "s2"),
        _task("t4", "n-down", "s3"),
    ]
    api = FakeApi(
        secrets=[[_secret(f"s{v}", v) for v in (1, 2, 3, 4)]],
        services=[[service]],
        tasks=[tasks],
        nodes=[NODES],
    )
    report = build_status(Swarm(api).observe(), SHOP)
    notes = {v.name: v.note for v in report.secrets[0].superseded}
    assert notes["pw_v1"] == (
        "used only by tasks on down node n-down (vm): they cannot start again, so the next apply collects it"
    )
    # a node not heard from since a leader change may be alive: its tasks keep the version
    assert notes["pw_v2"].startswith(
        "used by tasks still running; tasks on down node n-down (vm) also use it"
    )
    assert notes["pw_v3"] == (
        "rollback target of shop_web (PreviousSpec); tasks on down node n-down (vm) also use it but "
        "cannot start again: they do not keep it"
    )


def test_without_a_node_list_no_task_counts_as_stranded() -> None:
    api = FakeApi(
        secrets=[[_secret("s1", 1), _secret("s2", 2)]],
        services=[[]],
        tasks=[[_task("t1", "n-down", "s1")]],
        nodes=[[]],
    )
    report = build_status(Swarm(api).observe(), SHOP)
    notes = {v.name: v.note for v in report.secrets[0].superseded}
    assert notes == {"pw_v1": "used by tasks still running"}


def test_rollout_probe_counts_only_tasks_on_ready_nodes() -> None:
    service = {
        "ID": "svc",
        "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}}},
        "UpdateStatus": {"State": "completed", "StartedAt": "t"},
    }
    tasks = [
        {**_task(task_id, node, "s"), "ServiceID": "svc"}
        for task_id, node in (("a", "n-ready"), ("b", "n-unknown"), ("c", "n-down"))
    ]
    api = FakeApi(services=[[service]], tasks=[tasks], nodes=[NODES])
    probe = Swarm(api).rollout_probes(["svc"])["svc"]
    assert (probe.running, probe.unavailable, probe.desired) == (1, 2, 3)


def test_a_watched_service_removed_between_the_two_lists_is_left_out_on_the_next_try() -> None:
    def service(service_id: str) -> dict[str, Any]:
        return {"ID": service_id, "Spec": {"Name": service_id, "Mode": {"Replicated": {"Replicas": 1}}}}

    tasks = [{**_task("a", "n-ready", "s"), "ServiceID": "svc-a"}]
    api = FakeApi(
        # the engine refuses a task filter naming a service it no longer has (measured: 404)
        services=[[service("svc-a"), service("svc-b")], [service("svc-a")]],
        tasks=[api_error(404, "service svc-b not found"), tasks],
        nodes=[NODES],
    )
    probes = _without_waiting(Swarm.rollout_probes)(Swarm(api), ["svc-a", "svc-b"])
    assert set(probes) == {"svc-a"} and probes["svc-a"].running == 1
    assert api.calls["services"] == 2 and api.calls["tasks"] == 2


def test_no_value_in_election_errors() -> None:
    api = FakeApi(create_secret=[api_error(500, NO_LEADER)])
    with pytest.raises(SwarmNoLeader) as caught:
        Swarm(api).create_secret("pw_v1", SecretValue(b"Zq7-marker-value"), {})
    assert "Zq7-marker-value" not in str(caught.value)
    assert swarm_module.NO_LEADER_MARKERS  # the markers are data, listed once


# --- one docker context per manager -----------------------------------------------------------------


def _context(config: Path, name: str, host: str) -> None:
    """What `docker context create NAME --docker host=HOST` writes (docker CLI 28)."""
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}}))


def test_docker_context_order_is_the_clis(tmp_path: Path) -> None:
    _context(tmp_path, "manager-1", "ssh://deploy@manager-1")
    _context(tmp_path, "manager-2", "ssh://deploy@manager-2")
    base = {"DOCKER_CONFIG": str(tmp_path)}
    # no config.json (docker context create writes none): no current context, DOCKER_CONTEXT still works
    assert _current_context_host(base)[0] is None
    assert _current_context_host({**base, "DOCKER_CONTEXT": "manager-2"})[0] == "ssh://deploy@manager-2"
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "manager-1"}))
    assert _current_context_host(base)[0] == "ssh://deploy@manager-1"
    assert _current_context_host({**base, "DOCKER_CONTEXT": "manager-2"})[0] == "ssh://deploy@manager-2"
    assert _current_context_host({**base, "DOCKER_CONTEXT": "default"})[0] is None


def test_a_docker_context_that_does_not_exist_is_an_error_not_the_local_socket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="docker context 'manager-9' \\(DOCKER_CONTEXT\\) not found"):
        _current_context_host({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "manager-9"})
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    with pytest.raises(ConfigError, match="'gone' \\(the current context in"):
        _current_context_host({"DOCKER_CONFIG": str(tmp_path)})
