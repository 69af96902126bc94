"""``swarm-secrets plan``: what apply would change, as text, JSON or Markdown; changes nothing."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    TrustOptions,
    engine_options,
    handle_errors,
    key_options,
    main,
    manifest_paths,
    trust_options,
)
from reconciler.core.plan import Plan
from reconciler.core.saved import dumps
from reconciler.display import display_path
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.keysource import KEY_CONFIG_NAME
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError, ExitCode
from reconciler.render import plan as render


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file in the same folder, then rename)."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {display_path(path)}: {exc.strerror or exc}") from None


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
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also save the plan (JSON, no values) for `apply --plan FILE`, which applies exactly it.",
)
@trust_options
@handle_errors
def plan(
    paths: tuple[Path, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    fmt: str,
    detailed_exitcode: bool,
    prune_orphans: bool,
    out: Path | None,
) -> None:
    """Show what apply would change; change nothing. Never prints a value.

    With --out FILE, also save the plan and what it was computed from (revision, manifest digest,
    keyed fingerprints, version indexes) for `apply --plan FILE`.
    """
    boundary = trust.boundary(paths)
    loaded = converge.load(paths, revision=revision, boundary=boundary, complete=prune_orphans)
    with Swarm.connect(docker_host) as swarm:
        settings = converge.Settings(
            key_file=fingerprint_key_file, read_only=True, apply=ApplyOptions(prune_orphans=prune_orphans)
        )
        if out is not None and fingerprint_key_file is None and swarm.find_config(KEY_CONFIG_NAME) is None:
            # A plan never writes, so it would fingerprint with a throwaway key no apply can match.
            raise ConfigError(
                f"cannot save a plan: this swarm has no fingerprint key yet (the Docker config "
                f"{KEY_CONFIG_NAME}); run apply once, or give --fingerprint-key-file"
            )
        prepared = converge.prepare(loaded, swarm, settings)
    if out is not None:
        saved = converge.save_plan(
            prepared, settings, manifests_digest=converge.manifest_digest(paths, loaded.sets)
        )
        _write(out, dumps(saved))
        click.echo(f"saved the plan to {display_path(out)}; apply it with `apply --plan {out}`", err=True)
    shown = prepared.plan
    note = converge.revision_note(loaded, prepared.live, paths[0])
    if note is not None:  # shown, not saved: the saved plan is what apply recomputes
        shown = replace(shown, warnings=(*shown.warnings, note))
    click.echo(_render(shown, fmt).rstrip("\n"))
    if detailed_exitcode and not prepared.plan.empty:
        raise click.exceptions.Exit(ExitCode.CHANGES)
