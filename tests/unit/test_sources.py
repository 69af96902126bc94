"""The file and env sources, the value checks every source shares, and resolve()'s reporting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reconciler
from reconciler.core.model import (
    MAX_SECRET_BYTES,
    EnvSource,
    FileSource,
    Origin,
    SecretSet,
    SecretSpec,
    Source,
)
from reconciler.errors import SourceError
from reconciler.sources import resolve


def _set(name: str, sources: dict[str, Source]) -> SecretSet:
    specs = tuple(
        SecretSpec(
            set_name=name,
            secret=secret,
            source=source,
            origin=Origin(file=f"{name}.yaml", line=7 + i, path=f"spec.secrets.{secret}"),
        )
        for i, (secret, source) in enumerate(sources.items())
    )
    return SecretSet(
        name=name, secrets=specs, origin=Origin(file=f"{name}.yaml", line=4, path="metadata.name")
    )


def test_file_and_env_values(tmp_path: Path) -> None:
    (tmp_path / "user.txt").write_bytes(b"smtp-user\n")
    values = resolve(
        [
            _set("a", {"user": FileSource(file=tmp_path / "user.txt"), "token": EnvSource(var="TOKEN")}),
            _set("b", {"other": EnvSource(var="TOKEN")}),
        ],
        {"TOKEN": "tök"},
    )
    assert {k: v.reveal() for k, v in values.items()} == {
        ("a", "user"): b"smtp-user\n",
        ("a", "token"): "tök".encode(),
        ("b", "other"): "tök".encode(),
    }


def test_env_keeps_undecodable_bytes() -> None:
    # os.environ holds bytes that are not UTF-8 as surrogates; the value must be the original bytes.
    values = resolve(
        [_set("a", {"t": EnvSource(var="T")})], {"T": b"\xff\xfe".decode("utf-8", "surrogateescape")}
    )
    assert values[("a", "t")].reveal() == b"\xff\xfe"


def test_every_problem_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    (tmp_path / "max").write_bytes(b"x" * MAX_SECRET_BYTES)
    (tmp_path / "folder").mkdir()
    with pytest.raises(SourceError) as caught:
        resolve(
            [
                _set(
                    "a",
                    {
                        "missing": FileSource(file=tmp_path / "nope.txt"),
                        "empty": FileSource(file=tmp_path / "empty"),
                        "big": FileSource(file=tmp_path / "big"),
                        "max": FileSource(file=tmp_path / "max"),
                        "folder": FileSource(file=tmp_path / "folder"),
                        "unset": EnvSource(var="UNSET_VAR"),
                        "blank": EnvSource(var="BLANK"),
                    },
                )
            ],
            {"BLANK": ""},
        )
    problems = {p.path: p for p in caught.value.problems}
    assert set(problems) == {
        f"spec.secrets.{n}.{f}"
        for n, f in [
            ("missing", "source.file"),
            ("empty", "source.file"),
            ("big", "source.file"),
            ("folder", "source.file"),
            ("unset", "source.env"),
            ("blank", "source.env"),
        ]
    }
    assert "nope.txt does not exist" in problems["spec.secrets.missing.source.file"].message
    assert "is empty" in problems["spec.secrets.empty.source.file"].message
    big = problems["spec.secrets.big.source.file"].message
    assert f"is {MAX_SECRET_BYTES + 1} bytes; Swarm accepts at most {MAX_SECRET_BYTES} bytes" in big
    assert "xxxx" not in big
    assert "is a folder" in problems["spec.secrets.folder.source.file"].message
    assert problems["spec.secrets.unset.source.env"].message == (
        "environment variable UNSET_VAR is not set: set UNSET_VAR in the reconciler's environment"
    )
    assert "environment variable BLANK is empty" in problems["spec.secrets.blank.source.env"].message
    assert str(problems["spec.secrets.unset.source.env"]).startswith(
        "a.yaml:12: spec.secrets.unset.source.env: "
    )


# Modules of the manifest/sources/CLI layer; other layers (git sync, ...) are checked by their owners.
SUBPROCESS_USERS = ["daemon/gitsync.py", "engine/stackdeploy.py", "manifests/revision.py", "sources/sops.py"]
"""The only modules that run child programs (git, sops, the docker CLI); their output is never echoed
(docker's: only lines of a known, names-only shape)."""


def test_only_known_modules_run_subprocesses() -> None:
    """sops (sources/sops.py), git (daemon/gitsync.py, manifests/revision.py) and the docker CLI
    (engine/stackdeploy.py): nothing else."""
    package = Path(reconciler.__file__).parent
    modules = sorted(package.rglob("*.py"))
    offenders = []
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] == "subprocess" for n in names):
                offenders.append(module.relative_to(package).as_posix())
    assert sorted(set(offenders)) == SUBPROCESS_USERS
