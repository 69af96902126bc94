"""Engine answers mapped to the error tree (plain data: built responses, no engine needed)."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest
import requests

from reconciler.engine.swarm import Swarm, _translate
from reconciler.errors import (
    NotManager,
    SwarmConflict,
    SwarmError,
    SwarmNoLeader,
    SwarmRefused,
    SwarmUnavailable,
)


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "explanation", "kind", "transient"),
    [
        (409, "secret db_v1 already exists", SwarmConflict, True),
        (500, "rpc error: code = Unknown desc = update out of sequence", SwarmConflict, True),
        (500, "context deadline exceeded", SwarmNoLeader, True),
        (500, "something broke", SwarmError, False),
        (
            503,
            "This node is not a swarm manager. Manager is being prepared or has trouble",
            SwarmNoLeader,
            True,
        ),
        (
            503,
            "This node is not a swarm manager. Worker nodes can't be used to view or modify",
            NotManager,
            False,
        ),
        (400, "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed", SwarmRefused, False),
        (404, "secret x not found", SwarmRefused, False),
    ],
)
def test_engine_answers_map_to_what_the_user_must_do(
    status: int, explanation: str, kind: type[SwarmError], transient: bool
) -> None:
    error = _translate(api_error(status, explanation), "doing it")
    assert type(error) is kind
    assert error.transient is transient
    assert str(error).startswith("doing it")
    assert "\n" not in str(error)


def test_connection_errors_are_unavailable_and_transient() -> None:
    error = _translate(requests.exceptions.ConnectionError("refused"), "listing secrets")
    assert isinstance(error, SwarmUnavailable) and error.transient
    assert "cannot reach the Docker engine" in str(error)


class FakeApi:
    """Just enough of docker.APIClient for check_manager: the info answer of a given node."""

    def __init__(self, swarm_info: dict[str, Any]) -> None:
        self.hooks: dict[str, list[Any]] = {"response": []}
        self._info = {"Swarm": swarm_info}

    def info(self) -> dict[str, Any]:
        return self._info


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"LocalNodeState": "inactive"}, "not part of a swarm"),
        ({"LocalNodeState": "active", "ControlAvailable": False}, "swarm worker"),
    ],
)
def test_a_node_that_is_not_a_manager_is_one_clear_error(info: dict[str, Any], message: str) -> None:
    with pytest.raises(NotManager, match=message) as caught:
        Swarm(FakeApi(info)).check_manager()
    assert not caught.value.transient
    assert "DOCKER_HOST" in str(caught.value)


def test_a_manager_passes() -> None:
    Swarm(FakeApi({"LocalNodeState": "active", "ControlAvailable": True})).check_manager()
