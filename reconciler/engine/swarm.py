"""The swarm client: the only module that imports ``docker``.

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
* Every HTTP request is counted (:attr:`Swarm.requests`) so tests can assert API call budgets.

It must not plan or decide anything: it reports what is there and does what it is told.
"""

from __future__ import annotations

import copy
import gc
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from reconciler.core.model import LiveSecret, LiveService, LiveState, SecretRef, SecretValue
from reconciler.errors import NotManager, SwarmConflict, SwarmError, SwarmRefused, SwarmUnavailable

if TYPE_CHECKING:
    import docker
    import requests

# docker-py (with requests and urllib3: a third of the command's start-up) is imported when a swarm is
# connected or an error translated, not with this module: `validate`, `--help` and `--version` never
# need it.

log = logging.getLogger(__name__)

T = TypeVar("T")

STACK_LABEL = "com.docker.stack.namespace"
TERMINAL_TASK_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})


class RawService(TypedDict, total=False):
    """A service as ``GET /services/{id}`` returns it (only the fields we read)."""

    ID: str
    Version: dict[str, int]
    Spec: dict[str, Any]
    PreviousSpec: dict[str, Any]
    UpdateStatus: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutProbe:
    """One look at a service's rollout, as the docker CLI's progress display reads it."""

    state: str | None
    """``UpdateStatus.State`` or None when the engine recorded none."""
    started_at: str | None
    message: str
    spec_secret_ids: frozenset[str]
    """Secret IDs the current Spec references (a rollback swaps our IDs out again)."""
    running: int
    """Tasks of the current spec that are running."""
    desired: int
    """Tasks the service wants (replicas, or the global count the engine computed)."""
    failed_tasks: tuple[str, ...] = ()
    """Recent error messages of tasks of the current spec that failed (for the report)."""


# --- error translation ------------------------------------------------------------------------------


