"""An in-memory swarm that implements :class:`reconciler.engine.protocol.Swarm` for executor unit tests.

It keeps objects as the engine's JSON (``Spec``, ``PreviousSpec``, ``UpdateStatus``, version indexes)
and models what the executor relies on, as the engine does it (``shared/notes/swarm-api.md``; the
contract suite in ``tests/contract/`` runs the same checks against this fake and the real engine):

* one version index for every object, moving on every write (a service's also when the orchestrator
  records its update status); a write at a stale version is ``update out of sequence``;
* secret names unique case-insensitively (409), the engine's name rule and size limits (400);
* removing a secret a service's current Spec references is refused; PreviousSpec and tasks are *not*
  checked (the rollback trap, moby/swarmkit#2509);
* a service update keeps the old Spec as PreviousSpec and starts a rollout when the task template
  changed and tasks run; every call moves every rollout one step (time passes): new tasks start
  (running, or failed when the service's ``health`` rejects what it mounts), then the update
  completes, or its ``FailureAction`` pauses it or rolls it back (PreviousSpec becomes the Spec and is
  dropped, ``rollback_started`` → ``rollback_completed``); ``stuck`` tasks never start;
* a foreign writer (:meth:`foreign_write`) and a manual rollback (:meth:`manual_rollback`);
* configs as the lease uses them (``engine/lease.py``): found by exact name only, created once (409),
  labels replaced only at the current version index (``update out of sequence`` otherwise), the data
  kept, ``CreatedAt``/``UpdatedAt`` stamped by the manager's clock (:attr:`FakeSwarm.wall`, the real
  clock unless a test sets another), which :meth:`system_time` reads;
* crash points: :meth:`crash_after` makes the n-th mutation raise :class:`Crash` once it is done,
  and every call after it too, as if the process had died there;
* a clock of its own (:attr:`FakeSwarm.time`, moved by :meth:`advance`): ``CreatedAt`` of what it
  creates and ``observed_at`` of what it shows, as the engine's ``SystemTime`` is.

Values are kept (tests read what a task mounts); this module is test code only.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.core.collect import needs_tasks
from reconciler.core.model import MAX_OBJECT_NAME, MAX_SECRET_BYTES, LiveState, SecretValue, normalize_target
from reconciler.core.rollout import RolloutProbe
from reconciler.engine.protocol import RawService
from reconciler.engine.swarm import STACK_LABEL, TERMINAL_TASK_STATES, parse_secret, parse_service
from reconciler.errors import SwarmConflict, SwarmRefused

NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")

Health = Callable[[Mapping[str, bytes]], bool]
"""Whether a task starts, given what it mounts (in-container path -> bytes)."""

__all__ = ["STACK_LABEL", "Crash", "FakeSwarm", "Health", "requires"]


class Crash(BaseException):
    """The process died here (a BaseException: nothing in the tool catches it)."""


def requires(path: str, content: bytes) -> Health:
    """Tasks start only when the file at ``path`` holds ``content`` (like ``grep -q good /run/...``)."""
    return lambda files: files.get(normalize_target(path)) == content


@dataclass
class _Task:
    id: str
    template: dict[str, Any]
    state: str
    desired: str = "running"
    err: str = ""


@dataclass
class _Service:
    id: str
    version: int
    spec: dict[str, Any]
    previous: dict[str, Any] | None = None
    status: dict[str, str] | None = None
    tasks: list[_Task] = field(default_factory=list)
    health: Health | None = None
    stuck: bool = False
    phase: str = ""
    """"" (idle), "start" (new tasks to start), "settle" (decide), "rollback" (rolled back tasks to
    start), "rollback_settle"."""


class FakeSwarm:
    """An in-memory swarm; thread-safe like the engine (one lock around every call)."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        """The manager's clock (Unix time): stamps configs and answers :meth:`system_time`."""
        self._lock = threading.RLock()
        self._index = itertools.count(10)
        self._ids = itertools.count(1)
        self._time = itertools.count(1)
        self.time = 1_704_067_200.0
        """The swarm's clock in Unix seconds (2024-01-01 at first); :meth:`advance` moves it."""
        self.secrets: dict[str, dict[str, Any]] = {}
        self.data: dict[str, bytes] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.services: dict[str, _Service] = {}
        self.calls: list[str] = []
        """Every call by method name, in order (for call-budget assertions)."""
        self.written: list[str] = []
        """Names of the services written through the protocol, in order."""
        self.probed: list[frozenset[str]] = []
        """The service ids of each :meth:`rollout_probes` call, in order."""
        self.mutations = 0
        self._crash_at: int | None = None
        self.crashed = False
        self.before: dict[str, Callable[[], object]] = {}
        """Hooks run once before the next call of a method name (e.g. a concurrent write)."""

    # --- helpers for tests ----------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):023d}"

    def _now(self) -> str:
        # One nanosecond more on every stamp, so that stamps of one instant still order.
        stamp = round(self.time * 10**9) + next(self._time)
        seconds, nanos = divmod(stamp, 10**9)
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the swarm's clock."""
        with self._lock:
            self.time += seconds

    def crash_after(self, mutations: int) -> None:
        """Raise :class:`Crash` right after the ``mutations``-th mutation from now, and on every call
        after it."""
        self._crash_at = self.mutations + mutations

    def recover(self) -> None:
        """The process is started again after a :class:`Crash` (the swarm kept what was done)."""
        self.crashed = False
        self._crash_at = None

    def _enter(self, method: str) -> None:
        if self.crashed:
            raise Crash(f"{method} after the crash")
        self.calls.append(method)
        hook = self.before.pop(method, None)
        if hook is not None:
            hook()
        # Time passes between calls: the orchestrator moves every rollout on, whoever looks.
        for service in list(self.services.values()):
            self._step(service)

    def _mutated(self) -> None:
        self.mutations += 1
        if self._crash_at is not None and self.mutations >= self._crash_at:
            self.crashed = True
            raise Crash(f"crash after mutation {self.mutations}")

    def add_service(
        self,
        name: str,
        *,
        secrets: Sequence[Mapping[str, Any]] = (),
        replicas: int = 1,
        failure_action: str = "pause",
        labels: Mapping[str, str] | None = None,
        health: Health | None = None,
        env: Sequence[str] = (),
    ) -> str:
        """Create a running service (as a person would); ``secrets`` as :meth:`ref` builds them."""
        with self._lock:
            spec = {
                "Name": name,
                "Labels": dict(labels or {}),
                "TaskTemplate": {
                    "ContainerSpec": {
                        "Image": "local/busybox:1",
                        "Env": list(env),
                        "Secrets": [dict(s) for s in secrets],
                    },
                    "ForceUpdate": 0,
                },
                "Mode": {"Replicated": {"Replicas": replicas}},
                "UpdateConfig": {"Parallelism": 1, "FailureAction": failure_action, "Order": "start-first"},
            }
            service = _Service(id=self._id("svc"), version=next(self._index), spec=spec, health=health)
            self.services[service.id] = service
            self._start_tasks(service, replace_old=True)
            return service.id

    def ref(
        self, name: str, target: str, uid: str = "0", gid: str = "0", mode: int = 0o444
    ) -> dict[str, Any]:
        """A raw secret reference to the secret called ``name``."""
        secret_id = next(i for i, s in self.secrets.items() if s["Spec"]["Name"] == name)
        return {
            "SecretID": secret_id,
            "SecretName": name,
            "File": {"Name": target, "UID": uid, "GID": gid, "Mode": mode},
        }

    def service_by_name(self, name: str) -> _Service:
        return next(s for s in self.services.values() if s.spec["Name"] == name)

    def service_secret_names(self, name: str) -> dict[str, str]:
        """target -> secret name of the service's current Spec."""
        return {r["File"]["Name"]: r["SecretName"] for r in _secrets(self.service_by_name(name).spec)}

    def secret_names(self) -> set[str]:
        return {s["Spec"]["Name"] for s in self.secrets.values()}

    def versions(self) -> dict[str, int]:
        """Every object's version index, by id (a snapshot to compare)."""
        with self._lock:
            result = {i: s["Version"]["Index"] for i, s in self.secrets.items()}
            result.update({i: s.version for i, s in self.services.items()})
            result.update({i: c["Version"]["Index"] for i, c in self.configs.items()})
            return result

    def mounted(self, name: str) -> dict[str, bytes]:
        """What the running up-to-date tasks of a service see (path -> bytes)."""
        service = self.service_by_name(name)
        running = [t for t in service.tasks if t.state == "running"]
        assert running, f"no running task of {name}"
        return self._files(running[-1].template)

    def foreign_write(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else updates the service's spec (``change`` edits a copy), at the current version."""
        with self._lock:
            service = self.service_by_name(name)
            spec = copy.deepcopy(service.spec)
            change(spec)
            self._write(service, spec)

    def put_service(self, spec: Mapping[str, Any]) -> str:
        """Create the service ``spec`` names, or replace its whole spec (as ``docker stack deploy``
        does); its id. Counted as a mutation."""
        with self._lock:
            existing = next((s for s in self.services.values() if s.spec["Name"] == spec["Name"]), None)
            if existing is None:
                service = _Service(
                    id=self._id("svc"), version=next(self._index), spec=copy.deepcopy(dict(spec))
                )
                self.services[service.id] = service
                self._start_tasks(service, replace_old=True)
            else:
                service = existing
                self._write(service, copy.deepcopy(dict(spec)))
            self.written.append(str(spec["Name"]))
            self._mutated()
            return service.id

    def manual_rollback(self, name: str) -> None:
        """``docker service rollback NAME``: Spec and PreviousSpec swap; refused without a previous spec."""
        with self._lock:
            service = self.service_by_name(name)
            if service.previous is None:
                raise SwarmRefused(f"service {name} does not have a previous spec")
            service.spec, service.previous = service.previous, service.spec
            self._set_status(service, "rollback_started", "manually requested rollback", new=True)
            service.phase = "rollback"

    # --- the protocol: reads --------------------------------------------------------------------

    def observe(self, *, lean: bool = False, sets: Collection[str] | None = None) -> LiveState:
        with self._lock:
            self._enter("observe")
            secrets = [parse_secret(copy.deepcopy(s)) for s in self.secrets.values()]
            services = [parse_service(self._raw(s)) for s in self.services.values()]
            if lean and not needs_tasks(secrets, services, sets):
                return LiveState(
                    secrets=tuple(sorted(secrets, key=lambda s: s.name)),
                    services=tuple(sorted(services, key=lambda s: s.name)),
                    observed_at=self.time,
                )
            task_ids = {
                ref["SecretID"]
                for service in self.services.values()
                for task in service.tasks
                if task.state not in TERMINAL_TASK_STATES
                for ref in task.template["ContainerSpec"].get("Secrets") or ()
            }
            return LiveState(
                secrets=tuple(sorted(secrets, key=lambda s: s.name)),
                services=tuple(sorted(services, key=lambda s: s.name)),
                task_secret_ids=frozenset(task_ids),
                observed_at=self.time,
            )

    def inspect_service(self, service_id: str) -> RawService:
        with self._lock:
            self._enter("inspect_service")
            service = self.services.get(service_id)
            if service is None:
                raise SwarmRefused(f"inspecting service {service_id}: the engine answered 404: not found")
            return self._raw(service)

    def rollout_probes(self, service_ids: Collection[str]) -> dict[str, RolloutProbe]:
        with self._lock:
            self._enter("rollout_probes")
            self.probed.append(frozenset(service_ids))
            probes: dict[str, RolloutProbe] = {}
            for service_id in service_ids:
                service = self.services.get(service_id)
                if service is None:
                    continue
                template = service.spec["TaskTemplate"]
                current = [t for t in service.tasks if t.template == template]
                status = service.status or {}
                probes[service_id] = RolloutProbe(
                    state=status.get("State"),
                    started_at=status.get("StartedAt"),
                    message=status.get("Message", ""),
                    spec_secret_ids=frozenset(r["SecretID"] for r in _secrets(service.spec)),
                    running=sum(1 for t in current if t.state == "running" and t.desired == "running"),
                    desired=_replicas(service.spec),
                    failed_tasks=tuple(t.err for t in current if t.state == "failed")[:3],
                )
            return probes

    def stack_services(self, stack: str) -> dict[str, tuple[str, str | None]]:
        with self._lock:
            self._enter("stack_services")
            return {
                s.spec["Name"]: (s.id, (s.status or {}).get("StartedAt"))
                for s in self.services.values()
                if (s.spec.get("Labels") or {}).get(STACK_LABEL) == stack
            }

    def find_config(self, name: str) -> tuple[str, bytes] | None:
        with self._lock:
            self._enter("find_config")
            for config_id, config in self.configs.items():
                if config["Spec"]["Name"] == name:
                    return config_id, bytes(config["Data"])
            return None

    def inspect_config(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._enter("inspect_config")
            for config in self.configs.values():
                if config["Spec"]["Name"] == name:
                    raw = copy.deepcopy(config)
                    del raw["Data"]  # the engine shows it base64-encoded in Spec.Data; nobody here reads it
                    return raw
            return None

    def system_time(self) -> str:
        with self._lock:
            self._enter("system_time")
            return self._stamp()

    def _stamp(self) -> str:
        """The manager's clock as the engine writes times: RFC 3339 in UTC, with nanoseconds."""
        return datetime.fromtimestamp(self.wall(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")

    # --- the protocol: mutations ----------------------------------------------------------------

    def create_secret(self, name: str, value: SecretValue, labels: Mapping[str, str]) -> str:
        with self._lock:
            self._enter("create_secret")
            what = f"creating secret {name}"
            if len(name) > MAX_OBJECT_NAME or not NAME_RE.match(name):
                raise SwarmRefused(f"{what}: the engine answered 400: invalid name")
            if not 0 < len(value) <= MAX_SECRET_BYTES:
                raise SwarmRefused(
                    f"{what}: the engine answered 400: secret data must be larger than 0 and less than 500KB"
                )
            if any(s["Spec"]["Name"].lower() == name.lower() for s in self.secrets.values()):
                raise SwarmConflict(f"{what}: the engine answered 409: secret {name} already exists")
            secret_id = self._id("sec")
            now = self._now()
            self.secrets[secret_id] = {
                "ID": secret_id,
                "Version": {"Index": next(self._index)},
                "CreatedAt": now,
                "UpdatedAt": now,
                "Spec": {"Name": name, "Labels": dict(labels)},
            }
            self.data[secret_id] = value.reveal()
            self._mutated()
            return secret_id

    def remove_secret(self, secret_id: str, name: str) -> None:
        with self._lock:
            self._enter("remove_secret")
            what = f"removing secret {name}"
            if secret_id not in self.secrets:
                raise SwarmRefused(f"{what}: the engine answered 404: secret {secret_id} not found")
            users = sorted(
                s.spec["Name"]
                for s in self.services.values()
                if any(r["SecretID"] == secret_id for r in _secrets(s.spec))
            )
            if users:
                raise SwarmRefused(
                    f"{what}: the engine answered 400: secret '{name}' is in use by the following service: "
                    + ", ".join(users)
                )
            del self.secrets[secret_id]
            del self.data[secret_id]
            self._mutated()

    def create_config(self, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        with self._lock:
            self._enter("create_config")
            if any(c["Spec"]["Name"] == name for c in self.configs.values()):
                raise SwarmConflict(f"creating config {name}: the engine answered 409: config exists")
            config_id = self._id("cfg")
            now = self._stamp()
            self.configs[config_id] = {
                "ID": config_id,
                "Version": {"Index": next(self._index)},
                "CreatedAt": now,
                "UpdatedAt": now,
                "Spec": {"Name": name, "Labels": dict(labels)},
                "Data": bytes(data),
            }
            self._mutated()
            return config_id

    def update_config_labels(
        self, config_id: str, version: int, name: str, labels: Mapping[str, str]
    ) -> None:
        with self._lock:
            self._enter("update_config_labels")
            what = f"updating config {name}"
            config = self.configs.get(config_id)
            if config is None:
                raise SwarmRefused(f"{what}: the engine answered 404: config {config_id} not found")
            if config["Version"]["Index"] != version:
                raise SwarmConflict(
                    f"{what}: the engine answered 500: rpc error: code = Unknown desc = "
                    "update out of sequence"
                )
            if config["Spec"]["Name"] != name:
                raise SwarmRefused(f"{what}: the engine answered 400: only updates to Labels are allowed")
            config["Spec"]["Labels"] = dict(labels)
            config["Version"]["Index"] = next(self._index)
            config["UpdatedAt"] = self._stamp()
            self._mutated()

    def write_service_secrets(self, raw: RawService, secrets: list[dict[str, Any]]) -> None:
        with self._lock:
            self._enter("write_service_secrets")
            service = self.services.get(raw["ID"])
            name = (raw.get("Spec") or {}).get("Name", raw["ID"])
            what = f"updating service {name}"
            if service is None:
                raise SwarmRefused(f"{what}: the engine answered 404: service not found")
            if raw["Version"]["Index"] != service.version:
                raise SwarmConflict(
                    f"{what}: the engine answered 500: rpc error: code = Unknown desc = "
                    "update out of sequence"
                )
            paths = [r["File"]["Name"] for r in secrets]
            if len(paths) != len(set(paths)):
                raise SwarmRefused(f"{what}: the engine answered 400: conflicting secret target")
            for ref in secrets:
                if ref["SecretID"] not in self.secrets:
                    raise SwarmRefused(
                        f"{what}: the engine answered 400: secret not found: {ref['SecretID']}"
                    )
            spec = copy.deepcopy(raw.get("Spec") or {})
            spec.setdefault("TaskTemplate", {}).setdefault("ContainerSpec", {})["Secrets"] = copy.deepcopy(
                secrets
            )
            self._write(service, spec)
            self.written.append(str(spec.get("Name", service.id)))
            self._mutated()

    # --- the orchestrator -----------------------------------------------------------------------

    def _raw(self, service: _Service) -> RawService:
        raw: RawService = {
            "ID": service.id,
            "Version": {"Index": service.version},
            "Spec": copy.deepcopy(service.spec),
        }
        if service.previous is not None:
            raw["PreviousSpec"] = copy.deepcopy(service.previous)
        if service.status is not None:
            raw["UpdateStatus"] = dict(service.status)
        return raw

    def _write(self, service: _Service, spec: dict[str, Any]) -> None:
        changed = spec.get("TaskTemplate") != service.spec.get("TaskTemplate")
        service.previous, service.spec = service.spec, spec
        service.version = next(self._index)
        if changed and _replicas(spec) > 0:
            # The orchestrator records the update in a store write of its own: the version moves again.
            self._set_status(service, "updating", "update in progress", new=True)
            service.phase = "start"

    def _set_status(self, service: _Service, state: str, message: str, *, new: bool = False) -> None:
        started = self._now() if new or service.status is None else service.status.get("StartedAt", "")
        service.status = {"State": state, "StartedAt": started, "Message": message}
        if state.endswith("completed"):
            service.status["CompletedAt"] = self._now()
        service.version = next(self._index)

    def _files(self, template: Mapping[str, Any]) -> dict[str, bytes]:
        return {
            normalize_target(r["File"]["Name"]): self.data.get(r["SecretID"], b"")
            for r in template["ContainerSpec"].get("Secrets") or ()
        }

    def _start_tasks(self, service: _Service, *, replace_old: bool) -> bool:
        """Start tasks of the current spec; True when they all run."""
        template = copy.deepcopy(service.spec["TaskTemplate"])
        healthy = not service.stuck and (service.health is None or service.health(self._files(template)))
        if replace_old:
            for task in service.tasks:
                if task.state not in TERMINAL_TASK_STATES:
                    task.state, task.desired = "shutdown", "shutdown"
        for _ in range(_replicas(service.spec)):
            if service.stuck:
                state, err = "preparing", ""
            else:
                state, err = ("running", "") if healthy else ("failed", "task: non-zero exit (1)")
            service.tasks.append(_Task(id=self._id("task"), template=template, state=state, err=err))
        return healthy

    def _step(self, service: _Service) -> None:
        """Move this service's rollout one step (called on every look at it)."""
        if service.phase == "start":
            healthy = self._start_tasks(service, replace_old=False)
            if healthy:
                for task in service.tasks:
                    if (
                        task.template != service.spec["TaskTemplate"]
                        and task.state not in TERMINAL_TASK_STATES
                    ):
                        task.state, task.desired = "shutdown", "shutdown"
            service.phase = "settle" if not service.stuck else "stuck"
            return
        if service.phase == "settle":
            template = service.spec["TaskTemplate"]
            failed = [t for t in service.tasks if t.template == template and t.state == "failed"]
            action = (service.spec.get("UpdateConfig") or {}).get("FailureAction", "pause")
            if not failed or action == "continue":
                self._set_status(service, "completed", "update completed")
                service.phase = ""
            elif action == "rollback":
                # An automatic rollback drops PreviousSpec (a manual one swaps the two).
                assert service.previous is not None
                service.spec, service.previous = service.previous, None
                self._set_status(
                    service,
                    "rollback_started",
                    f"update rolled back due to failure or early termination of task {failed[0].id}",
                )
                service.phase = "rollback"
            else:
                self._set_status(
                    service,
                    "paused",
                    f"update paused due to failure or early termination of task {failed[0].id}",
                )
                service.phase = ""
            return
        if service.phase == "rollback":
            self._start_tasks(service, replace_old=True)
            service.phase = "rollback_settle"
            return
        if service.phase == "rollback_settle":
            self._set_status(service, "rollback_completed", "rollback completed")
            service.phase = ""


def _secrets(spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return list(((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or [])


def _replicas(spec: Mapping[str, Any]) -> int:
    mode = spec.get("Mode") or {}
    return int((mode.get("Replicated") or {}).get("Replicas", 1)) if "Replicated" in mode else 1
