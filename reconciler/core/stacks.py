"""Stacks: what one ``docker stack deploy`` of a compose project does to managed secrets, decided purely.

A stack deployed with ``docker stack deploy`` replaces each of its services' whole spec with what its
compose files say. Updating such a service on its own (as ``apply`` does for any other service) lasts
only until the next deploy, and a release that also changes a value restarts the service twice. So a
stack that swarm-secrets deploys itself (``swarm-secrets stack deploy``, or a ``kind: Stack`` manifest
in ``apply`` and ``run``) gets its managed secrets **through** the deploy: a compose override pins every
top-level compose secret that a manifest manages to ``{external: true, name: <current version>}``,
and one deploy carries the new versions and the new compose content together — one update per
service per release.

This module holds the values and the rules; reading compose files is ``manifests/compose.py`` and
running the docker CLI ``engine/stackdeploy.py``:

* :class:`Compose`: the parts of the merged compose files that matter here (services, the secrets
  each mounts and where, the top-level secrets, the host files docker will read, what could reach
  the engine), each with its file and line;
* :class:`StackSpec`: a stack to deploy (the compose files, their interpolation variables, the
  ``docker stack deploy`` flags, and whether it is deployed on every run or only when it changed);
* :func:`check_grants`: the manifests' grants against the compose files, every conflict naming both
  files and lines (a compose secret that would carry two logical secrets, or one secret to a service
  the manifests do not grant it to; a grant with another uid/gid/mode than the compose file, or at a
  target the compose files do not mount);
* :func:`pins` and :func:`override_document`: the override that pins the managed compose secrets,
  and the labels that record on every service what was deployed (:data:`LABEL_STACK_CONTENT`, an
  unkeyed sha256 of the compose files and variables, which hold no secret values — those stay in
  the manifests' sources; :data:`LABEL_STACK_VERSIONS`, the pinned version names);
* :func:`plan_deploys`: whether each stack needs a deploy and why (the planner calls it with the
  reference changes it computed for the stack's services, which the deploy makes instead of a
  service update of their own);
* :func:`variable_name`: the variable ``swarm-secrets env`` prints for a logical secret.

Pure: no I/O, no docker, no subprocess, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.model import (
    LABEL_PREFIX,
    LiveService,
    LiveState,
    Origin,
    SecretSet,
    SecretSpec,
    ServiceGrant,
    normalize_target,
)
from reconciler.core.plan import DeployStack, RefChange, StackService
from reconciler.errors import Problem

__all__ = [
    "LABEL_STACK",
    "LABEL_STACK_CONTENT",
    "LABEL_STACK_REVISION",
    "LABEL_STACK_VERSIONS",
    "STACK_ENV_DENIED",
    "STACK_NAMESPACE_LABEL",
    "Compose",
    "ComposeSecret",
    "ComposeService",
    "HostFile",
    "SecretUse",
    "StackSpec",
    "check_grants",
    "content_digest",
    "covered_services",
    "deploy_labels",
    "override_document",
    "pins",
    "plan_deploys",
    "variable_name",
    "wanted_names",
]

STACK_ENV_DENIED: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TMPDIR", "TMP", "TEMP", "IFS", "ENV",
    "BASH_ENV", "CDPATH", "PS4", "LANG", "LANGUAGE", "LC_*", "LOCPATH", "NLSPATH", "GCONV_PATH", "TZ",
    "TZDIR", "ZONEINFO", "LD_*", "DYLD_*", "MALLOC_*", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
    "RES_OPTIONS", "GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK", "GORACE", "GOCOVERDIR",
    "GOFIPS*", "GOEXPERIMENT", "GOROOT", "GOPATH", "GOENV", "GOFLAGS", "GOTOOLCHAIN", "CGO_*", "SSL_*",
    "OPENSSL_*", "CURL_*", "REQUESTS_*", "NO_PROXY", "no_proxy", "XDG_*", "DBUS_*", "PYTHON*", "TERM",
    "TERMINFO*", "KRB5*",
)  # fmt: skip
"""Variables a Stack manifest's ``spec.env`` may not set (besides the reserved ones of
``core/guard.py``): the docker CLI runs with them in its environment, and these change how a program
runs (its loader, locale, proxies, certificates, Go runtime), not what a compose file says."""

STACK_NAMESPACE_LABEL = "com.docker.stack.namespace"
"""What ``docker stack deploy`` labels its services and secrets with: the stack's name."""
LABEL_STACK = LABEL_PREFIX + "stack"
"""Service label: the stack swarm-secrets deployed the service with (set by the override)."""
LABEL_STACK_CONTENT = LABEL_PREFIX + "stack-content"
"""Service label: :func:`content_digest` of what the service was deployed from."""
LABEL_STACK_VERSIONS = LABEL_PREFIX + "stack-versions"
"""Service label: the managed versions the deploy pinned (``db_password_v3,smtp_user_v1``)."""
LABEL_STACK_REVISION = LABEL_PREFIX + "stack-revision"
"""Service label: the manifests' commit the deploy was made from, when known (for people)."""

