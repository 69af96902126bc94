"""Running the docker CLI for a stack deploy, with a stand-in ``docker`` script that records what it got:
the arguments, an environment built (never inherited whole), the override in a private file removed
afterwards, docker's output filtered to names-only lines, and nothing run when the compose files
changed since the plan."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from reconciler.engine.stackdeploy import (
    ComposeChanged,
    DeployReport,
    DockerCli,
    cli_environment,
    find_docker_cli,
)
from reconciler.errors import ConfigError, SwarmSecretsError
from reconciler.manifests.compose import stack_from_files

MARKER = "quoted-compose-line-7f3a"

FAKE_DOCKER = f"""#!/usr/bin/env python3
import json, os, sys
record = {{"argv": sys.argv[1:], "env": dict(os.environ)}}
override = sys.argv[sys.argv.index("-c", sys.argv.index("-c") + 1) + 1]
record["override"] = open(override).read()
record["override_mode"] = oct(os.stat(override).st_mode & 0o777)
record["override_path"] = override
json.dump(record, open(os.environ["RECORD"], "w"))
print("Creating network shop_default")
print("Updating service shop_db (id: abc123)")
print("invalid interpolation format for services.db.environment.PW: {MARKER}", file=sys.stderr)
sys.exit(int(os.environ.get("EXIT", "0")))
"""

COMPOSE = """\
version: "3.8"
services:
  db:
    image: x
    environment: {PW: "${PW}"}
    secrets: [db_password]
secrets:
  db_password: {file: ./pw.txt}
"""


@pytest.fixture()
def docker(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "docker"
    script.parent.mkdir()
    script.write_text(FAKE_DOCKER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def deploy(tmp_path: Path, docker: Path, **env: str) -> tuple[dict[str, object], DeployReport]:
    compose = tmp_path / "stack.yml"
    compose.write_text(COMPOSE)
    record = tmp_path / "record.json"
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RECORD": str(record), **env}
    spec = stack_from_files(
        "shop", [compose], cli_environment(environ), docker_args=("--with-registry-auth",)
    )
    cli = DockerCli(str(docker), host="unix:///tmp/engine.sock", environ=environ)
    report = cli.deploy(spec, {"secrets": {"db_password": {"external": True, "name": "db_password_v3"}}})
    recorded: dict[str, object] = json.loads(record.read_text())
    return recorded, report


def test_argv_environment_and_override(
    tmp_path: Path, docker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    record, report = deploy(
        tmp_path,
        docker,
        PW="interpolated",
        SOPS_AGE_KEY="AGE-SECRET-KEY-1X",
        DOCKER_CONTEXT="prod",
        GITHUB_TOKEN="t",
    )
    argv = record["argv"]
    assert isinstance(argv, list)
    assert argv[:4] == ["stack", "deploy", "-c", str(tmp_path / "stack.yml")]
    assert argv[-2:] == ["--with-registry-auth", "shop"]
    env = record["env"]
    assert isinstance(env, dict)
    assert env["DOCKER_HOST"] == "unix:///tmp/engine.sock" and env["PW"] == "interpolated"
    for reserved in ("SOPS_AGE_KEY", "DOCKER_CONTEXT", "GITHUB_TOKEN"):
        assert reserved not in env  # the tool's keys never reach a compose file
    assert record["override_mode"] == "0o600"
    assert "name: db_password_v3" in str(record["override"])
    assert not Path(str(record["override_path"])).exists()  # removed after the deploy
    assert report.shown == ("Creating network shop_default", "Updating service shop_db (id: abc123)")
    assert report.hidden == 1
    assert MARKER not in caplog.text


def test_a_failure_is_one_line_without_docker_s_unknown_lines(tmp_path: Path, docker: Path) -> None:
    with pytest.raises(SwarmSecretsError) as info:
        deploy(tmp_path, docker, EXIT="1")
    message = str(info.value)
    assert message.startswith("docker stack deploy of stack 'shop' failed (exit 1)")
    assert MARKER not in message and "\n" not in message


def test_nothing_runs_when_the_compose_files_changed_since_the_plan(tmp_path: Path, docker: Path) -> None:
    compose = tmp_path / "stack.yml"
    compose.write_text(COMPOSE)
    spec = stack_from_files("shop", [compose], {})
    compose.write_text(COMPOSE.replace("image: x", "image: y"))
    record = tmp_path / "record.json"
    cli = DockerCli(str(docker), host=None, environ={"PATH": os.environ["PATH"], "RECORD": str(record)})
    with pytest.raises(ComposeChanged, match="changed since the plan; nothing was deployed"):
        cli.deploy(spec, {})
    assert not record.exists()


def test_a_missing_cli_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="docker CLI was not found on PATH.*--docker-cli"):
        find_docker_cli()
    with pytest.raises(ConfigError, match="--docker-cli /nope/docker: no such executable"):
        find_docker_cli("/nope/docker")
