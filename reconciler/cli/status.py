"""``swarm-secrets status``: what the swarm holds per set and secret, how old each current version is
and whether its rotation is due, and why old versions stay."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click

from reconciler import manifests
from reconciler.cli.app import (
    TrustOptions,
    engine_options,
    handle_errors,
    main,
    manifest_paths,
    trust_options,
)
from reconciler.core.guard import governance
from reconciler.core.status import build_status
from reconciler.engine.swarm import Swarm
from reconciler.render.status import render_status_json, render_status_text


@main.command()
@manifest_paths
@engine_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="text for people, json for machines.",
)
@trust_options
@handle_errors
def status(paths: tuple[Path, ...], docker_host: str | None, fmt: str, trust: TrustOptions) -> None:
    """Per set and secret: current version, its age and whether its rotation is due (rotate.every),
    its users, superseded versions and why each is kept; orphaned sets; unmanaged secrets nothing
    references; with --policy, the rule governing each set. Reads manifests offline (no keys needed)
    and only reports: the policy is enforced by plan/apply."""
    boundary = trust.boundary(paths)
    sets = manifests.load(paths, boundary, enforce=False) if all(p.exists() for p in paths) else None
    with Swarm.connect(docker_host) as swarm:
        live = swarm.observe()
    # Ages on the swarm's clock; this machine's only when the engine did not give its time.
    report = build_status(live, sets, now=live.observed_at if live.observed_at is not None else time.time())
    report = replace(report, governance=governance(sets or (), boundary.policy))
    click.echo(render_status_json(report) if fmt == "json" else render_status_text(report), nl=False)
