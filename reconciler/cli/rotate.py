"""``swarm-secrets rotate``: give generated secrets a new version now ("after a security incident").

It is ``apply`` with forced rotations: the same load, plan, approval (``--yes`` or the prompt), lease,
exact execution and report, through ``converge``. The plan is the whole plan, as with Terraform's
``apply -replace``: anything else pending is shown and applied with it. Only a generated secret
(``source.generate``) can be rotated by the tool; for any other source it exits 1 before anything is
read from the swarm, saying that the value must change at its source.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import click

from reconciler import converge
from reconciler.cli.app import (
    TrustOptions,
    docker_cli_option,
    engine_options,
    handle_errors,
    key_options,
    lease_settings,
    lock_options,
    main,
    manifest_paths,
    revision_check_options,
    rollout_options,
    trust_options,
)
from reconciler.cli.apply import _prompt, _show, apply_settings, run_apply
from reconciler.core.model import EnvSource, FileSource, SecretSet, SecretSpec, SopsSource
from reconciler.display import display_path
from reconciler.errors import ConfigError
from reconciler.manifests.revision import RevisionCheckMode


@main.command()
@manifest_paths
@click.option(
    "--secret",
    "names",
    multiple=True,
    metavar="NAME",
    help="A generated secret to give a new version now (its logical name, or SET/NAME); repeatable.",
)
@engine_options
@key_options
@click.option(
    "--yes", "-y", is_flag=True, help="Apply without asking (required when stdin is not a terminal)."
)
@rollout_options
@revision_check_options
@lock_options
@docker_cli_option
@trust_options
@handle_errors
def rotate(
    paths: tuple[Path, ...],
    names: tuple[str, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
    yes: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
    allow_older_revision: bool,
    revision_check: RevisionCheckMode,
    lock: bool,
    lock_timeout: float,
    lock_ttl: float,
    docker_cli: str | None,
) -> None:
    """Give each --secret (a generated secret) a new version now and roll its services, like apply.

    The plan shown is apply's plan with these rotations in it. A secret whose value comes from sops, a
    file or a variable cannot be rotated by swarm-secrets: that is exit 1, changing nothing; change the
    value at its source and run apply. Exit codes as for apply.
    """
    if not names:
        raise click.UsageError("name at least one generated secret to rotate: --secret NAME")
    boundary = trust.boundary(paths)
    loaded = converge.load(paths, revision=revision, boundary=boundary, complete=prune_orphans)
    forced = frozenset(_generated(loaded.sets, names))
    settings = apply_settings(
        paths[0],
        fingerprint_key_file=fingerprint_key_file,
        timeout=timeout,
        concurrency=concurrency,
        prune_orphans=prune_orphans,
        allow_older_revision=allow_older_revision,
        revision_check=revision_check,
        rotate=forced,
    )
    run_apply(
        loaded,
        settings,
        docker_host=docker_host,
        docker_cli=docker_cli,
        locking=lease_settings(lock, lock_timeout, lock_ttl),
        approval=converge.auto_approve if yes else _prompt,
        show=_show,
        ask=not yes,
        purpose="rotate",
    )


def _generated(sets: Sequence[SecretSet], names: Sequence[str]) -> list[tuple[str, str]]:
    """(set, secret) of each name; ConfigError naming every name that is unknown or not generated."""
    specs = {(s.name, spec.secret): spec for s in sets for spec in s.secrets}
    by_name: dict[str, list[tuple[str, str]]] = {}
    for key in specs:
        by_name.setdefault(key[1].lower(), []).append(key)
    found: list[tuple[str, str]] = []
    problems: list[str] = []
    for name in dict.fromkeys(names):
        set_name, _, secret = name.rpartition("/")
        keys = [k for k in by_name.get(secret.lower(), []) if not set_name or k[0] == set_name]
        if not keys:
            guess = difflib.get_close_matches(secret, [k[1] for k in specs], n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            problems.append(f"no secret '{name}' in the loaded manifests{hint}")
            continue
        for key in keys:
            spec = specs[key]
            if spec.generated:
                found.append(key)
            else:
                problems.append(
                    f"{key[0]}/{key[1]} comes from {_source_text(spec)}: swarm-secrets cannot make a new "
                    "value for it; change the value at its source, then run apply (only a secret with "
                    "`source: {generate: …}` can be rotated here)"
                )
    if problems:
        raise ConfigError("; ".join(problems))
    return found


def _source_text(spec: SecretSpec) -> str:
    source = spec.source
    if isinstance(source, SopsSource):
        return f"the sops file {display_path(source.file)}"
    if isinstance(source, FileSource):
        return f"the file {display_path(source.file)}"
    if isinstance(source, EnvSource):
        return f"the environment variable {source.var}"
    return "its source"
