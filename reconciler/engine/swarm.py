"""The swarm client: the only module that imports ``docker``; it implements
:class:`reconciler.engine.protocol.Swarm`.

It observes (secrets, services, tasks → :class:`~reconciler.core.model.LiveState`) and mutates (create and
remove secrets, rewrite a service's secret references, read rollout progress), translating every
docker-py exception into the :mod:`reconciler.errors` tree in one place (:func:`_translate`).

Engine behaviours this module is built around (see ``shared/notes/swarm-api.md``):

* Service updates are a raw spec round-trip: inspect without ``insertDefaults``, change only
  ``TaskTemplate.ContainerSpec.Secrets``, POST the spec back with the inspected version. docker-py's
  ``update_service`` helpers either drop fields or inject defaults that restart every task.
* A stale version answers HTTP 500 ``update out of sequence``: that is :class:`SwarmConflict`, and the
  caller re-inspects. A 409 on create is a conflict as well (someone created the name first).
* Only reads are retried here (tenacity, bounded, transient errors only). Mutations are not repeated
  blindly: after an ambiguous failure the caller observes again and re-plans.
* On a swarm with several managers, losing the leader makes every request hang until a new one is
  elected (measured: about 11 s on three managers), or fail with ``rpc error: code = DeadlineExceeded``
  (the manager's own 20 s deadline) or ``The swarm does not have a leader`` (quorum lost). Those are
  :class:`SwarmNoLeader`: reads wait for the election (:data:`ELECTION_PATIENCE`), mutations are
  reported to the caller, which observes again (a proposal cut off by an election may still commit).
* Tasks on a node that is down cannot run: :meth:`Swarm.observe` reports where tasks are and which
  nodes are down (the core decides what that means for collection), and :meth:`Swarm.rollout_probes`
  counts only tasks on nodes that are ready.
* Every HTTP request is counted (:attr:`Swarm.requests`) so tests can assert API call budgets.
* Time is the swarm's: the manager's ``SystemTime``, read with the info request every connection
  makes, carried forward on this process's monotonic clock (:meth:`Swarm.now`) and stamped on each
  observation, so versions' ages compare two manager clocks and never this machine's.

It must not plan or decide anything: it reports what is there and does what it is told.
"""

from __future__ import annotations

import copy
import errno
import gc
import hashlib
import json
import logging
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tenacity import RetryCallState, retry, retry_if_exception, wait_exponential

from reconciler.core.collect import needs_tasks
from reconciler.core.model import LiveNode, LiveSecret, LiveService, LiveState, SecretRef, SecretValue
from reconciler.core.refs import parse_refs
from reconciler.core.rollout import RolloutProbe
from reconciler.core.schedule import parse_time
from reconciler.engine.protocol import RawService
from reconciler.errors import (
    ConfigError,
    NotManager,
    SwarmConflict,
    SwarmError,
    SwarmNoLeader,
    SwarmRefused,
    SwarmSecretsError,
    SwarmUnavailable,
)

if TYPE_CHECKING:
    import docker
    import requests

# docker-py (with requests and urllib3: a third of the command's start-up) is imported when a swarm is
# connected or an error translated, not with this module: `validate`, `--help` and `--version` never
# need it.

log = logging.getLogger(__name__)

T = TypeVar("T")

STACK_LABEL = "com.docker.stack.namespace"
_HOST_MOUNTS = frozenset({"bind", "npipe"})
TERMINAL_TASK_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})

NO_LEADER_MARKERS = (
    "does not have a leader",  # 500 rpc error: code = Unknown desc = The swarm does not have a leader. …
    "no elected cluster leader",  # raft.ErrNoClusterLeader
    "lost leader status",  # raft.ErrLostLeadership: a proposal cut off by an election (it may commit)
    "raft: failed to process the request: node is stopped",  # raft.ErrStopped: the manager is stopping
    "context deadline exceeded",  # 500 rpc error: code = DeadlineExceeded desc = context deadline exceeded
    "code = DeadlineExceeded",
    "code = Unavailable",  # the manager lost its connection to the leader (transport is closing, …)
    "Manager is being prepared",  # 503 This node is not a swarm manager. Manager is being prepared or …
)
"""Engine messages (HTTP 5xx) that mean "the swarm cannot serve this until a leader is elected",
measured on a three-manager swarm (tests/multinode) or read in swarmkit's raft package."""
ELECTION_PATIENCE = 60.0
"""Seconds a read keeps being retried while the swarm has no leader. An election after the leader's
loss took about 11 s on three managers here; a swarm that lost its quorum does not recover on its own."""


