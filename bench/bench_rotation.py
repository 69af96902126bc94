"""(c) Rotating one secret used by K = 8 services: our apply (concurrent rollouts) against updating
those services one after another the way the docker CLI does (each `docker service update` waits
for its rollout). Target: ≥ 0.8·K = 6.4× faster.

Measured for two update configurations of the consuming services, each against its own baseline:

* ``engine defaults``: what a service gets when its author sets nothing (stop-first, 5 s monitor);
* ``fast``: start-first with a 1 s monitor, as tuned test services use.

Run: ``eval "$(scripts/dev-swarm up)"; python -m bench.bench_rotation``
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import docker
import yaml

from bench.common import IDLE, IMAGE, api_client, cleanup, docker_host, workdir
from reconciler import converge
from reconciler.engine.executor import ApplyOptions
from reconciler.engine.swarm import Swarm

K = int(os.environ.get("BENCH_K", "8"))
CONFIGS = {
    "engine defaults (stop-first, 5 s monitor)": None,
    "fast (start-first, 1 s monitor)": docker.types.UpdateConfig(
        parallelism=1, monitor=1_000_000_000, failure_action="pause", order="start-first"
    ),
}


def create_services(
    api: docker.APIClient, prefix: str, secret: str, update: docker.types.UpdateConfig | None
) -> list[str]:
    names = []
    ref = docker.types.SecretReference(api.inspect_secret(secret)["ID"], secret, filename="pw")
    for i in range(K):
        name = f"{prefix}_svc{i}"
        api.create_service(
            docker.types.TaskTemplate(
                docker.types.ContainerSpec(IMAGE, IDLE, secrets=[ref], stop_grace_period=1_000_000_000),
            ),
            name=name,
            update_config=update,
        )
        names.append(name)
    ids = {api.inspect_service(n)["ID"] for n in names}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = api.tasks(filters={"desired-state": "running"})
        if sum(1 for t in tasks if t["Status"]["State"] == "running" and t["ServiceID"] in ids) >= K:
            break
        time.sleep(0.5)
    return names


def measure(
    api: docker.APIClient, prefix: str, update: docker.types.UpdateConfig | None
) -> tuple[float, float]:
    env = dict(os.environ, DOCKER_HOST=docker_host())
    # Baseline: the docker CLI, one service after another, each update waited for.
    api.create_secret(f"{prefix}_cli_v1", b"one")
    api.create_secret(f"{prefix}_cli_v2", b"two")
    cli_services = create_services(api, prefix + "c", f"{prefix}_cli_v1", update)
    start = time.perf_counter()
    for service in cli_services:
        subprocess.run(
            ["docker", "service", "update", "--quiet", "--secret-rm", f"{prefix}_cli_v1",
             "--secret-add", f"src={prefix}_cli_v2,target=pw", service],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    sequential = time.perf_counter() - start

    # Ours: one apply rotates the secret on every consumer.
    root = workdir(prefix)
    (root / "value").write_text("one")
    api.create_secret(f"{prefix}_seed", b"seed")
    ours_services = create_services(api, prefix + "o", f"{prefix}_seed", update)
    grants = [{"service": s, "target": "pw"} for s in ours_services]
    (root / "set.yaml").write_text(yaml.safe_dump({
        "apiVersion": "swarm-secrets/v1", "kind": "SecretSet", "metadata": {"name": f"{prefix}-bench"},
        "spec": {"secrets": {f"{prefix}_pw": {"source": {"file": "value"}, "services": grants}}},
    }))  # fmt: skip
    settings = converge.Settings(apply=ApplyOptions(concurrency=K, timeout=300))
    with Swarm.connect(docker_host()) as swarm:
        loaded = converge.load([root])
        assert converge.converge(loaded, swarm, approval=converge.auto_approve, settings=settings).ok
        (root / "value").write_text("two")
        loaded = converge.load([root])
        start = time.perf_counter()
        outcome = converge.converge(loaded, swarm, approval=converge.auto_approve, settings=settings)
        ours = time.perf_counter() - start
    result = outcome.result
    assert result is not None and result.ok and len(result.rollouts) == K, result
    return sequential, ours


def main() -> None:
    api = api_client()
    print(f"rotate one secret used by K={K} services (1 replica each); target >= {0.8 * K:.1f}x:")
    for label, update in CONFIGS.items():
        prefix = "r" + secrets.token_hex(3)
        try:
            sequential, ours = measure(api, prefix, update)
        finally:
            cleanup(api, prefix)
        print(f"  {label}:")
        print(f"    baseline: docker service update x{K}, each waited   {sequential:6.1f} s")
        print(f"    swarm-secrets apply (concurrency {K})                {ours:6.1f} s"
              f"   speed-up {sequential / ours:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
