"""Shared set-up for the benchmarks: a lab on the throwaway swarm (``scripts/dev-swarm up``).

Benchmarks print ratios against a baseline measured in the same run, because these machines are
noisy; they assert nothing about time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
IMAGE = os.environ.get("SWARM_SECRETS_TEST_IMAGE", "local/busybox:1")


def docker_host() -> str:
    host = os.environ.get("SWARM_SECRETS_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    if not host:
        sys.exit('start the throwaway swarm first: eval "$(scripts/dev-swarm up)"')
    return host


def api_client() -> docker.APIClient:
    return docker.APIClient(base_url=docker_host(), version="auto", timeout=120)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs of ``fn``."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def workdir(prefix: str) -> Path:
    """A fresh folder for a bench's manifests and values; :func:`cleanup` removes it with the rest."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))


def command_env(prefix: str) -> dict[str, str]:
    """The environment to run ``swarm-secrets`` in as a new process, as installed: pip compiles the
    package's bytecode, so the command runs from .pyc files. A checkout's environment may forbid
    writing them (PYTHONDONTWRITEBYTECODE), which would make every run compile the package from
    source; the bench keeps its own bytecode cache instead (removed by :func:`cleanup`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(DOCKER_HOST=docker_host(), PYTHONPYCACHEPREFIX=str(workdir(prefix)))
    return env


def cleanup(api: docker.APIClient, prefix: str) -> None:
    """Remove the bench's services, secrets and folders (the values must not outlive the bench)."""
    for folder in Path(tempfile.gettempdir()).glob(f"bench-{prefix}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    for service in api.services():
        if service["Spec"]["Name"].startswith(prefix):
            api.remove_service(service["ID"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [s for s in api.secrets() if s["Spec"]["Name"].startswith(prefix)]
        for secret in left:
            try:
                api.remove_secret(secret["ID"])
            except docker.errors.APIError:
                pass
        if not left:
            return
        time.sleep(0.5)