def _translate(exc: Exception, what: str) -> SwarmError:
    """Map a docker-py / requests exception to our tree. ``what`` says what we were doing."""
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
        if status == 503 and "not a swarm manager" in explanation and "Worker" not in explanation:
            return SwarmUnavailable(text)
        if status == 503 and ("Worker nodes" in explanation or "not part of a swarm" in explanation):
            return NotManager(
                f"{what}: this engine is not a swarm manager ({explanation}); point DOCKER_HOST or "
                "--docker-host at a manager node"
            )
        if status >= 500:
            err: SwarmError = SwarmError(text)
            err.transient = "context deadline exceeded" in explanation or status in (502, 503, 504)
            return err
        return SwarmRefused(text)
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return SwarmUnavailable(f"{what}: cannot reach the Docker engine ({type(exc).__name__})")
    if isinstance(exc, docker.errors.DockerException):
        return SwarmUnavailable(f"{what}: {str(exc).splitlines()[0][:300]}")
    return SwarmError(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")


def _is_transient_read_error(exc: BaseException) -> bool:
    return isinstance(exc, SwarmError) and exc.transient and not isinstance(exc, SwarmConflict)


_retry_reads = retry(
    retry=retry_if_exception(_is_transient_read_error),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)


# --- parsing Engine JSON ----------------------------------------------------------------------------


def _refs(spec: Mapping[str, Any] | None) -> tuple[SecretRef, ...]:
    if not spec:
        return ()
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    refs = []
    for raw in container.get("Secrets") or ():
        file = raw.get("File") or {}
        refs.append(
            SecretRef(
                secret_id=raw.get("SecretID", ""),
                secret_name=raw.get("SecretName", ""),
                target=file.get("Name", ""),
                uid=str(file.get("UID", "")),
                gid=str(file.get("GID", "")),
                mode=int(file.get("Mode", 0)),
            )
        )
    return tuple(refs)


def parse_service(raw: Mapping[str, Any]) -> LiveService:
    spec = raw.get("Spec") or {}
    return LiveService(
        id=raw["ID"],
        name=spec.get("Name", raw["ID"]),
        version=int(raw.get("Version", {}).get("Index", 0)),
        refs=_refs(spec),
        previous_refs=_refs(raw.get("PreviousSpec")),
        update_state=(raw.get("UpdateStatus") or {}).get("State"),
        stack=(spec.get("Labels") or {}).get(STACK_LABEL),
    )


def parse_secret(raw: Mapping[str, Any]) -> LiveSecret:
    spec = raw.get("Spec") or {}
    return LiveSecret(
        id=raw["ID"],
        name=spec.get("Name", ""),
        # The decoded JSON is ours alone: no copy (a thousand secrets per observation).
        labels=spec.get("Labels") or {},
        created_at=raw.get("CreatedAt", ""),
    )


def _by_name(item: LiveSecret | LiveService) -> str:
    return item.name


def secret_ids_of(spec: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(ref.secret_id for ref in _refs(spec))


# --- the client -------------------------------------------------------------------------------------


class Swarm:
    """A connection to one swarm manager."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api
        self._requests = 0
        self._requests_lock = threading.Lock()
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
        variables, else the current docker context, else the local socket. Checks that the engine is
        a swarm manager."""
        import os

        import docker

        environment = dict(os.environ)
        if docker_host:
            environment["DOCKER_HOST"] = docker_host
        if "DOCKER_HOST" not in environment:
            context_host = _current_context_host()
            if context_host:
                environment["DOCKER_HOST"] = context_host
        error: SwarmError | None = None
        try:
            client = docker.from_env(environment=environment, timeout=int(timeout), version="auto")
        except Exception as exc:  # noqa: BLE001 - translated right here
            error = _translate(exc, "connecting to the Docker engine")
        if error is not None:
            # Raised without the docker-py chain: its traceback holds the socket docker-py leaked on a
            # failed connect, which must become garbage now (see _collect_leaked_socket).
            _collect_leaked_socket()
            raise error
        swarm = cls(client.api)
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
            raise _translate(exc, what) from exc

    # --- reads ------------------------------------------------------------------------------------

    @_retry_reads
    def check_manager(self) -> None:
        info = self._call("reading engine info", self._api.info)
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

    @_retry_reads
    def observe(self) -> LiveState:
        """All secrets, all services and the secrets of tasks not yet shut down: three requests,
        however many objects there are."""
        # The three lists are independent: asking concurrently makes a run cost about one list, not
        # three (bench/bench_noop_plan.py measures it against listing secrets and services). The
        # longest (secrets) is asked from this thread, so no thread start delays it, and each list is
        # parsed where it arrived, while the others are still on their way.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="observe") as pool:
            services_f = pool.submit(self._services)
            tasks_f = pool.submit(self._task_secret_ids)
            secrets = self._secrets()
            services, task_secret_ids = services_f.result(), tasks_f.result()
        return LiveState(secrets=secrets, services=services, task_secret_ids=task_secret_ids)

    def _secrets(self) -> tuple[LiveSecret, ...]:
        listed = self._call("listing secrets", self._api.secrets)
        return tuple(sorted(map(parse_secret, listed), key=_by_name))

    def _services(self) -> tuple[LiveService, ...]:
        listed = self._call("listing services", self._api.services)
        return tuple(sorted(map(parse_service, listed), key=_by_name))

    def _task_secret_ids(self) -> frozenset[str]:
        ids: set[str] = set()
        for task in self._call("listing tasks", self._api.tasks):
            if (task.get("Status") or {}).get("State") in TERMINAL_TASK_STATES:
                continue
            for ref in (task.get("Spec") or {}).get("ContainerSpec", {}).get("Secrets") or ():
                ids.add(ref.get("SecretID", ""))
        return frozenset(ids)

    @_retry_reads
    def inspect_service(self, service_id: str) -> RawService:
        """The raw service, without engine defaults inserted (so writing it back changes nothing)."""
        raw = self._call(f"inspecting service {service_id}", lambda: self._api.inspect_service(service_id))
        return cast(RawService, raw)

    @_retry_reads
    def rollout_probe(self, service_id: str) -> RolloutProbe:
        # One list call with status=true carries Spec, UpdateStatus and the task counts: two requests
        # per look instead of three (the id filter matches prefixes, so pick the exact id).
        listed = self._call(
            "reading service status",
            lambda: self._api.services(filters={"id": service_id}, status=True),
        )
        raw = next((s for s in listed if s.get("ID") == service_id), None)
        if raw is None:
            raise SwarmRefused(f"service {service_id} no longer exists")
        spec = raw.get("Spec") or {}
        status = raw.get("UpdateStatus") or {}
        service_status = raw.get("ServiceStatus") or {}
        tasks = self._call(
            "listing tasks",
            lambda: self._api.tasks(filters={"service": service_id, "_up-to-date": "true"}),
        )
        running = sum(
            1
            for t in tasks
            if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") == "running"
        )
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
        )

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
            raise _translate(exc, "watching events") from exc


def _collect_leaked_socket() -> None:
    """docker-py leaves the socket of a failed unix connect to the garbage collector, which then warns
    (ResourceWarning) at some random later point. Collect it now, quietly: it is closed either way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _current_context_host() -> str | None:
    """The Host of the current non-default docker context, if there is one (cheap: a file read)."""
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_current_context()
    except Exception:  # noqa: BLE001 - contexts are a convenience; fall back to the defaults
        return None
    if context is None or context.name == "default":
        return None
    host = context.Host
    return str(host) if host else None
