"""(a) A no-op plan over 1,000 secrets and 200 services against listing secrets and services once
with the SDK (the least any reconciler must do). Target: engine side ≤ 1.5× the baseline.

Run: ``eval "$(scripts/dev-swarm up)"; python bench/bench_noop_plan.py``
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import docker
import yaml

from bench.common import api_client, cleanup, docker_host, timed
from reconciler import converge
from reconciler.engine.swarm import Swarm

N_SECRETS = 1000
N_SERVICES = 200
GRANTS_PER_SERVICE = 5


def main() -> None:
    api = api_client()
    prefix = "b" + secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        names = [f"{prefix}_s{i}" for i in range(N_SECRETS)]
        services = [f"{prefix}_svc{i}" for i in range(N_SERVICES)]
        for service in services:
            api.create_service(
                docker.types.TaskTemplate(docker.types.ContainerSpec("local/busybox:1", ["sleep", "1"])),
                name=service,
                mode=docker.types.ServiceMode("replicated", replicas=0),
            )
        values = root / "values"
        values.mkdir()
        doc_secrets = {}
        for i, name in enumerate(names):
            (values / name).write_text(f"value-{i}")
            grants = [services[i // GRANTS_PER_SERVICE]] if i < N_SERVICES * GRANTS_PER_SERVICE else []
            doc_secrets[name] = {"source": {"file": f"values/{name}"}, "services": grants}
        (root / "set.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "swarm-secrets/v1",
                    "kind": "SecretSet",
                    "metadata": {"name": f"{prefix}-bench"},
                    "spec": {"secrets": doc_secrets},
                }
            )
        )
        swarm = Swarm.connect(docker_host())
        loaded = converge.load([root])
        outcome = converge.converge(loaded, swarm, approval=converge.auto_approve)
        assert outcome.ok, outcome.result
        assert converge.prepare(loaded, swarm).plan.empty

        client = docker.DockerClient(base_url=docker_host(), version="auto")

        def baseline() -> None:
            client.secrets.list()
            client.services.list()

        def engine_side() -> None:
            assert converge.prepare(loaded, swarm).plan.empty

        def whole_command() -> None:
            assert converge.prepare(converge.load([root]), swarm).plan.empty

        for _ in range(2):  # warm caches on both sides
            baseline()
            engine_side()
        base = timed(baseline, 15)
        engine = timed(engine_side, 15)
        whole = timed(whole_command, 5)
        before = swarm.requests
        engine_side()
        calls = swarm.requests - before
        print(f"no-op plan, {N_SECRETS} secrets, {N_SERVICES} services (medians):")
        print(f"  baseline: SDK secrets.list() + services.list()      {base * 1000:8.1f} ms")
        print(
            f"  engine side: key + observe + plan ({calls} requests)  {engine * 1000:8.1f} ms"
            f"   ratio {engine / base:.2f}x  (target <= 1.5x)"
        )
        print(
            f"  whole command incl. loading {N_SECRETS} sources      {whole * 1000:8.1f} ms"
            f"   ratio {whole / base:.2f}x"
        )
    finally:
        cleanup(api, prefix)


if __name__ == "__main__":
    main()
