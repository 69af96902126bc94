"""``swarm-secrets validate``: schema, cross-file rules and every source, changing nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from reconciler import manifests
from reconciler.cli.app import (
    TrustOptions,
    handle_errors,
    main,
    manifest_paths,
    trust_options,
)
from reconciler.core.model import SecretSet
from reconciler.display import count


@main.command()
@manifest_paths
@click.option(
    "--offline",
    is_flag=True,
    help="Check the schema, cross-file rules and the policy only; do not read or decrypt any source.",
)
@trust_options
@handle_errors
def validate(paths: tuple[Path, ...], offline: bool, trust: TrustOptions) -> None:
    """Check manifests, the operator's policy, and that every secret value can be read (sops, files,
    variables). Rules that need the swarm (services exist, stacks) are checked by plan and apply.

    Values are read and discarded; nothing is printed but a summary, or one line per problem.
    """
    boundary = trust.boundary(paths)
    found = manifests.load_manifests(paths, boundary)
    sets = found.sets
    if not offline:
        from reconciler.sources import resolve

        # values are dropped at once: validate only proves they can be produced
        resolve(sets, sops_env=boundary.sops_passthrough)
    suffix = " (offline: sources not checked)" if offline else ""
    stacks = (
        f"; {count(len(found.stacks), 'stack')} ({', '.join(s.name for s in found.stacks)})"
        if found.stacks
        else ""
    )
    click.echo(f"ok: {summary(sets)}{stacks}{suffix}")


def summary(sets: Sequence[SecretSet]) -> str:
    """``2 sets, 5 secrets, 7 service grants in 3 files``."""
    secrets = [spec for s in sets for spec in s.secrets]
    files = {s.origin.file for s in sets}
    return (
        f"{count(len(sets), 'set')}, {count(len(secrets), 'secret')}, "
        f"{count(sum(len(spec.grants) for spec in secrets), 'service grant')} in "
        f"{count(len(files), 'file')}"
    )
