"""What a command imports and which defaults it starts with (no timing: module sets and values)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from reconciler.cli import main
from reconciler.engine.executor import ApplyOptions

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("docker", "requests", "jsonschema", "prometheus_client")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('imported:', *(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(done.stdout.splitlines()[-1].split()[1:])


def test_the_command_line_imports_no_engine_client_schema_validator_or_metrics() -> None:
    assert _imported_after("import reconciler.cli") == set()


def test_validate_offline_imports_neither_the_engine_client_nor_jsonschema_for_valid_manifests() -> None:
    # Valid documents are checked by the compiled validator alone; jsonschema explains invalid ones.
    code = (
        "from reconciler.cli import main\n"
        "try:\n"
        "    main(['validate', '--offline', 'manifests'], prog_name='swarm-secrets')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )
    assert _imported_after(code) == set()


def test_the_default_concurrency_is_the_executors() -> None:
    apply = main.commands["apply"]
    run = main.commands["run"]
    for command in (apply, run):
        option = next(p for p in command.params if isinstance(p, click.Option) and p.name == "concurrency")
        assert option.default == ApplyOptions().concurrency == 16
