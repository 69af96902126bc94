"""Frozen value types shared by every layer: what the manifests want, what the swarm has.

Three groups:

* **manifest side** (built by ``manifest.py``): :class:`SecretSet`, :class:`SecretSpec`,
  :class:`ServiceGrant`, :class:`Rotation` and the source specs :class:`SopsSource`, :class:`FileSource`,
  :class:`EnvSource`, :class:`GenerateSource`. They say where a value comes from, never the value.
* **desired state** (input of the pure planner): :class:`DesiredState` → :class:`DesiredSet` →
  :class:`DesiredSecret`, which carries a keyed *fingerprint* of the value instead of the value.
* **live state** (built by ``swarm.py`` from Engine JSON): :class:`LiveState`, :class:`LiveSecret`,
  :class:`LiveService`, :class:`SecretRef`, :class:`LiveNode`.

Plus :class:`SecretValue`, the only type that holds secret bytes; its ``repr``/``str`` never show them.

One word per concept, everywhere in the code: a **secret** is a logical secret (``db_password``) and a
field named ``secret`` holds its name; a **version** is one Swarm secret object of it, and a field
named ``name`` on a version (or on an action about one) is that object's name (``db_password_v3``);
``set_name`` is the owning SecretSet. A secret that cannot be reconciled until a person acts is
**blocked**.

This module is pure: no I/O, no docker, no subprocess, no clock.
"""

from __future__ import annotations

import functools
import hmac
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # stacks.py builds on this module; the type is only needed for annotations
    from reconciler.core.stacks import StackSpec

# --- labels -----------------------------------------------------------------------------------------

LABEL_PREFIX = "io.swarm-secrets."
"""Every label the tool writes starts with this. Objects without ``LABEL_MANAGED`` are not ours."""
LABEL_MANAGED = LABEL_PREFIX + "managed"
"""Value ``"true"`` on every secret this tool created."""
LABEL_SET = LABEL_PREFIX + "set"
"""``metadata.name`` of the SecretSet that owns the object."""
LABEL_SECRET = LABEL_PREFIX + "secret"
"""The logical secret name (``db_password``)."""
LABEL_VERSION = LABEL_PREFIX + "version"
"""The version number N of ``<secret>_v<N>``, as decimal text. Read from here, never from the name."""
LABEL_FINGERPRINT = LABEL_PREFIX + "fingerprint"
"""Keyed HMAC of the value: ``hmac-sha256:<key id>:<hex>``. Without the key it confirms nothing."""
LABEL_REVISION = LABEL_PREFIX + "revision"
"""The manifest revision (git commit) that created this version, when known."""
LABEL_GENERATOR = LABEL_PREFIX + "generator"
"""On a generated version (``source.generate``): how its value was made, ``<charset>:<length>``
(``urlsafe:48``, ``bytes:32``). Generated versions carry no fingerprint: nothing outside the swarm
ever holds their value, so there is nothing to compare, and nothing should let anyone confirm a guess."""

SECRETS_DIR = "/run/secrets"
"""Where Swarm places a secret whose target is a relative path."""

MAX_SECRET_BYTES = 500 * 1024 - 1
"""Swarm rejects values of 500 KiB or more (swarmkit ``api/validation/secrets.go``)."""
MAX_OBJECT_NAME = 64
"""Swarm's limit on object names (swarmkit ``manager/controlapi/common.go``)."""


@functools.lru_cache(maxsize=65536)
def normalize_target(target: str) -> str:
    """The absolute in-container path of a secret target: relative names land in /run/secrets.

    Swarm itself does not treat ``pw`` and ``/run/secrets/pw`` as the same target; we do, because the
    container sees one file.
    """
    path = target if target.startswith("/") else f"{SECRETS_DIR}/{target}"
    return posixpath.normpath(path)


def version_name(secret: str, version: int) -> str:
    """The swarm object name of version ``version`` of the logical secret ``secret``: ``db_password_v3``."""
    return f"{secret}_v{version}"


# --- values -----------------------------------------------------------------------------------------


class SecretValue:
    """Secret bytes that never show themselves: ``repr``, ``str`` and ``format`` say only the size.

    Call :meth:`reveal` at the one place the bytes must leave the process (the Engine API request).
    Equality is constant-time so comparing values leaks nothing through timing.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def reveal(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<SecretValue: {len(self._data)} bytes>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        # Hashing the bytes would make the value guessable through hash collisions in dicts; sets of
        # values are not needed anywhere.
        raise TypeError("SecretValue is not hashable")

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SecretValue cannot be pickled")


# --- manifest side ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where a manifest element stands, for error messages: ``file:line: path``."""

    file: str
    line: int | None
    path: str
    fields: Mapping[str, int] = field(default_factory=dict, compare=False)
    """Lines of the element's own fields (``target``, ``mode``, ...) when they are written."""

    def at(self, name: str) -> tuple[int | None, str]:
        """(line, path) of field ``name`` of this element: its own line when written, else the element's."""
        return self.fields.get(name, self.line), f"{self.path}.{name}" if self.path else name


