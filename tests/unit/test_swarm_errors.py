"""Engine answers mapped to the error tree (plain data: built responses, no engine needed)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
import urllib3
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.engine.swarm import Swarm, _connect_error, _translate, shown_host
from reconciler.errors import (
    ConfigError,
    NotManager,
    SwarmConflict,
    SwarmError,
    SwarmNoLeader,
    SwarmRefused,
    SwarmSecretsError,
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
        (500, "something broke", SwarmError, True),
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


# --- an engine that cannot be reached: which one, why, and what usually fixes it ---------------------


def test_an_unreachable_socket_is_named_with_the_usual_fixes(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-engine" / "docker.sock"
    with pytest.raises(SwarmUnavailable) as caught:
        Swarm.connect(f"unix://{socket_path}")
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Docker engine at unix://{socket_path}: no such socket;")
    assert "is the engine running?" in message and "DOCKER_HOST" in message and "docker context" in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.usefixtures("restore_logging")
def test_the_cli_prints_one_line_naming_the_engine(tmp_path: Path) -> None:
    socket_path = tmp_path / "docker.sock"
    status = ["status", "--docker-host", f"unix://{socket_path}", str(tmp_path / "no-manifests")]
    result = CliRunner().invoke(main, status)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: cannot reach the Docker engine at unix://{socket_path}: no such socket; is the engine "
        "running? Otherwise check DOCKER_HOST / --docker-host and the docker context (`docker context ls`)"
    ]


def test_a_password_in_the_address_is_never_shown() -> None:
    with pytest.raises(SwarmSecretsError) as caught:
        Swarm.connect("tcp://admin:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(caught.value)
    assert "tcp://admin:***@127.0.0.1:1" in str(caught.value)
    assert "never a password in the address" in str(caught.value)
    refused = requests.exceptions.ConnectionError("tcp://admin:hunter2@127.0.0.1:1 said no")
    assert "hunter2" not in str(_translate(refused, "listing secrets", shown_host("tcp://u:hunter2@h:1")))
    assert shown_host("ssh://deploy:hunter2@manager:22") == "ssh://deploy:***@manager:22"
    assert shown_host("http+unix:///var/run/docker.sock") == "unix:///var/run/docker.sock"


def test_a_refused_tcp_port_and_an_unknown_host() -> None:
    with pytest.raises(SwarmUnavailable, match=r"at tcp://127\.0\.0\.1:1: connection refused; is the engine"):
        Swarm.connect("tcp://127.0.0.1:1", timeout=5)
    with pytest.raises(SwarmUnavailable, match="unknown host name; check DOCKER_HOST"):
        Swarm.connect("tcp://no-such-host.invalid:2376", timeout=5)


def test_a_socket_this_user_may_not_open() -> None:
    denied = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", PermissionError(13, "Permission denied"))
    )
    wrapped = docker.errors.DockerException("Error while fetching server API version: ...")
    wrapped.__cause__ = denied
    message = str(_connect_error(wrapped, "unix:///var/run/docker.sock", ""))
    assert message.startswith(
        "cannot reach the Docker engine at unix:///var/run/docker.sock: permission denied;"
    )
    assert "docker" in message.split(";", 1)[1] and "root" in message


@pytest.mark.parametrize("how", ["current", "DOCKER_CONTEXT"])
def test_the_docker_context_is_named_when_it_gave_the_address(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"unix://{tmp_path}/prod.sock"
    meta = tmp_path / "contexts" / "meta" / hashlib.sha256(b"prod").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": "prod", "Metadata": {}, "Endpoints": {"docker": {"Host": host}}})
    )
    current = {"currentContext": "prod"} if how == "current" else {}
    (tmp_path / "config.json").write_text(json.dumps(current))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST")
    if how == "DOCKER_CONTEXT":
        monkeypatch.setenv("DOCKER_CONTEXT", "prod")
    expected = f"at {host} (docker context 'prod'): no such socket"
    with pytest.raises(SwarmUnavailable, match=re.escape(expected)):
        Swarm.connect()
    monkeypatch.setenv("DOCKER_CONTEXT", "staging")
    with pytest.raises(ConfigError, match="docker context 'staging' .DOCKER_CONTEXT. not found"):
        Swarm.connect()
