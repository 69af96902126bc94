"""The first hour: the README's quick start and the test suite on a host that already runs a swarm
manager of its own, which both leave alone.

One test; its steps share one dev engine and each builds on the one before:

1. A stand-in for the user's swarm on Docker's default ports (``user_swarm.py``) with a secret, a
   config, an overlay network and a running service of its own. DOCKER_HOST and
   SWARM_SECRETS_DOCKER_HOST point at it, as a user's shell might: the quick start must not follow them.
2. ``scripts/quickstart`` in a fresh dev folder, twice. The first run applies the example and rotates
   db_password; the second continues from it (the value changed back to v1, then v3). Its temporary
   copy of manifests/, which holds the demo age key, is gone after each run (TMPDIR is the test's).
3. The swarm part of the suite as a nested pytest against the quick start's engine, as
   ``scripts/test`` runs it: it passes, and the quick start's objects are exactly as they were. SUITE
   is the engine and client tests (about a minute, every kind of change the tool makes); the loop
   service and image tests are left out for time, as they add nothing about sharing a host.
4. The user's swarm: every object and version index as before, and the same ports held by its dockerd.
   Then its dockerd stops (an upgrade of Docker, say) while a third quick start throws its dev swarm
   away and starts a new one (``--fresh``), which Ctrl-C interrupts in its apply: exit 130, its
   temporary copy gone. The user's dockerd starts again and gets all of its ports back: a dev swarm
   takes none of them, not even Swarm's gossip port 7946, which Docker offers no setting for.

Everything started here is stopped and removed, also when a step fails. Only one swarm can hold the
default ports: test runs on one machine take turns (``default_ports_lock``). When something else
already holds port 2377 (a real swarm manager), steps 2 and 3 and the interrupted quick start run
beside that one, and the checks of step 4 on the user's swarm are left out.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.core.model import LABEL_SET

from .test_loop_service import eventually
from .user_swarm import (
    CLUSTER_PORT,
    GOSSIP_PORT,
    UserSwarm,
    default_ports_lock,
    listening,
    port_free,
    sweep_stale,
    vxlan_bound,
)

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SUITE = ("tests/integration/test_swarm_client.py", "tests/integration/test_engine.py")


def quickstart(env: Mapping[str, str], *args: str, interrupt_in_apply: bool = False) -> tuple[int, str]:
    """Run scripts/quickstart; (exit code, stdout and stderr). Ctrl-C goes to its whole process group,
    as a terminal sends it."""
    process = subprocess.Popen(
        [str(REPO / "scripts" / "quickstart"), *args], cwd=REPO, env=dict(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        # a child of a non-interactive shell may inherit SIGINT ignored; a terminal's user has it on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if interrupt_in_apply and line.startswith("== swarm-secrets apply"):
                time.sleep(1)  # inside the apply: versions created, rollouts under way
                os.killpg(process.pid, signal.SIGINT)
        return process.wait(timeout=600), "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


def demo_objects(api: docker.APIClient) -> dict[str, Any]:
    """The quick start's services, secrets and key config, with IDs and version indexes."""
    return {
        "services": {
            s["Spec"]["Name"]: (s["ID"], s["Version"]["Index"])
            for s in api.services()
            if s["Spec"]["Name"] in ("shop_db", "shop_web")
        },
        "secrets": {
            s["Spec"]["Name"]: (s["ID"], s["Version"]["Index"])
            for s in api.secrets()
            if (s["Spec"].get("Labels") or {}).get(LABEL_SET) == "shop"
        },
        "configs": {c["Spec"]["Name"]: c["ID"] for c in api.configs()},
    }