# --- error translation ------------------------------------------------------------------------------


def _translate(exc: Exception, what: str, host: str | None = None) -> SwarmError:
    """Map a docker-py / requests exception to our tree. ``what`` says what we were doing; ``host``,
    the engine's address as shown (:func:`shown_host`), is named when the engine cannot be reached."""
    import docker.errors
    import requests

    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        explanation = str(exc.explanation or exc).strip().splitlines()[0][:300]
        text = f"{what}: the engine answered {status}: {explanation}"
        if status == 409:
            return SwarmConflict(text)
        if status == 500 and "out of sequence" in explanation:
            return SwarmConflict(text)
        if status >= 500 and any(marker in explanation for marker in NO_LEADER_MARKERS):
            if "leader" in explanation:
                why = "the swarm has no leader right now"
                hint = "a leader election is running, or more than half of the managers are offline"
            else:
                why = "the managers did not complete the request in time"
                hint = "a leader election may be running, or the managers are overloaded or offline"
            return SwarmNoLeader(f"{what}: {why} (the engine answered {status}: {explanation}); {hint}")
        if status == 503 and "not a swarm manager" in explanation and "Worker" not in explanation:
            return SwarmUnavailable(text)
        if status == 503 and ("Worker nodes" in explanation or "not part of a swarm" in explanation):
            return NotManager(
                f"{what}: this engine is not a swarm manager ({explanation}); point DOCKER_HOST or "
                "--docker-host at a manager node"
            )
        if status >= 500:
            # An engine error passes more often than not (a leader election, raft dropping a proposal,
            # a deadline under load): transient, so reads are retried and the loop backs off.
            return SwarmError(text)
        return SwarmRefused(text)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return SwarmUnavailable(f"{what}: the Docker engine did not answer in time ({type(exc).__name__})")
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        at = f" at {host}" if host else ""
        return SwarmUnavailable(f"{what}: cannot reach the Docker engine{at} ({_unreachable(exc)[0]})")
    if isinstance(exc, docker.errors.DockerException):
        return SwarmUnavailable(f"{what}: {_mask(str(exc).splitlines()[0][:300])}")
    return SwarmError(f"{what}: {type(exc).__name__}: {_mask(str(exc)[:300])}")


# --- saying which engine could not be reached, and what usually fixes it ------------------------------

DEFAULT_HOST = "unix:///var/run/docker.sock"
"""Where docker-py (like the docker CLI) looks without DOCKER_HOST or a docker context."""

_PASSWORD_IN_URL = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]*@")

_FIX_ADDRESS = "check DOCKER_HOST / --docker-host and the docker context (`docker context ls`)"
_FIX_RUNNING = f"is the engine running? Otherwise {_FIX_ADDRESS}"
_FIX_PERMISSION = (
    "run as root or as a member of the socket's group (usually docker), or point DOCKER_HOST at an "
    "engine you may use"
)


def _mask(text: str) -> str:
    """``text`` with every password of a URL in it masked: ``tcp://user:***@host``."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", text)


def shown_host(host: str) -> str:
    """An engine address as messages show it: the password masked, docker-py's scheme names undone."""
    return _mask(host.replace("http+unix://", "unix://"))


def _os_errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts, and exceptions urllib3 keeps in its arguments."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (getattr(current, "reason", None),) if isinstance(e, BaseException)]


