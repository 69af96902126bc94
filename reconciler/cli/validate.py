"""``swarm-secrets validate``: schema, cross-file rules and every source, changing nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from reconciler import manifests
from reconciler.cli.app import (
    handle_errors,
    main,
    manifest_paths,
)
from reconciler.core.model import SecretSet
from reconciler.display import count


@main.command()
@manifest_paths
@click.option(
    "--offline",
    is_flag=True,
    help="Check the schema and cross-file rules only; do not read or decrypt any source.",
)
@handle_errors
def validate(paths: tuple[Path, ...], offline: bool) -> None:
    """Check manifests, and that every secret value can be read (sops, files, variables).

    Values are read and discarded; nothing is printed but a summary, or one line per problem.
    """
    sets = manifests.load(paths)
    if not offline:
        from reconciler.sources import resolve

        resolve(sets)  # values are dropped at once: validate only proves they can be produced
    suffix = " (offline: sources not checked)" if offline else ""
    click.echo(f"ok: {summary(sets)}{suffix}")


def summary(sets: Sequence[SecretSet]) -> str:
    """``2 sets, 5 secrets, 7 service grants in 3 files``."""
    secrets = [spec for s in sets for spec in s.secrets]
    files = {s.origin.file for s in sets}
    return (
        f"{count(len(sets), 'set')}, {count(len(secrets), 'secret')}, "
        f"{count(sum(len(spec.grants) for spec in secrets), 'service grant')} in "
        f"{count(len(files), 'file')}"
    )
