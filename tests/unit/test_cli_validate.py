"""``swarm-secrets validate`` on the example set, and the CLI's error-to-exit-code mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reconciler.cli.app import BUG_HINT, handle_errors, main, manifest_paths
from reconciler.errors import ConfigError, ExitCode, ManifestError, Problem

pytestmark = pytest.mark.usefixtures("restore_logging")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_KEY = "manifests/keys/example.agekey"
CLEAN = {"SOPS_AGE_KEY": None, "SOPS_AGE_KEY_FILE": None, "SWARM_SECRETS_SOPS": None}
SUMMARY = "ok: 1 set, 3 secrets, 4 service grants in 1 file"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.mark.usefixtures("in_repo")
def test_example_validates_with_its_key() -> None:
    result = CliRunner().invoke(
        main, ["validate", "manifests/"], env={**CLEAN, "SOPS_AGE_KEY_FILE": EXAMPLE_KEY}
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, SUMMARY + "\n", "")


@pytest.mark.usefixtures("in_repo")
def test_example_validates_offline_without_a_key() -> None:
    result = CliRunner().invoke(main, ["validate", "--offline"], env=CLEAN)  # default path: manifests/
    assert (result.exit_code, result.stdout) == (0, SUMMARY + " (offline: sources not checked)\n")


@pytest.mark.usefixtures("in_repo")
def test_example_without_the_key_fails_on_each_sops_secret() -> None:
    result = CliRunner().invoke(main, ["validate"], env={**CLEAN, "HOME": "/nonexistent"})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["manifests/shop.yaml:13", "spec.secrets.db_password.source.sops.file"],
        ["manifests/shop.yaml:26", "spec.secrets.api_token.source.sops.file"],
    ]
    assert all("(exit 128: no key could decrypt it" in line for line in lines)


def test_example_key_is_marked_test_only() -> None:
    assert "TEST ONLY" in (REPO / EXAMPLE_KEY).read_text(encoding="utf-8").splitlines()[0]


def test_python_dash_m_in_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "--offline", "manifests/"],
        cwd=REPO,
        env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        SUMMARY + " (offline: sources not checked)\n",
        "",
    )


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("how", ["option", "envvar"])
def test_json_logs(how: str) -> None:
    args = ["--log-level", "debug", "--log-format", "json"] if how == "option" else []
    env = (
        {**CLEAN, "SWARM_SECRETS_LOG_LEVEL": "debug", "SWARM_SECRETS_LOG_FORMAT": "json"}
        if how == "envvar"
        else CLEAN
    )
    result = CliRunner().invoke(main, [*args, "validate", "--offline"], env=env)
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["logger"] == "reconciler.manifests.loader" and "skipping" in r["message"] for r in records)


# --- the error mapping, with throwaway commands ---------------------------------------------------------


def _command(exc: BaseException) -> click.Command:
    @click.command()
    @manifest_paths
    @handle_errors
    def boom(paths: tuple[Path, ...]) -> None:
        assert paths == (Path("manifests"),)  # the shared argument's default
        raise exc

    return boom


@pytest.mark.parametrize(
    ("exc", "code", "stderr"),
    [
        (
            ManifestError([Problem("a.yaml", 3, "spec", "bad"), Problem("b.yaml", None, "", "worse")]),
            1,
            "a.yaml:3: spec: bad\nb.yaml: worse\n",
        ),
        (ConfigError("the key file is missing"), 1, "error: the key file is missing\n"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted\n"),
    ],
)
def test_user_errors_have_no_traceback(exc: BaseException, code: int, stderr: str) -> None:
    result = CliRunner().invoke(_command(exc), [])
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", stderr)


def test_a_bug_shows_the_traceback_and_asks_for_a_report() -> None:
    result = CliRunner().invoke(_command(ZeroDivisionError("oops")), [])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ZeroDivisionError: oops" in result.stderr
    assert result.stderr.rstrip().endswith(BUG_HINT)


def test_help() -> None:
    result = CliRunner().invoke(main, ["validate", "-h"])
    assert result.exit_code == 0
    assert "--offline" in result.stdout
