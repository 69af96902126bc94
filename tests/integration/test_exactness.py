"""Apply does exactly the plan it showed, or stops: on the real swarm, with a person at a terminal.

``apply`` runs as its own process with a pseudo-terminal as stdin (so it shows the plan and asks); while
it waits for the answer, someone changes a service the plan updates; then the person says yes.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from typing import IO

import docker
import pytest

from .conftest import Lab
from .test_engine import apply

pytestmark = pytest.mark.swarm

PROMPT = b"Apply these changes?"


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 120) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in time; got:\n{seen.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the process ended before {marker!r}:\n{seen.decode(errors='replace')}"
            seen += chunk
    return seen


def refs(api: docker.APIClient, service: str) -> list[dict[str, object]]:
    return list(api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or [])


def test_a_service_changed_after_the_plan_was_shown_stops_apply_with_exit_3(
    lab: Lab, api: docker.APIClient
) -> None:
    pw, legacy = lab.name("pw"), lab.name("legacy")
    db, web = lab.create_service("db"), lab.create_service("web")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [db, web]}})
    assert apply(lab, PW="one").exit_code == 0
    api.create_secret(legacy, b"hand-made")

    master, slave = pty.openpty()
    cmd = [
        sys.executable,
        "-m",
        "reconciler",
        "apply",
        str(lab.root),
        "--timeout",
        "90",
        "--concurrency",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=lab.env(PW="two")
    )
    os.close(slave)
    try:
        assert proc.stdout is not None
        shown = read_until(proc.stdout, PROMPT).decode()
        assert f"+ create {pw}_v2" in shown and f"~ update service {web}" in shown

        # Someone points web at a hand-made secret, at the path the plan rotates, before the answer.
        raw = api.inspect_service(web)
        spec = raw["Spec"]
        spec["TaskTemplate"]["ContainerSpec"]["Secrets"] = [lab.secret_ref(name=legacy, target=pw)]
        response = api._post_json(
            api._url("/services/{0}/update", raw["ID"]),
            data=spec,
            params={"version": raw["Version"]["Index"]},
        )
        api._raise_for_status(response)
        foreign = refs(api, web)

        os.write(master, b"y\n")
        output = shown + proc.communicate(timeout=180)[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, output
    assert "the swarm changed since the plan; plan again" in output
    assert f"update {web}" in output and legacy in output  # what moved
    assert "Traceback" not in output
    # nothing outside the shown plan: web keeps the foreign change, untouched by apply; db got what the
    # plan showed (updates run in name order); only the shown version was created; nothing removed
    assert refs(api, web) == foreign
    assert lab.service_secret_names(db) == {pw: f"{pw}_v2"}
    assert lab.secret_names() == {f"{pw}_v1", f"{pw}_v2", legacy}
