"""The ``swarm-secrets`` command line (click): ``app.py`` holds the group and the shared options, each
command a module of its own, imported here so that it registers with the group."""

from reconciler.cli import apply, env, plan, rotate, run, stack, status, validate  # noqa: F401  (registers the commands)
from reconciler.cli.app import main

__all__ = ["main"]
