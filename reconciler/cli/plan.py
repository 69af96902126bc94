"""``swarm-secrets plan``: what apply would change, as text, JSON or Markdown; changes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    engine_options,
    handle_errors,
    key_options,
    main,
    manifest_paths,
)
from reconciler.core.plan import Plan
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.swarm import Swarm
from reconciler.errors import ExitCode
from reconciler.render import plan as render


def _render(the_plan: Plan, fmt: str) -> str:
    if fmt == "json":
        return render.render_json(the_plan)
    if fmt == "markdown":
        return render.render_markdown(the_plan)
    return render.render_text(the_plan, color=sys.stdout.isatty())


@main.command()
@manifest_paths
@engine_options
@key_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json", "markdown")),
    default="text",
    show_default=True,
    help="text for people, json for machines, markdown for a pull request.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when the plan is not empty (0: nothing to do, 1: error).",
)
@click.option(
    "--prune-orphans", is_flag=True, help="Also plan to revoke and collect sets that have no loaded manifest."
)
@handle_errors
def plan(
    paths: tuple[Path, ...],
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    fmt: str,
    detailed_exitcode: bool,
    prune_orphans: bool,
) -> None:
    """Show what apply would change; change nothing. Never prints a value."""
    loaded = converge.load(paths, revision=revision)
    with Swarm.connect(docker_host) as swarm:
        settings = converge.Settings(
            key_file=fingerprint_key_file, read_only=True, apply=ApplyOptions(prune_orphans=prune_orphans)
        )
        prepared = converge.prepare(loaded, swarm, settings)
    click.echo(_render(prepared.plan, fmt).rstrip("\n"))
    if detailed_exitcode and not prepared.plan.empty:
        raise click.exceptions.Exit(ExitCode.CHANGES)
