"""Every option of every command can be set by the environment variable the README's rule names.

The rule, as documented (README "Commands", ``swarm-secrets --help``): ``SWARM_SECRETS_`` + the long
option name in capitals with ``-`` as ``_``, the same for every command; an argument by its metavar
(``SWARM_SECRETS_PATH``). It is written out again here rather than imported, so that the CLI and its
documentation cannot drift apart together. The commands and options are enumerated from the click
group: an option added later is checked without touching this file (only a new option *type* needs a
sample value below).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.cli.app import Period, walk_commands
from reconciler.core.model import Rotation

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("restore_logging")


def documented_variable(param: click.Parameter) -> str:
    """The README's rule, independently of the CLI's own implementation."""
    if isinstance(param, click.Option):
        name = next(o for o in param.opts if o.startswith("--")).removeprefix("--")
    else:
        name = re.sub(r"[\[\].]", "", param.metavar or param.name or "")
    return "SWARM_SECRETS_" + name.upper().replace("-", "_")


def walk() -> Iterator[tuple[str, click.Command, click.Parameter]]:
    """(command path, command, parameter) for the group's own options and every command's."""
    for param in main.params:
        if param.expose_value:
            yield "swarm-secrets", main, param
    for name, command in walk_commands(main):
        for param in command.params:
            if param.expose_value:
                yield f"swarm-secrets {name}", command, param


PARAMS = list(walk())


def sample(param: click.Parameter, default: Any) -> tuple[str, Any]:
    """(what to put in the variable, the value the command must then see): never the ``default``."""
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return ("0", False) if default else ("1", True)
    if isinstance(kind, click.Choice):
        choice = next(c for c in kind.choices if c != default)
        return str(choice), choice
    if isinstance(kind, click.types.IntRange | click.types.FloatRange) or kind in (click.INT, click.FLOAT):
        low = getattr(kind, "min", None) or 0
        number = low + 3 if isinstance(kind, click.types.IntParamType) else low + 2.5
        number += 1 if number == default else 0
        return str(number), number
    if isinstance(kind, Period):
        return "90m", Rotation(every=5400, text="90m")
    if isinstance(kind, click.Path):
        if param.nargs == -1 or (isinstance(param, click.Option) and param.multiple):
            return "one:two/three", (Path("one"), Path("two/three"))
        if kind.exists:  # the option checks that it is there: give it something that is
            here = Path(__file__).parent if kind.dir_okay else Path(__file__)
            return str(here), here
        return "some/file", Path("some/file")
    if kind is click.STRING:
        if (isinstance(param, click.Option) and param.multiple) or param.nargs == -1:  # space-separated
            return "SAMPLE_ONE SAMPLE_TWO", ("SAMPLE_ONE", "SAMPLE_TWO")
        return "sample-value", "sample-value"
    raise AssertionError(f"{param.name}: no sample for type {kind!r}; add one to sample()")


def parsed(command: click.Command) -> dict[str, Any]:
    """The parameters ``command`` sees with nothing on its command line."""
    if command is main:
        with main.make_context("swarm-secrets", ["validate"]) as ctx:
            return dict(ctx.params)
    with command.make_context(command.name or "", []) as ctx:
        return dict(ctx.params)


def test_there_are_options_to_check() -> None:
    assert len(main.commands) >= 5 and len(PARAMS) >= 30


@pytest.mark.parametrize(
    ("where", "command", "param"), PARAMS, ids=[f"{w} {p.name}".replace(" ", "-") for w, _, p in PARAMS]
)
def test_the_documented_variable_sets_the_option(
    where: str, command: click.Command, param: click.Parameter, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = documented_variable(param)
    default = parsed(command)[param.name or ""]
    raw, expected = sample(param, default)
    assert expected != default
    monkeypatch.setenv(variable, raw)
    assert parsed(command)[param.name or ""] == expected, f"{where}: {variable}={raw}"


@pytest.mark.parametrize(("name", "command"), [("", main), *walk_commands(main)])
def test_help_names_every_variable(name: str, command: click.Command) -> None:
    args = [*name.split(), "--help"] if name else ["--help"]
    result = CliRunner().invoke(main, args, terminal_width=200, max_content_width=200)
    assert result.exit_code == 0, result.output
    for param in command.params:
        if param.expose_value:
            assert documented_variable(param) in result.output, f"{param.name} in {args}"
    if any(isinstance(p, click.Argument) and p.name in ("path", "paths") for p in command.params):
        assert "[PATH]" in result.output and "manifests/" in result.output, result.output


def test_one_variable_means_one_kind_of_option_everywhere() -> None:
    seen: dict[str, tuple[str, bool, str]] = {}
    for where, _, param in PARAMS:
        shape = (type(param.type).__name__, isinstance(param, click.Option) and param.is_flag, where)
        first = seen.setdefault(documented_variable(param), shape)
        assert first[:2] == shape[:2], f"{documented_variable(param)}: {first} and {shape}"


def test_a_variable_named_per_command_is_reported_not_ignored(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["validate", "--offline", str(REPO / "manifests")],
        env={"SWARM_SECRETS_VALIDATE_OFFLINE": "1", "SWARM_SECRETS_PLAN_FORMAT": "json"},
    )
    assert result.exit_code == 0, result.output
    assert "SWARM_SECRETS_PLAN_FORMAT is not read" in result.stderr
    assert "here SWARM_SECRETS_FORMAT" in result.stderr
    assert "SWARM_SECRETS_VALIDATE_OFFLINE is not read" in result.stderr


def test_the_readme_documents_the_rule() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "SWARM_SECRETS_<OPTION>" in readme and "SWARM_SECRETS_PATH" in readme
