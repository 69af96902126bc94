"""``swarm-secrets run``: the long-running reconciler (see ``reconciler.daemon``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from reconciler import manifests
from reconciler.cli.app import (
    TrustOptions,
    docker_cli_option,
    engine_options,
    fingerprint_key_option,
    handle_errors,
    lease_settings,
    lock_options,
    main,
    manifest_dir,
    revision_check_options,
    rollout_options,
    trust_options,
)
from reconciler.engine.executor import ApplyOptions
from reconciler.errors import ConfigError
from reconciler.manifests.revision import RevisionCheckMode

log = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


def _secret_file(flag: str, what: str) -> Callable[[F], F]:
    return click.option(flag, type=click.Path(path_type=Path, dir_okay=False), default=None, help=what)


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
    help="The git server's host key(s) in known_hosts format; required for ssh URLs. Only these are "
    "accepted.",
)
@click.option(
    "--git-accept-new-host-key",
    is_flag=True,
    help="UNSAFE: trust the ssh host key the server shows first (then pin it in the state dir) instead "
    "of --git-known-hosts-file. Whoever answers first, e.g. by DNS spoofing, gets trusted.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the loop keeps its state (the git checkout, learned host keys). Default: "
    "/var/lib/swarm-secrets as root, else $XDG_STATE_HOME/swarm-secrets (~/.local/state/swarm-secrets).",
)
@click.option(
    "--checkout-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to keep the git checkout (default: STATE_DIR/checkout); a private folder (mode 0700, "
    "owned by this user) or a missing one.",
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
@_secret_file("--github-webhook-secret-file", "GitHub webhook secret (HMAC key): enables /hooks/github.")
@_secret_file("--gitlab-webhook-token-file", "GitLab webhook secret token: enables /hooks/gitlab.")
@_secret_file("--gitea-webhook-secret-file", "Gitea/Forgejo webhook secret (HMAC key): enables /hooks/gitea.")
@_secret_file("--reconcile-token-file", "Bearer token for POST /reconcile: enables it.")
@_secret_file(
    "--metrics-token-file", "Bearer token required by GET /metrics and /readyz (default: they are open)."
)
@_secret_file(
    "--webhook-secret-file",
    "Deprecated: the HMAC key of GitHub and Gitea (as both --github- and --gitea-webhook-secret-file). "
    "It no longer enables GitLab or /reconcile, whose tokens travel in clear: give those their own.",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Reconcile when secrets or services change in the swarm (drift within seconds).",
)
@rollout_options
@revision_check_options
@trust_options
@lock_options
@docker_cli_option
@handle_errors
def run(
    path: Path | None,
    trust: TrustOptions,
    docker_host: str | None,
    fingerprint_key_file: Path | None,
    git_url: str | None,
    git_ref: str,
    git_path: str,
    git_token_file: Path | None,
    git_ssh_key_file: Path | None,
    git_known_hosts_file: Path | None,
    git_accept_new_host_key: bool,
    state_dir: Path | None,
    checkout_dir: Path | None,
    interval: float,
    debounce: float,
    listen: str,
    github_webhook_secret_file: Path | None,
    gitlab_webhook_token_file: Path | None,
    gitea_webhook_secret_file: Path | None,
    reconcile_token_file: Path | None,
    metrics_token_file: Path | None,
    webhook_secret_file: Path | None,
    events: bool,
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
    """Reconcile continuously: on start, every --interval, on webhooks, on git changes and on swarm
    events. SIGTERM finishes the step in hand and exits 0."""
    import threading
    from dataclasses import replace

    from reconciler.daemon.gitsync import GitSettings, GitSync, default_state_dir, ensure_private_dir
    from reconciler.daemon.leader import RUN_LEASE, Leadership
    from reconciler.daemon.loop import Loop, LoopSettings, with_git
    from reconciler.daemon.tick import TickSettings, docker_events, make_tick
    from reconciler.daemon.webhooks import SecretFiles
    from reconciler.engine.swarm import Swarm

    if git_url is None and path is None:
        path = manifests.DEFAULT_PATH
    if git_url is not None and path is not None:
        raise ConfigError("give either a manifest PATH or --git-url, not both")
    # The loop's environment is the reconciler's own: env sources need a policy rule (daemon=True).
    boundary = trust.boundary([path] if path is not None else [], daemon=True)
    if webhook_secret_file is not None:
        if github_webhook_secret_file is not None or gitea_webhook_secret_file is not None:
            raise ConfigError(
                "--webhook-secret-file is the deprecated form of --github-webhook-secret-file and "
                "--gitea-webhook-secret-file: give one or the other"
            )
        log.warning(
            "--webhook-secret-file is deprecated: it now sets only the GitHub and Gitea HMAC key; use "
            "--github-webhook-secret-file / --gitea-webhook-secret-file, and --gitlab-webhook-token-file "
            "and --reconcile-token-file with secrets of their own"
        )
        github_webhook_secret_file = gitea_webhook_secret_file = webhook_secret_file
    stop = threading.Event()
    applier_lease = lease_settings(lock, lock_timeout, lock_ttl)
    tick = make_tick(
        TickSettings(
            manifests=path or Path("."),
            docker_host=docker_host,
            fingerprint_key_file=fingerprint_key_file,
            apply=ApplyOptions(timeout=timeout, concurrency=concurrency, prune_orphans=prune_orphans),
            allow_older_revision=allow_older_revision,
            revision_check=revision_check,
            boundary=boundary,
            lease=applier_lease,
            stop=stop,
            docker_cli=docker_cli,
        )
    )
    if git_url is not None:
        state = state_dir or default_state_dir()
        learned = None
        if git_accept_new_host_key:
            ensure_private_dir(state / "ssh", "ssh state folder")
            learned = state / "ssh" / "known_hosts"
        sync = GitSync(
            GitSettings(
                url=git_url,
                ref=git_ref,
                path=git_path,
                checkout_dir=checkout_dir or state / "checkout",
                token_file=git_token_file,
                ssh_key_file=git_ssh_key_file,
                known_hosts_file=git_known_hosts_file,
                accept_new_host_key=git_accept_new_host_key,
                learned_hosts_file=learned,
            )
        )
        tick = with_git(tick, sync.sync)
    settings = LoopSettings(
        manifests_dir=path,
        interval=interval,
        debounce=debounce,
        listen=None if listen == "off" else listen,
        secrets=SecretFiles(
            github=github_webhook_secret_file,
            gitlab=gitlab_webhook_token_file,
            gitea=gitea_webhook_secret_file,
            reconcile=reconcile_token_file,
            metrics=metrics_token_file,
        ),
    )
    if boundary.self_service is None:
        log.warning(
            "--self-service / SWARM_SECRETS_SELF_SERVICE is not set: grants to the reconciler's own "
            "service are refused only by its label io.swarm-secrets.role=reconciler and by its Docker "
            "socket; set it (deploy/stack.yml passes {{.Service.Name}})"
        )
    # Replicas elect the one that reconciles (daemon/leader.py); --no-lock: no lease, no election.
    leadership: Leadership | None = None
    forward = None
    if applier_lease is not None:
        leadership = Leadership(
            lambda: Swarm.connect(docker_host),
            replace(applier_lease, name=RUN_LEASE),
            on_change=lambda leading, problem=None: reconciler.set_leading(leading, problem=problem),
            on_pending=lambda reasons: reconciler.handed(reasons),
        )
        forward = leadership.forward
    reconciler = Loop(settings, tick, stop_event=stop, elected=leadership is None, forward=forward)
    feed = docker_events(docker_host, stop) if events else None
    try:
        code = reconciler.run(events=feed, on_start=leadership.start if leadership is not None else None)
    finally:
        if leadership is not None:
            leadership.close()  # after the tick in hand: a standby takes over within seconds
    raise click.exceptions.Exit(code)
