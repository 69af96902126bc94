"""(b) Rotating one secret used by K = 8 services: our apply (concurrent rollouts) against updating
those services one after another the way the docker CLI does (each `docker service update` waits
for its rollout). Target: ≥ 0.8·K = 6.4× faster.

Run: ``eval "$(scripts/dev-swarm up)"; python bench/bench_rotation.py``
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import yaml

from bench.common import IDLE, IMAGE, api_client, cleanup, docker_host
from reconciler import executor, reconcile
from reconciler.executor import ApplyOptions
from reconciler.swarm import Swarm

K = int(os.environ.get("BENCH_K", "8"))


def create_services(api: docker.APIClient, prefix: str, secret: str) -> list[str]:
    names = []
    ref = docker.types.SecretReference(api.inspect_secret(secret)["ID"], secret, filename="pw")
    for i in range(K):
        name = f"{prefix}_svc{i}"
        api.create_service(
            docker.types.TaskTemplate(
                docker.types.ContainerSpec(IMAGE, IDLE, secrets=[ref], stop_grace_period=1_000_000_000),
            ),
            name=name,
            update_config=docker.types.UpdateConfig(
                parallelism=1, monitor=1_000_000_000, failure_action="pause", order="start-first"
            ),
        )
        names.append(name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [
            t
            for t in api.tasks(filters={"desired-state": "running"})
            if t["Status"]["State"] == "running"
            and t["ServiceID"] in {api.inspect_service(n)["ID"] for n in names}
        ]
        if len(running) >= K:
            break
        time.sleep(0.5)
    return names


def main() -> None:
    api = api_client()
    env = dict(os.environ, DOCKER_HOST=docker_host())
    prefix = "r" + secrets.token_hex(3)
    try:
        # Baseline: the docker CLI, one service after another, each update waited for.
        api.create_secret(f"{prefix}_cli_v1", b"one")
        api.create_secret(f"{prefix}_cli_v2", b"two")
        cli_services = create_services(api, prefix + "c", f"{prefix}_cli_v1")
        start = time.perf_counter()
        for service in cli_services:
            subprocess.run(
                [
                    "docker",
                    "service",
                    "update",
                    "--quiet",
                    "--secret-rm",
                    f"{prefix}_cli_v1",
                    "--secret-add",
                    f"src={prefix}_cli_v2,target=pw",
                    service,
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        sequential = time.perf_counter() - start

        # Ours: one apply rotates the secret on every consumer.
        root = Path(tempfile.mkdtemp(prefix="bench-"))
        (root / "value").write_text("one")
        logical = f"{prefix}_pw"
        swarm = Swarm.connect(docker_host())
        api.create_secret(f"{prefix}_seed", b"seed")
        ours_services = create_services(api, prefix + "o", f"{prefix}_seed")
        (root / "set.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "swarm-secrets/v1",
                    "kind": "SecretSet",
                    "metadata": {"name": f"{prefix}-bench"},
                    "spec": {
                        "secrets": {
                            logical: {
                                "source": {"file": "value"},
                                "services": [{"service": s, "target": "pw"} for s in ours_services],
                            }
                        }
                    },
                }
            )
        )
        options = ApplyOptions(concurrency=K, timeout=300)
        loaded = reconcile.load([root])
        prepared = reconcile.prepare(loaded, swarm)
        assert executor.execute(prepared.plan, prepared.desired, loaded.values, swarm, options).ok
        (root / "value").write_text("two")
        loaded = reconcile.load([root])
        start = time.perf_counter()
        prepared = reconcile.prepare(loaded, swarm)
        result = executor.execute(prepared.plan, prepared.desired, loaded.values, swarm, options)
        ours = time.perf_counter() - start
        assert result.ok and len(result.rollouts) == K, result

        print(f"rotate one secret used by K={K} services (1 replica each, start-first, monitor 1 s):")
        print(f"  baseline: docker service update x{K}, each waited   {sequential:6.1f} s")
        print(
            f"  swarm-secrets apply (concurrency {K})                {ours:6.1f} s"
            f"   speed-up {sequential / ours:.1f}x  (target >= {0.8 * K:.1f}x)"
        )
    finally:
        cleanup(api, prefix)


if __name__ == "__main__":
    main()
