"""(b) Rotating K secrets, each used by one service, with default settings, against the by-hand floor.

Both sides rotate the same shape in the same run, on services built alike (one replica, a 2 s stop
grace period, the engine's default update config except a 1 s monitor: stop-first, parallelism 1,
failure action pause):

* **floor**: what a person with the raw Engine API could do at best: every new secret created, then
  every service update (a raw spec round-trip, as ``docker service update --detach`` does) issued at
  once from K threads, then one services list and one tasks list every 50 ms until every service
  converged by the docker CLI's rule (update completed, its up-to-date task running);
* **swarm-secrets**: ``swarm-secrets apply --yes PATH`` with default settings, as a new process (load,
  plan, create, roll, watch, collect), timed from start to exit. The same apply in process
  (``converge`` + ``executor``, no interpreter start or imports) is measured too, to show where the
  rest goes.

Rounds alternate which side goes first, and each side waits for the swarm to settle (old tasks gone)
before it starts. Target: the command within 1.15× of the floor.

Run: ``eval "$(scripts/dev-swarm up)"; python -m bench.bench_rotation_floor``
(``BENCH_K``, default 8; ``BENCH_ROUNDS``, default 5).
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import yaml

from bench.common import IDLE, IMAGE, api_client, cleanup, command_env, docker_host, workdir
from reconciler import converge
from reconciler.engine.swarm import Swarm

K = int(os.environ.get("BENCH_K", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
POLL = 0.05
UPDATE = docker.types.UpdateConfig(
    parallelism=1, delay=0, failure_action="pause", monitor=1_000_000_000, order="stop-first"
)
TERMINAL = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}


def _create_services(api: docker.APIClient, names: list[str], secrets_by_service: dict[str, str]) -> None:
    for name in names:
        secret = secrets_by_service[name]
        ref = docker.types.SecretReference(api.inspect_secret(secret)["ID"], secret, filename="pw")
        api.create_service(
            docker.types.TaskTemplate(
                docker.types.ContainerSpec(IMAGE, IDLE, secrets=[ref], stop_grace_period=2_000_000_000),
            ),
            name=name,
            update_config=UPDATE,
        )


def _converged(api: docker.APIClient, ids: set[str], require_update: bool) -> set[str]:
    """Services among ``ids`` that converged: update completed (or none needed when
    ``require_update`` is false) and their up-to-date task running."""
    services = {s["ID"]: s for s in api.services(status=True) if s["ID"] in ids}
    running: dict[str, int] = {}
    for task in api.tasks(filters={"desired-state": "running", "_up-to-date": "true"}):
        if task.get("ServiceID") in ids and task["Status"]["State"] == "running":
            running[task["ServiceID"]] = running.get(task["ServiceID"], 0) + 1
    done = set()
    for service_id, service in services.items():
        state = (service.get("UpdateStatus") or {}).get("State")
        if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
            # An engine hiccup (e.g. a failed secrets mount) paused or rolled back a rollout: this
            # round measures nothing; say so instead of waiting for ever.
            message = (service.get("UpdateStatus") or {}).get("Message", "")
            raise RuntimeError(f"{service['Spec']['Name']}: update {state} ({message}); run the bench again")
        settled = state == "completed" or (state is None and not require_update)
        if settled and running.get(service_id, 0) >= 1:
            done.add(service_id)
    return done


def _settle(api: docker.APIClient, prefix: str, timeout: float = 120) -> None:
    """Wait until no task of ours is still shutting down or starting, so each side starts alike."""
    ids = {s["ID"] for s in api.services() if s["Spec"]["Name"].startswith(prefix)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            t
            for t in api.tasks()
            if t.get("ServiceID") in ids
            and t["Status"]["State"] not in TERMINAL
            and (t["DesiredState"] != "running" or t["Status"]["State"] != "running")
        ]
        if not busy and len(_converged(api, ids, require_update=False)) == len(ids):
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise RuntimeError("the swarm did not settle")


class Floor:
    """Services rotated by hand through the raw API."""

    def __init__(self, api: docker.APIClient, prefix: str) -> None:
        self.api = api
        self.prefix = prefix
        self.services = [f"{prefix}_svc{i}" for i in range(K)]
        self.generation = 0
        for i in range(K):
            api.create_secret(self._secret(i), b"initial")
        _create_services(api, self.services, {s: self._secret(i) for i, s in enumerate(self.services)})
        self.ids = {api.inspect_service(s)["ID"] for s in self.services}

    def _secret(self, i: int) -> str:
        return f"{self.prefix}_s{i}_g{self.generation}"

    def rotate(self) -> float:
        self.generation += 1
        start = time.perf_counter()
        new_ids = [self.api.create_secret(self._secret(i), f"value {self.generation}".encode())["ID"]
                   for i in range(K)]  # fmt: skip

        def update(i: int) -> None:
            raw: dict[str, Any] = self.api.inspect_service(self.services[i])
            spec = raw["Spec"]
            spec["TaskTemplate"]["ContainerSpec"]["Secrets"] = [
                {"SecretID": new_ids[i], "SecretName": self._secret(i),
                 "File": {"Name": "pw", "UID": "0", "GID": "0", "Mode": 0o444}}
            ]  # fmt: skip
            url = self.api._url("/services/{0}/update", raw["ID"])
            self.api._raise_for_status(
                self.api._post_json(url, data=spec, params={"version": raw["Version"]["Index"]})
            )

        with ThreadPoolExecutor(max_workers=K) as pool:
            list(pool.map(update, range(K)))
        deadline = time.monotonic() + 300
        while len(_converged(self.api, self.ids, require_update=True)) < K:
            if time.monotonic() > deadline:
                raise RuntimeError("the hand-made rotation did not converge within 300 s")
            time.sleep(POLL)
        return time.perf_counter() - start  # old generations stay until the end (cleanup)


class Ours:
    """Services whose secrets swarm-secrets rotates, from a manifest with K file sources."""

    def __init__(self, api: docker.APIClient, prefix: str) -> None:
        self.api = api
        self.root = workdir(prefix)
        self.env = command_env(prefix)
        self.services = [f"{prefix}_svc{i}" for i in range(K)]
        seeds = {}
        for i, service in enumerate(self.services):
            seeds[service] = f"{prefix}_seed{i}"
            api.create_secret(seeds[service], b"seed")
        _create_services(api, self.services, seeds)
        self.names = [f"{prefix}_s{i}" for i in range(K)]
        (self.root / "set.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "swarm-secrets/v1",
                    "kind": "SecretSet",
                    "metadata": {"name": f"{prefix}-bench"},
                    "spec": {
                        "secrets": {
                            name: {
                                "source": {"file": f"{name}.txt"},
                                "services": [{"service": service, "target": "pw"}],
                            }
                            for name, service in zip(self.names, self.services, strict=True)
                        }
                    },
                }
            )
        )
        self.generation = 0
        self._write_values()
        self.in_process()  # the first apply (versions v1, services moved off the seeds) is not timed

    def _write_values(self) -> None:
        for name in self.names:
            (self.root / f"{name}.txt").write_text(f"{name} value {self.generation}")

    def command(self) -> float:
        self.generation += 1
        self._write_values()
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "apply", "--yes", str(self.root)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if done.returncode == 3:  # a rollout paused or rolled back: an engine hiccup, as above
            raise RuntimeError(f"apply exited 3 (a rollout failed); run the bench again:\n{done.stdout}")
        assert done.returncode == 0 and f"{K} services updated" in done.stdout, (done.stdout, done.stderr)
        return elapsed

    def in_process(self) -> float:
        self.generation += 1
        self._write_values()
        start = time.perf_counter()
        loaded = converge.load([self.root])
        with Swarm.connect(docker_host()) as swarm:
            outcome = converge.converge(loaded, swarm, approval=converge.auto_approve)
        elapsed = time.perf_counter() - start
        result = outcome.result
        assert result is not None and len(result.rollouts) == K, result
        if not result.ok:
            # An engine hiccup (e.g. a failed secrets mount) paused or rolled back a rollout, as the
            # floor's side reports too: this round measures nothing.
            failed = [f"{r.service}: {r.detail}" for r in result.rollouts if not r.outcome.ok]
            raise RuntimeError(f"{'; '.join(failed) or result}; run the bench again")
        return elapsed


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}–{max(values):.2f})"


def _ratios(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f}x ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    api = api_client()
    prefix = "r" + secrets.token_hex(3)
    try:
        floor_side = Floor(api, prefix + "f")
        ours_side = Ours(api, prefix + "o")
        floors: list[float] = []
        commands: list[float] = []
        in_process: list[float] = []
        for round_ in range(ROUNDS):
            order = ["floor", "command", "in_process"]
            if round_ % 2:
                order.reverse()
            for side in order:
                _settle(api, prefix)
                if side == "floor":
                    floors.append(floor_side.rotate())
                elif side == "command":
                    commands.append(ours_side.command())
                else:
                    in_process.append(ours_side.in_process())
        print(f"rotate {K} secrets, each used by one service (1 replica, 2 s stop grace, 1 s monitor), "
              f"default settings; medians of {ROUNDS} rounds (min–max):")  # fmt: skip
        print(f"  floor: every create + update issued at once by hand, polled every {POLL * 1000:.0f} ms  "
              f"{_summary(floors)}")  # fmt: skip
        print(f"  swarm-secrets apply --yes (a new process)                           {_summary(commands)}")
        print(f"  the same apply in process (no interpreter start, no imports)        {_summary(in_process)}")
        print(f"  command / floor     {_ratios([c / f for c, f in zip(commands, floors, strict=True)])}"
              "   target <= 1.15x")  # fmt: skip
        print(f"  in process / floor  {_ratios([c / f for c, f in zip(in_process, floors, strict=True)])}")
    finally:
        cleanup(api, prefix)


if __name__ == "__main__":
    main()