def _unreachable(exc: BaseException) -> tuple[str, str]:
    """(what went wrong, what usually fixes it) for an engine that cannot be reached."""
    import requests

    chain = list(_os_errors(exc))
    codes = {e.errno for e in chain if isinstance(e, OSError)}
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "the TLS handshake failed", (
            "check DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
        )
    if errno.ENOENT in codes:
        return "no such socket", _FIX_RUNNING
    if codes & {errno.EACCES, errno.EPERM}:
        return "permission denied", _FIX_PERMISSION
    if errno.ECONNREFUSED in codes:
        return "connection refused", _FIX_RUNNING
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "unknown host name", _FIX_ADDRESS
    if any(isinstance(e, TimeoutError | requests.exceptions.Timeout) for e in chain):
        return "no answer in time", f"{_FIX_RUNNING}; is a firewall in the way?"
    first = _mask(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
    return first, f"{_FIX_RUNNING}; if it is a socket: {_FIX_PERMISSION}"


def _connect_error(exc: Exception, host: str, source: str) -> SwarmSecretsError:
    """One line naming the engine tried, where its address came from, the cause and the usual fix."""
    import docker.errors

    shown = shown_host(host)
    if isinstance(exc, docker.errors.DockerException) and "Invalid bind address" in str(exc):
        return ConfigError(
            f"the Docker engine address {shown}{source} is not one docker understands: use "
            "unix:///path/to/docker.sock, tcp://host:2376 (with DOCKER_TLS_VERIFY) or ssh://user@host "
            "(never a password in the address)"
        )
    cause, fix = _unreachable(exc)
    return SwarmUnavailable(f"cannot reach the Docker engine at {shown}{source}: {cause}; {fix}")


def _is_transient_read_error(exc: BaseException) -> bool:
    return isinstance(exc, SwarmError) and exc.transient and not isinstance(exc, SwarmConflict)


def _stop_retrying(state: RetryCallState) -> bool:
    """Four attempts for most transient errors; while the swarm has no leader, up to
    :data:`ELECTION_PATIENCE` seconds (an election is expected to end; a lost quorum is not)."""
    outcome = state.outcome
    if outcome is not None and isinstance(outcome.exception(), SwarmNoLeader):
        return (state.seconds_since_start or 0.0) >= ELECTION_PATIENCE
    return state.attempt_number >= 4


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    wait = state.next_action.sleep if state.next_action else 0.0
    if outcome is not None:
        log.warning("%s; retrying in %.1f s", outcome.exception(), wait)


_retry_reads = retry(
    retry=retry_if_exception(_is_transient_read_error),
    stop=_stop_retrying,
    wait=wait_exponential(multiplier=0.25, max=4),
    before_sleep=_log_retry,
    reraise=True,
)


# --- parsing Engine JSON ----------------------------------------------------------------------------


def _refs(spec: Mapping[str, Any] | None) -> tuple[SecretRef, ...]:
    if not spec:
        return ()
    return parse_refs(spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Secrets"))


def _host_path(mount: Mapping[str, Any]) -> str:
    """The host path a mount exposes: a bind's or named pipe's source, or the ``device`` of a local
    volume created with bind options (``--opt o=bind --opt device=/var/run``); "" for anything else."""
    if mount.get("Type") in _HOST_MOUNTS:
        return str(mount.get("Source") or "")
    options = ((mount.get("VolumeOptions") or {}).get("DriverConfig") or {}).get("Options") or {}
    return str(options.get("device") or "") if "bind" in str(options.get("o", "")).split(",") else ""


def parse_service(raw: Mapping[str, Any]) -> LiveService:
    spec = raw.get("Spec") or {}
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    labels = spec.get("Labels") or {}
    return LiveService(
        id=raw["ID"],
        name=spec.get("Name", raw["ID"]),
        version=int(raw.get("Version", {}).get("Index", 0)),
        refs=_refs(spec),
        previous_refs=_refs(raw.get("PreviousSpec")),
        update_state=(raw.get("UpdateStatus") or {}).get("State"),
        stack=labels.get(STACK_LABEL),
        labels=labels,
        # What the trust checks need to tell a service that can reach the engine: host paths it
        # mounts and the names (never the values) of its environment variables.
        binds=tuple(_host_path(m) for m in container.get("Mounts") or () if _host_path(m)),
        env_names=frozenset(str(e).partition("=")[0] for e in container.get("Env") or ()),
    )


def parse_node(raw: Mapping[str, Any]) -> LiveNode:
    return LiveNode(
        id=str(raw.get("ID", "")),
        hostname=str((raw.get("Description") or {}).get("Hostname", "")),
        state=str((raw.get("Status") or {}).get("State", "unknown")),
        availability=str((raw.get("Spec") or {}).get("Availability", "active")),
    )


def parse_secret(raw: Mapping[str, Any]) -> LiveSecret:
    spec = raw.get("Spec") or {}
    return LiveSecret(
        id=raw["ID"],
        name=spec.get("Name", ""),
        # The decoded JSON is ours alone: no copy (a thousand secrets per observation).
        labels=spec.get("Labels") or {},
        created_at=raw.get("CreatedAt", ""),
        index=int((raw.get("Version") or {}).get("Index", 0)),
    )


def _by_name(item: LiveSecret | LiveService) -> str:
    return item.name


def secret_ids_of(spec: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(ref.secret_id for ref in _refs(spec))


def _probe(raw: Mapping[str, Any], tasks: list[dict[str, Any]], ready: set[str]) -> RolloutProbe:
    """One service's rollout as its list entry (with status) and up-to-date tasks show it."""
    spec = raw.get("Spec") or {}
    status = raw.get("UpdateStatus") or {}
    service_status = raw.get("ServiceStatus") or {}
    reported = [
        t
        for t in tasks
        if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") == "running"
    ]
    running = sum(1 for t in reported if t.get("NodeID") in ready)
    failed = tuple(
        str((t.get("Status") or {}).get("Err") or (t.get("Status") or {}).get("Message", ""))[:200]
        for t in tasks
        if (t.get("Status") or {}).get("State") in {"failed", "rejected"}
    )
    mode = spec.get("Mode") or {}
    if "Replicated" in mode:
        desired = int((mode["Replicated"] or {}).get("Replicas", 1))
    else:
        desired = int(service_status.get("DesiredTasks", 0))
    return RolloutProbe(
        state=status.get("State"),
        started_at=status.get("StartedAt"),
        message=status.get("Message", ""),
        spec_secret_ids=secret_ids_of(spec),
        running=running,
        desired=desired,
        failed_tasks=failed[:3],
        unavailable=len(reported) - running,
    )


# --- the client -------------------------------------------------------------------------------------


class Swarm:
    """A connection to one swarm manager."""

    def __init__(self, api: docker.APIClient, *, host: str | None = None) -> None:
        self._api = api
        self._host = host
        """The engine's address as messages show it (password masked), when known."""
        self.url: str | None = None
        """The engine's address as connected (DOCKER_HOST form), for the docker CLI a stack deploy runs;
        never shown (it may hold a password)."""
        self._requests = 0
        self._requests_lock = threading.Lock()
        self._clock: tuple[float, float] | None = None
        """(the manager's SystemTime as Unix seconds, time.monotonic() when it was read)."""
        # APIClient is a requests.Session: a response hook sees every HTTP exchange it makes.
        api.hooks["response"].append(self._count)

    def _count(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        with self._requests_lock:
            self._requests += 1

    @property
    def requests(self) -> int:
        """HTTP requests made to the engine so far (for call-budget tests and metrics)."""
        return self._requests

    @classmethod
    def connect(cls, docker_host: str | None = None, *, timeout: float = 60.0) -> Swarm:
        """Connect as the docker CLI would: ``--docker-host``, else ``DOCKER_HOST`` and the TLS
        variables, else the docker context (``DOCKER_CONTEXT`` or the current one), else the local
        socket. Checks that the engine is a swarm manager. An engine that cannot be reached is one
        line naming the address tried (password masked), where it came from, and the usual fix."""
        import os

        import docker

        environment = dict(os.environ)
        source = ""
        if docker_host:
            environment["DOCKER_HOST"] = docker_host
        if not environment.get("DOCKER_HOST"):
            environment.pop("DOCKER_HOST", None)
            context_host, context_name = _current_context_host(environment)
            if context_host:
                environment["DOCKER_HOST"] = context_host
                source = f" (docker context '{context_name}')"
            else:
                source = " (the default: neither DOCKER_HOST nor a docker context is set)"
        host = environment.get("DOCKER_HOST") or DEFAULT_HOST
        error: SwarmSecretsError | None = None
        try:
            client = docker.from_env(environment=environment, timeout=int(timeout), version="auto")
        except Exception as exc:  # noqa: BLE001 - translated right here
            error = _connect_error(exc, host, source)
        if error is not None:
            # Raised without the docker-py chain: its traceback holds the socket docker-py leaked on a
            # failed connect, which must become garbage now (see _collect_leaked_socket).
            _collect_leaked_socket()
            raise error
        swarm = cls(client.api, host=shown_host(host))
        swarm.url = host
        swarm.check_manager()
        return swarm

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            raise _translate(exc, what, self._host) from exc

    # --- reads ------------------------------------------------------------------------------------

    @_retry_reads
    def check_manager(self) -> None:
        info = self._call("reading engine info", self._api.info)
        self._set_clock(str(info.get("SystemTime", "")))
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active":
            raise NotManager(
                "this Docker engine is not part of a swarm: run `docker swarm init` or point "
                "DOCKER_HOST/--docker-host at a swarm manager"
            )
        if not swarm.get("ControlAvailable"):
            raise NotManager(
                "this Docker engine is a swarm worker; secrets can only be managed on a manager node: "
                "point DOCKER_HOST/--docker-host at a manager"
            )

    def _set_clock(self, system_time: str) -> None:
        stamp = parse_time(system_time)
        if stamp is not None:
            self._clock = (stamp, time.monotonic())

    def now(self) -> float | None:
        """The manager's clock now (Unix seconds), from its ``SystemTime`` at connect plus the time
        passed since on this process's monotonic clock; None when the engine did not say."""
        if self._clock is None:
            return None
        stamp, read_at = self._clock
        return stamp + (time.monotonic() - read_at)

    @_retry_reads
    def observe(self, *, lean: bool = False, sets: Collection[str] | None = None) -> LiveState:
        """All secrets, all services, the secrets of tasks not yet shut down and the nodes: four
        requests, however many objects there are; ``lean`` (planning): the tasks and nodes only when
        some managed version of ``sets`` (None: of any set) is in no service's Spec
        (``core.collect.needs_tasks``), so a steady state costs two."""
        # The lists are independent: asking concurrently makes a run cost about one list, not four
        # (bench/bench_noop_plan.py measures it against listing secrets and services). The longest
        # (secrets) is asked from this thread, so no thread start delays it, and each list is parsed
        # where it arrived, while the others are still on their way.
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="observe") as pool:
            services_f = pool.submit(self._services)
            if not lean:
                tasks_f = pool.submit(self._call, "listing tasks", self._api.tasks)
                # Nodes: a task on a node that is down stays "running" in the managers' view (for
                # 24 h), yet it cannot run; the core needs to know, or it keeps that task's versions.
                nodes_f = pool.submit(self._nodes)
            secrets = self._secrets()
            services = services_f.result()
            if lean:
                if not needs_tasks(secrets, services, sets):
                    return LiveState(secrets=secrets, services=services, observed_at=self.now())
                tasks_f = pool.submit(self._call, "listing tasks", self._api.tasks)
                nodes_f = pool.submit(self._nodes)
            tasks, nodes = tasks_f.result(), nodes_f.result()
        task_nodes: dict[str, set[str]] = {}
        wanted: set[str] = set()  # used by a task meant to run (not one told to stop)
        for task in tasks:
            if (task.get("Status") or {}).get("State") in TERMINAL_TASK_STATES:
                continue
            node_id = str(task.get("NodeID") or "")
            running = task.get("DesiredState") in (None, "", "running", "ready", "accepted", "new")
            for ref in (task.get("Spec") or {}).get("ContainerSpec", {}).get("Secrets") or ():
                secret_id = ref.get("SecretID", "")
                task_nodes.setdefault(secret_id, set()).add(node_id)
                if running:
                    wanted.add(secret_id)
        return LiveState(
            secrets=secrets,
            services=services,
            task_secret_ids=frozenset(task_nodes),
            task_nodes={secret_id: frozenset(ids) for secret_id, ids in task_nodes.items()},
            nodes=nodes,
            stopping_task_secret_ids=frozenset(task_nodes) - wanted,
            observed_at=self.now(),
        )

    def _secrets(self) -> tuple[LiveSecret, ...]:
        listed = self._call("listing secrets", self._api.secrets)
        return tuple(sorted(map(parse_secret, listed), key=_by_name))

    def _services(self) -> tuple[LiveService, ...]:
        listed = self._call("listing services", self._api.services)
        return tuple(sorted(map(parse_service, listed), key=_by_name))

    def _nodes(self) -> tuple[LiveNode, ...]:
        listed = self._call("listing nodes", self._api.nodes)
        return tuple(sorted((parse_node(n) for n in listed), key=lambda n: n.id))

    @_retry_reads
    def inspect_service(self, service_id: str) -> RawService:
        """The raw service, without engine defaults inserted (so writing it back changes nothing)."""
        raw = self._call(f"inspecting service {service_id}", lambda: self._api.inspect_service(service_id))
        return cast(RawService, raw)

    @_retry_reads
    def rollout_probes(self, service_ids: Collection[str]) -> dict[str, RolloutProbe]:
        # Three requests per look however many rollouts are watched: one services list with
        # status=true (Spec, UpdateStatus, task counts), one tasks list, one nodes list. Looking at each
        # service on its own cost three requests per service per look: at 16 rollouts, 190 requests a
        # second competing with the engine starting the new tasks.
        wanted = set(service_ids)
        if not wanted:
            return {}
        listed = self._call(
            "reading service status",
            lambda: self._api.services(filters={"id": sorted(wanted)}, status=True),
        )
        # The id filter matches prefixes: keep the exact ids.
        found = {str(s["ID"]): s for s in listed if s.get("ID") in wanted}
        if not found:
            return {}
        try:
            tasks = self._call(
                "listing tasks",
                lambda: self._api.tasks(filters={"service": sorted(found), "_up-to-date": "true"}),
            )
        except SwarmRefused as exc:
            if "not found" not in str(exc):
                raise
            # One of them was removed since the list (the engine refuses the whole filter with 404):
            # a transient error, so the read is tried again, and the new list leaves it out.
            raise SwarmError("listing tasks: a watched service was removed meanwhile") from None
        by_service: dict[str, list[dict[str, Any]]] = {service_id: [] for service_id in found}
        for task in tasks:
            group = by_service.get(str(task.get("ServiceID")))
            if group is not None:
                group.append(task)
        # A task whose node is not ready (down, or not heard from since a leader change) still says
        # "running" but may be long gone: only tasks on ready nodes count.
        ready = {
            str(n.get("ID"))
            for n in self._call("listing nodes", self._api.nodes)
            if (n.get("Status") or {}).get("State") == "ready"
        }
        return {service_id: _probe(raw, by_service[service_id], ready) for service_id, raw in found.items()}

    @_retry_reads
    def find_config(self, name: str) -> tuple[str, bytes] | None:
        """(id, data) of the config named exactly ``name``, or None."""
        import base64

        configs = self._call("listing configs", lambda: self._api.configs(filters={"name": name}))
        for config in configs:
            if (config.get("Spec") or {}).get("Name") == name:
                data = base64.b64decode((config.get("Spec") or {}).get("Data", ""))
                return config["ID"], data
        return None

    @_retry_reads
    def stack_services(self, stack: str) -> dict[str, tuple[str, str | None]]:
        listed = self._call(
            f"listing the services of stack {stack}",
            lambda: self._api.services(filters={"label": f"{STACK_LABEL}={stack}"}),
        )
        return {
            str((s.get("Spec") or {}).get("Name", s["ID"])): (
                str(s["ID"]),
                (s.get("UpdateStatus") or {}).get("StartedAt"),
            )
            for s in listed
            if ((s.get("Spec") or {}).get("Labels") or {}).get(STACK_LABEL) == stack
        }

    # --- mutations (never retried blindly: see the module docstring) -------------------------------

    def create_secret(self, name: str, value: SecretValue, labels: Mapping[str, str]) -> str:
        result = self._call(
            f"creating secret {name}",
            lambda: self._api.create_secret(name=name, data=value.reveal(), labels=dict(labels)),
        )
        return str(result["ID"])

    def remove_secret(self, secret_id: str, name: str) -> None:
        self._call(f"removing secret {name}", lambda: self._api.remove_secret(secret_id))

    def create_config(self, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        result = self._call(
            f"creating config {name}",
            lambda: self._api.create_config(name=name, data=data, labels=dict(labels)),
        )
        return str(result["ID"])

    def write_service_secrets(self, raw: RawService, secrets: list[dict[str, Any]]) -> None:
        """POST ``raw``'s spec back with only ``TaskTemplate.ContainerSpec.Secrets`` replaced, at the
        inspected version. A concurrent change raises :class:`SwarmConflict`."""
        spec = copy.deepcopy(raw.get("Spec") or {})
        spec.setdefault("TaskTemplate", {}).setdefault("ContainerSpec", {})["Secrets"] = secrets
        service_id = raw["ID"]
        version = raw["Version"]["Index"]
        name = spec.get("Name", service_id)

        def post() -> None:
            url = self._api._url("/services/{0}/update", service_id)
            response = self._api._post_json(url, data=spec, params={"version": version})
            self._api._raise_for_status(response)
            for warning in (response.json() or {}).get("Warnings") or ():
                log.info("engine warning while updating %s: %s", name, warning)

        self._call(f"updating service {name}", post)

    # --- the lease object (engine/lease.py): a config whose labels change only by compare-and-swap ---

    @_retry_reads
    def inspect_config(self, name: str) -> dict[str, Any] | None:
        """The raw config named exactly ``name`` (``ID``, ``Version``, ``UpdatedAt``, ``Spec``), or None."""

        import docker.errors

        def get() -> dict[str, Any] | None:
            try:
                raw = self._api.inspect_config(name)
            except docker.errors.NotFound:
                return None
            # The engine falls back to an ID prefix when no name matches: only the exact name counts.
            return cast(dict[str, Any], raw) if (raw.get("Spec") or {}).get("Name") == name else None

        return self._call(f"reading config {name}", get)

    def update_config_labels(
        self, config_id: str, version: int, name: str, labels: Mapping[str, str]
    ) -> None:
        """Replace the labels of a config, only if it is still at ``version`` (the engine's optimistic
        concurrency). Someone else's write in between raises :class:`SwarmConflict`."""

        def post() -> None:
            url = self._api._url("/configs/{0}/update", config_id)
            # Data is left out: the engine keeps it (only labels may change on a config anyway).
            spec = {"Name": name, "Labels": dict(labels)}
            response = self._api._post_json(url, data=spec, params={"version": version})
            self._api._raise_for_status(response)

        self._call(f"updating config {name}", post)

    @_retry_reads
    def system_time(self) -> str:
        """The manager's clock (``SystemTime`` of ``GET /info``), RFC 3339 with nanoseconds."""
        info = self._call("reading engine info", self._api.info)
        self._set_clock(str(info.get("SystemTime", "")))
        return str(info.get("SystemTime", ""))

    # --- events (for the long-running loop) --------------------------------------------------------

    def events(self, *, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Secret and service events as the engine streams them (blocks; ends when the engine goes)."""
        stream = self._call(
            "watching events",
            lambda: self._api.events(since=since, decode=True, filters={"type": ["secret", "service"]}),
        )
        try:
            yield from stream
        except Exception as exc:
            raise _translate(exc, "watching events", self._host) from exc


def _collect_leaked_socket() -> None:
    """docker-py leaves the socket of a failed unix connect to the garbage collector, which then warns
    (ResourceWarning) at some random later point. Collect it now, quietly: it is closed either way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _current_context_host(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(Host, name) of the docker context in use, unless it is the default one. The docker CLI's
    order: DOCKER_HOST (handled by the caller), DOCKER_CONTEXT, the current context of the CLI's
    config. Read from the CLI's context store directly (file reads): docker-py finds contexts only next
    to a config.json, which ``docker context create`` does not write.

    A named context that does not exist is an error: falling back to the local socket could reconcile
    the wrong swarm. Only the host is taken; TLS material goes in DOCKER_TLS_VERIFY/DOCKER_CERT_PATH.
    """
    config_dir = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = environ.get("DOCKER_CONTEXT") or None
    origin = "DOCKER_CONTEXT"
    if name is None:
        origin = f"the current context in {config_dir / 'config.json'}"
        try:
            name = json.loads((config_dir / "config.json").read_text(encoding="utf-8")).get("currentContext")
        except (OSError, ValueError, AttributeError):
            name = None
    if not name or name == "default":
        return None, ""
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        host = json.loads(meta.read_text(encoding="utf-8"))["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"docker context {name!r} ({origin}) not found in {config_dir / 'contexts'}: "
            "`docker context ls` lists the contexts"
        ) from None
    return (str(host) if host else None), str(name)
