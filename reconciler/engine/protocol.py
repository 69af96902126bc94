"""What the executor, ``converge`` and the lease need from a swarm: the :class:`Swarm` protocol.

``engine/swarm.py`` implements it against the Docker Engine API; ``tests/fakes/swarm.py`` implements
it in memory for the executor's unit tests, and ``tests/contract/`` runs one suite against both so the
fake cannot drift from the engine. Anything the executor relies on is listed here, with the engine
behaviour it may count on; nothing else is.

No docker import here: the executor depends on this module, not on docker-py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol, TypedDict

from reconciler.core.model import LiveState, SecretValue
from reconciler.core.rollout import RolloutProbe

__all__ = ["RawService", "Swarm"]


class RawService(TypedDict, total=False):
    """A service as ``GET /services/{id}`` returns it (only the fields we read)."""

    ID: str
    Version: dict[str, int]
    Spec: dict[str, Any]
    PreviousSpec: dict[str, Any]
    UpdateStatus: dict[str, str]


class Swarm(Protocol):
    """A connection to one swarm manager. Every method raises only :mod:`reconciler.errors` types."""

    def observe(self, *, lean: bool = False, sets: Collection[str] | None = None) -> LiveState:
        """Every secret (with its version index), every service (Spec and PreviousSpec references,
        version index, update state) and the secrets of tasks not shut down yet, with their nodes.
        ``lean``: the tasks and nodes only when :func:`~reconciler.core.collect.needs_tasks` says a
        plan that may collect from ``sets`` (None: any set) needs them (for planning; never for a
        decision to remove something)."""
        ...

    def inspect_service(self, service_id: str) -> RawService:
        """The raw service without engine defaults inserted, so writing it back changes nothing."""
        ...

    def write_service_secrets(self, raw: RawService, secrets: list[dict[str, Any]]) -> None:
        """Send ``raw``'s spec back with only ``TaskTemplate.ContainerSpec.Secrets`` replaced, at
        ``raw``'s version. The old Spec becomes PreviousSpec and a rollout starts when tasks must be
        replaced. A stale version raises :class:`~reconciler.errors.SwarmConflict`."""
        ...

    def rollout_probes(self, service_ids: Collection[str]) -> dict[str, RolloutProbe]:
        """One look at each service's rollout (update state, spec secret IDs, up-to-date tasks),
        taken together; a service that no longer exists is absent from the answer."""
        ...

    def create_secret(self, name: str, value: SecretValue, labels: Mapping[str, str]) -> str:
        """Create a secret; its id. A name taken (case-insensitively) raises
        :class:`~reconciler.errors.SwarmConflict`."""
        ...

    def remove_secret(self, secret_id: str, name: str) -> None:
        """Remove a secret. Refused (:class:`~reconciler.errors.SwarmRefused`) while a service's
        current Spec references it; *not* refused for PreviousSpec or running tasks (the rollback
        trap, moby/swarmkit#2509): callers check those themselves."""
        ...

    def find_config(self, name: str) -> tuple[str, bytes] | None:
        """(id, data) of the config named exactly ``name``, or None."""
        ...

    def stack_services(self, stack: str) -> dict[str, tuple[str, str | None]]:
        """name -> (id, ``UpdateStatus.StartedAt`` or None) of the services labelled as stack
        ``stack``'s (``com.docker.stack.namespace``): what a stack deploy wrote, and the start of the
        rollout each had before it."""
        ...

    def create_config(self, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        """Create a config; a name taken raises :class:`~reconciler.errors.SwarmConflict`."""
        ...

    # --- the lease (engine/lease.py): a config whose labels change only by compare-and-swap ---------

    def inspect_config(self, name: str) -> dict[str, Any] | None:
        """The raw config named exactly ``name`` (``ID``, ``Version.Index``, ``CreatedAt``,
        ``UpdatedAt``, ``Spec.Name``, ``Spec.Labels``), or None. An ID, or a prefix of one or of a
        name, never matches."""
        ...

    def update_config_labels(
        self, config_id: str, version: int, name: str, labels: Mapping[str, str]
    ) -> None:
        """Replace the config's labels (its data stays), only if it is still at ``version``: the
        version index and ``UpdatedAt`` move; a stale version raises
        :class:`~reconciler.errors.SwarmConflict` (``update out of sequence``), a config that is gone
        :class:`~reconciler.errors.SwarmRefused`."""
        ...

    def system_time(self) -> str:
        """The manager's clock (``SystemTime``, RFC 3339 with nanoseconds): the clock ``UpdatedAt`` is
        stamped with, to within the managers' clock agreement."""
        ...
