"""What every test starts from: an environment that cannot send the suite to someone's swarm.

The CLI reads its settings from the environment (``SWARM_SECRETS_<OPTION>``, DOCKER_HOST, the docker
context, the TLS variables), and a developer's shell may hold any of them, pointing at a real swarm;
``SWARM_SECRETS_DOCKER_HOST`` would even win over the DOCKER_HOST a test sets. So before the first test
every option variable of the CLI goes (the names come from the CLI itself, by its one rule), and so do
the docker variables; DOCKER_HOST then points at a socket that does not exist, so a test that forgets
to name its engine (``tests/integration/conftest.py`` gives it the suite's own) fails instead of
reaching one. Variables of the test harness (SWARM_SECRETS_TEST_DOCKER_HOST, ...) are not options and
stay.
"""

from __future__ import annotations

import os

import pytest

from reconciler.cli import main
from reconciler.cli.app import settable, variable_for, walk_commands

NO_ENGINE = "unix:///nonexistent/tests-must-name-their-engine.sock"


def option_variables() -> set[str]:
    commands = [main, *(command for _, command in walk_commands(main))]
    return {variable_for(p) for command in commands for p in settable(command)}


def pytest_configure(config: pytest.Config) -> None:
    for variable in option_variables() | {"DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}:
        os.environ.pop(variable, None)
    os.environ["DOCKER_HOST"] = NO_ENGINE
