"""(a) A no-op plan over 1,000 secrets and 200 services against its floor, measured in the same run.

The floor is the least the engine itself needs: the two raw list requests no reconciler can do
without (``GET /secrets`` and ``GET /services``, JSON-decoded by the same docker-py ``APIClient`` the
tool uses, no model objects), asked one after the other and concurrently; whichever is faster counts.

Measured against it:

* **engine side**: fingerprint key + observe (secrets, services, tasks) + plan, in process
  (``converge.prepare``), with the manifests already loaded. Target ≤ 1.5× the floor.
* **whole command**: ``swarm-secrets plan PATH`` as a new process: interpreter start, imports, loading
  and validating the manifest, reading 1,000 file sources, fingerprints, connecting, observing,
  planning, rendering. Target ≤ 6× the floor.

The machine is shared and noisy, so each round measures all three back to back and the ratios are
taken per round; the report gives the median of the rounds and their spread (min–max).

Run: ``eval "$(scripts/dev-swarm up)"; python -m bench.bench_noop_plan`` (``BENCH_ROUNDS``, default 7).
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import yaml

from bench.common import api_client, cleanup, command_env, docker_host, timed, workdir
from reconciler import converge
from reconciler.engine.swarm import Swarm

N_SECRETS = 1000
N_SERVICES = 200
GRANTS_PER_SERVICE = 5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))


def _write_manifest(root: Path, prefix: str, services: list[str]) -> None:
    values = root / "values"
    values.mkdir()
    doc_secrets = {}
    for i in range(N_SECRETS):
        name = f"{prefix}_s{i}"
        (values / name).write_text(f"value-{i}")
        grants = [services[i // GRANTS_PER_SERVICE]] if i < N_SERVICES * GRANTS_PER_SERVICE else []
        doc_secrets[name] = {"source": {"file": f"values/{name}"}, "services": grants}
    manifest = {
        "apiVersion": "swarm-secrets/v1",
        "kind": "SecretSet",
        "metadata": {"name": f"{prefix}-bench"},
        "spec": {"secrets": doc_secrets},
    }
    (root / "set.yaml").write_text(yaml.safe_dump(manifest))


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f}x  ({min(values):.2f}–{max(values):.2f})"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms ({min(values) * 1000:.1f}–{max(values) * 1000:.1f})"


def main() -> None:
    api = api_client()
    prefix = "b" + secrets.token_hex(3)
    root = workdir(prefix)
    try:
        services = [f"{prefix}_svc{i}" for i in range(N_SERVICES)]
        for service in services:
            api.create_service(
                docker.types.TaskTemplate(docker.types.ContainerSpec("local/busybox:1", ["sleep", "1"])),
                name=service,
                mode=docker.types.ServiceMode("replicated", replicas=0),
            )
        _write_manifest(root, prefix, services)
        swarm = Swarm.connect(docker_host())
        loaded = converge.load([root])
        outcome = converge.converge(loaded, swarm, approval=converge.auto_approve)
        assert outcome.ok, outcome.result
        assert converge.prepare(loaded, swarm).plan.empty

        raw = api_client()
        pool = ThreadPoolExecutor(max_workers=2)

        def floor_sequential() -> None:
            raw.secrets()
            raw.services()

        def floor_concurrent() -> None:
            listed = [pool.submit(raw.secrets), pool.submit(raw.services)]
            for future in listed:
                future.result()

        def engine_side() -> None:
            assert converge.prepare(loaded, swarm, converge.Settings(read_only=True)).plan.empty

        def load_only() -> None:
            converge.load([root])

        command = [sys.executable, "-m", "reconciler", "plan", str(root)]
        env = command_env(prefix)

        def whole_command() -> None:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            assert done.returncode == 0 and "No changes" in done.stdout, (done.stdout, done.stderr)

        def sdk_process() -> None:
            # The least any Python tool built on docker-py pays for a new process: start, import docker,
            # the two lists. Not the floor the targets are measured against; it shows how much of the
            # whole command is the platform's, before any of the reconciler's own work.
            code = (
                "import os, docker; c = docker.APIClient(os.environ['DOCKER_HOST'], version='auto'); "
                "c.secrets(); c.services()"
            )
            subprocess.run([sys.executable, "-c", code], env=env, check=True)

        def imports_only() -> None:
            # What the command imports before and while it runs (docker-py and jsonschema-rs on demand).
            code = "import reconciler.cli, docker, jsonschema_rs"
            subprocess.run([sys.executable, "-c", code], env=env, check=True)

        warm: list[Callable[[], None]] = [
            floor_sequential,
            floor_concurrent,
            engine_side,
            whole_command,
            imports_only,
            sdk_process,
        ]
        for fn in warm * 2:  # warm caches on both sides (page cache, .pyc, engine)
            fn()
        floors, engines, wholes, loads, imports, sdks = [], [], [], [], [], []
        engine_ratios, whole_ratios = [], []
        for _ in range(ROUNDS):
            floor = min(timed(floor_sequential, 11), timed(floor_concurrent, 11))
            engine = timed(engine_side, 11)
            whole = timed(whole_command, 3)
            floors.append(floor)
            engines.append(engine)
            wholes.append(whole)
            loads.append(timed(load_only, 3))
            imports.append(timed(imports_only, 3))
            sdks.append(timed(sdk_process, 3))
            engine_ratios.append(engine / floor)
            whole_ratios.append(whole / floor)
        pool.shutdown()
        before = swarm.requests
        engine_side()
        calls = swarm.requests - before

        print(f"no-op plan, {N_SECRETS} secrets, {N_SERVICES} services: medians of {ROUNDS} rounds (min–max)")
        print(f"  floor: raw GET /secrets + GET /services (faster of sequential, concurrent)  {_ms(floors)}")
        print(f"  engine side: key + observe + plan, in process ({calls} requests)          {_ms(engines)}")
        print(f"  whole command: `swarm-secrets plan` as a new process                     {_ms(wholes)}")
        print(f"    of which: interpreter start + imports (click, yaml, docker, schema)    {_ms(imports)}")
        print(f"    of which: loading, validating, reading 1,000 sources (in process)       {_ms(loads)}")
        print(
            f"  for scale: a new Python process that imports docker-py and makes the two lists  {_ms(sdks)}"
        )
        print(f"  engine side / floor    {_spread(engine_ratios)}   target <= 1.5x")
        print(f"  whole command / floor  {_spread(whole_ratios)}   target <= 6x")
    finally:
        cleanup(api, prefix)


if __name__ == "__main__":
    main()
