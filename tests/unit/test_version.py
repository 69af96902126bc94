"""The version: derived from git tags by hatch-vcs, shown by ``--version``, carried by every audit event."""

from __future__ import annotations

import json
import logging
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

import reconciler
from reconciler import logs
from reconciler.cli import main

REPO = Path(__file__).resolve().parents[2]
# PEP 440, as hatch-vcs writes it: 0.1.0, 0.1.1.dev3+g1a2b3c4d, 0.1.dev12+g1a2b3c4d.d20261130, 0.0.0+unknown
PEP440 = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?")


def test_the_version_is_the_installed_distributions() -> None:
    assert reconciler.__version__ == version("swarm-secrets")
    assert PEP440.fullmatch(reconciler.__version__), reconciler.__version__


def test_the_version_comes_from_git_tags_with_a_fallback() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert "hatch-vcs>=0.4" in pyproject["build-system"]["requires"]
    hatch = pyproject["tool"]["hatch"]["version"]
    assert hatch["source"] == "vcs"
    assert PEP440.fullmatch(hatch["raw-options"]["fallback_version"])


def test_version_option() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"swarm-secrets {reconciler.__version__}\n"


def test_audit_events_carry_the_tool_version(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=logs.AUDIT_LOGGER):
        logs.audit("secret_created", set="app", secret="db", version=3, tool_version="forged")
    (record,) = caplog.records
    data = json.loads(logs.JsonFormatter().format(record))
    # the caller's own field is kept apart: it cannot pass itself off as the tool's version
    assert data["tool_version"] == reconciler.__version__ and data["tool_version_"] == "forged"
    assert data["version"] == 3


def test_the_license_file_is_the_apache_license() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}


def test_changelog_and_security_policy_exist() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog") and "## [Unreleased]" in changelog
    assert "keepachangelog.com" in changelog
    security = (REPO / "SECURITY.md").read_text(encoding="utf-8")
    for heading in ("## Reporting a vulnerability", "## Supported versions", "## Security model"):
        assert heading in security
