"""``swarm-secrets env``: the current version name of every managed secret, for compose interpolation.

A compose file can name a managed version itself (``secrets: {db_password: {external: true, name:
${DB_PASSWORD}}}``); ``eval "$(swarm-secrets env)"`` before ``docker stack deploy`` fills those in.
Only names are printed, never a value; a value that has no version yet is an error (apply first).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    TrustOptions,
    engine_options,
    fingerprint_key_option,
    handle_errors,
    main,
    manifest_paths,
    trust_options,
)
from reconciler.core.stacks import variable_name
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError


def variables(names: dict[tuple[str, str], str], prefix: str) -> dict[str, str]:
    """variable -> version name; two secrets that map to one variable are an error naming both."""
    found: dict[str, tuple[str, str]] = {}
    result: dict[str, str] = {}
    for (set_name, secret), name in sorted(names.items()):
        variable = variable_name(secret, prefix)
        if variable in found:
            other = found[variable]
            raise ConfigError(
                f"secrets {other[0]}/{other[1]} and {set_name}/{secret} both become {variable}: rename one "
                "(or load their sets separately)"
            )
        found[variable] = (set_name, secret)
        result[variable] = name
    return result


def render(values: dict[str, str], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(values, indent=2, sort_keys=True)
    if fmt == "dotenv":
        return "\n".join(f"{k}={v}" for k, v in sorted(values.items()))
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(values.items()))


@main.command()
@manifest_paths
@engine_options
@fingerprint_key_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("shell", "dotenv", "json")),
    default="shell",
    show_default=True,
    help="shell: `export DB_PASSWORD=db_password_v3` lines for eval; dotenv: NAME=value lines; json.",
)
@click.option(
    "--prefix",
    default="",
    metavar="P",
    help="Put P before every variable name (--prefix SS_: SS_DB_PASSWORD).",
)
@trust_options
@handle_errors
def env(
    paths: tuple[Path, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    fmt: str,
    prefix: str,
) -> None:
    """Print the current version name of every managed secret, as variables for compose files.

    The variable is the prefix plus the secret's name upper-cased, every character outside [A-Za-z0-9]
    as '_' (db_password: DB_PASSWORD). Exit 1 when a value has no version yet: apply first. Never
    prints a value.
    """
    if prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ConfigError(
            f"--prefix {prefix!r}: a variable name starts with a letter or '_' and has letters, digits, '_'"
        )
    loaded = converge.load(paths, boundary=trust.boundary(paths))
    with Swarm.connect(docker_host) as swarm:
        names = converge.current_versions(loaded, swarm, converge.Settings(key_file=fingerprint_key_file))
    text = render(variables(names, prefix), fmt)
    if text:
        click.echo(text)
