"""``swarm-secrets run``: the long-running reconciler (see ``reconciler.daemon``)."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler import manifests
from reconciler.cli.app import (
    engine_options,
    fingerprint_key_option,
    handle_errors,
    main,
    manifest_dir,
    rollout_options,
)
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import ConfigError

# --- the long-running reconciler ----------------------------------------------------------------------


@main.command()
@manifest_dir
@engine_options
@fingerprint_key_option
@click.option("--git-url", default=None, help="Follow this git repository instead of a local PATH.")
@click.option("--git-ref", default="main", show_default=True, help="Branch or tag to follow.")
@click.option("--git-path", default=".", show_default=True, help="Manifest folder inside the repository.")
@click.option(
    "--git-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File with an https access token (never put tokens in the URL).",
)
@click.option(
    "--git-ssh-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Private deploy key for ssh URLs (mode 0400).",
)
@click.option(
    "--git-known-hosts-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="known_hosts for ssh; unknown host keys are then refused.",
)
@click.option(
    "--checkout-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to keep the git checkout (default: a folder under the temp dir).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between periodic reconciliations (±10% jitter).",
)
@click.option(
    "--debounce",
    type=click.FloatRange(min=0),
    default=2,
    show_default=True,
    help="Seconds to gather triggers (events, webhooks) into one reconciliation.",
)
@click.option(
    "--listen",
    default=":8080",
    show_default=True,
    help="HTTP address for /healthz, /readyz, /metrics, /reconcile and /hooks/*; 'off' disables.",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Shared secret for GitHub/Gitea signatures and GitLab tokens (enables /hooks/*).",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Reconcile when secrets or services change in the swarm (drift within seconds).",
)
@rollout_options
@handle_errors
def run(
    path: Path | None,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    git_url: str | None,
    git_ref: str,
    git_path: str,
    git_token_file: Path | None,
    git_ssh_key_file: Path | None,
    git_known_hosts_file: Path | None,
    checkout_dir: Path | None,
    interval: float,
    debounce: float,
    listen: str,
    webhook_secret_file: Path | None,
    events: bool,
    timeout: float,
    concurrency: int,
    prune_orphans: bool,
) -> None:
    """Reconcile continuously: on start, every --interval, on webhooks, on git changes and on swarm
    events. SIGTERM finishes the step in hand and exits 0."""
    import tempfile
    import threading

    from reconciler.daemon.gitsync import GitSettings, GitSync
    from reconciler.daemon.loop import Loop, LoopSettings, with_git
    from reconciler.daemon.tick import TickSettings, docker_events, make_tick

    if git_url is None and path is None:
        path = manifests.DEFAULT_PATH
    if git_url is not None and path is not None:
        raise ConfigError("give either a manifest PATH or --git-url, not both")
    tick = make_tick(
        TickSettings(
            manifests=path or Path("."),
            docker_host=docker_host,
            fingerprint_key_file=fingerprint_key_file,
            apply=ApplyOptions(timeout=timeout, concurrency=concurrency, prune_orphans=prune_orphans),
        )
    )
    if git_url is not None:
        sync = GitSync(
            GitSettings(
                url=git_url,
                ref=git_ref,
                path=git_path,
                checkout_dir=checkout_dir or Path(tempfile.gettempdir()) / "swarm-secrets-checkout",
                token_file=git_token_file,
                ssh_key_file=git_ssh_key_file,
                known_hosts_file=git_known_hosts_file,
            )
        )
        tick = with_git(tick, sync.sync)
    settings = LoopSettings(
        manifests_dir=path,
        interval=interval,
        debounce=debounce,
        listen=None if listen == "off" else listen,
        webhook_secret_file=webhook_secret_file,
    )
    stop = threading.Event()
    reconciler = Loop(settings, tick, stop_event=stop)
    feed = docker_events(docker_host, stop) if events else None
    code = reconciler.run(events=feed)
    raise click.exceptions.Exit(code)
