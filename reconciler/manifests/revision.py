"""Which manifest revision is being applied, recorded on every new version (label) and in logs.

Order: an explicit ``--revision`` / ``SWARM_SECRETS_REVISION``; the commit CI systems announce
(``GITHUB_SHA``, ``CI_COMMIT_SHA``, ``DRONE_COMMIT_SHA``, ``BUILD_VCS_NUMBER``); else ``git rev-parse
HEAD`` in the first manifest path, with ``-dirty`` appended when the manifests there have uncommitted
changes. None when the manifests are not in git. Never fails a run: a revision is information.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

CI_VARIABLES = ("GITHUB_SHA", "CI_COMMIT_SHA", "DRONE_COMMIT_SHA", "BUILD_VCS_NUMBER")


def detect_revision(paths: Sequence[Path], environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    explicit = env.get("SWARM_SECRETS_REVISION")
    if explicit:
        return explicit
    for variable in CI_VARIABLES:
        if env.get(variable):
            return env[variable]
    if not paths:
        return None
    path = paths[0] if paths[0].is_dir() else paths[0].parent
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = head.stdout.strip()
    return f"{revision}-dirty" if dirty.stdout.strip() else revision
