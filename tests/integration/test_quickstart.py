"""The README's quick start (scripts/quickstart) works as written, on the test swarm."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

from reconciler.core.model import LABEL_SET

from .conftest import remove_secrets

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parents[2]


def test_quickstart_runs_the_whole_job(api: docker.APIClient) -> None:
    if not os.environ.get("SWARM_SECRETS_DEV_ENGINE"):
        pytest.skip("the quick start brings up scripts/dev-swarm: only where that is the test engine")
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "quickstart")], capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "Apply complete: 3 created, 2 services updated" in out
        assert "/run/secrets/db_password uid=1000 gid=1000 mode=440" in out
        assert "exit code 2" in out
        assert "db_password_v1: rollback target of shop_db, shop_web (PreviousSpec)" in out
        assert "exit code 0: the swarm matches the manifests" in out
    finally:
        for service in ("shop_db", "shop_web"):
            try:
                api.remove_service(service)
            except docker.errors.NotFound:
                pass
        remove_secrets(api, lambda s: s["Spec"].get("Labels", {}).get(LABEL_SET) == "shop")