@pytest.fixture()
def dev_dir() -> Any:
    """A fresh dev folder for the quick start's engine; the engine and the folder go afterwards."""
    folder = tempfile.mkdtemp(prefix="ss-qs-", dir="/tmp")
    yield folder
    subprocess.run(
        [str(REPO / "scripts" / "dev-swarm"), "down"], env=dict(os.environ, SWARM_SECRETS_DEV_DIR=folder),
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip


def test_quickstart_and_suite_beside_a_users_swarm(tmp_path: Path, dev_dir: str) -> None:
    if not os.environ.get("SWARM_SECRETS_DEV_ENGINE"):
        pytest.skip("starts engines of its own: only where scripts/test started one (root, dockerd)")
    with contextlib.ExitStack() as stack:
        stack.enter_context(default_ports_lock())
        for folder in sweep_stale():
            print(f"removed {folder}: a user swarm left by a run killed before its cleanup")
        user = stack.enter_context(UserSwarm()) if port_free(CLUSTER_PORT) else None
        if user is None:
            print(f"port {CLUSTER_PORT} is held by a swarm manager of this host: testing beside that one")
        _beside(user, tmp_path, dev_dir)


def _beside(user: UserSwarm | None, tmp_path: Path, dev_dir: str) -> None:
    before = user.snapshot() if user else None
    ports_before = listening(user.pid) if user else set()
    if user:
        assert f"tcp:{CLUSTER_PORT}" in ports_before, (ports_before, user.log_tail())
        assert vxlan_bound(), "the user's overlay network should hold UDP 4789"

    temp = tmp_path / "tmp"
    temp.mkdir()
    elsewhere = user.host if user else "unix:///nonexistent/docker.sock"
    env = dict(os.environ, SWARM_SECRETS_DEV_DIR=dev_dir, SWARM_SECRETS_VENV=sys.prefix, TMPDIR=str(temp),
               DOCKER_HOST=elsewhere, SWARM_SECRETS_DOCKER_HOST=elsewhere)  # fmt: skip

    # 2. the quick start, twice
    code, out = quickstart(env)
    assert code == 0, out
    assert f"install swarm-secrets into {sys.prefix}" in out
    assert f"a throwaway engine of its own in {dev_dir}" in out
    assert "Apply complete: 3 created, 2 services updated, 0 removed." in out
    assert "/run/secrets/db_password uid=1000 gid=1000 mode=440" in out
    assert "exit code 2" in out
    assert "db_password_v1: rollback target of shop_db, shop_web (PreviousSpec)" in out
    assert "exit code 0: the swarm matches the manifests" in out
    assert f"engine unix://{dev_dir}/docker.sock" in out
    assert f"SWARM_SECRETS_DEV_DIR={dev_dir} scripts/dev-swarm down" in out
    assert list(temp.iterdir()) == [], "the quick start left temporary files"

    code, out = quickstart(env)
    assert code == 0, out
    assert "already installed" in out
    assert "this run continues from it" in out
    assert "db_password_v2 → db_password_v1" in out and "value changed back to v1" in out
    assert "drift" not in out
    assert "+ create db_password_v3" in out
    assert "exit code 0: the swarm matches the manifests" in out
    assert list(temp.iterdir()) == [], "the quick start left temporary files"

    # 3. the swarm part of the suite on the quick start's engine
    dev_host = f"unix://{dev_dir}/docker.sock"
    with docker.APIClient(base_url=dev_host, version="auto", timeout=60) as dev:
        demo = demo_objects(dev)
        assert set(demo["services"]) == {"shop_db", "shop_web"} and demo["secrets"]
        nested_env = dict(env, SWARM_SECRETS_TEST_DOCKER_HOST=dev_host, SWARM_SECRETS_REQUIRE_SWARM="1")
        nested_env.pop("SWARM_SECRETS_DEV_ENGINE", None)  # this engine is not the suite's to restart
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--basetemp",
             str(tmp_path / "nested"), *SUITE],
            cwd=REPO, env=nested_env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
        # Skipped there, rightly: the tests that need the whole engine (the key config's removal).
        assert re.search(r"\b\d\d+ passed", suite.stdout), suite.stdout[-2000:]
        assert demo_objects(dev) == demo, "the suite changed the quick start's objects"

    # 4. the user's swarm is as it was and holds the same ports
    if user:
        assert user.snapshot() == before, "the user's swarm changed"
        assert listening(user.pid) == ports_before, user.log_tail()
        user.stop_engine()  # the user's Docker restarts (an upgrade, say) ...

    # ... while a dev swarm starts anew: a quick start from scratch, interrupted by Ctrl-C in its
    # apply. Its temporary copy goes all the same.
    code, out = quickstart(env, "--fresh", interrupt_in_apply=True)
    assert code == 130, out
    assert "throw the old dev swarm away" in out
    assert list(temp.iterdir()) == [], "an interrupted quick start left temporary files"

    # ... and the user's swarm comes back with its ports: the new dev swarm took none of them
    if user is None:
        return
    user.start_engine()
    wanted = {f"tcp:{CLUSTER_PORT}"}
    if f"tcp:{GOSSIP_PORT}" in ports_before:  # another engine of this machine may have had it first
        wanted |= {f"tcp:{GOSSIP_PORT}", f"udp:{GOSSIP_PORT}"}
    with contextlib.suppress(AssertionError):
        eventually(lambda: wanted <= listening(user.pid), 60)
    assert wanted <= listening(user.pid), (listening(user.pid), user.log_tail())
    assert before is not None
    # Tasks restart with their engine, and the swarm bumps a service's version as it reallocates its
    # network endpoint on start: what must stay is every object, its ID, and each service's spec.
    unchanged = {k: v for k, v in before.items() if k not in ("tasks", "services")}
    with contextlib.suppress(AssertionError):
        eventually(lambda: user.snapshot(tasks=False)["service specs"] == unchanged["service specs"], 60)
    after = {k: v for k, v in user.snapshot(tasks=False).items() if k != "services"}
    assert after == unchanged, "the user's swarm changed across its restart"
    user.wait_task_running()