DEFAULT_UID = "0"
DEFAULT_GID = "0"
DEFAULT_MODE = 0o444
"""What docker/cli's compose converter gives a secret reference without uid/gid/mode
(``cli/compose/convert/service.go``: ``convertFileObject``)."""


# --- the compose side ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretUse:
    """One entry of a compose service's ``secrets:``, as docker/cli turns it into a reference: the
    target is ``target`` or else the compose key (so ``/run/secrets/<key>``), never the top-level
    ``name:``; uid and gid default to "0", the mode to 0444."""

    service: str
    """The compose service (``db``); the swarm service is ``<stack>_<service>``."""
    key: str
    """The top-level compose secret it mounts (``source``)."""
    target: str
    uid: str = DEFAULT_UID
    gid: str = DEFAULT_GID
    mode: int = DEFAULT_MODE
    origin: Origin
    """The list item in the compose file that wins the merge."""

    @property
    def path(self) -> str:
        return normalize_target(self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComposeSecret:
    """A top-level compose secret (after merging: a later file's entry replaces an earlier one)."""

    key: str
    external: bool = False
    name: str | None = None
    """``name:`` (or the deprecated ``external: {name: ...}``)."""
    file: str | None = None
    """``file:`` as written (docker reads it relative to the first compose file's folder)."""
    origin: Origin


@dataclass(frozen=True, slots=True, kw_only=True)
class ComposeService:
    name: str
    binds: tuple[str, ...] = ()
    """Host paths the service bind-mounts (what the engine-holder rule looks at)."""
    env_names: frozenset[str] = frozenset()
    """Names (never values) of its environment variables, ``env_file`` included."""
    origin: Origin


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFile:
    """A file on the deploying host that ``docker stack deploy`` reads (a secret's or config's
    ``file:``, an ``env_file``): a Stack manifest may only name files of its repository."""

    path: str
    """Absolute, as docker resolves it (relative to the first compose file's folder)."""
    what: str
    origin: Origin


@dataclass(frozen=True, slots=True, kw_only=True)
class Compose:
    """The merged compose files of one stack, as far as secrets and the trust rules go."""

    files: tuple[str, ...]
    """The compose files as messages show them, in merge order."""
    version: str | None = None
    """The ``version:`` of the first file as written (an override must carry the same)."""
    services: tuple[ComposeService, ...] = ()
    uses: tuple[SecretUse, ...] = ()
    secrets: tuple[ComposeSecret, ...] = ()
    host_files: tuple[HostFile, ...] = ()

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def secret(self, key: str) -> ComposeSecret | None:
        return next((s for s in self.secrets if s.key == key), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class StackSpec:
    """A stack swarm-secrets deploys: a ``kind: Stack`` manifest, or ``swarm-secrets stack deploy``."""

    name: str
    """The stack namespace (``docker stack deploy ... NAME``)."""
    compose: Compose
    files: tuple[Path, ...]
    """The compose files in merge order (``-c`` each)."""
    content: str
    """:func:`content_digest` of the files as read and the variables below."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """Variables the compose files are interpolated with: a Stack manifest's ``spec.env`` (nothing of
    the reconciler's own environment), or for ``stack deploy`` the caller's environment without the
    reserved variables. docker gets exactly these."""
    prune: bool = False
    """``docker stack deploy --prune``."""
    resolve_image: str | None = None
    """``--resolve-image`` (always, changed, never); None: docker's default."""
    docker_args: tuple[str, ...] = ()
    """More ``docker stack deploy`` flags (``stack deploy -- ARGS``; never from a manifest)."""
    always: bool = False
    """True for ``stack deploy`` (a release: deployed whatever the swarm shows); False for a Stack
    manifest (deployed when its content or its pinned versions differ from what the services record)."""
    origin: Origin | None = None
    """The Stack manifest's ``metadata.name``; None for ``stack deploy``."""
    location: str = ""
    """The Stack manifest relative to its source root (for a policy rule's ``files``)."""

    def service(self, name: str) -> str:
        """The swarm service of compose service ``name``: ``<stack>_<name>``."""
        return f"{self.name}_{name}"

    @property
    def swarm_services(self) -> tuple[str, ...]:
        return tuple(self.service(s) for s in self.compose.service_names)

    def digest(self, files: Sequence[tuple[str, bytes]]) -> str:
        """:func:`content_digest` of ``files`` (as read) with this stack's variables and flags. For
        ``stack deploy`` the variables are the caller's whole environment, which may hold values of
        its own: they stay out (such a stack is deployed every time anyway)."""
        return content_digest(
            files,
            {} if self.always else self.environment,
            prune=self.prune,
            resolve_image=self.resolve_image,
        )


def content_digest(
    files: Sequence[tuple[str, bytes]],
    environment: Mapping[str, str],
    *,
    prune: bool = False,
    resolve_image: str | None = None,
) -> str:
    """``sha256:<hex>`` of what a deploy is made from: each compose file's bytes in order, the
    interpolation variables and the flags. Unkeyed on purpose: none of it is a managed value (those
    are pinned by name), and every reconciler of the swarm computes the same without a key."""
    digest = hashlib.sha256()
    for index, (_, data) in enumerate(files):
        digest.update(f"file {index} {len(data)}\0".encode())
        digest.update(data)
    for name in sorted(environment):
        value = environment[name]
        digest.update(f"env {len(name)}:{name}={len(value)}:{value}\0".encode())
    digest.update(f"prune={prune} resolve={resolve_image or ''}".encode())
    return f"sha256:{digest.hexdigest()}"


def covered_services(stacks: Sequence[StackSpec]) -> dict[str, StackSpec]:
    """swarm service name -> the stack whose deploy writes it (services of the loaded stacks)."""
    return {service: stack for stack in stacks for service in stack.swarm_services}


# --- the manifests' grants against the compose files ------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Granted:
    spec: SecretSpec
    grant: ServiceGrant
    index: int

    @property
    def owner(self) -> tuple[str, str]:
        return self.spec.set_name, self.spec.secret

    def where(self) -> str:
        origin = self.grant.origin or self.spec.origin
        return f"{origin.file}:{origin.line}" if origin.line else origin.file


def _grants(stack: StackSpec, sets: Sequence[SecretSet]) -> dict[tuple[str, str], _Granted]:
    """(swarm service, path) -> the grant there, for the services of ``stack`` (first one wins; two
    secrets at one target are the cross-file checks' business)."""
    services = frozenset(stack.swarm_services)
    found: dict[tuple[str, str], _Granted] = {}
    for secret_set in sets:
        for spec in secret_set.secrets:
            for index, grant in enumerate(spec.grants):
                if grant.service in services:
                    found.setdefault(
                        (grant.service, grant.path), _Granted(spec=spec, grant=grant, index=index)
                    )
    return found


def _at(origin: Origin) -> str:
    return f"{origin.file}:{origin.line}" if origin.line else origin.file


def _problem(origin: Origin, message: str) -> Problem:
    return Problem(origin.file, origin.line, origin.path, message)


def check_grants(stack: StackSpec, sets: Sequence[SecretSet]) -> list[Problem]:
    """Every conflict between the manifests' grants to the stack's services and its compose files.

    A deploy can only pin a whole compose secret, so: each compose secret carries at most one logical
    secret, and every service mounting a pinned compose secret must be granted it; a grant must be
    mounted by the compose files (the deploy replaces the service's secrets with theirs) with the same
    uid, gid and mode (the override pins names, not the services' entries).
    """
    problems: list[Problem] = []
    granted = _grants(stack, sets)
    uses_at: dict[tuple[str, str], SecretUse] = {}
    by_key: dict[str, list[tuple[SecretUse, _Granted | None]]] = defaultdict(list)
    for use in stack.compose.uses:
        service = stack.service(use.service)
        uses_at.setdefault((service, use.path), use)
        by_key[use.key].append((use, granted.get((service, use.path))))
    files = ", ".join(stack.compose.files)
    for (service, path), found in sorted(granted.items(), key=lambda i: i[0]):
        mounted = uses_at.get((service, path))
        origin = found.grant.origin or found.spec.origin
        if mounted is None:
            short = service.removeprefix(f"{stack.name}_")
            problems.append(
                _problem(
                    origin,
                    f"service '{service}' is deployed with stack '{stack.name}' ({files}), whose compose "
                    f"files mount no secret at {path}: a stack deploy replaces the service's secrets with "
                    f"what its compose files say, so add `- source: <compose secret>` with `target: {path}` "
                    f"to service {short}, or grant another target",
                )
            )
            continue
        grant = found.grant
        if (mounted.uid, mounted.gid, mounted.mode) != (grant.uid, grant.gid, grant.mode):
            problems.append(
                _problem(
                    origin,
                    f"{found.spec.secret} is granted to '{service}' at {path} as uid {grant.uid}, gid "
                    f"{grant.gid}, mode {grant.mode:04o}, but {_at(mounted.origin)} ({mounted.origin.path}) "
                    f"mounts it as uid {mounted.uid}, gid {mounted.gid}, mode {mounted.mode:04o}: the deploy "
                    "pins only the secret's name, so make the two agree",
                )
            )
    for key, entries in sorted(by_key.items()):
        owners = {g.owner for _, g in entries if g is not None}
        if not owners:
            continue  # not managed: left as the compose files say
        if len(owners) > 1:
            first_use, first = next((u, g) for u, g in entries if g is not None)
            assert first is not None
            others = [
                f"{stack.service(u.service)} at {u.path} ({_at(u.origin)}) gets {g.spec.set_name}/"
                f"{g.spec.secret} ({g.where()})"
                for u, g in entries
                if g is not None and g.owner != first.owner
            ]
            problems.append(
                _problem(
                    first_use.origin,
                    f"compose secret '{key}' is mounted where different secrets are granted: "
                    f"{stack.service(first_use.service)} at {first_use.path} gets {first.spec.set_name}/"
                    f"{first.spec.secret} ({first.where()}), {'; '.join(others)}; one compose secret has "
                    "one value: give each logical secret a compose secret of its own",
                )
            )
            continue
        (owner,) = owners
        granted_use = next(g for _, g in entries if g is not None)
        for use, grant_there in entries:
            if grant_there is None:
                problems.append(
                    _problem(
                        use.origin,
                        f"compose secret '{key}' is pinned to {owner[0]}/{owner[1]} (granted at "
                        f"{granted_use.where()}), but {stack.service(use.service)} mounts it at {use.path}, "
                        f"where no manifest grants {owner[1]}: the deploy would give it the managed value; "
                        f"grant {owner[1]} to {stack.service(use.service)} at {use.path}, or mount another "
                        "compose secret there",
                    )
                )
    return problems


def pins(stack: StackSpec, names: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """compose secret key -> the version name it is pinned to. ``names`` maps (swarm service, path) to
    the version the manifests want there (the planner's choice, or the current versions)."""
    found: dict[str, str] = {}
    for use in stack.compose.uses:
        name = names.get((stack.service(use.service), use.path))
        if name is not None:
            found.setdefault(use.key, name)
    return dict(sorted(found.items()))


def wanted_names(
    sets: Sequence[SecretSet], names: Mapping[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    """(service, path) -> version name of every grant, from (set, secret) -> the secret's version."""
    return {
        (grant.service, grant.path): names[(secret_set.name, spec.secret)]
        for secret_set in sets
        for spec in secret_set.secrets
        for grant in spec.grants
        if (secret_set.name, spec.secret) in names
    }


def _version_number(text: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers[:2]) if numbers else ()


def override_document(
    stack: StackSpec,
    pinned: Mapping[str, str],
    *,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The compose override that pins ``pinned`` (key -> version name) and, when ``labels`` are given,
    puts them on every service of the stack (``deploy.labels``: service labels, which restart no task).

    It carries the first file's ``version`` (docker/cli refuses files of different versions); before
    compose 3.5 a top-level secret has no ``name:``, so the older ``external: {name: ...}`` is used."""
    document: dict[str, Any] = {}
    if stack.compose.version is not None:
        document["version"] = stack.compose.version
    if labels:
        document["services"] = {
            name: {"deploy": {"labels": dict(sorted(labels.items()))}} for name in stack.compose.service_names
        }
    if pinned:
        version = _version_number(stack.compose.version)
        old = bool(version) and version < (3, 5)
        document["secrets"] = {
            key: ({"external": {"name": name}} if old else {"external": True, "name": name})
            for key, name in sorted(pinned.items())
        }
    return document


def deploy_labels(stack: StackSpec, pinned: Mapping[str, str], revision: str | None) -> dict[str, str]:
    """The labels a deploy records on every service of ``stack``."""
    labels = {
        LABEL_STACK: stack.name,
        LABEL_STACK_CONTENT: stack.content,
        LABEL_STACK_VERSIONS: ",".join(sorted(set(pinned.values()))),
    }
    if revision:
        labels[LABEL_STACK_REVISION] = revision
    return labels


# --- deciding the deploys ---------------------------------------------------------------------------------


def plan_deploys(
    stacks: Sequence[StackSpec],
    live: LiveState,
    changes: Mapping[str, tuple[RefChange, ...]],
    names: Mapping[tuple[str, str], str],
) -> tuple[tuple[DeployStack, ...], tuple[str, ...]]:
    """The deploys the loaded stacks need, and warnings.

    ``changes`` are the reference changes the planner computed for each service of the stacks (what
    an update of its own would have made: the deploy makes them instead); ``names`` the version the
    manifests want at each (service, path). A ``stack deploy`` stack is always deployed; a Stack
    manifest's when a service is missing, records other content or other pinned versions, or holds
    other versions than it pins.
    """
    services = {s.name: s for s in live.services}
    deploys: list[DeployStack] = []
    warnings: list[str] = []
    for stack in sorted(stacks, key=lambda s: s.name):
        pinned = pins(stack, names)
        versions = ",".join(sorted(set(pinned.values())))
        entries: list[StackService] = []
        why: list[str] = []
        missing: list[str] = []
        content = unrecorded = False
        for name in stack.swarm_services:
            service = services.get(name)
            if service is None:
                missing.append(name)
                entries.append(StackService(service=name))
                continue
            own = changes.get(name, ())
            entries.append(
                StackService(
                    service=name, service_id=service.id, observed_version=service.version, changes=own
                )
            )
            recorded = service.labels.get(LABEL_STACK_CONTENT)
            if recorded is None:
                unrecorded = True
            elif recorded != stack.content:
                content = True
            elif service.labels.get(LABEL_STACK_VERSIONS, "") != versions and not own:
                why.append(f"{name} records other pinned versions")
            warnings += _foreign(stack, service)
        moved = sorted({c.new for e in entries for c in e.changes if c.new})
        if stack.always:
            why.insert(0, "release (`swarm-secrets stack deploy`)")
        if missing:
            first = len(missing) == len(stack.swarm_services)
            why.insert(0, "first deploy" if first else f"{', '.join(missing)} not deployed yet")
        if content and not missing:
            why.append("compose content changed")
        elif unrecorded and not missing:
            why.append("its services record no swarm-secrets deploy of this content")
        if moved:
            why.append(f"pins {', '.join(moved)}")
        if not why:
            continue
        deploys.append(
            DeployStack(
                stack=stack.name,
                content=stack.content,
                pins=tuple(pinned.items()),
                services=tuple(entries),
                reason="; ".join(why),
            )
        )
    return tuple(deploys), tuple(warnings)


def _foreign(stack: StackSpec, service: LiveService) -> Iterator[str]:
    deployed_by = service.labels.get(LABEL_STACK)
    if service.stack not in (None, stack.name):
        yield (
            f"service '{service.name}' belongs to stack '{service.stack}', but stack '{stack.name}' "
            "deploys a service of that name: the deploy takes it over"
        )
    elif deployed_by not in (None, stack.name):
        yield f"service '{service.name}' was deployed by swarm-secrets as part of stack '{deployed_by}'"


# --- swarm-secrets env -----------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[^A-Za-z0-9]")


def variable_name(secret: str, prefix: str = "") -> str:
    """``db_password`` -> ``DB_PASSWORD``: the prefix plus the name upper-cased, every character
    outside ``[A-Za-z0-9]`` turned into ``_``."""
    return prefix + _NOT_WORD.sub("_", secret).upper()