@dataclass(frozen=True, slots=True, kw_only=True)
class SopsSource:
    """Decrypt ``file`` with the sops binary; take ``key`` (a path of mapping keys) or the whole file."""

    file: Path
    key: tuple[str, ...] | None = None
    root: Path | None = None
    """The source root ``file`` must resolve inside (symlinks followed); None: not checked (tests)."""
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSource:
    """The bytes of a plain file."""

    file: Path
    root: Path | None = None
    """The source root ``file`` must resolve inside (symlinks followed); None: not checked (tests)."""
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvSource:
    """The value of an environment variable (encoded as UTF-8)."""

    var: str
    origin: Origin | None = field(default=None, compare=False)


CHARSETS = ("alnum", "hex", "base64", "urlsafe", "printable")
"""Alphabets of ``source.generate.charset`` (``sources/generator.py`` defines them)."""
RAW_BYTES = "bytes"
"""The :attr:`GenerateSource.charset` of ``generate: {bytes: N}``: N raw random bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateSource:
    """A value nobody ever sees: made from the operating system's CSPRNG at the moment a version is
    created, and kept nowhere but in that Swarm secret."""

    charset: str
    """One of :data:`CHARSETS`, or :data:`RAW_BYTES`."""
    length: int
    """Characters of ``charset`` (or raw bytes)."""
    origin: Origin | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """The :data:`LABEL_GENERATOR` value of the versions it makes: ``urlsafe:48``."""
        return f"{self.charset}:{self.length}"


Source = SopsSource | FileSource | EnvSource | GenerateSource


@dataclass(frozen=True, slots=True, kw_only=True)
class Rotation:
    """``rotate: {every: 90d}``: the current version is due for replacement once it is this old."""

    every: int
    """Seconds."""
    text: str
    """As the manifest writes it (``90d``), for messages."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceGrant:
    """A service's right to read a secret, and where the file appears in its containers."""

    service: str
    target: str
    """As written in the manifest; relative means under /run/secrets. Compare via :attr:`path`."""
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444
    optional: bool = False
    """The service may not exist yet (deployed later): then the grant waits instead of failing the run."""
    origin: Origin | None = field(default=None, compare=False)
    """The list item in the manifest (``spec.secrets.<name>.services[i]``), for error messages."""

    @property
    def path(self) -> str:
        return normalize_target(self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSpec:
    """One logical secret as the manifest declares it (source, not value)."""

    set_name: str
    secret: str
    """The logical secret's name (``db_password``)."""
    source: Source
    labels: Mapping[str, str] = field(default_factory=dict)
    grants: tuple[ServiceGrant, ...] = ()
    rotate: Rotation | None = None
    """``rotate.every``: generated values are replaced on schedule; others are reported as due."""
    origin: Origin

    @property
    def generated(self) -> bool:
        return isinstance(self.source, GenerateSource)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSet:
    """A ``kind: SecretSet`` document: the unit of ownership."""

    name: str
    keep: int = 0
    secrets: tuple[SecretSpec, ...] = ()
    origin: Origin
    location: str = ""
    """The manifest file relative to its source root (``teams/shop/secrets.yaml``), for policy rules
    that tie sets to folders; empty when unknown."""


# --- desired state (planner input) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredSecret:
    """A logical secret with a keyed fingerprint of its resolved value in place of the value."""

    set_name: str
    secret: str
    """The logical secret's name (``db_password``)."""
    fingerprint: str
    """Empty for a generated secret (:attr:`generator`), whose value exists only in the swarm."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """User labels from the manifest, copied onto every new version."""
    grants: tuple[ServiceGrant, ...] = ()
    generator: str | None = None
    """For ``source.generate``: the :data:`LABEL_GENERATOR` value (``urlsafe:48``) its current version
    must carry; a new version is generated when none does."""
    rotate: Rotation | None = None
    """``rotate.every`` of the manifest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredSet:
    name: str
    keep: int = 0
    secrets: tuple[DesiredSecret, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredState:
    sets: tuple[DesiredSet, ...] = ()
    revision: str | None = None
    """The manifests' git commit, recorded on new versions; None when not in git."""
    fingerprint_key_id: str = ""
    """Id of the HMAC key the fingerprints were made with; a live fingerprint made with another key
    cannot be compared and counts as changed."""
    now: float | None = None
    """When the plan is made, as Unix seconds on the swarm's clock (``converge`` sets it from the
    observation), to judge versions' ages against their ``CreatedAt``; None: no rotation falls due."""
    forced: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Rotations asked for now (``swarm-secrets rotate``): (set, secret) → the version number current
    when asked; a generated secret whose current version is at most that number gets a new one. A
    number, not a flag, so that planning again after the new version exists plans nothing more."""
    stacks: tuple[StackSpec, ...] = ()
    """Stacks this run deploys (``core/stacks.py``): their services get their versions through the
    deploy, never through a service update of their own."""


# --- live state (built from Engine JSON by swarm.py) ------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSecret:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: str = ""
    index: int = 0
    """The object version index (moves whenever the secret's labels are written); saved plans keep it."""
    # Read from the labels once, at construction: the planner asks for them thousands of times.
    set_name: str | None = field(init=False)
    """``LABEL_SET``: the set that owns the secret, if any."""
    secret: str | None = field(init=False)
    """``LABEL_SECRET``: the logical secret this is a version of."""
    version: int | None = field(init=False)
    """``LABEL_VERSION`` when it is a decimal number."""
    fingerprint: str | None = field(init=False)
    """``LABEL_FINGERPRINT``."""
    generator: str | None = field(init=False)
    """``LABEL_GENERATOR``: set on generated versions (which have no fingerprint)."""
    managed: bool = field(init=False)
    """Ours: ``LABEL_MANAGED`` is "true" and the version label is a number."""

    def __post_init__(self) -> None:
        raw = self.labels.get(LABEL_VERSION, "")
        version = int(raw) if raw.isdigit() else None
        object.__setattr__(self, "set_name", self.labels.get(LABEL_SET))
        object.__setattr__(self, "secret", self.labels.get(LABEL_SECRET))
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "fingerprint", self.labels.get(LABEL_FINGERPRINT))
        object.__setattr__(self, "generator", self.labels.get(LABEL_GENERATOR))
        object.__setattr__(self, "managed", self.labels.get(LABEL_MANAGED) == "true" and version is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRef:
    """One entry of a service's ``TaskTemplate.ContainerSpec.Secrets``."""

    secret_id: str
    secret_name: str
    target: str
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444

    @property
    def path(self) -> str:
        return normalize_target(self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveService:
    id: str
    name: str
    version: int
    """The object version index; a service update must send it back."""
    refs: tuple[SecretRef, ...] = ()
    """Secret references of the current Spec."""
    previous_refs: tuple[SecretRef, ...] = ()
    """Secret references of PreviousSpec: what a rollback would bring back."""
    update_state: str | None = None
    """``UpdateStatus.State`` (updating, paused, completed, rollback_started, …) or None."""
    stack: str | None = None
    """``com.docker.stack.namespace`` when the service belongs to a ``docker stack deploy`` stack."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The service's labels (``Spec.Labels``)."""
    binds: tuple[str, ...] = ()
    """Host paths the containers mount (bind mounts; named pipes too): how a service reaches the engine."""
    env_names: frozenset[str] = frozenset()
    """Names (never values) of the container environment variables (``DOCKER_HOST`` reaches an engine)."""

    @property
    def updating(self) -> bool:
        return self.update_state in {"updating", "paused", "rollback_started", "rollback_paused"}


NODE_DOWN = "down"
"""``Status.State`` of a node the managers have given up on (no heartbeat): its tasks cannot run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveNode:
    """A swarm node as far as collection and rollouts care: where tasks can still run."""

    id: str
    hostname: str = ""
    state: str = "ready"
    """``Status.State``: ``ready``, ``down``, ``unknown`` (a new leader has not heard from it yet),
    ``disconnected``."""
    availability: str = "active"
    """``Spec.Availability``: ``active``, ``pause``, ``drain``."""

    @property
    def down(self) -> bool:
        return self.state == NODE_DOWN

    @property
    def label(self) -> str:
        """How messages name the node: the short ID (hostnames are not unique), then the hostname."""
        return f"{self.id[:12]} ({self.hostname})" if self.hostname else self.id[:12]


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveState:
    secrets: tuple[LiveSecret, ...] = ()
    services: tuple[LiveService, ...] = ()
    task_secret_ids: frozenset[str] = frozenset()
    """IDs of secrets referenced by tasks that are not shut down yet, wherever they are (old tasks still
    running, tasks not started yet, and tasks stranded on a node that is down)."""
    task_nodes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Secret ID → IDs of the nodes the tasks of :attr:`task_secret_ids` are on (``""`` for a task not
    placed yet). A secret of :attr:`task_secret_ids` missing here counts as used on a live node."""
    nodes: tuple[LiveNode, ...] = ()
    """Every node of the swarm; empty when not observed (then no task counts as stranded)."""
    stopping_task_secret_ids: frozenset[str] = frozenset()
    """IDs of :attr:`task_secret_ids` that only tasks told to stop use (desired state shutdown, not
    stopped yet: the old tasks of a rollout that just ended). They keep the version now; the plan
    foresees them gone once its own rollouts have run."""
    observed_at: float | None = None
    """The swarm's clock when this was observed (Unix seconds: the manager's ``SystemTime`` carried
    forward on a monotonic clock), the time versions' ``CreatedAt`` is compared with; None: unknown."""

    def secret_by_id(self, secret_id: str) -> LiveSecret | None:
        for secret in self.secrets:
            if secret.id == secret_id:
                return secret
        return None
