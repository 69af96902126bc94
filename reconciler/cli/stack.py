"""``swarm-secrets stack override`` and ``swarm-secrets stack deploy``: stacks without the fight.

``override`` prints the compose override that pins every managed compose secret of a stack to its
current version (for a ``docker stack deploy`` run by hand or by another tool); ``deploy`` is the one
command for CI: it applies the manifests, deploys the stack with that override in the same run (each
service of the stack updated once, carrying its new versions), watches the rollouts and collects what
nothing needs any more. The logic is ``core/stacks.py``, ``manifests/compose.py`` and
``engine/stackdeploy.py``; these commands only wire them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import yaml

from reconciler import converge
from reconciler.cli.app import (
    Argument,
    Group,
    TrustOptions,
    docker_cli_option,
    engine_options,
    fingerprint_key_option,
    handle_errors,
    key_options,
    lease_settings,
    lock_options,
    main,
    revision_check_options,
    rollout_options,
    trust_options,
)
from reconciler.cli.apply import apply_settings, run_apply, show_plan
from reconciler.core.stacks import StackSpec, override_document, pins, wanted_names
from reconciler.display import display_path
from reconciler.engine.stackdeploy import cli_environment
from reconciler.engine.swarm import Swarm
from reconciler.errors import ConfigError
from reconciler.manifests import DEFAULT_PATH
from reconciler.manifests.compose import stack_from_files
from reconciler.manifests.revision import RevisionCheckMode


@main.group(cls=Group)
def stack() -> None:
    """Deploy stacks with their managed secrets pinned: one update per service per release."""


compose_files_option = click.option(
    "-c",
    "--compose-file",
    "compose_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="A compose file of the stack, as for `docker stack deploy`; repeat to merge in order. Required.",
)
manifests_option = click.option(
    "--manifests",
    "manifests",
    multiple=True,
    envvar="SWARM_SECRETS_PATH",  # after SWARM_SECRETS_MANIFESTS: the PATH of plan and apply
    type=click.Path(path_type=Path),
    metavar="PATH",
    help=f"Manifest file or folder; repeatable. Default: {DEFAULT_PATH}/.",
)
stack_argument = click.argument(
    "name",
    cls=Argument,
    required=False,
    metavar="STACK",
    help="The stack's name (its services are STACK_<service>). Required.",
)


def _stack(name: str | None, files: tuple[Path, ...], *, docker_args: tuple[str, ...] = ()) -> StackSpec:
    if not name:
        raise click.UsageError("give the stack's name: ... STACK")
    if not files:
        raise click.UsageError("give the stack's compose files: -c FILE [-c FILE]...")
    # The caller's environment interpolates the files, as for `docker stack deploy`, but without the
    # tool's keys and the programs' credentials, which a compose file could copy into a service's spec.
    return stack_from_files(name, files, cli_environment(os.environ), docker_args=docker_args)


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file in the same folder, then rename)."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise ConfigError(
            f"cannot write the override to {display_path(path)}: {exc.strerror or exc}"
        ) from None


@stack.command("override")
@compose_files_option
@manifests_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Write the override to FILE instead of printing it.",
)
@stack_argument
@engine_options
@fingerprint_key_option
@trust_options
@handle_errors
def override(
    compose_files: tuple[Path, ...],
    manifests: tuple[Path, ...],
    output: Path | None,
    name: str | None,
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
) -> None:
    """Print a compose override that pins every managed compose secret of STACK to its current version.

    A compose secret is managed when a manifest grants a secret to STACK_<service> at the target where
    the compose files mount it; it becomes `{external: true, name: <current version>}`. Others stay as
    they are. `docker stack deploy -c FILE... -c OVERRIDE STACK` then deploys with the managed
    versions. Conflicts (one compose secret for two secrets, other uid/gid/mode) name both files and
    lines. Exit 1 when a value has no version yet: apply first. Never prints a value.
    """
    spec = _stack(name, compose_files)
    paths = manifests or (DEFAULT_PATH,)
    loaded = converge.load(paths, boundary=trust.boundary(paths), stacks=(spec,))
    with Swarm.connect(docker_host) as swarm:
        names = converge.current_versions(loaded, swarm, converge.Settings(key_file=fingerprint_key_file))
    pinned = pins(spec, wanted_names(loaded.sets, names))
    header = (
        f"# compose override for stack {spec.name}, by swarm-secrets stack override (version names only):\n"
        f"# docker stack deploy {' '.join(f'-c {display_path(f)}' for f in spec.files)} -c <this file> "
        f"{spec.name}\n"
    )
    document = override_document(spec, pinned)
    text = header + (yaml.safe_dump(document, sort_keys=False, default_flow_style=False) if document else "")
    if output is None:
        click.echo(text.rstrip("\n"))
    else:
        _write(output, text)
        click.echo(f"wrote the override for stack {spec.name} to {display_path(output)}", err=True)


@stack.command("deploy")
@compose_files_option
@manifests_option
@stack_argument
@click.argument(
    "docker_args",
    cls=Argument,
    nargs=-1,
    metavar="[DOCKER_ARGS]...",
    help="More `docker stack deploy` flags, after `--` (e.g. -- --prune --with-registry-auth).",
)
@engine_options
@key_options
@rollout_options
@revision_check_options
@lock_options
@docker_cli_option
@trust_options
@handle_errors
def deploy(
    compose_files: tuple[Path, ...],
    manifests: tuple[Path, ...],
    name: str | None,
    docker_args: tuple[str, ...],
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    revision: str | None,
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
    """Apply the manifests and deploy STACK in one run: each service of the stack is updated once.

    Creates the versions the manifests need, runs `docker stack deploy -c FILE... -c <override> STACK`
    with the override that pins them (the deploy carries the new versions: no separate update of the
    stack's services), updates other services as apply does, watches every rollout, then collects
    what nothing needs any more (not what a Spec, a PreviousSpec or a task still uses). Shows the plan
    and goes on without asking, under the swarm's lease. Exit codes as apply: 0 converged; 1 nothing
    changed (an error before any change); 3 changes made but a rollout failed or docker did.
    """
    spec = _stack(name, compose_files, docker_args=docker_args)
    paths = manifests or (DEFAULT_PATH,)
    boundary = trust.boundary(paths)
    loaded = converge.load(
        paths, revision=revision, boundary=boundary, complete=prune_orphans, stacks=(spec,)
    )
    settings = apply_settings(
        paths[0],
        fingerprint_key_file=fingerprint_key_file,
        timeout=timeout,
        concurrency=concurrency,
        prune_orphans=prune_orphans,
        allow_older_revision=allow_older_revision,
        revision_check=revision_check,
    )
    run_apply(
        loaded,
        settings,
        docker_host=docker_host,
        docker_cli=docker_cli,
        locking=lease_settings(lock, lock_timeout, lock_ttl),
        approval=converge.auto_approve,
        show=show_plan,
        ask=False,
        purpose="stack deploy",
    )
