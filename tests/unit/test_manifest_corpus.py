"""The bad-manifest corpus: every case must fail with exactly the expected, precisely located problems.

A case is a folder under ``bad_manifests/`` with manifests, helper files and a ``case.toml``::

    description = "what the case shows"
    paths = ["."]                 # what to load, relative to the case folder (default ["."])
    subprocess = true             # also run `python -m reconciler validate` for real (a few cases)
    absent = ["fake-value"]       # strings that must appear in no message (secret values)
    [env]                         # extra environment for env sources
    NAME = "value"
    [[encrypt]]                   # encrypted at test time with sops: plain file -> target, then deleted
    plain = "plain.yaml"
    to = "secrets/shop.enc.yaml"
    key = "main"                  # "main" (the key the test decrypts with) or "other"
    [[generate]]                  # big files are made at test time, not committed
    file = "big.bin"
    size = 512000
    [[outside]]                   # a file next to the case folder, outside its source root
    file = "key.txt"
    content = "AGE-SECRET-KEY-1MARKER"
    [[symlink]]                   # made at test time (a symlink cannot be copied as one portably)
    link = "pw.txt"
    to = "../key.txt"             # relative to the link's folder, or absolute
    [[expect]]                    # one per problem: file, line (omit when none), path, message parts
    file = "set.yaml"
    line = 14
    path = "spec.secrets.db_password.services[1].mode"
    contains = ["'0999' is not an octal mode"]

Each case runs in a temporary copy as the working folder, so file names print relative to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.errors import ManifestError, PolicyViolation, Problem, SourceError
from reconciler.manifests import loader as manifest
from reconciler.sources import resolve
from tests.unit.conftest import AgeKey, Encrypt

pytestmark = pytest.mark.usefixtures("restore_logging")

CORPUS = Path(__file__).parent / "bad_manifests"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.toml").is_file())


@dataclass(frozen=True)
class Case:
    folder: Path
    spec: dict[str, Any]
    environ: dict[str, str]

    @property
    def paths(self) -> list[str]:
        return list(self.spec.get("paths", ["."]))


@pytest.fixture
def case(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    encrypt: Encrypt,
    sops_environ: Mapping[str, str],
    other_age_key: AgeKey,
    age_key: AgeKey,
) -> Case:
    name: str = request.param
    folder = tmp_path / name
    shutil.copytree(CORPUS / name, folder)
    spec = tomllib.loads((folder / "case.toml").read_text(encoding="utf-8"))
    keys = {"main": age_key, "other": other_age_key}
    for item in spec.get("encrypt", []):
        target = folder / item["to"]
        target.parent.mkdir(parents=True, exist_ok=True)
        encrypt(folder / item["plain"], target, keys[item.get("key", "main")])
        (folder / item["plain"]).unlink()  # as in a real repository: only the encrypted file remains
    for item in spec.get("generate", []):
        (folder / item["file"]).write_bytes(b"x" * item["size"])
    for item in spec.get("outside", []):
        (tmp_path / item["file"]).write_text(item["content"])
    for item in spec.get("symlink", []):
        link = folder / item["link"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(item["to"])
    monkeypatch.chdir(folder)
    return Case(folder=folder, spec=spec, environ={**sops_environ, **spec.get("env", {})})


def _problems(case: Case) -> list[Problem]:
    try:
        sets = manifest.load([Path(p) for p in case.paths])
        resolve(sets, case.environ)
    except (ManifestError, PolicyViolation, SourceError) as exc:
        return list(exc.problems)
    return []


def _matches(problem: Problem, expected: Mapping[str, Any]) -> bool:
    return (
        problem.file == expected["file"]
        and problem.line == expected.get("line")
        and problem.path == expected["path"]
        and all(part in problem.message for part in expected["contains"])
    )


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_bad_manifest(case: Case) -> None:
    problems = _problems(case)
    expected: list[dict[str, Any]] = case.spec["expect"]
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), f"got:\n{shown}"
    for want in expected:
        assert any(_matches(p, want) for p in problems), f"no problem matches {want}; got:\n{shown}"
    for value in case.spec.get("absent", []):
        assert value not in shown

    # The CLI prints exactly these problems, one line each, on stderr, without a traceback.
    env: dict[str, str | None] = {**case.environ, "SWARM_SECRETS_SOPS": None, "SOPS_AGE_KEY": None}
    result = CliRunner().invoke(main, ["validate", *case.paths], env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [str(p) for p in problems]
    assert "Traceback" not in result.output


def _subprocess_cases() -> Iterator[str]:
    for name in CASES:
        if tomllib.loads((CORPUS / name / "case.toml").read_text(encoding="utf-8")).get("subprocess"):
            yield name


@pytest.mark.parametrize("case", list(_subprocess_cases()), indirect=True)
def test_bad_manifest_real_process(case: Case) -> None:
    """``python -m reconciler validate`` in a real process: exit 1, problems only, no traceback."""
    env = {**case.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", *case.paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [str(p) for p in _problems(case)]
